"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: merged patch grids for images and videos, M-RoPE
positions, Qwen3-VL's DeepStack features (see docs/architectures.md, "Qwen2-VL, Qwen2.5-VL,
Qwen3-VL")."""
from __future__ import annotations

from operator import attrgetter
from typing import List

import numpy as np

from .._records import PatchGrid
from .base import (ArchSpec, Media, UnitLayout, UnitsContext, UnitsFn, encoded_images,
                   image_token_id, register, tolist, video_token_id)


def qwen_units(kind: str) -> UnitsFn:
    """The ``units`` function of Qwen's images (``kind="image"``) or videos (``"video"``): one
    unit per image or video, ``t·h·w / m²`` tokens in raster order over the merged ``(t, h/m,
    w/m)`` grid, none structural. The grids come from the vision run's ``grid_thw``, else from
    the call's ``{kind}_grid_thw``; without one that matches the features, no patch map."""
    def units(ctx: UnitsContext) -> List[UnitLayout]:
        vision = ctx.inner.config.vision_config
        merge = int(vision.spatial_merge_size)
        grids = ctx.vision.tower_kwargs.get("grid_thw") if ctx.vision is not None else None
        if grids is None:
            grids = ctx.inputs.get(f"{kind}_grid_thw")
        grids = None if grids is None else [tuple(int(v) for v in g) for g in tolist(grids)]
        features = encoded_images(ctx)
        if features is not None:
            counts = [int(t.shape[0]) for t in features]
        elif grids is not None:
            counts = [t * h * w // (merge * merge) for t, h, w in grids]
        else:
            raise ValueError(f"Qwen-VL: could not see this call's {kind} features or "
                             f"{kind}_grid_thw; pass them to the model")
        if grids is not None and [t * h * w // (merge * merge) for t, h, w in grids] != counts:
            grids = None  # not this call's grids: leave the patch map out rather than guess
        layouts = []
        for i, n in enumerate(counts):
            grid = None
            if grids is not None:
                t, h, w = grids[i]
                grid = PatchGrid(patch_side=int(vision.patch_size),
                                 token_source=_qwen_token_source(t, h // merge, w // merge))
            layouts.append(UnitLayout(n, grid=grid))
        return layouts

    return units


def _qwen_token_source(t: int, rows: int, cols: int) -> np.ndarray:
    """(view, row, col) of each token of a ``t × rows × cols`` merged grid, raster order; the
    view is the temporal index (0 for an image)."""
    view, row, col = np.meshgrid(np.arange(t), np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([view.ravel(), row.ravel(), col.ravel()], axis=1).astype(np.int64)


def qwen_decode_position_ids(inner, inputs, position_ids, shift: int):
    """A decode step that passed the inner model neither position ids nor an attention mask
    (a hand-written decoding loop) is numbered there from the cache length plus the
    ``rope_deltas`` it cached at the prefill; the pruned cache is ``shift`` tokens shorter than
    the unpruned one, so move those positions (every M-RoPE axis) by ``shift``. With position
    ids (``generate()`` passes them) or a mask of the unpruned length, the model's numbering
    already is the unpruned one."""
    if (position_ids is None or inputs.get("position_ids") is not None
            or inputs.get("attention_mask") is not None):
        return position_ids
    return position_ids + shift


def qwen3_prune_deepstack(kwargs, new, keep) -> None:
    """Keep the rows of ``deepstack_visual_embeds`` (a list of (visual tokens, D) tensors in
    row-major order of ``visual_pos_masks``) that belong to kept visual tokens
    (``visual_pos_masks`` itself is gathered as a per-token argument)."""
    embeds, visual = kwargs.get("deepstack_visual_embeds"), kwargs.get("visual_pos_masks")
    if embeds is None or visual is None:
        return
    kept = keep.to(visual.device)[visual.bool()]
    new["deepstack_visual_embeds"] = [e[kept.to(e.device)] for e in embeds]


_QWEN_MEDIA = (
    Media("image", image_token_id, qwen_units("image")),
    Media("video", video_token_id, qwen_units("video"), pixel_key="pixel_values_videos",
          encoder_key="video"),
)
_QWEN_INPUTS = ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw",
                "mm_encoder_outputs", "position_ids", "attention_mask")

for _name, _top, _inner in (
        ("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLModel"),
        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"),
        ("qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLModel")):
    register(ArchSpec(
        name=_name,
        top_classes=(_top,),
        inner_classes=(_inner,),
        media=_QWEN_MEDIA,
        call_inputs=_QWEN_INPUTS,
        # The whole tower, not its merger: Qwen2.5-VL restores the token order after it.
        vision_tower=attrgetter("visual"),
        seq_kwargs=("visual_pos_masks",) if _name == "qwen3_vl" else (),
        prune_kwargs=qwen3_prune_deepstack if _name == "qwen3_vl" else None,
        decode_position_ids=qwen_decode_position_ids,
    ))
del _name, _top, _inner
