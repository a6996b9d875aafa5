"""The cases of benchmarks/bench_hf.py: the models it builds (random weights at realistic widths,
cut short where the full depth does not fit this machine), their inputs and budgets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

BUDGETS = (None, 192, 128, 64)  # None: unpruned, no hooks attached
FULL_DEPTH = 32


@dataclass
class Shape:
    """One benchmarked architecture: ``build(args) -> (model, inputs, description)``."""

    name: str
    build: Callable
    full_depth: int
    budgets: Tuple[Optional[int], ...] = BUDGETS
    #: (vision blocks used, vision blocks of the full model) when the tower is cut short too.
    vision_depth: Optional[Callable] = None
    #: Timed runs per budget unless ``--repeats`` says otherwise.
    repeats: int = 9


def build_llava15(args):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if args.quick:  # same token counts, narrow and shallow
        vision = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4)
        text = dict(hidden_size=512, intermediate_size=1376, num_attention_heads=8,
                    num_key_value_heads=8, num_hidden_layers=2)
    else:
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16)
        text = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                    num_key_value_heads=32, num_hidden_layers=args.lm_layers)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=336, patch_size=14,
                           projection_dim=768, **vision),
        text_config=dict(model_type="llama", vocab_size=32064, max_position_embeddings=4096,
                         pad_token_id=0, **text),
        image_token_index=32000, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation("sdpa")
    generator = torch.Generator().manual_seed(0)
    before = torch.randint(3, 31999, (8,), generator=generator)
    after = torch.randint(3, 31999, (40,), generator=generator)
    ids = torch.cat([torch.tensor([1]), before, torch.full((576,), 32000), after])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn(1, 3, 336, 336, generator=generator)}
    t, v = config.text_config, config.vision_config
    description = (
        f"LlavaForConditionalGeneration, random weights, float32: CLIP ViT ({v.num_hidden_layers} "
        f"layers, width {v.hidden_size}, {v.image_size} px / {v.patch_size} px patches: 576 "
        f"visual tokens) + Llama ({t.num_hidden_layers} layers, width {t.hidden_size}, MLP "
        f"{t.intermediate_size}, vocabulary {t.vocab_size}); prompt {ids.shape[1]} tokens "
        f"(1 image + {ids.shape[1] - 576} text), batch 1"
    )
    return model, inputs, description


QWEN_IMAGE_ID, QWEN_VIDEO_ID, QWEN_VISION_START, QWEN_VISION_END = 151655, 151656, 151652, 151653
QWEN_BUDGETS = (None, 384, 256, 128)
_qwen_models = {}


def _qwen2vl_model(args):
    """The Qwen2-VL-7B-shaped model (cut short), built once for both Qwen entries."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    key = (args.quick, args.qwen_vision_layers, args.qwen_lm_layers)
    if key in _qwen_models:
        return _qwen_models[key]
    if args.quick:  # same token counts, narrow and shallow
        vision = dict(embed_dim=256, num_heads=4, hidden_size=512, depth=2)
        text = dict(hidden_size=512, intermediate_size=1376, num_attention_heads=8,
                    num_key_value_heads=8, num_hidden_layers=2, vocab_size=152064,
                    rope_parameters={"rope_type": "default", "mrope_section": [16, 8, 8],
                                     "rope_theta": 1e6})
    else:
        vision = dict(embed_dim=1280, num_heads=16, hidden_size=3584, depth=args.qwen_vision_layers)
        text = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                    num_key_value_heads=4, num_hidden_layers=args.qwen_lm_layers,
                    vocab_size=152064,
                    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                     "rope_theta": 1e6})
    config = Qwen2VLConfig(
        vision_config=dict(mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, **vision),
        text_config=dict(max_position_embeddings=32768, rms_norm_eps=1e-6, **text),
        image_token_id=QWEN_IMAGE_ID, video_token_id=QWEN_VIDEO_ID,
        vision_start_token_id=QWEN_VISION_START, vision_end_token_id=QWEN_VISION_END,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.set_attn_implementation("sdpa")
    _qwen_models.clear()
    _qwen_models[key] = model
    return model


def _qwen_prompt(token, count, generator):
    """8 text tokens, the visual run between vision start and end, 40 text tokens."""
    before = torch.randint(3, 151000, (8,), generator=generator)
    after = torch.randint(3, 151000, (40,), generator=generator)
    ids = torch.cat([before, torch.tensor([QWEN_VISION_START]), torch.full((count,), token),
                     torch.tensor([QWEN_VISION_END]), after])[None]
    types = torch.zeros_like(ids)
    types[ids == QWEN_IMAGE_ID] = 1
    types[ids == QWEN_VIDEO_ID] = 2
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types}


def _qwen_description(model, what, ids):
    v, t = model.config.vision_config, model.config.text_config
    return (f"Qwen2VLForConditionalGeneration, random weights, float32: vision tower "
            f"({v.depth} of 32 blocks, width {v.embed_dim}, {v.patch_size} px patches merged "
            f"{v.spatial_merge_size}×{v.spatial_merge_size}) + Qwen2 language model "
            f"({t.num_hidden_layers} of 28 layers, width {t.hidden_size}, MLP "
            f"{t.intermediate_size}, {t.num_attention_heads} heads / {t.num_key_value_heads} KV "
            f"heads, vocabulary {t.vocab_size}, M-RoPE); {what}; prompt {ids.shape[1]} tokens, "
            f"batch 1")


def build_qwen2vl_image(args):
    model = _qwen2vl_model(args)
    generator = torch.Generator().manual_seed(0)
    t, h, w = 1, 60, 80  # a 1120×840 image in 14-px patches
    tokens = t * h * w // 4
    inputs = _qwen_prompt(QWEN_IMAGE_ID, tokens, generator)
    inputs["pixel_values"] = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=generator)
    inputs["image_grid_thw"] = torch.tensor([[t, h, w]])
    what = f"one 1120×840 image ({w}×{h} patches: {tokens} visual tokens) + 48 text tokens"
    return model, inputs, _qwen_description(model, what, inputs["input_ids"])


def build_qwen2vl_video(args):
    model = _qwen2vl_model(args)
    generator = torch.Generator().manual_seed(1)
    t, h, w = 8, 18, 32  # 16 frames of 448×252: 8 frame pairs of 32×18 patches
    tokens = t * h * w // 4
    inputs = _qwen_prompt(QWEN_VIDEO_ID, tokens, generator)
    inputs["pixel_values_videos"] = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=generator)
    inputs["video_grid_thw"] = torch.tensor([[t, h, w]])
    what = (f"one 16-frame 448×252 video ({t} frame pairs of {w}×{h} patches: {tokens} visual "
            f"tokens, one budget) + 48 text tokens")
    return model, inputs, _qwen_description(model, what, inputs["input_ids"])


def _qwen_vision_depth(args):
    return (2 if args.quick else args.qwen_vision_layers), 32


SHAPES: Dict[str, Shape] = {
    "llava-1.5": Shape("llava-1.5", build_llava15, FULL_DEPTH),
    # 3 runs per budget keep the two Qwen entries near 5 minutes on 2 cores.
    "qwen2-vl-image": Shape("qwen2-vl-image", build_qwen2vl_image, 28, QWEN_BUDGETS,
                            _qwen_vision_depth, repeats=3),
    "qwen2-vl-video": Shape("qwen2-vl-video", build_qwen2vl_video, 28, QWEN_BUDGETS,
                            _qwen_vision_depth, repeats=3),
}
