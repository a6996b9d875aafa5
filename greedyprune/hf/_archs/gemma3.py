"""Gemma 3: one pooled SigLIP raster per image, and a decoder that takes prepared 4-D masks
(see docs/architectures.md, "Gemma 3")."""
from __future__ import annotations

from operator import attrgetter
from typing import List

from .._compat import get_block_sequence_ids_for_mask
from .base import (ArchSpec, Media, UnitLayout, UnitsContext, cell_grid, even_counts,
                   image_token_id, register)


def gemma3_units(ctx: UnitsContext) -> List[UnitLayout]:
    """One unit per image: an ``s × s`` raster of pooled patch tokens, all candidates. ``s`` is
    what the projector emits: its ``patches_per_image`` pooled by its ``kernel_size``
    (``config.mm_tokens_per_image`` is only the target)."""
    projector = ctx.inner.multi_modal_projector
    side = int(projector.patches_per_image) // int(projector.kernel_size)
    return [UnitLayout(n, grid=cell_grid(side, n))
            for n in even_counts(ctx, side * side, "image")]


def gemma3_decoder_mask(inner, mask, kwargs, per_token):
    """The dict of 4-D masks ({"full_attention", "sliding_attention"}) Gemma 3's decoder takes,
    built the way the model builds it, from the pruned 2-D ``mask`` and the ``token_type_ids``
    gathered with the kept tokens (at a decode step: the causal mask)."""
    from transformers.masking_utils import create_masks_for_generate
    from transformers.models.gemma3 import modeling_gemma3

    from .._calls import cache_of

    embeds = kwargs["inputs_embeds"]
    mask_kwargs = dict(config=inner.config.get_text_config(), inputs_embeds=embeds,
                       attention_mask=mask, cache=cache_of(kwargs),
                       position_ids=kwargs.get("position_ids"))
    types = per_token.get("token_type_ids")
    if types is None:
        return create_masks_for_generate(**mask_kwargs)
    blocks = get_block_sequence_ids_for_mask(types, device=embeds.device)
    return modeling_gemma3.create_masks_for_vision_model(block_sequence_ids=blocks, **mask_kwargs)


register(ArchSpec(
    name="gemma3",
    top_classes=("Gemma3ForConditionalGeneration",),
    inner_classes=("Gemma3Model",),
    media=(Media("image", image_token_id, gemma3_units),),
    call_inputs=("pixel_values", "mm_encoder_outputs"),
    vision_tower=attrgetter("vision_tower"),
    decoder_mask=gemma3_decoder_mask,
    mask_inputs=("token_type_ids",),
))
