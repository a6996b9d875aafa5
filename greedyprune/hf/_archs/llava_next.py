"""LLaVA-NeXT: the "anyres" layout on a CLIP tower (see docs/architectures.md, "LLaVA-NeXT")."""
from __future__ import annotations

from operator import attrgetter

from .anyres import anyres_units
from .base import ArchSpec, Media, clip_cls_probe, image_token_id, register
from .llava import LLAVA_INPUTS

register(ArchSpec(
    name="llava_next",
    top_classes=("LlavaNextForConditionalGeneration",),
    inner_classes=("LlavaNextModel",),
    media=(Media("image", image_token_id, anyres_units("LLaVA-NeXT")),),
    call_inputs=LLAVA_INPUTS,
    vision_tower=attrgetter("vision_tower"),
    projector=attrgetter("multi_modal_projector"),
    cls_probe=clip_cls_probe,
))
