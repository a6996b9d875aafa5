"""Our own copies of the small transformers internals the hooks and the drawings rely on.

transformers may rename, move or drop a module-level helper in any release; these few lines each
are cheaper to own than to chase. tests/test_hf_compat.py checks each against transformers' own,
on many inputs, for as long as transformers still has it.
"""
from __future__ import annotations

from typing import Sequence, Tuple


def get_block_sequence_ids_for_mask(token_type_ids, device=None):
    """Gemma 3: for each token of a (B, L) ``token_type_ids`` tensor, the index of the image it
    belongs to in its row (0, 1, ... for each run of image tokens, type 1), -1 for every other
    token; int64, on ``device`` (as ``transformers.models.gemma3.modeling_gemma3``'s function of
    that name)."""
    import torch

    is_image = (token_type_ids == 1).to(device=device)
    starts = is_image.clone()
    starts[:, 1:] &= ~is_image[:, :-1]  # an image token after a non-image token starts a block
    block = torch.cumsum(starts.to(torch.int64), dim=1) - 1
    return torch.where(is_image, block, torch.full_like(block, -1))


def unpadded_size(height: int, width: int, original_size: Sequence[int]) -> Tuple[int, int]:
    """LLaVA-NeXT: the (rows, columns) left of a ``height`` × ``width`` feature canvas once the
    letterbox padding of an image of ``original_size`` (height, width) is removed, equally from
    both sides of one axis (the shape of ``modeling_llava_next.unpad_image``'s result)."""
    original_height, original_width = (int(v) for v in original_size)
    if original_width / original_height > width / height:
        new_height = int(round(original_height * (width / original_width), 7))
        padding = (height - new_height) // 2
        return len(range(height)[padding:height - padding]), width
    new_width = int(round(original_width * (height / original_height), 7))
    padding = (width - new_width) // 2
    return height, len(range(width)[padding:width - padding])


def anyres_grid_shape(image_size: Sequence[int], grid_pinpoints, tile: int) -> Tuple[int, int]:
    """LLaVA-NeXT: (rows, columns) of ``tile``-pixel crops an image of ``image_size`` (height,
    width) is cut into: the resolution of ``grid_pinpoints`` (a list of (height, width)) that keeps
    the most of the image at the least waste (as ``get_anyres_image_grid_shape``)."""
    original_height, original_width = (int(v) for v in image_size)
    best, best_effective, best_wasted = (0, 0), 0, float("inf")
    for height, width in grid_pinpoints:
        scale = min(width / original_width, height / original_height)
        effective = min(int(original_width * scale) * int(original_height * scale),
                        original_width * original_height)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (height, width), effective, wasted
    return best[0] // tile, best[1] // tile
