"""The "anyres" image layout of LLaVA-NeXT and LLaVA-OneVision, read from the data.

An image is a base crop (the whole image at the tower's resolution, no newline) followed by a
grid of high-resolution crops that the model stitches into one canvas, unpads (drops the rows
or columns that were letterbox padding, equally on both sides) and ends row by row with the
``image_newline`` token; an image the model does not split is one crop and one newline.

``generate()`` encodes the images before the prefill and drops ``image_sizes`` from the model's
inputs, so the layout is read from the features: newlines are exact copies of
``image_newline`` (structural: one is kept exactly when a token of its row is), and among the
crop grids of ``image_grid_pinpoints`` that unpad to the canvas's shape, the layout is the one
whose projector outputs, read at the implied crop and patch, reproduce the image's tokens
exactly (:class:`VisionRecord` fingerprints). Unconfirmed, an image keeps the newline rule but
has no patch map (nor, its crop count being unknown, do the later images of the call). See
docs/architectures.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .._records import PatchGrid
from .base import (UnitLayout, UnitsContext, UnitsFn, VisionRecord, cell_source,
                   encoded_images, feature_strategy, has_cls_token, tolist)


def anyres_units(family: str) -> UnitsFn:
    """The ``units`` function of an anyres model's images; ``family`` names it in messages."""
    def units(ctx: UnitsContext) -> List[UnitLayout]:
        images = encoded_images(ctx)
        if images is None:
            raise ValueError(f"{family}: could not see this call's image features (pass "
                             "pixel_values and image_sizes, or mm_encoder_outputs from the model)")
        crops = _Crops.of(ctx.inner, ctx.inputs)
        sizes = ctx.inputs.get("image_sizes")
        sizes = None if sizes is None else [tuple(int(v) for v in s) for s in tolist(sizes)]
        check = _FingerprintCheck(ctx.vision, crops.first_patch)
        layouts, crop = [], 0
        for index, tokens in enumerate(images):
            size = sizes[index] if sizes is not None and index < len(sizes) else None
            layout, used = _image_layout(tokens, ctx.inner.image_newline, crops, crop, check, size)
            layouts.append(layout)
            crop += used
        return layouts

    return units


