"""Pictures of which visual tokens were kept: the image with the kept patches highlighted.

A vision-language model turns an image into a sequence of visual tokens, each standing for one
patch of the image. This module draws that correspondence back: kept patches at full brightness
with an outline around the kept region, pruned patches dimmed, and, when the cells are large
enough, each kept patch numbered by its selection order.

The correspondence between token indices and patches is a *layout*: one or more :class:`Panel`
grids laid over the image, in token order. :func:`draw_kept` draws from explicit indices and a
layout, which these helpers build:

- LLaVA-1.5: a single square grid (24×24 for CLIP ViT-L/14 at 336 px) over the centre crop the
  processor feeds the tower: :func:`llava_layout`.
- LLaVA-NeXT: the base image (a square grid over the whole image) followed by the high-resolution
  crops, stitched and unpadded into one grid whose rows each end with a row-separator (newline)
  token: :func:`llava_next_layout`. Separator tokens are not patches; the picture's title counts
  how many of them were kept.
- Qwen2-VL / 2.5-VL: one (h, w) grid of merged patches over the whole resized image:
  :func:`qwen_layout`.

:func:`draw_record` draws one image (or video) of the ``handle.last`` record of
:func:`greedyprune.hf.attach`, for every architecture it supports: its ``PatchGrid`` maps every
token to (view, row, col) — LLaVA and Gemma 3 one raster; LLaVA-NeXT and LLaVA-OneVision the base
image and the high-resolution view, drawn as the padded canvas the crops were cut from;
Idefics3 / SmolVLM the global image and the grid of sub-images; Qwen2-VL, Qwen2.5-VL and Qwen3-VL
the merged grid, one view per frame pair of a video. Needs Pillow (and torch and transformers
only for :func:`llava_next_layout`).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union, cast

import numpy as np

if TYPE_CHECKING:
    import PIL.Image

__all__ = ["Panel", "draw_kept", "draw_record", "llava_layout", "llava_next_layout",
           "qwen_layout"]

#: RGB of the outline around kept patches.
HIGHLIGHT = (255, 196, 0)
#: RGB that pruned patches are blended towards.
SHADE = (16, 16, 24)


@dataclass(frozen=True)
class Panel:
    """A ``rows × cols`` grid of visual tokens, in row-major order, laid over the image.

    ``start`` is the index of the panel's first token in the image's token sequence. With
    ``newline=True`` each row is followed by one separator token that stands for no patch
    (LLaVA-NeXT). ``crop`` says which part of the image the model saw: ``"none"`` (the whole
    image, resized to the grid) or ``"center"`` (the centred square, as CLIP's processor crops).
    """

    rows: int
    cols: int
    start: int = 0
    newline: bool = False
    crop: str = "none"
    title: str = ""

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "start"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Panel.{name} must be an integer, got {type(value).__name__}")
        if self.rows < 1 or self.cols < 1 or self.start < 0:
            raise ValueError(f"Panel needs rows, cols >= 1 and start >= 0, got {self}")
        if self.crop not in ("none", "center"):
            raise ValueError(f"Panel.crop must be 'none' or 'center', got {self.crop!r}")

    @property
    def num_tokens(self) -> int:
        return self.rows * (self.cols + int(self.newline))


Grid = Union[int, Tuple[int, int], Panel, Sequence[Panel]]


# --- layouts per architecture -----------------------------------------------------------------


def llava_layout(num_tokens: int = 576, *, crop: str = "center") -> List[Panel]:
    """LLaVA-1.5: one square grid of ``num_tokens`` patches (576 = 24×24 for CLIP-L/14 at 336 px).

    The LLaVA processor resizes the shorter side and crops the centre square, hence
    ``crop="center"``; pass ``"none"`` for an image that was padded or resized to a square.
    """
    side = math.isqrt(int(num_tokens))
    if side * side != num_tokens:
        raise ValueError(f"num_tokens must be a square number for LLaVA's grid, got {num_tokens}")
    return [Panel(side, side, crop=crop)]


def qwen_layout(grid_thw: Sequence[int], merge_size: int = 2) -> List[Panel]:
    """Qwen2-VL / 2.5-VL: ``image_grid_thw`` (t, h, w) in 14-px patches, merged ``merge_size``²
    to one token each, over the whole resized image."""
    t, h, w = (int(v) for v in grid_thw)
    if t != 1:
        raise ValueError(f"only still images (t = 1) can be drawn, got grid_thw {tuple(grid_thw)}")
    if h % merge_size or w % merge_size:
        raise ValueError(f"grid_thw {tuple(grid_thw)} is not divisible by merge_size {merge_size}")
    return [Panel(h // merge_size, w // merge_size)]


def llava_next_layout(image_size: Tuple[int, int], config: Any) -> List[Panel]:
    """LLaVA-NeXT: base image, then the unpadded high-resolution grid with one separator per row.

    ``image_size`` is the original (height, width), as in the processor's ``image_sizes``;
    ``config`` the model's (``LlavaNextConfig``). Uses transformers' own grid and unpadding
    functions, so the layout is the one the model packs. (A single-crop image — base only — ends
    with one separator token, which :func:`draw_kept` accepts as a trailing non-patch token.)
    """
    import torch
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape, unpad_image)

    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    height, width = (int(v) for v in image_size)
    crops_h, crops_w = get_anyres_image_grid_shape(
        (height, width), config.image_grid_pinpoints, vision.image_size)
    # unpad_image only slices, so an empty tensor of the stitched grid's shape gives its size.
    rows, cols = unpad_image(torch.empty(0, crops_h * side, crops_w * side), (height, width)).shape[1:]
    base = Panel(side, side, title="base image")
    return [base, Panel(int(rows), int(cols), start=base.num_tokens, newline=True,
                        title=f"{crops_h}x{crops_w} crops")]


# --- drawing ----------------------------------------------------------------------------------


@dataclass
class _View:
    """One picture of the image as the model saw it, cut into a rows × cols grid of patches."""

    picture: Any  # PIL image, already cropped / padded to what the grid covers
    rows: int
    cols: int
    title: str = ""


def draw_kept(
    image: Any,
    kept: Optional[Sequence[int]],
    grid: Grid,
    *,
    order: Optional[Sequence[int]] = None,
    num_tokens: Optional[int] = None,
    scale: float = 1.0,
    title: Optional[str] = None,
    dim: float = 0.7,
) -> "PIL.Image.Image":
    """The image with the patches of the ``kept`` token indices highlighted.

    ``image``: a PIL image, an (H, W) / (H, W, 3|4) array (uint8, or float in [0, 1]) or a path;
    for a video record, a list of its frames (each view, a frame pair for Qwen, is drawn on the
    frame at its share of the list) or one picture for all views.
    ``kept``: token indices into the image's token sequence (any order; may be None when
    ``order`` is given). ``grid``: the layout — ``(rows, cols)``, a side length for a square
    grid, a :class:`Panel`, a list of panels (see the ``*_layout`` helpers), or the
    ``PatchGrid`` of a ``handle.last`` image record. ``order``: the kept indices in selection
    order (kept tokens that were never candidates may be missing); each patch in it is
    numbered 1, 2, … if the numbers fit in the cells. ``num_tokens``:
    the image's total token count when it exceeds the layout's (trailing separator tokens);
    defaults to the layout's. ``scale`` multiplies the size each panel is drawn at (the image's
    own size, or its centre square for ``crop="center"``). ``title``: a line of text above the
    picture. ``dim``: how strongly pruned patches are shaded (0 = not at all, 1 = solid).

    Returns an RGB image: the panels side by side (8 px apart), plus a title strip when
    ``title`` is given or when a panel has a title. Tokens that stand for no patch (row
    separators) are counted in the title strip.
    """
    frames = image if isinstance(image, (list, tuple)) else [image]
    views, cells, layout_tokens = _layout([_to_pil(frame) for frame in frames], grid)
    if num_tokens is None:
        num_tokens = layout_tokens
    elif num_tokens < layout_tokens:
        raise ValueError(f"num_tokens ({num_tokens}) is smaller than the layout's "
                         f"{layout_tokens} tokens")
    if not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if not 0.0 <= dim <= 1.0:
        raise ValueError(f"dim must be in [0, 1], got {dim!r}")
    kept_set, rank = _selection(kept, order, num_tokens)
    drawn = []
    for v, view in enumerate(views):
        mask = np.zeros((view.rows, view.cols), dtype=bool)
        ranks = {}
        for index in kept_set:
            where = cells.get(index)
            if where is not None and where[0] == v:
                mask[where[1], where[2]] = True
                if index in rank:
                    ranks[where[1:]] = rank[index]
        drawn.append(_draw_grid(view, mask, ranks, scale, dim))
    lines = [title] if title else []
    separators = [i for i in range(num_tokens) if i not in cells]
    if separators:
        kept_separators = sum(1 for i in separators if i in kept_set)
        lines.append(f"{kept_separators} of {len(separators)} row-separator tokens kept")
    return _compose(drawn, views, lines, scale)


def _selection(kept, order, num_tokens: int):
    """The kept token indices (a set) and each ordered one's rank (1, 2, ...)."""
    if kept is None and order is None:
        raise ValueError("kept and order cannot both be None")
    kept_set = _indices(order if kept is None else kept, "kept", num_tokens)
    rank = {}
    if order is not None:
        order_list = _indices(order, "order", num_tokens, as_list=True)
        if not set(order_list) <= kept_set:
            raise ValueError("order must hold kept indices (all of them, or all but tokens "
                             "that were never candidates, such as LLaVA-NeXT's newlines)")
        rank = {index: r + 1 for r, index in enumerate(order_list)}
    return kept_set, rank


