"""Idefics3 and SmolVLM: sub-image crops plus a global image, each its own run of placeholders
after text markers (see docs/architectures.md, "Idefics3 / SmolVLM")."""
from __future__ import annotations

from dataclasses import replace
from operator import attrgetter
from typing import List, Tuple

import numpy as np

from .._records import PatchGrid
from .base import (ArchSpec, Media, UnitLayout, UnitsContext, cell_grid, cell_source,
                   even_counts, image_token_id, register)


def idefics3_units(ctx: UnitsContext) -> List[UnitLayout]:
    """One unit per image: its sub-images and its global image, grouped by the ``<global-img>``
    marker that precedes every row's last crop (read from ``input_ids``); every placeholder is a
    candidate. A prompt that does not follow that layout gets one unit per crop."""
    config = ctx.inner.config
    vision = config.vision_config
    side = int(vision.image_size) // int(vision.patch_size) // int(config.scale_factor)
    per_crop = side * side
    counts = even_counts(ctx, per_crop, "image")
    images = _idefics3_images(ctx.inputs.get("input_ids"), int(config.image_token_id), per_crop)
    if images is None or sum(len(starts) for starts in images) != len(counts):
        return [UnitLayout(n, grid=cell_grid(side, n)) for n in counts]
    return [_idefics3_layout(starts, side, int(vision.image_size)) for starts in images]


def _idefics3_images(input_ids, image_token_id: int, per_crop: int):
    """Each image's crop start positions (row-major over the batch), or None when the prompt
    does not follow the processor's layout."""
    if input_ids is None:
        return None
    ids = input_ids.cpu().numpy()
    runs: List[List[Tuple[int, int]]] = []   # per row: [(start, marker id)]
    for row in ids:
        positions = np.flatnonzero(row == image_token_id)
        if not len(positions):
            runs.append([])
            continue
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        starts = positions[np.r_[0, breaks]]
        stops = positions[np.r_[breaks - 1, len(positions) - 1]] + 1
        if np.any(stops - starts != per_crop) or starts[0] == 0:
            return None
        runs.append([(int(s), int(row[s - 1])) for s in starts])
    # Every row's last crop is a global image: its marker is <global-img>, which closes an image.
    closers = {row_runs[-1][1] for row_runs in runs if row_runs}
    if len(closers) != 1:
        return None
    (global_marker,) = closers
    images = []
    for row_runs in runs:
        current = []
        for start, marker in row_runs:
            current.append(start)
            if marker == global_marker:
                images.append(current)
                current = []
    return images


def _idefics3_layout(starts, side: int, image_size: int) -> UnitLayout:
    """One image of ``len(starts)`` crops (sub-images, then the global image); view 0 is the
    global image, view 1 the ``R × C`` sub-images."""
    per_crop = side * side
    n = per_crop * len(starts)
    cell = np.arange(per_crop)
    global_source = cell_source(side, cell)
    sub = len(starts) - 1
    if sub == 0:
        return UnitLayout(n, grid=PatchGrid(patch_side=side, token_source=global_source))
    # Text between consecutive sub-images: the two markers within a row of crops, a newline
    # and the markers from one row to the next.
    gaps = np.diff(starts[:sub]) - per_crop
    new_row = np.r_[False, gaps > 2]
    rows = int(new_row.sum()) + 1
    cols = sub // rows
    if rows * cols != sub or np.any(np.bincount(np.cumsum(new_row)) != cols):
        return UnitLayout(n)   # not a rectangular grid of crops: no patch map
    sub_sources = [cell_source(side, cell, view=1) + [0, i * side, j * side]
                   for i, j in (divmod(k, cols) for k in range(sub))]
    return UnitLayout(n, grid=PatchGrid(
        patch_side=side, token_source=np.concatenate(sub_sources + [global_source]),
        crop_grid=(rows, cols), canvas_pixels=(rows * image_size, cols * image_size)))


IDEFICS3 = register(ArchSpec(
    name="idefics3",
    top_classes=("Idefics3ForConditionalGeneration",),
    inner_classes=("Idefics3Model",),
    media=(Media("image", image_token_id, idefics3_units),),
    decoder=attrgetter("text_model"),
    call_inputs=("input_ids", "pixel_values", "mm_encoder_outputs"),
    vision_tower=attrgetter("vision_model"),
))

# SmolVLM is a copy of Idefics3 under other class names (not subclasses) in transformers 5.x.
register(replace(IDEFICS3, name="smolvlm",
                 top_classes=("SmolVLMForConditionalGeneration",),
                 inner_classes=("SmolVLMModel",)))
