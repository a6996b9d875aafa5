"""Tiny random-weight vision-language models and batches for the greedyprune.hf tests.

One builder per architecture in :data:`BUILDERS` (a new architecture adds one): each returns a
:class:`Tiny` with the model (fp32, eval mode, random weights from a fixed seed, built from a
config: nothing is downloaded) and a ``images(n, rng)`` function making the visual inputs for
``n`` images. :func:`make_batch` then writes prompts around them: a prompt is a list of
segments, an int for that many random text tokens and ``"img"`` for one image, e.g.
``[[3, "img", 2], [1, "img", 2, "img", 1]]`` for two rows holding one and two images. It returns
the left-padded batch and each row's own unpadded inputs (for per-sample comparisons).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch

VOCAB = 99
PAD_ID = 0
IMAGE_ID = 98

TEXT_CONFIG = dict(
    model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=37,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=512, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2,
)
# Three layers so that feature layer -2 is neither the first nor the last.
CLIP_CONFIG = dict(
    model_type="clip_vision_model", image_size=16, patch_size=4, hidden_size=32,
    intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, projection_dim=32,
)


@dataclass
class Tiny:
    model: torch.nn.Module
    #: ``images(n, rng) -> {"pixel_values": ..., maybe "image_sizes": ...}`` for n images.
    images: Callable[[int, torch.Generator], Dict[str, torch.Tensor]]


def _finish(model, attn: str):
    model.set_attn_implementation(attn)
    return model.eval()


def build_llava(attn: str = "sdpa", seed: int = 0) -> Tiny:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(text_config=TEXT_CONFIG, vision_config=CLIP_CONFIG,
                         image_token_index=IMAGE_ID, vision_feature_layer=-2)
    torch.manual_seed(seed)
    model = _finish(LlavaForConditionalGeneration(config), attn)

    def images(n, rng):
        return {"pixel_values": torch.randn(n, 3, 16, 16, generator=rng)}

    return Tiny(model, images)


#: Image sizes (height, width) for LLaVA-NeXT, chosen to hit a 1×2, a 2×1 and a 2×2 crop grid
#: and unpadding on either axis.
NEXT_SIZES = [(10, 30), (30, 12), (30, 20), (32, 32), (7, 16)]


def build_llava_next(attn: str = "sdpa", seed: int = 0) -> Tiny:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(text_config=TEXT_CONFIG, vision_config=CLIP_CONFIG,
                             image_token_index=IMAGE_ID, vision_feature_layer=-2,
                             image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]])
    torch.manual_seed(seed)
    model = _finish(LlavaNextForConditionalGeneration(config), attn)

    def images(n, rng):
        pick = torch.randint(len(NEXT_SIZES), (n,), generator=rng).tolist()
        # 5 = the base image plus at most 2×2 crops; unused crops stay zero, as the processor
        # pads them.
        return {"pixel_values": torch.randn(n, 5, 3, 16, 16, generator=rng),
                "image_sizes": torch.tensor([NEXT_SIZES[i] for i in pick])}

    return Tiny(model, images)


BUILDERS: Dict[str, Callable[..., Tiny]] = {
    "llava": build_llava,
    "llava_next": build_llava_next,
}


def image_token_counts(tiny: Tiny, visual: Dict[str, torch.Tensor]) -> List[int]:
    """Placeholder tokens per image, as the model itself computes them."""
    with torch.no_grad():
        out = tiny.model.model.get_image_features(**visual, return_dict=True)
    return [int(t.shape[0]) for t in out.pooler_output]


def _select_images(visual: Dict[str, torch.Tensor], index: Sequence[int]) -> Dict[str, torch.Tensor]:
    return {name: value[list(index)] for name, value in visual.items()}


def make_batch(tiny: Tiny, prompts, seed: int = 0) -> Tuple[Dict[str, torch.Tensor],
                                                            List[Dict[str, torch.Tensor]]]:
    """A left-padded batch for ``prompts`` and the same rows one by one, without padding."""
    rng = torch.Generator().manual_seed(seed)
    n_images = sum(seg == "img" for prompt in prompts for seg in prompt)
    visual = tiny.images(n_images, rng)
    counts = image_token_counts(tiny, visual)
    rows, row_images, image = [], [], 0
    for prompt in prompts:
        ids, mine = [1], []
        for seg in prompt:
            if seg == "img":
                ids += [IMAGE_ID] * counts[image]
                mine.append(image)
                image += 1
            else:
                ids += torch.randint(3, IMAGE_ID - 1, (seg,), generator=rng).tolist()
        rows.append(ids)
        row_images.append(mine)
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    singles = []
    for b, (ids, mine) in enumerate(zip(rows, row_images)):
        input_ids[b, length - len(ids):] = torch.tensor(ids)
        attention_mask[b, length - len(ids):] = 1
        single = {"input_ids": torch.tensor([ids]),
                  "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if mine:
            single.update(_select_images(visual, mine))
        singles.append(single)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if n_images:
        batch.update(visual)
    return batch, singles