def _compose(drawn, views, lines: List[str], scale: float) -> "PIL.Image.Image":
    """The drawn views side by side under a strip with the text ``lines`` and view titles."""
    from PIL import Image, ImageDraw

    gap = 8
    width = sum(im.width for im in drawn) + gap * (len(drawn) - 1)
    # Text grows gently with the picture, and shrinks until the longest line fits its width.
    size = max(11, round(12 * math.sqrt(scale)))
    font = _font(size)
    while size > 8 and any(font.getlength(s) > width - 4 for s in
                           lines + [v.title for v in views]):
        size -= 1
        font = _font(size)
    line_h = font.getbbox("Ag")[3] + 4
    has_view_titles = any(view.title for view in views)
    header = line_h * (len(lines) + int(has_view_titles)) + (4 if lines or has_view_titles else 0)
    canvas = Image.new("RGB", (width, header + max(im.height for im in drawn)), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        pen.text((2, 2 + n * line_h), line, fill=(0, 0, 0), font=font)
    x = 0
    for view, im in zip(views, drawn):
        if view.title:
            pen.text((x + 2, 2 + len(lines) * line_h), view.title, fill=(64, 64, 64), font=font)
        canvas.paste(im, (x, header))
        x += im.width + gap
    return canvas


def draw_record(image: Any, record: Any, image_index: int = 0, *, config: Any = None,
                **kwargs: Any) -> "PIL.Image.Image":
    """Draw one image of a ``handle.last`` record from :func:`greedyprune.hf.attach`.

    ``record`` is ``handle.last`` (a ``PrefillRecord``), one of its per-image entries, or a dict
    with the same fields; ``image_index`` picks the image. The entry's ``kept`` indices (into
    the image's own run of placeholder tokens) and its ``grid`` (``PatchGrid``) give the picture;
    its ``order`` (the greedy rule's picks, in order) numbers the patches.
    Without a grid the layout is inferred: ``config`` (the model's) plus the entry's
    ``image_size`` give LLaVA-NeXT's, a (t, h, w) grid Qwen's, and a square token count LLaVA's.
    Other keyword arguments go to :func:`draw_kept`.
    """
    entry = _record_entry(record, image_index)
    kept = _field(entry, "kept")
    order = _field(entry, "order", required=False)
    n_tokens = _field(entry, "n_tokens", required=False)
    grid = _field(entry, "grid", required=False)
    if grid is None:
        image_size = _field(entry, "image_size", required=False)
        if config is not None and getattr(config, "image_grid_pinpoints", None) and image_size:
            grid = llava_next_layout(image_size, config)
        elif n_tokens is not None and math.isqrt(int(n_tokens)) ** 2 == int(n_tokens):
            grid = llava_layout(int(n_tokens))
        else:
            raise ValueError("the record has no grid for this image; pass the model's config "
                             "(LLaVA-NeXT) or call draw_kept with an explicit grid")
    elif isinstance(grid, (list, tuple)) and len(grid) == 3 and all(
            isinstance(v, (int, np.integer)) for v in grid):
        grid = qwen_layout(grid, int(_field(entry, "merge_size", required=False) or 2))
    if order is not None:
        kwargs.setdefault("order", order)
    return draw_kept(image, _as_list(kept), grid,
                     num_tokens=None if n_tokens is None else int(n_tokens), **kwargs)


# --- pieces -----------------------------------------------------------------------------------


def _layout(pictures, grid):
    """``(views, cells, num_tokens)``: the pictures to draw, a map token → (view, row, col) for
    every token that stands for a patch, and the layout's token count. ``pictures``: the image,
    or a video's frames."""
    source = getattr(grid, "token_source", None)
    if source is not None:
        return _patch_grid_layout(pictures, grid, np.asarray(source))
    picture = pictures[0]
    views, cells, total = [], {}, 0
    for v, panel in enumerate(_panels(grid)):
        views.append(_View(_crop(picture, panel.crop), panel.rows, panel.cols, panel.title))
        stride = panel.cols + int(panel.newline)
        for r in range(panel.rows):
            for c in range(panel.cols):
                cells[panel.start + r * stride + c] = (v, r, c)
        total = max(total, panel.start + panel.num_tokens)
    return views, cells, total


def _patch_grid_layout(pictures, grid, source):
    """Views for a ``greedyprune.hf`` ``PatchGrid``: ``token_source`` rows are (view, row, col).
    Without a crop grid every view is one grid over the whole image (its centre square when
    ``grid.center_crop``); several such views are the frames of a video (Qwen), each drawn on
    the matching picture of ``pictures``. With a crop grid, view 0 is LLaVA-NeXT's base image
    and view 1 its padded high-resolution canvas."""
    side = int(grid.patch_side)
    crop_grid = getattr(grid, "crop_grid", None)
    view_ids = sorted({int(v) for v in source[:, 0] if v >= 0})
    views = []
    for n, view_id in enumerate(view_ids):
        picture = pictures[n * len(pictures) // len(view_ids)]
        if crop_grid is None:
            in_view = source[source[:, 0] == view_id]
            rows, cols = int(in_view[:, 1].max()) + 1, int(in_view[:, 2].max()) + 1
            crop = "center" if getattr(grid, "center_crop", False) else "none"
            title = f"frames {view_id}" if len(view_ids) > 1 else ""
            views.append(_View(_crop(picture, crop), rows, cols, title))
        elif view_id == 0:
            # LLaVA-NeXT's base image: the whole image resized to one tower input.
            views.append(_View(picture, side, side, "base image"))
        elif view_id == 1:
            rows, cols = crop_grid[0] * side, crop_grid[1] * side
            canvas = _padded_canvas(picture, grid.canvas_pixels or (rows, cols))
            views.append(_View(canvas, rows, cols, f"{crop_grid[0]}x{crop_grid[1]} crops"))
        else:
            raise ValueError(f"cannot draw view {view_id} of {grid!r}")
    index_of_view = {v: n for n, v in enumerate(view_ids)}
    cells = {t: (index_of_view[int(v)], int(r), int(c))
             for t, (v, r, c) in enumerate(source.tolist()) if v >= 0}
    return views, cells, len(source)


def _crop(picture, crop: str):
    if crop != "center":
        return picture
    side = min(picture.size)
    left, top = (picture.width - side) // 2, (picture.height - side) // 2
    return picture.crop((left, top, left + side, top + side))


def _padded_canvas(picture, canvas_pixels):
    """The image resized to fit ``canvas_pixels`` (height, width), centred on a gray canvas, as
    LLaVA-NeXT's processor prepares it before cutting crops (the padding shows as gray)."""
    from PIL import Image

    height, width = (int(v) for v in canvas_pixels)
    ratio = min(width / picture.width, height / picture.height)
    size = (max(1, round(picture.width * ratio)), max(1, round(picture.height * ratio)))
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    canvas.paste(picture.resize(size, Image.Resampling.BICUBIC),
                 ((width - size[0]) // 2, (height - size[1]) // 2))
    # Drawn at the image's height, so that it sits well beside the base image's panel.
    return canvas.resize((max(1, round(width * picture.height / height)), picture.height),
                         Image.Resampling.BICUBIC)


def _draw_grid(view: _View, mask, ranks: dict, scale: float, dim: float):
    from PIL import Image, ImageDraw

    picture = view.picture
    width = max(view.cols, round(picture.width * scale))
    height = max(view.rows, round(picture.height * scale))
    base = np.asarray(picture.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)

    # Pixel edges of the cells; every pixel belongs to exactly one cell.
    xs = np.round(np.arange(view.cols + 1) * width / view.cols).astype(int)
    ys = np.round(np.arange(view.rows + 1) * height / view.rows).astype(int)
    col_of = np.repeat(np.arange(view.cols), np.diff(xs))
    row_of = np.repeat(np.arange(view.rows), np.diff(ys))
    pixel_kept = mask[row_of[:, None], col_of[None, :]]
    shaded = base * (1.0 - dim) + np.asarray(SHADE, dtype=np.float32) * dim
    out = np.where(pixel_kept[..., None], base, shaded)
    result = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))

    pen = ImageDraw.Draw(result)
    # Outline the kept region only where a kept cell borders a pruned one (or the edge), so the
    # kept patches themselves stay unobstructed.
    padded = np.pad(mask, 1)
    for r, c in zip(*np.nonzero(mask)):
        x0, x1, y0, y1 = xs[c], xs[c + 1] - 1, ys[r], ys[r + 1] - 1
        if not padded[r, c + 1]:
            pen.line([(x0, y0), (x1, y0)], fill=HIGHLIGHT)
        if not padded[r + 2, c + 1]:
            pen.line([(x0, y1), (x1, y1)], fill=HIGHLIGHT)
        if not padded[r + 1, c]:
            pen.line([(x0, y0), (x0, y1)], fill=HIGHLIGHT)
        if not padded[r + 1, c + 2]:
            pen.line([(x1, y0), (x1, y1)], fill=HIGHLIGHT)

    if ranks:
        _number_cells(pen, ranks, xs, ys)
    return result


def _number_cells(pen, ranks: dict, xs, ys) -> None:
    """Write each kept patch's selection rank in it, if the largest rank fits every cell."""
    cell_w, cell_h = int(np.diff(xs).min()), int(np.diff(ys).min())
    font = _font(max(6, int(cell_h * 0.6)))
    left, top, right, bottom = font.getbbox(str(max(ranks.values())))
    if right - left > cell_w - 2 or bottom - top > cell_h - 2 or cell_h < 9:
        return  # numbers would not fit: leave the picture unlabelled rather than illegible
    for (r, c), value in ranks.items():
        centre = ((xs[c] + xs[c + 1]) / 2, (ys[r] + ys[r + 1]) / 2)
        pen.text(centre, str(value), fill=(255, 255, 255), font=font, anchor="mm",
                 stroke_width=1, stroke_fill=(0, 0, 0))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _panels(grid: Grid) -> List[Panel]:
    if isinstance(grid, Panel):
        return [grid]
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        return [Panel(int(grid), int(grid))]
    if isinstance(grid, (tuple, list)) and len(grid) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in grid):
        rows, cols = cast(Tuple[int, int], grid)
        return [Panel(int(rows), int(cols))]
    if isinstance(grid, (tuple, list)) and grid and all(isinstance(p, Panel) for p in grid):
        return list(grid)
    raise TypeError("grid must be (rows, cols), a side length, a Panel or a list of Panels, "
                    f"got {grid!r}")


def _indices(values, argument: str, num_tokens: int, as_list: bool = False):
    items = _as_list(values)
    try:
        items = [operator.index(v) for v in items]
    except TypeError:
        raise TypeError(f"{argument} must hold integer token indices") from None
    bad = [v for v in items if not 0 <= v < num_tokens]
    if bad:
        raise ValueError(f"{argument} holds indices outside [0, {num_tokens}): {bad[:5]}")
    if len(set(items)) != len(items):
        raise ValueError(f"{argument} holds repeated indices")
    return items if as_list else set(items)


def _as_list(values) -> list:
    if hasattr(values, "tolist"):  # NumPy arrays and torch tensors
        values = values.tolist()
    values = list(values)
    if any(isinstance(v, list) for v in values):
        raise ValueError("expected one image's indices (1-D), got a nested sequence")
    return values


def _to_pil(image):
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or 0 in array.shape:
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype.kind == "f":
        array = np.round(np.clip(array, 0.0, 1.0) * 255)
    elif array.dtype.kind not in "ui":
        raise TypeError(f"image must hold numbers, got dtype {array.dtype}")
    return Image.fromarray(np.clip(array[..., :3], 0, 255).astype(np.uint8))


def _record_entry(record, image_index: int):
    """The per-image entry of a ``handle.last`` record (or the record itself if it is one)."""
    entries = _field(record, "images", required=False)
    if entries is not None:
        return entries[image_index]
    if isinstance(record, (list, tuple)):
        return record[image_index]
    return record


def _field(obj, key: str, required: bool = True):
    if isinstance(obj, dict) and key in obj:
        return obj[key]
    if not isinstance(obj, dict) and hasattr(obj, key):
        return getattr(obj, key)
    if required:
        raise KeyError(f"the record has no field {key!r}")
    return None
