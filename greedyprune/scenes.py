"""Scenes: a seeded visual-question task where *which* visual tokens are kept decides the answer.

Each scene is a 192 × 192 picture of 2–6 objects (a shape, a colour, a size) on a textured
background, with a question whose one-word answer depends on specific regions of the picture.
The package's built-in model (:mod:`greedyprune.builtin`) was trained on it, and
``python -m greedyprune eval`` uses it as its default benchmark::

    from greedyprune import scenes
    records = scenes.benchmark(seed=0, n=400)   # balanced over question types and answers
    records[0].image, records[0].question, records[0].answers, records[0].category

Question types (``Record.category``):

``attribute``  "What colour is the triangle?", "What shape is the red object?", "What size is
               the blue cross?" (colour, shape or size of a named object)
``existence``  "Is there a green circle?" (yes / no)
``count``      "How many squares are there?" (1–4)
``spatial``    "Is the red circle left of the blue square?" (left of, right of, above, below;
               yes / no)

The picture is a 12 × 12 grid of 16-pixel cells, one cell per visual token of a 16-pixel-patch
vision tower. Objects sit on that grid: a small object fills a 2 × 2 block of cells, a large one
3 × 3, and objects never touch (at least one empty cell between any two). Everything is computed with
integers from a NumPy ``Generator`` (PCG64), so a seed gives the same records, pixel for pixel,
on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .evaluate import Record

__all__ = ["CATEGORIES", "COLOURS", "SHAPES", "SIZES", "Question", "Scene", "Thing", "ask",
           "balanced", "benchmark", "draw",
           "generate", "image", "mentioned", "patch_labels", "questions", "render", "vocabulary"]

CELL = 16                  # pixels per grid cell = the vision tower's patch size
GRID = 12                  # cells per side: 144 visual tokens
IMAGE_SIZE = CELL * GRID   # 192

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230),
    "yellow": (235, 215, 40), "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "cross": "crosses"}
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
CATEGORIES = ("attribute", "existence", "count", "spatial")
COUNTS = (1, 2, 3, 4)
COLOUR_JITTER = 20
#: Side of an object in grid cells (= visual tokens), by size.
SIDES = {"small": 2, "large": 3}


@dataclass(frozen=True)
class Thing:
    """One object: its shape, colour and size, and its top-left grid cell (row, col)."""

    shape: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def cells(self) -> int:
        """Its side, in grid cells."""
        return SIDES[self.size]

    @property
    def patches(self) -> Tuple[int, ...]:
        """Raster indices (row · 12 + column) of the cells it covers: its visual tokens."""
        return tuple(r * GRID + c for r in range(self.row, self.row + self.cells)
                     for c in range(self.col, self.col + self.cells))

    @property
    def centre(self) -> Tuple[float, float]:
        """(row, col) of the centre, in cells."""
        return self.row + self.cells / 2, self.col + self.cells / 2


@dataclass(frozen=True)
class Scene:
    """The objects of one picture and the integers its background and colours are drawn from."""

    things: Tuple[Thing, ...]
    texture_seed: int

    def render(self) -> np.ndarray:
        """Its picture as a (192, 192, 3) uint8 array (:func:`render`)."""
        return render(self)


# --- shapes as pixel masks, in integer arithmetic ---------------------------------------------


def _mask(shape: str, side: int) -> np.ndarray:
    """A side × side boolean mask of the shape, from doubled pixel-centre coordinates."""
    u = 2 * np.arange(side)[None, :] + 1 - side   # doubled x offset of each pixel centre
    v = 2 * np.arange(side)[:, None] + 1 - side   # doubled y offset
    if shape == "circle":
        return u * u + v * v <= side * side
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "triangle":   # apex up: the half-width grows with the row
        return 2 * np.abs(u) <= (v + side)
    if shape == "cross":      # arms a third of the side thick
        return (3 * np.abs(u) <= side) | (3 * np.abs(v) <= side)
    raise ValueError(f"unknown shape {shape!r}")


_MARGIN = 2  # background pixels around an object inside its cells
_MASKS = {(shape, size): _mask(shape, CELL * SIDES[size] - 2 * _MARGIN)
          for shape in SHAPES for size in SIZES}


# --- rendering --------------------------------------------------------------------------------


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A muted, non-uniform background: tinted grey, blotches, stripes and pixel noise."""
    base = int(rng.integers(95, 165)) + rng.integers(-18, 19, size=3)
    blotches = rng.integers(-22, 23, size=(IMAGE_SIZE // 8, IMAGE_SIZE // 8, 1))
    blotches = np.repeat(np.repeat(blotches, 8, axis=0), 8, axis=1)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    a, b = rng.integers(-2, 3, size=2)
    period = int(rng.integers(5, 15))
    stripes = (((a * x + b * y + 1000 * period) // period) % 2)[:, :, None] * int(rng.integers(8, 24))
    noise = rng.integers(-10, 11, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return base[None, None, :] + blotches + stripes + noise


def render(scene: Scene) -> np.ndarray:
    """The scene's picture as a (192, 192, 3) uint8 array."""
    rng = np.random.default_rng(scene.texture_seed)
    return draw(_texture(rng), scene.things, _MASKS, rng)


def draw(image: np.ndarray, things: Sequence[Thing], masks,
         rng: np.random.Generator) -> np.ndarray:
    """Paint the objects on a background (``masks[shape, size]``: each one's pixel mask, inset
    by a margin in its cells), each colour jittered from ``rng``; as uint8."""
    for thing in things:
        colour = np.array(COLOURS[thing.colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
        mask = masks[thing.shape, thing.size]
        top, left = thing.row * CELL + _MARGIN, thing.col * CELL + _MARGIN
        region = image[top:top + len(mask), left:left + len(mask)]
        region[mask] = colour
    return np.clip(image, 0, 255).astype(np.uint8)


def image(scene: Scene):
    """The scene's picture as a PIL image (a scene of any task: its own ``render``)."""
    from PIL import Image

    return Image.fromarray(scene.render(), "RGB")


def patch_labels(scene: Scene) -> Dict[str, np.ndarray]:
    """Per-cell (raster order, 144 entries) targets: ``colour`` (0 background, 1 + index in
    :data:`COLOURS`), ``shape`` (0 background, 1 + index in :data:`SHAPES`) and ``part`` (0
    background; 1 and 2 the top-left and any other cell of a small object, 3 and 4 of a large
    one). Counting top-left cells counts objects."""
    colour = np.zeros((GRID, GRID), np.int64)
    shape = np.zeros((GRID, GRID), np.int64)
    part = np.zeros((GRID, GRID), np.int64)
    colours = list(COLOURS)
    for thing in scene.things:
        n = thing.cells
        colour[thing.row:thing.row + n, thing.col:thing.col + n] = 1 + colours.index(thing.colour)
        shape[thing.row:thing.row + n, thing.col:thing.col + n] = 1 + SHAPES.index(thing.shape)
        first = 1 if thing.size == "small" else 3
        part[thing.row:thing.row + n, thing.col:thing.col + n] = first + 1
        part[thing.row, thing.col] = first
    return {"colour": colour.ravel(), "shape": shape.ravel(), "part": part.ravel()}


# --- placing objects --------------------------------------------------------------------------


class _Board:
    """Free cells of the grid; a placed object blocks its cells and a one-cell ring around.
    ``sides`` gives an object's side in cells by size, ``thing`` the class of what it places."""

    def __init__(self, sides: Dict[str, int] = SIDES, thing: type = Thing) -> None:
        self.blocked = np.zeros((GRID + 2, GRID + 2), dtype=bool)  # padded by one
        self.sides, self.thing = sides, thing

    def fits(self, row: int, col: int, n: int) -> bool:
        return 0 <= row <= GRID - n and 0 <= col <= GRID - n and \
            not self.blocked[row + 1:row + 1 + n, col + 1:col + 1 + n].any()

    def place(self, rng, shape, colour, size, where=None) -> Optional[Thing]:
        """Put an object at a random free spot (``where(row, col)`` must accept it)."""
        n = self.sides[size]
        for _ in range(200):
            row, col = (int(v) for v in rng.integers(0, GRID - n + 1, size=2))
            if self.fits(row, col, n) and (where is None or where(row, col)):
                self.blocked[row:row + n + 2, col:col + n + 2] = True
                return self.thing(shape, colour, size, row, col)
        return None


def _pick(rng, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _size(rng) -> str:
    return _pick(rng, SIZES)


def _fill(rng, board: _Board, things: List[Optional[Thing]], total: int, allowed,
          draw_size=_size) -> None:
    """Add random objects until there are ``total``; ``allowed(shape, colour)`` filters them,
    ``draw_size(rng)`` sizes them. (colour, shape) pairs stay distinct within a scene, so "the
    red circle" names one object."""
    placed = [t for t in things if t is not None]
    if len(placed) < len(things):  # a placement failed: the caller starts over
        return
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    for _ in range(100):
        if len(things) >= total:
            return
        shape, colour = _pick(rng, pairs)
        if any(t.shape == shape and t.colour == colour for t in placed) or \
                not allowed(shape, colour):
            continue
        thing = board.place(rng, shape, colour, draw_size(rng))
        if thing is not None:
            things.append(thing)
            placed.append(thing)


def _question(rng, category: str, count_range: Tuple[int, int], variant: Optional[int],
              board: Optional[_Board] = None, draw_size=_size):
    """One (things, question, answer) of the category, or None when placement failed.
    ``variant`` (None: random) fixes what is asked: the attribute, whether the answer is yes,
    or the count. ``board`` (default: this task's) and ``draw_size`` let another task reuse the
    existence and spatial questions with its own objects."""
    board = board or _Board()
    total = int(rng.integers(count_range[0], count_range[1] + 1))
    colours = list(COLOURS)
    things: List[Optional[Thing]] = []   # None: a placement failed
    if category == "attribute":
        kinds = ("colour", "shape", "size")
        asked = _pick(rng, kinds) if variant is None else kinds[variant % 3]
        target = board.place(rng, _pick(rng, SHAPES), _pick(rng, colours), _size(rng))
        assert target is not None  # the board is empty: the first object always fits
        things.append(target)
        if asked == "colour":
            _fill(rng, board, things, total, lambda s, c: s != target.shape)
            question, answer = f"What colour is the {target.shape}?", target.colour
        elif asked == "shape":
            _fill(rng, board, things, total, lambda s, c: c != target.colour)
            question, answer = f"What shape is the {target.colour} object?", target.shape
        else:
            _fill(rng, board, things, total, lambda s, c: True)
            question = f"What size is the {target.colour} {target.shape}?"
            answer = target.size
    elif category == "existence":
        shape, colour = _pick(rng, SHAPES), _pick(rng, colours)
        present = bool(rng.integers(2)) if variant is None else variant % 2 == 0
        if present:
            things.append(board.place(rng, shape, colour, draw_size(rng)))
        else:
            # Hard negatives: the colour and the shape are both there, on other objects.
            others_c = [c for c in colours if c != colour]
            others_s = [s for s in SHAPES if s != shape]
            things.append(board.place(rng, _pick(rng, others_s), colour, draw_size(rng)))
            things.append(board.place(rng, shape, _pick(rng, others_c), draw_size(rng)))
        _fill(rng, board, things, total, lambda s, c: (s, c) != (shape, colour), draw_size)
        question, answer = f"Is there a {colour} {shape}?", "yes" if present else "no"
    elif category == "count":
        shape = _pick(rng, SHAPES)
        count = int(_pick(rng, COUNTS)) if variant is None else COUNTS[variant % len(COUNTS)]
        for colour in rng.permutation(colours)[:count]:
            things.append(board.place(rng, shape, str(colour), _size(rng)))
        _fill(rng, board, things, max(total, count), lambda s, c: s != shape)
        question, answer = f"How many {PLURALS[shape]} are there?", str(count)
    elif category == "spatial":
        relation = _pick(rng, RELATIONS)
        holds = bool(rng.integers(2)) if variant is None else variant % 2 == 0
        pairs = [(s, c) for s in SHAPES for c in colours]
        first, second = (pairs[i] for i in rng.choice(len(pairs), size=2, replace=False))
        a = board.place(rng, first[0], first[1], draw_size(rng))
        things.append(a)
        if a is not None:
            # The relation compares centres, at least two cells apart on its axis.
            sign = {"left of": -1, "right of": 1, "above": -1, "below": 1}[relation]
            sign = sign if holds else -sign
            axis_col = relation in ("left of", "right of")
            size = draw_size(rng)
            half = board.sides[size] / 2

            def where(row, col):
                mine = (col if axis_col else row) + half
                theirs = a.centre[1] if axis_col else a.centre[0]
                return sign * (theirs - mine) >= 2
            things.append(board.place(rng, second[0], second[1], size, where))
        _fill(rng, board, things, total, lambda s, c: True, draw_size)
        question = f"Is the {first[1]} {first[0]} {relation} the {second[1]} {second[0]}?"
        answer = "yes" if holds else "no"
    else:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    placed = tuple(t for t in things if t is not None)
    if len(placed) < len(things):
        return None
    return placed, question, answer


def generate(rng: np.random.Generator, category: str, objects: Tuple[int, int] = (2, 6),
             variant: Optional[int] = None) -> Tuple[Scene, str, str]:
    """One random (scene, question, answer) of ``category`` with ``objects`` = (fewest, most)
    objects (a question may need more than the fewest). ``variant`` = 0, 1, 2, ... cycles
    through what is asked (attribute: colour, shape, size; existence and spatial: yes, no;
    count: 1 to 4), so that consecutive variants give balanced answers; None draws it."""
    while True:
        made = _question(rng, category, objects, variant)
        if made is not None:
            things, question, answer = made
            order = rng.permutation(len(things))  # the target is not always drawn first
            return Scene(tuple(things[i] for i in order), int(rng.integers(2**62))), question, answer


def ask(rng: np.random.Generator, scene: Scene) -> Tuple[str, str, str]:
    """A random (question, answer, category) about an existing scene, any category: unlike
    :func:`generate`, the answers follow the scene, not a balance (counts start at 1: only
    shapes that are there are counted)."""
    things = scene.things
    while True:
        category = _pick(rng, CATEGORIES)
        if category == "attribute":
            kind = _pick(rng, ("colour", "shape", "size"))
            if kind == "colour":
                unique = [t for t in things if sum(u.shape == t.shape for u in things) == 1]
                if unique:
                    t = _pick(rng, unique)
                    return f"What colour is the {t.shape}?", t.colour, category
            elif kind == "shape":
                unique = [t for t in things if sum(u.colour == t.colour for u in things) == 1]
                if unique:
                    t = _pick(rng, unique)
                    return f"What shape is the {t.colour} object?", t.shape, category
            else:
                t = _pick(rng, things)
                return f"What size is the {t.colour} {t.shape}?", t.size, category
        elif category == "existence":
            return ask_existence(rng, things) + (category,)
        elif category == "count":
            shape = _pick(rng, things).shape
            count = sum(t.shape == shape for t in things)
            return f"How many {PLURALS[shape]} are there?", str(count), category
        else:
            made = ask_spatial(rng, things)
            if made is not None:
                return made + (category,)


def ask_existence(rng: np.random.Generator, things: Sequence[Thing]) -> Tuple[str, str]:
    """(question, answer) of a random existence question about the objects: yes half of the
    time; a no is, half of the time where there is one, a hard negative (its colour and its
    shape are in the scene, on other objects)."""
    if rng.integers(2):
        t = _pick(rng, things)
        return f"Is there a {t.colour} {t.shape}?", "yes"
    absent = [(s, c) for s in SHAPES for c in COLOURS
              if not any((t.shape, t.colour) == (s, c) for t in things)]
    hard = [(s, c) for s, c in absent if any(t.shape == s for t in things)
            and any(t.colour == c for t in things)]
    shape, colour = _pick(rng, hard if hard and rng.integers(2) else absent)
    return f"Is there a {colour} {shape}?", "no"


def ask_spatial(rng: np.random.Generator, things: Sequence[Thing]) -> Optional[Tuple[str, str]]:
    """(question, answer) of a random relation between two of the objects, or None when the
    two drawn are less than two cells apart on the relation's axis (or there are fewer than
    two objects)."""
    if len(things) < 2:
        return None
    i, j = (int(v) for v in rng.choice(len(things), size=2, replace=False))
    a, b = things[i], things[j]
    relation = _pick(rng, RELATIONS)
    axis = 1 if relation in ("left of", "right of") else 0
    gap = a.centre[axis] - b.centre[axis]
    if abs(gap) < 2:
        return None
    holds = gap < 0 if relation in ("left of", "above") else gap > 0
    return (f"Is the {a.colour} {a.shape} {relation} the {b.colour} {b.shape}?",
            "yes" if holds else "no")


@dataclass(frozen=True)
class Question:
    """A generated question: its scene, text, one-word answer and category."""

    scene: Scene
    question: str
    answer: str
    category: str

    def record(self, id: str = "") -> Record:
        """As an :class:`greedyprune.evaluate.Record` (with the rendered PIL image)."""
        return Record(image=image(self.scene), question=self.question, answers=[self.answer],
                      id=id, category=self.category)


def questions(seed: int = 0, n: int = 400) -> List[Question]:
    """The questions behind :func:`benchmark` (scenes included, for analyses that need to know
    where the objects are)."""
    # A stream of its own: the key after the seed keeps these scenes apart from the training
    # streams, which use other keys.
    return balanced(generate, CATEGORIES, seed, n, 0x62656E6368)


def balanced(make: Callable[..., Tuple[Scene, str, str]], categories: Sequence[str], seed: int,
             n: int, key: int) -> List[Question]:
    """``n`` questions from ``make(rng, category, variant=...)`` (a task's ``generate``), the
    categories in turn and the variants counting up within each, from the stream
    ``(seed, key)``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng([int(seed), key])
    made = []
    for i in range(int(n)):
        category = categories[i % len(categories)]
        variant = i // len(categories)
        made.append(Question(*make(rng, category, variant=variant), category=category))
    return made


def benchmark(seed: int = 0, n: int = 400) -> List[Record]:
    """``n`` records balanced over the four categories (in turn) and, within a category, over
    the answers: each record is an :class:`greedyprune.evaluate.Record` with a PIL image, the
    question, ``answers=[answer]``, ``category`` and ``id`` (``"scenes-<seed>-<i>"``). The same
    seed gives the same records on any machine."""
    return [q.record(f"scenes-{seed}-{i}") for i, q in enumerate(questions(seed, n))]


def mentioned(question: Question) -> List[Thing]:
    """The objects a question is about: the named object (attribute), the counted ones, the
    two related ones, the asked-for one if present (existence)."""
    words = question.question.rstrip("?").lower().split()
    things = question.scene.things
    if question.category == "count":
        return [t for t in things if PLURALS[t.shape] in words]
    if question.category == "attribute" and "object" in words:      # "the red object"
        return [t for t in things if t.colour in words]
    if question.category == "attribute" and "colour" in words:      # "the triangle"
        return [t for t in things if t.shape in words]
    named = [(words[i], words[i + 1]) for i in range(len(words) - 1)]
    return [t for t in things if (t.colour, t.shape) in named]


def vocabulary() -> List[str]:
    """Every word the questions and answers use, lower case, in a fixed order."""
    words = ["what", "colour", "is", "the", "shape", "object", "size", "there", "a", "how",
             "many", "are", "?"]
    words += list(COLOURS) + list(SHAPES) + list(PLURALS.values()) + list(SIZES)
    words += [w for r in RELATIONS for w in r.split()] + ["yes", "no"] + [str(c) for c in range(7)]
    return list(dict.fromkeys(words))
