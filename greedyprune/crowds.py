"""Crowds: the harder built-in task, where there is more to see than a small budget can keep.

Each picture is the same 12 × 12 grid of 16-pixel cells as :mod:`greedyprune.scenes` (144 visual
tokens), with 12–16 objects, two thirds of them small (one cell; a large one covers 2 × 2), on a
background divided into 3–5 rectangular regions, each of its own tint and stripes: 15 to 21
distinct things to see, where a budget of 16 tokens (11%) can give each at most one token, so
which tokens are kept decides the answer far more often than on :mod:`greedyprune.scenes`.
Questions name one or two objects::

    from greedyprune import crowds
    records = crowds.benchmark(seed=0, n=300)   # balanced over question types and answers

Question types (``Record.category``):

``attribute``  "What size is the red circle?" (small / large)
``existence``  "Is there a green cross?" (yes / no; a "no" has that colour and that shape in
               the picture, on other objects)
``spatial``    "Is the red circle left of the blue square?" (left of, right of, above, below;
               yes / no; the centres are at least two cells apart on that axis)

Objects, colours, shapes and the words are those of :mod:`greedyprune.scenes`, so the two tasks'
models share one tokenizer and one architecture (:func:`greedyprune.builtin.config`). Everything
is computed with integers from a NumPy ``Generator`` (PCG64): a seed gives the same records,
pixel for pixel, on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from . import scenes
from .evaluate import Record
from .scenes import CELL, GRID, IMAGE_SIZE, RELATIONS, Question, image, mentioned, patch_labels

__all__ = ["CATEGORIES", "OBJECTS", "SIDES", "TINTS", "Question", "Scene", "Thing", "ask",
           "benchmark", "generate", "image", "mentioned", "patch_labels", "questions", "regions",
           "render"]

CATEGORIES = ("attribute", "existence", "spatial")
#: Side of an object in grid cells (= visual tokens), by size.
SIDES = {"small": 1, "large": 2}
#: Fewest and most objects in a benchmark picture.
OBJECTS = (12, 16)
#: Base colours of the background's regions: muted, unlike the objects' colours.
TINTS = ((196, 178, 128), (112, 138, 96), (104, 116, 140), (170, 112, 92), (150, 150, 146),
         (128, 104, 146))
#: Fewest and most background regions.
REGIONS = (3, 5)


@dataclass(frozen=True)
class Thing(scenes.Thing):
    """One object, sized by :data:`SIDES` (a small one is a single cell)."""

    @property
    def cells(self) -> int:
        return SIDES[self.size]


@dataclass(frozen=True)
class Scene(scenes.Scene):
    """The objects of one picture and the integer its background and colours are drawn from."""

    def render(self) -> np.ndarray:
        return render(self)


def _size(rng) -> str:
    """Small two times in three."""
    return "small" if rng.integers(3) else "large"


_MASKS = {(shape, size): scenes._mask(shape, CELL * side - 2 * scenes._MARGIN)
          for shape in scenes.SHAPES for size, side in SIDES.items()}


def regions(rng: np.random.Generator) -> np.ndarray:
    """A (12, 12) map of region numbers: the grid split 2–4 times along grid lines, each time
    the largest region across its longer side, no region narrower than 3 cells."""
    boxes = [(0, 0, GRID, GRID)]   # top, left, height, width
    for _ in range(int(rng.integers(REGIONS[0], REGIONS[1] + 1)) - 1):
        boxes.sort(key=lambda b: b[2] * b[3])
        top, left, height, width = boxes.pop()
        if width >= height:
            cut = int(rng.integers(3, width - 2))
            boxes += [(top, left, height, cut), (top, left + cut, height, width - cut)]
        else:
            cut = int(rng.integers(3, height - 2))
            boxes += [(top, left, cut, width), (top + cut, left, height - cut, width)]
    out = np.zeros((GRID, GRID), np.int64)
    for number, (top, left, height, width) in enumerate(boxes):
        out[top:top + height, left:left + width] = number
    return out


def _background(rng: np.random.Generator) -> np.ndarray:
    """Regions of distinct tints and stripes (direction, period, strength), with pixel noise."""
    cells = regions(rng)
    tints = rng.permutation(len(TINTS))
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    where = np.repeat(np.repeat(cells, CELL, axis=0), CELL, axis=1)
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.int64)
    for number in range(int(cells.max()) + 1):
        base = np.array(TINTS[tints[number]]) + rng.integers(-12, 13, size=3)
        a, b = rng.integers(-2, 3, size=2)
        period = int(rng.integers(4, 12))
        stripes = ((a * x + b * y + 1000 * period) // period) % 2 * int(rng.integers(10, 26))
        inside = where == number
        image[inside] = base[None, :] + stripes[inside][:, None]
    return image + rng.integers(-10, 11, size=(IMAGE_SIZE, IMAGE_SIZE, 3))


def render(scene: Scene) -> np.ndarray:
    """The scene's picture as a (192, 192, 3) uint8 array."""
    rng = np.random.default_rng(scene.texture_seed)
    return scenes.draw(_background(rng), scene.things, _MASKS, rng)


