"""LLaVA: one CLIP crop per image, one token per patch (see docs/architectures.md, "LLaVA")."""
from __future__ import annotations

from operator import attrgetter
from typing import List

import numpy as np

from .._records import PatchGrid
from .base import (ArchSpec, Media, UnitLayout, UnitsContext, cell_source, clip_cls_probe,
                   encoded_images, feature_strategy, image_token_id, register)

#: The inner forward's arguments the LLaVA family's units read.
LLAVA_INPUTS = ("pixel_values", "image_sizes", "mm_encoder_outputs", "vision_feature_layer",
                "vision_feature_select_strategy")


def llava_units(ctx: UnitsContext) -> List[UnitLayout]:
    """One unit per image: a ``side × side`` raster of patch tokens (plus [CLS] first under
    ``vision_feature_select_strategy="full"``); a token count that is no square CLIP grid (a
    native-resolution tower) gets no patch map."""
    inner = ctx.inner
    vision = inner.config.vision_config
    full = feature_strategy(inner, ctx.inputs) == "full"
    images = encoded_images(ctx)
    if images is not None:
        counts = [int(t.shape[0]) for t in images]
    else:
        pixel_values = ctx.inputs.get("pixel_values")
        n_images = 0 if pixel_values is None else int(pixel_values.shape[0])
        if n_images == 0 or ctx.total % n_images:
            raise ValueError(f"{ctx.total} image placeholder tokens cannot be split evenly "
                             f"among {n_images} images")
        counts = [ctx.total // n_images] * n_images
    side = int(getattr(vision, "image_size", 0)) // int(getattr(vision, "patch_size", 0) or 1)
    per_crop = side * side + 1  # a CLIP tower's sequence: [CLS], then the patches
    # CLIP's image processor resizes the shorter side and crops the centre square.
    center_crop = getattr(vision, "model_type", "") == "clip_vision_model"
    units = []
    for i, n in enumerate(counts):
        if n != side * side + full:
            units.append(UnitLayout(n))
            continue
        columns = np.arange(per_crop - n, per_crop)
        units.append(UnitLayout(n, vision_index=i * per_crop + columns,
                                grid=PatchGrid(patch_side=side,
                                               token_source=cell_source(side, columns - 1),
                                               center_crop=center_crop)))
    return units


register(ArchSpec(
    name="llava",
    top_classes=("LlavaForConditionalGeneration",),
    inner_classes=("LlavaModel",),
    media=(Media("image", image_token_id, llava_units),),
    call_inputs=LLAVA_INPUTS,
    vision_tower=attrgetter("vision_tower"),
    cls_probe=clip_cls_probe,
))