@dataclass(frozen=True)
class _Crops:
    """The vision tower's crops as the projector emits them."""

    side: int          # patches per side of a crop
    pixels: int        # pixels per side of a crop
    per_crop: int      # tokens per crop, after the feature strategy
    first_patch: int   # patch index of a crop's first token (-1: the [CLS] token)
    has_cls: bool      # the tower's sequence starts with [CLS]
    grids: Tuple[Tuple[int, int], ...]  # the crop grids of image_grid_pinpoints, smallest first

    @classmethod
    def of(cls, inner, inputs) -> "_Crops":
        config = inner.config
        vision = config.vision_config
        pixels = int(vision.image_size)
        side = pixels // int(vision.patch_size)
        has_cls = has_cls_token(inner.vision_tower)
        # "default" drops the tower's first token: [CLS] on CLIP, the first patch on SigLIP.
        dropped = int(feature_strategy(inner, inputs) == "default")
        grids = sorted({(h // pixels, w // pixels) for h, w in config.image_grid_pinpoints},
                       key=lambda g: (g[0] * g[1], g))
        return cls(side, pixels, side * side + has_cls - dropped, dropped - has_cls, has_cls,
                   tuple(grids))


@dataclass(frozen=True)
class _Placement:
    """Where an image's non-newline tokens came from, in sequence order."""

    crop: np.ndarray    # the tower crop (counted over the call)
    cell: np.ndarray    # the patch in that crop (-1: the [CLS] token)
    source: np.ndarray  # (view, row, col) on the image; -1 where not a patch


def _image_layout(tokens, newline_vector, crops: _Crops, first_crop: int, check, size):
    """One image's UnitLayout and the number of tower crops it used (0 when unknown)."""
    n = int(tokens.shape[0])
    newline = (tokens == newline_vector.to(tokens)).all(-1).cpu().numpy()
    group = (np.cumsum(newline) - newline).astype(np.int64)  # a newline closes its row
    if n == crops.per_crop + 1 and newline[-1] and newline.sum() == 1:
        placed = _place(crops, first_crop)   # one crop and its newline
        assert placed is not None, "without a crop grid there is nothing to unpad"
        if check.confirms(tokens, newline, placed, required=False):
            return _layout(newline, group, placed, crops, None, size), 1
    else:
        group = np.where(np.arange(n) < crops.per_crop, -1, group)  # the base has no newline
        rows = int(newline.sum())
        width = (n - crops.per_crop) // max(rows, 1) - 1   # canvas tokens per row
        if rows and width > 0 and crops.per_crop + rows * (width + 1) == n:
            for shape in crops.grids:
                placed = _place(crops, first_crop, shape, rows, width)
                if placed is not None and check.confirms(tokens, newline, placed):
                    return (_layout(newline, group, placed, crops, shape, size),
                            1 + shape[0] * shape[1])
    # Unconfirmed: keep the newline rule, lose the patch map (and, since this image's crop
    # count is unknown, the later images' too).
    check.disable()
    return UnitLayout(n, structural=newline, group=group), 0


def _place(crops: _Crops, first_crop: int, shape=None, rows: int = 0,
           width: int = 0) -> Optional[_Placement]:
    """The base crop's tokens, then (given a crop grid ``shape``) those of an unpadded ``rows`` ×
    ``width`` canvas cut from it; None when that grid cannot unpad to that shape."""
    side = crops.side
    cell = np.arange(crops.per_crop) + crops.first_patch
    crop = np.full(crops.per_crop, first_crop)
    source = cell_source(side, cell)
    if shape is None:
        return _Placement(crop, cell, source)
    offset = _unpad_offset(shape, rows, width, side)
    if offset is None:
        return None
    r, c = np.divmod(np.arange(rows * width), width)
    r, c = r + offset[0], c + offset[1]
    return _Placement(
        crop=np.r_[crop, first_crop + 1 + (r // side) * shape[1] + c // side],
        cell=np.r_[cell, (r % side) * side + c % side],
        source=np.concatenate([source, np.stack([np.ones_like(r), r, c], axis=1)]))


def _unpad_offset(grid, rows, width, side):
    """Where an unpadded ``rows`` × ``width`` token canvas sits in a ``grid`` of crops of
    ``side`` × ``side`` tokens: ``(top, left)``, the padding having been removed evenly from
    one axis; None when that grid cannot unpad to it."""
    height, full_width = grid[0] * side, grid[1] * side
    if rows == height and width <= full_width and (full_width - width) % 2 == 0:
        return 0, (full_width - width) // 2
    if width == full_width and rows <= height and (height - rows) % 2 == 0:
        return (height - rows) // 2, 0
    return None


def _layout(newline, group, placed: _Placement, crops: _Crops, shape, size) -> UnitLayout:
    """The UnitLayout (vision index and patch grid) of an image placed as ``placed``."""
    n = len(newline)
    tokens = np.flatnonzero(~newline)
    tower_tokens = crops.side * crops.side + crops.has_cls
    vision_index = np.full(n, -1, dtype=np.int64)
    vision_index[tokens] = placed.crop * tower_tokens + placed.cell + crops.has_cls
    source = np.full((n, 3), -1, dtype=np.int64)
    source[tokens] = placed.source
    return UnitLayout(
        n, structural=newline, group=group, vision_index=vision_index,
        grid=PatchGrid(
            patch_side=crops.side, token_source=source,
            crop_grid=None if shape is None else (int(shape[0]), int(shape[1])),
            canvas_pixels=None if shape is None else (shape[0] * crops.pixels,
                                                      shape[1] * crops.pixels),
            image_size=size,
        ),
    )


class _FingerprintCheck:
    """Compares tokens with the projector outputs recorded for this call's vision run."""

    def __init__(self, vision: Optional[VisionRecord], first_patch: int):
        self.fingerprint = None if vision is None else vision.fingerprint  # (crops, tokens, k)
        self.dims = None if vision is None else vision.fingerprint_dims
        self.first_patch = first_patch

    def disable(self) -> None:
        self.fingerprint = None

    def confirms(self, tokens, newline, placed: _Placement, required: bool = True) -> bool:
        import torch

        if self.fingerprint is None:
            return not required
        crops = torch.from_numpy(placed.crop)
        index = torch.from_numpy(placed.cell - self.first_patch)  # place in the crop's output
        if int(crops.max()) >= self.fingerprint.shape[0]:
            return False
        expected = self.fingerprint[crops, index]
        observed = tokens[torch.from_numpy(~newline).to(tokens.device)][:, self.dims].cpu()
        return expected.shape == observed.shape and bool((expected.to(observed) == observed).all())
