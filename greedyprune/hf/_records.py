"""What a pruned prefill did, as plain data: the records behind ``handle.last``.

Nothing here imports torch: the records hold NumPy arrays and Python numbers, so a visualizer
or an evaluation script can keep, pickle and inspect them without the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class PatchGrid:
    """Where each placeholder token of one image comes from on the image.

    ``token_source`` has one row ``(view, row, col)`` per placeholder token of the image, in
    sequence order, in patch units:

    - view 0 is the whole image resized to one vision-tower input of ``patch_side`` ×
      ``patch_side`` patches (plain LLaVA; the base image of LLaVA-NeXT);
    - view 1 is LLaVA-NeXT's high-resolution canvas: ``crop_grid = (rows, cols)`` crops of
      ``patch_side`` patches each, so ``rows·patch_side`` × ``cols·patch_side`` patches over the
      best-fit resolution ``canvas_pixels = (height, width)``, into which the image (of
      ``image_size = (height, width)`` pixels) was resized and centred before the padding rows
      or columns were dropped again ("unpadded");
    - ``(-1, -1, -1)`` marks a token that is not an image patch: a LLaVA-NeXT row-separator
      (newline) token, or the vision tower's [CLS] token when the model keeps it
      (``vision_feature_select_strategy="full"``).

    Qwen2-VL, Qwen2.5-VL and Qwen3-VL: one token per ``m × m`` block of patches (the spatial
    merge), so ``row`` and ``col`` count merged tokens over the whole resized image (no crop);
    ``view`` is 0 for an image and the temporal index (pair of frames) for a video;
    ``patch_side`` is the tower's patch size in pixels (14, or 16 on Qwen3-VL).

    Gemma 3: view 0 only, a ``patch_side × patch_side`` raster of pooled tokens (4 × 4 patches
    each at 896 px) over the whole image, which Gemma 3's processor resizes without cropping.
    LLaVA-OneVision: as LLaVA-NeXT (its SigLIP tower has no [CLS]; its processor resizes rather
    than centre-crops the base image). Idefics3 / SmolVLM: ``patch_side`` cells per side of one
    crop (each cell is ``scale_factor × scale_factor`` patches after the pixel shuffle); view 0
    is the global image (the whole image resized to one crop), view 1 the ``crop_grid`` of
    sub-images over ``canvas_pixels``, the image resized to that size (no padding to drop).
    """

    patch_side: int
    token_source: np.ndarray
    crop_grid: Optional[Tuple[int, int]] = None
    canvas_pixels: Optional[Tuple[int, int]] = None
    image_size: Optional[Tuple[int, int]] = None
    #: True when view 0 covers the centred square of the image, which CLIP-style processors crop
    #: (plain LLaVA with a CLIP tower); False when the whole image was resized into it.
    center_crop: bool = False

    def __repr__(self) -> str:
        extra = ""
        if self.crop_grid is not None:
            extra = (f", crop_grid={self.crop_grid}, canvas_pixels={self.canvas_pixels}, "
                     f"image_size={self.image_size}")
        return (f"PatchGrid(patch_side={self.patch_side}, tokens={len(self.token_source)}"
                f"{extra})")


@dataclass(frozen=True)
class ImageRecord:
    """One image (or, for architectures with video, one video) of the last pruned prefill.

    ``tokens_before`` counts the image's prunable tokens and ``tokens_after`` how many of them
    were kept (``min(budget, tokens_before)``). Tokens that are never candidates (LLaVA-NeXT's
    row-separator tokens) are not counted there: ``n_tokens`` is the full placeholder run and
    ``kept`` lists every placeholder token that survived, separators included.
    """

    #: Batch row of the request that holds the image.
    row: int
    #: Index of the image in the request, in the order the model consumed its features
    #: (row-major over the batch: the order of ``pixel_values``).
    index: int
    #: Index of the image among its row's images (of the same modality).
    index_in_row: int
    #: "image" (architectures with video add "video").
    modality: str
    #: Placeholder tokens of the image in the unpruned sequence.
    n_tokens: int
    tokens_before: int
    tokens_after: int
    #: Kept placeholder tokens, as indices into the image's own run of ``n_tokens`` (sorted).
    kept: np.ndarray
    #: The same tokens' positions (sequence indices) in the row of the unpruned input.
    kept_positions: np.ndarray
    #: Wall time of the selector call that chose this image's tokens, divided among the images
    #: that call served (images of equal size are selected in one batched call).
    select_seconds: float
    #: Patch layout for mapping ``kept`` back onto the image; None when unknown.
    grid: Optional[PatchGrid] = None
    #: The selected tokens (indices as in ``kept``, structural tokens excluded) in the order the
    #: selector picked them, for selectors with an order (the greedy rule); None otherwise, or
    #: when the image kept every token.
    order: Optional[np.ndarray] = None
    #: The batch row this row is a copy of (identical inputs: beam search repeats each input
    #: ``num_beams`` times, so its beams after the first point to the first), or None.
    #: ``[r for r in handle.last if r.copy_of is None]`` holds one record per distinct input.
    copy_of: Optional[int] = None

    def __repr__(self) -> str:
        return (f"ImageRecord(row={self.row}, index={self.index}, modality={self.modality!r}, "
                f"tokens {self.tokens_before} -> {self.tokens_after}, n_tokens={self.n_tokens}, "
                f"select={self.select_seconds * 1e3:.2f} ms)")


@dataclass(frozen=True)
class PrefillRecord:
    """The whole last pruned prefill: per-image records plus sequence-level bookkeeping."""

    images: Tuple[ImageRecord, ...]
    #: Sequence length of the batch before and after pruning (after re-left-padding).
    seq_len_before: int
    seq_len_after: int
    #: Per row: for each position of the pruned sequence, the position it came from in the
    #: unpruned row, or -1 for a padding slot. Shape (batch, seq_len_after).
    source_positions: np.ndarray
    #: Seconds spent by the hook itself, by stage: "saliency", "select" and "gather" (building
    #: the shorter inputs), plus "cls" (the [CLS]-attention probe in the vision tower) when used.
    seconds: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        before = sum(image.tokens_before for image in self.images)
        after = sum(image.tokens_after for image in self.images)
        return (f"PrefillRecord(images={len(self.images)}, visual tokens {before} -> {after}, "
                f"sequence {self.seq_len_before} -> {self.seq_len_after}, "
                f"hook={self.hook_seconds * 1e3:.2f} ms)")

    @property
    def hook_seconds(self) -> float:
        """Total time of the hook's own work (everything but the model's own layers)."""
        return float(sum(self.seconds.values()))
