"""LLaVA-OneVision: anyres images and pooled videos on a SigLIP tower, which has no [CLS]
token, so ``saliency="cls"`` is refused (see docs/architectures.md, "LLaVA-OneVision")."""
from __future__ import annotations

from operator import attrgetter
from typing import List

import numpy as np

from .anyres import anyres_units
from .base import (ArchSpec, Media, UnitLayout, UnitsContext, even_counts, image_token_id,
                   register, video_token_id)
from .llava import LLAVA_INPUTS


def onevision_video_units(ctx: UnitsContext) -> List[UnitLayout]:
    """One unit per video: every frame's patches pooled 2× per side, frame after frame, then one
    structural ``image_newline`` for the whole video (so every video keeps at least one token)."""
    import torch

    features = getattr(ctx.encoder_output, "pooler_output", None)
    if isinstance(features, torch.Tensor):
        counts = [int(features.shape[1])] * int(features.shape[0])
    else:
        videos = ctx.inputs.get("pixel_values_videos")
        count = 0 if videos is None else int(videos.shape[0])
        counts = even_counts(ctx, ctx.total // count if count else 0, "video")
    units = []
    for n in counts:
        structural = np.zeros(n, dtype=bool)
        structural[-1] = True
        units.append(UnitLayout(n, structural=structural, group=np.zeros(n, dtype=np.int64)))
    return units


register(ArchSpec(
    name="llava_onevision",
    top_classes=("LlavaOnevisionForConditionalGeneration",),
    inner_classes=("LlavaOnevisionModel",),
    media=(Media("image", image_token_id, anyres_units("LLaVA-OneVision")),
           Media("video", video_token_id, onevision_video_units,
                 pixel_key="pixel_values_videos", encoder_key="video")),
    call_inputs=LLAVA_INPUTS + ("pixel_values_videos",),
    vision_tower=attrgetter("vision_tower"),
    projector=attrgetter("multi_modal_projector"),
))