def _question(rng, category: str, count_range: Tuple[int, int], variant: Optional[int]):
    board = scenes._Board(SIDES, Thing)
    if category != "attribute":
        return scenes._question(rng, category, count_range, variant, board, _size)
    total = int(rng.integers(count_range[0], count_range[1] + 1))
    size = _size(rng) if variant is None else scenes.SIZES[variant % 2]
    target = board.place(rng, scenes._pick(rng, scenes.SHAPES),
                         scenes._pick(rng, list(scenes.COLOURS)), size)
    assert target is not None  # the board is empty: the first object always fits
    things: List[Optional[scenes.Thing]] = [target]
    scenes._fill(rng, board, things, total, lambda s, c: True, _size)
    return tuple(things), f"What size is the {target.colour} {target.shape}?", size


def generate(rng: np.random.Generator, category: str, objects: Tuple[int, int] = OBJECTS,
             variant: Optional[int] = None) -> Tuple[Scene, str, str]:
    """One random (scene, question, answer) of ``category`` with ``objects`` = (fewest, most)
    objects. ``variant`` = 0, 1, 2, ... alternates the answer (attribute: small, large;
    existence and spatial: yes, no), so that consecutive variants give balanced answers; None
    draws it."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    while True:
        made = _question(rng, category, objects, variant)
        if made is not None and len(made[0]) >= objects[0]:
            things, question, answer = made
            order = rng.permutation(len(things))
            scene = Scene(tuple(things[i] for i in order), int(rng.integers(2**62)))
            return scene, question, answer


def ask(rng: np.random.Generator, scene: Scene) -> Tuple[str, str, str]:
    """A random (question, answer, category) about an existing scene: the answers follow the
    scene, not a balance."""
    things = scene.things
    while True:
        category = scenes._pick(rng, CATEGORIES)
        if category == "attribute":
            t = scenes._pick(rng, things)
            return f"What size is the {t.colour} {t.shape}?", t.size, category
        asking = scenes.ask_existence if category == "existence" else scenes.ask_spatial
        made = asking(rng, things)
        if made is not None:
            return made + (category,)


def questions(seed: int = 0, n: int = 300) -> List[Question]:
    """The questions behind :func:`benchmark` (scenes included)."""
    return scenes.balanced(generate, CATEGORIES, seed, n, 0x63726F776473)


def benchmark(seed: int = 0, n: int = 300) -> List[Record]:
    """``n`` records balanced over the three categories (in turn) and, within a category, over
    the answers, as :func:`greedyprune.scenes.benchmark` gives them (``id``:
    ``"crowds-<seed>-<i>"``)."""
    return [q.record(f"crowds-{seed}-{i}") for i, q in enumerate(questions(seed, n))]
