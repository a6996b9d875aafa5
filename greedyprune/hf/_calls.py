"""Reading the arguments of the inner model's and the decoder's calls: where the placeholders
are, which mask and cache a call carries, which arguments hold one value per token."""
from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Dict, List, Optional, Sequence, TypeGuard

import torch


def cache_of(kwargs: Dict[str, Any]):
    """The cache a decoder call carries (``cache`` or ``past_key_values``), or None."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def is_2d_mask(mask: Any) -> TypeGuard[torch.Tensor]:
    return isinstance(mask, torch.Tensor) and mask.dim() == 2


def placeholder_masks(spec, module, input_ids, kwargs) -> Dict[str, torch.Tensor]:
    """Per media the call carries, the (B, L) mask of its placeholder tokens in the inner
    model's call: found in its ``input_ids``, else (as the model itself does) by embedding."""
    embeds = kwargs.get("inputs_embeds")
    encoded = kwargs.get("mm_encoder_outputs") or {}
    masks = {}
    for media in spec.media:
        if kwargs.get(media.pixel_key) is None and encoded.get(media.encoder_key) is None:
            continue
        token_id = media.token_id(module.config)
        if input_ids is not None:
            masks[media.name] = input_ids == token_id
        elif embeds is not None:
            # Through the embedding's forward: Gemma 3 scales its embeddings there.
            embed = module.get_input_embeddings()
            target = embed(torch.tensor(token_id, device=embed.weight.device)).to(embeds)
            masks[media.name] = (embeds == target).all(-1)
    return masks


def padding_mask(incoming, batch: int, length: int, device) -> torch.Tensor:
    """The (B, L) bool mask of valid tokens from the 2-D ``incoming`` mask (None: all valid)."""
    if incoming is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if not is_2d_mask(incoming):
        raise ValueError(
            "greedyprune.hf needs a 2-D attention_mask (batch, sequence) to prune; got "
            f"{type(incoming).__name__} of shape {tuple(getattr(incoming, 'shape', ()))}"
        )
    if incoming.shape != (batch, length):
        raise ValueError(f"attention_mask has shape {tuple(incoming.shape)}, expected "
                         f"{(batch, length)}")
    return incoming.to(device=device, dtype=torch.bool)


def per_token_kwargs(kwargs: Dict[str, Any], named: Sequence[str], batch: int,
                     length: int) -> List[str]:
    """Decoder arguments to gather along with the tokens: those ``named`` (the table's
    ``seq_kwargs``), and any other tensor whose last axis is the sequence (``(..., B or 1,
    L)``, such as ``mm_token_type_ids`` a user passes through to a decoder that ignores it): a
    per-token value can only stay meaningful next to the shorter sequence if it is gathered."""
    names = [name for name in named if kwargs.get(name) is not None]
    for name, value in kwargs.items():
        if (name not in names and name not in ("inputs_embeds", "position_ids", "attention_mask")
                and isinstance(value, torch.Tensor) and value.dim() >= 2
                and value.shape[-1] == length and value.shape[-2] in (1, batch)):
            names.append(name)
    return names


def packed_sequences(kwargs: Dict[str, Any], mask) -> Optional[torch.Tensor]:
    """(B, L) sequence ids when the decoder's rows are packed (several sequences per row), as
    transformers decides: no attention ``mask``, no cache, and text position ids that restart
    within a row; None otherwise."""
    positions = kwargs.get("position_ids")
    if (mask is not None or cache_of(kwargs) is not None
            or kwargs.get("use_cache") or not isinstance(positions, torch.Tensor)):
        return None
    if positions.dim() == 3:   # Qwen: [text, t, h, w] rows carry text positions, [t, h, w] none
        if positions.shape[0] != 4:
            return None
        positions = positions[0]
    positions = positions.expand(kwargs["inputs_embeds"].shape[0], -1)
    steps = torch.diff(positions, prepend=positions[:, :1] - 1, dim=-1)
    sequence = (steps != 1).cumsum(-1)
    return sequence if bool(sequence[:, -1].any()) else None


def caller(module) -> Optional[torch.nn.Module]:
    """The module whose forward is calling ``module`` (a ``self`` up the stack that holds it as
    a direct child), if any within a few frames."""
    frame: Optional[FrameType] = sys._getframe(1)
    for _ in range(16):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if (isinstance(owner, torch.nn.Module) and owner is not module
                and any(child is module for child in owner._modules.values())):
            return owner
        frame = frame.f_back
    return None
