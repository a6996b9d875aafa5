"""Tiny random-weight vision-language models and batches for the greedyprune.hf tests.

One builder per architecture in :data:`BUILDERS` (a new architecture adds one): each returns a
:class:`Tiny` with the model (fp32, eval mode, random weights from a fixed seed, built from a
config: nothing is downloaded) and a ``images(n, rng)`` function making the visual inputs for
``n`` images. :func:`make_batch` then writes prompts around them: a prompt is a list of
segments, an int for that many random text tokens and ``"img"`` for one image, e.g.
``[[3, "img", 2], [1, "img", 2, "img", 1]]`` for two rows holding one and two images. It returns
the left-padded batch and each row's own unpadded inputs (for per-sample comparisons).

The end of the module holds what the test files share: :func:`tiny` (each model built once per
session), :func:`batch` (an architecture's default prompts), and the checks and oracles that
the tests of several architectures run (:func:`merged_inputs`, :func:`reference_logits`,
:func:`generate_batched_and_alone`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import pytest
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
    return Tiny(_finish(LlavaNextForConditionalGeneration(config), attn),
                _anyres_images(NEXT_SIZES, 16))


def _anyres_images(sizes, side: int):
    """``images(n, rng)`` for the LLaVA-NeXT-like models: each image gets a random size from
    ``sizes`` and 5 crops of ``side`` px (the base image plus at most 2×2 crops; unused crops
    stay zero, as the processor pads them)."""
    def images(n, rng):
        pick = torch.randint(len(sizes), (n,), generator=rng).tolist()
        return {"pixel_values": torch.randn(n, 5, 3, side, side, generator=rng),
                "image_sizes": torch.tensor([sizes[i] for i in pick])}

    return images


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


# --- Gemma 3, LLaVA-OneVision, Idefics3 / SmolVLM --------------------------------------------

VIDEO_ID = 97
SIGLIP_CONFIG = dict(
    model_type="siglip_vision_model", image_size=8, patch_size=2, hidden_size=32,
    intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
)


def build_gemma3(attn: str = "sdpa", seed: int = 0) -> Tiny:
    """Gemma 3: SigLIP 20 px / patch 5 (4×4 patches) pooled to 4 tokens per image; a sliding
    layer (window 8, shorter than a prompt) and a full one."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = dict(TEXT_CONFIG, model_type="gemma3_text", head_dim=8, sliding_window=8,
                layer_types=["sliding_attention", "full_attention"])
    vision = dict(SIGLIP_CONFIG, image_size=20, patch_size=5)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          image_token_id=IMAGE_ID, boi_token_id=3, eoi_token_id=4)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # initialized to zeros, which would make every image token alike
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.3)
    model = _finish(model, attn)

    def images(n, rng):
        return {"pixel_values": torch.randn(n, 3, 20, 20, generator=rng)}

    return Tiny(model, images)


#: (height, width) for LLaVA-OneVision images: 1×2, 2×1 and 2×2 crop grids with unpadding.
ONEVISION_SIZES = [(5, 15), (15, 6), (16, 10), (16, 16)]


def build_llava_onevision(attn: str = "sdpa", seed: int = 0) -> Tiny:
    """LLaVA-OneVision: SigLIP 8 px / patch 2 (16 tokens per crop, no [CLS]), qwen2 text."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    config = LlavaOnevisionConfig(
        text_config=dict(TEXT_CONFIG, model_type="qwen2"), vision_config=SIGLIP_CONFIG,
        image_token_index=IMAGE_ID, video_token_index=VIDEO_ID, vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=[[8, 16], [16, 8], [16, 16]],
    )
    torch.manual_seed(seed)
    return Tiny(_finish(LlavaOnevisionForConditionalGeneration(config), attn),
                _anyres_images(ONEVISION_SIZES, 8))


def _build_idefics3_like(config_cls, model_cls, attn, seed) -> Tiny:
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, image_size=8, patch_size=2)
    config = config_cls(text_config=dict(TEXT_CONFIG), vision_config=vision, scale_factor=2,
                        image_token_id=IMAGE_ID)
    torch.manual_seed(seed)
    model = _finish(model_cls(config), attn)

    def images(n, rng):
        # One tower crop per "img" (2×2 pixel-shuffled tokens = 4 placeholders each); see
        # make_idefics3_batch for the per-row layout the model expects.
        return {"pixel_values": torch.randn(n, 3, 8, 8, generator=rng)}

    return Tiny(model, images)


def build_idefics3(attn: str = "sdpa", seed: int = 0) -> Tiny:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    return _build_idefics3_like(Idefics3Config, Idefics3ForConditionalGeneration, attn, seed)


def build_smolvlm(attn: str = "sdpa", seed: int = 0) -> Tiny:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    return _build_idefics3_like(SmolVLMConfig, SmolVLMForConditionalGeneration, attn, seed)


BUILDERS.update({
    "gemma3": build_gemma3,
    "llava_onevision": build_llava_onevision,
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
})

#: Placeholder tokens per crop of the Idefics3-like builders (2×2 pixel-shuffled cells).
IDEFICS3_TOKENS = 4
#: Stand-ins for the processor's marker tokens.
IDEFICS3_FAKE, IDEFICS3_GLOBAL, IDEFICS3_NEWLINE = 5, 6, 7


def _idefics3_prompt(rows: int, cols: int) -> List[int]:
    """The processor's layout: ``<fake><row_i_col_j><image>×4`` per sub-image, a newline after
    each row of them, then ``\n<fake><global-img><image>×4<fake>``; an unsplit image (0×0) is
    ``<fake><global-img><image>×4<fake>``."""
    image = [IMAGE_ID] * IDEFICS3_TOKENS
    ids = []
    for i in range(rows):
        for j in range(cols):
            ids += [IDEFICS3_FAKE, 10 + 6 * i + j] + image   # <row_{i+1}_col_{j+1}>
        ids.append(IDEFICS3_NEWLINE)
    if rows:
        ids.append(IDEFICS3_NEWLINE)
    return ids + [IDEFICS3_FAKE, IDEFICS3_GLOBAL] + image + [IDEFICS3_FAKE]


def make_idefics3_batch(tiny: Tiny, prompts, seed: int = 0):
    """:func:`make_batch` for Idefics3 / SmolVLM, whose ``pixel_values`` are per row
    ``(B, max crops, 3, H, W)`` with all-zero crops as padding. A segment ``"img"`` is an
    image too small to split (its global image: one crop), ``("img", R, C)`` one split into
    R × C sub-images plus its global image (R·C + 1 crops), written as the processor does."""
    rng = torch.Generator().manual_seed(seed)
    shapes = [(0, 0) if seg == "img" else tuple(seg[1:])
              for prompt in prompts for seg in prompt if not isinstance(seg, int)]
    crops = tiny.images(sum(r * c + 1 for r, c in shapes), rng)["pixel_values"]
    rows, row_crops, crop, image = [], [], 0, 0
    for prompt in prompts:
        ids, mine = [1], []
        for seg in prompt:
            if isinstance(seg, int):
                ids += torch.randint(50, IMAGE_ID - 1, (seg,), generator=rng).tolist()
                continue
            r, c = shapes[image]
            ids += _idefics3_prompt(r, c)
            mine += list(range(crop, crop + r * c + 1))
            crop += r * c + 1
            image += 1
        rows.append(ids)
        row_crops.append(mine)
    length = max(len(ids) for ids in rows)
    most = max(1, max(len(mine) for mine in row_crops))
    input_ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    pixel_values = torch.zeros(len(rows), most, 3, 8, 8)
    singles = []
    for b, (ids, mine) in enumerate(zip(rows, row_crops)):
        input_ids[b, length - len(ids):] = torch.tensor(ids)
        attention_mask[b, length - len(ids):] = 1
        pixel_values[b, :len(mine)] = crops[mine]
        single = {"input_ids": torch.tensor([ids]),
                  "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if mine:
            single["pixel_values"] = crops[mine][None]
        singles.append(single)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if crop:
        batch["pixel_values"] = pixel_values
    return batch, singles


# --- Qwen2-VL / Qwen2.5-VL / Qwen3-VL ------------------------------------------------------

QWEN_VIDEO_ID = 97
QWEN_VISION_START = 96
QWEN_VISION_END = 95
#: Text tokens of the Qwen batches are drawn below the special ids.
QWEN_TEXT_TOP = 95
#: Tiny Qwen vision towers: 2-px patches, 2×2 merged to one token, frame pairs (temporal 2).
QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL = 2, 2, 2
#: Image grids (t, h, w) in patches: 6, 9, 8 and 12 tokens, no two alike in shape.
QWEN_IMAGE_GRIDS = [(1, 4, 6), (1, 6, 6), (1, 4, 8), (1, 8, 6)]
#: Video grids: 2 or 3 frame pairs.
QWEN_VIDEO_GRIDS = [(2, 4, 6), (3, 4, 4), (2, 6, 4)]
QWEN_TEXT_CONFIG = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
    pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2,
    # M-RoPE: (temporal, height, width) sections of the 4 rotary frequency pairs of head_dim 8.
    rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
)
_QWEN_IDS = dict(image_token_id=IMAGE_ID, video_token_id=QWEN_VIDEO_ID,
                 vision_start_token_id=QWEN_VISION_START, vision_end_token_id=QWEN_VISION_END)


@dataclass
class QwenTiny(Tiny):
    """A :class:`Tiny` Qwen-VL: ``images`` / ``videos`` give ``pixel_values`` (all patches of
    the units, flattened as the processor does) and the ``(t, h, w)`` grids; see
    :func:`make_qwen_batch`."""

    videos: Callable[[int, torch.Generator], Dict[str, torch.Tensor]] = None


def _qwen_visual(grids, key: str, rng) -> Dict[str, torch.Tensor]:
    grid = torch.tensor(grids, dtype=torch.long).reshape(-1, 3)
    patches = int(grid.prod(-1).sum())
    width = 3 * QWEN_TEMPORAL * QWEN_PATCH * QWEN_PATCH
    pixels = "pixel_values" if key == "image" else "pixel_values_videos"
    return {pixels: torch.randn(patches, width, generator=rng), f"{key}_grid_thw": grid}


def _qwen_tiny(model) -> QwenTiny:
    def pick(table, n, rng):
        return [table[i] for i in torch.randint(len(table), (n,), generator=rng).tolist()]

    def images(n, rng):
        return _qwen_visual(pick(QWEN_IMAGE_GRIDS, n, rng), "image", rng)

    def videos(n, rng):
        return _qwen_visual(pick(QWEN_VIDEO_GRIDS, n, rng), "video", rng)

    return QwenTiny(model, images, videos)


def build_qwen2_vl(attn: str = "sdpa", seed: int = 0) -> QwenTiny:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        text_config=QWEN_TEXT_CONFIG,
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2,
                           patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE,
                           temporal_patch_size=QWEN_TEMPORAL),
        **_QWEN_IDS)
    torch.manual_seed(seed)
    return _qwen_tiny(_finish(Qwen2VLForConditionalGeneration(config), attn))


def build_qwen2_5_vl(attn: str = "sdpa", seed: int = 0) -> QwenTiny:
    """Windows of 2×2 merged tokens (8 px) in layer 0, full attention in layer 1: images wider
    than a window are computed in window order and restored at the end of the tower."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=QWEN_TEXT_CONFIG,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=37, num_heads=4,
                           out_hidden_size=32, patch_size=QWEN_PATCH,
                           spatial_merge_size=QWEN_MERGE, temporal_patch_size=QWEN_TEMPORAL,
                           window_size=8, fullatt_block_indexes=[1]),
        **_QWEN_IDS)
    torch.manual_seed(seed)
    return _qwen_tiny(_finish(Qwen2_5_VLForConditionalGeneration(config), attn))


def build_qwen3_vl(attn: str = "sdpa", seed: int = 0) -> QwenTiny:
    """DeepStack features from both vision layers, added after decoder layers 0 and 1."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = Qwen3VLConfig(
        text_config=QWEN_TEXT_CONFIG,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=37, num_heads=4,
                           out_hidden_size=32, patch_size=QWEN_PATCH,
                           spatial_merge_size=QWEN_MERGE, temporal_patch_size=QWEN_TEMPORAL,
                           num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
        **_QWEN_IDS)
    torch.manual_seed(seed)
    return _qwen_tiny(_finish(Qwen3VLForConditionalGeneration(config), attn))


BUILDERS.update({
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "qwen3_vl": build_qwen3_vl,
})


def _qwen_split(visual: Dict[str, torch.Tensor], key: str):
    """Per unit: (its patch rows, its grid row)."""
    pixels = visual["pixel_values" if key == "image" else "pixel_values_videos"]
    grid = visual[f"{key}_grid_thw"]
    return list(zip(torch.split(pixels, grid.prod(-1).tolist()), grid))


def _qwen_join(units, key: str) -> Dict[str, torch.Tensor]:
    pixels = "pixel_values" if key == "image" else "pixel_values_videos"
    return {pixels: torch.cat([p for p, _ in units]),
            f"{key}_grid_thw": torch.stack([g for _, g in units])}


def make_qwen_batch(tiny: QwenTiny, prompts, seed: int = 0):
    """:func:`make_batch` for Qwen-VL: segments are ints (random text), ``"img"`` and ``"vid"``.

    An image is ``<|vision_start|> <image>×n <|vision_end|>``; a video the same with video
    placeholders, except on Qwen3-VL, which writes each frame pair after a timestamp (here one
    random text token) in its own start/end pair. Also returns ``mm_token_type_ids`` (0 text,
    1 image, 2 video), which the model needs to compute its M-RoPE positions.
    """
    rng = torch.Generator().manual_seed(seed)
    count = {kind: sum(seg == kind for prompt in prompts for seg in prompt)
             for kind in ("img", "vid")}
    per_frame = tiny.model.config.model_type == "qwen3_vl"
    units = {"image": _qwen_split(tiny.images(count["img"], rng), "image") if count["img"] else [],
             "video": _qwen_split(tiny.videos(count["vid"], rng), "video") if count["vid"] else []}
    used = {"image": 0, "video": 0}
    rows, row_units = [], []
    for prompt in prompts:
        ids, types, mine = [1], [0], {"image": [], "video": []}
        for seg in prompt:
            if isinstance(seg, int):
                ids += torch.randint(3, QWEN_TEXT_TOP, (seg,), generator=rng).tolist()
                types += [0] * seg
                continue
            key = "image" if seg == "img" else "video"
            _, (t, h, w) = units[key][used[key]]
            mine[key].append(used[key])
            used[key] += 1
            token, code = (IMAGE_ID, 1) if key == "image" else (QWEN_VIDEO_ID, 2)
            frame = int(h * w) // (QWEN_MERGE * QWEN_MERGE)
            runs = [frame] * int(t) if key == "video" and per_frame else [frame * int(t)]
            for run in runs:
                if key == "video" and per_frame:  # the frame's timestamp
                    ids += torch.randint(3, QWEN_TEXT_TOP, (1,), generator=rng).tolist()
                    types += [0]
                ids += [QWEN_VISION_START] + [token] * run + [QWEN_VISION_END]
                types += [0] + [code] * run + [0]
        rows.append((ids, types))
        row_units.append(mine)
    length = max(len(ids) for ids, _ in rows)
    batch = {"input_ids": torch.full((len(rows), length), PAD_ID, dtype=torch.long),
             "attention_mask": torch.zeros((len(rows), length), dtype=torch.long),
             "mm_token_type_ids": torch.zeros((len(rows), length), dtype=torch.long)}
    singles = []
    for b, ((ids, types), mine) in enumerate(zip(rows, row_units)):
        batch["input_ids"][b, length - len(ids):] = torch.tensor(ids)
        batch["attention_mask"][b, length - len(ids):] = 1
        batch["mm_token_type_ids"][b, length - len(ids):] = torch.tensor(types)
        single = {"input_ids": torch.tensor([ids]),
                  "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                  "mm_token_type_ids": torch.tensor([types])}
        for key in ("image", "video"):
            if mine[key]:
                single.update(_qwen_join([units[key][i] for i in mine[key]], key))
        singles.append(single)
    for key in ("image", "video"):
        if units[key]:
            batch.update(_qwen_join(units[key], key))
    return batch, singles


# --- what the test files share ------------------------------------------------------------------

QWEN_ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
#: Architectures whose vision tower has a [CLS] token (saliency="cls" works).
CLS_ARCHS = ("llava", "llava_next")

#: Default prompts per architecture. LLaVA: rows with different lengths and image counts
#: (left padding and re-padding). Gemma 3 / OneVision: the same plus a row without images.
#: Idefics3 / SmolVLM: images split into sub-images ("img" is one unsplit crop). Qwen: 1 / 2 / 0
#: images and 0 / 1 / 1 videos per row, images and videos mixed.
LLAVA_PROMPTS = [[3, "img", 2], [1, "img", 2, "img", 4], [5, "img", 1]]
MORE_PROMPTS = [[3, "img", 2], [1, "img", 2, "img", 4], [5, "img", 1], [6]]
IDEFICS3_PROMPTS = [[3, ("img", 1, 2), 2], [1, "img", 2, ("img", 2, 2), 4],
                    [5, ("img", 2, 1), 1], [6]]
QWEN_PROMPTS = [[3, "img", 2], [1, "img", 2, "vid", 1, "img", 1], [2, "vid", 1]]
#: Batched generation on Qwen also has a row without images or videos (no M-RoPE offset,
#: rope_deltas 0) first, and a row with a video before an image.
QWEN_GENERATION_PROMPTS = [[6], *QWEN_PROMPTS, [2, "vid", 1, "img", 2]]
PROMPTS = {"llava": LLAVA_PROMPTS, "llava_next": LLAVA_PROMPTS,
           "gemma3": MORE_PROMPTS, "llava_onevision": MORE_PROMPTS,
           "idefics3": IDEFICS3_PROMPTS, "smolvlm": IDEFICS3_PROMPTS,
           **{arch: QWEN_PROMPTS for arch in QWEN_ARCHS}}
#: Architectures that the attention-dependent tests run under eager attention too.
EAGER_ARCHS = ("llava", "llava_next", "gemma3", *QWEN_ARCHS)
WITH_ATTN = [(arch, "sdpa") for arch in BUILDERS] + [(arch, "eager") for arch in EAGER_ARCHS]

_cache: Dict[Tuple[str, str], Tiny] = {}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Import into a test module to run it on one torch thread: tiny models gain nothing from
    intra-op threads, and on busy cores (the test machine's two are shared) OpenMP threads
    waiting on each other make every op many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny(arch: str, attn: str = "sdpa") -> Tiny:
    """Each model built once per session (building is most of a tiny test's time)."""
    key = (arch, attn)
    if key not in _cache:
        _cache[key] = BUILDERS[arch](attn)
    return _cache[key]


def batch(arch: str, prompts=None, seed: int = 0):
    """The batch and per-row inputs of ``prompts`` (default: the architecture's
    :data:`PROMPTS`), made as that architecture's processor would."""
    prompts = prompts or PROMPTS[arch]
    if arch in QWEN_ARCHS:
        return make_qwen_batch(tiny(arch), prompts, seed=seed)
    if arch in ("idefics3", "smolvlm"):
        return make_idefics3_batch(tiny(arch), prompts, seed=seed)
    inputs, singles = make_batch(tiny(arch), prompts, seed=seed)
    if arch == "gemma3":  # what Gemma 3's processor returns next to input_ids
        for item in (inputs, *singles):
            item["token_type_ids"] = (item["input_ids"] == IMAGE_ID).long()
    return inputs, singles


def prompt_modalities(prompts) -> List[str]:
    """The modality of each image or video of ``prompts``, sorted."""
    return sorted("video" if seg == "vid" else "image"
                  for prompt in prompts for seg in prompt if not isinstance(seg, int))


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def decoder_of(model):
    inner = model.model
    return getattr(inner, "language_model", None) or inner.text_model


def decoder_kwargs(model, inputs, generate: bool = False):
    """The keyword arguments the decoder receives (after any pruning hook) at the prefill of a
    forward, or of a ``generate()`` call."""
    seen = []

    def spy(module, args, kwargs):
        seen.append(dict(kwargs))

    spy_handle = decoder_of(model).register_forward_pre_hook(spy, with_kwargs=True)
    try:
        if generate:   # one new token: the prefill only
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        else:
            logits(model, inputs)
    finally:
        spy_handle.remove()
    return seen[0]


def hook_count(model) -> int:
    """Hooks that greedyprune.hf installed (transformers installs its own, lazily)."""
    from greedyprune.hf import PruneHandle

    return sum(isinstance(getattr(hook, "handle", None), PruneHandle)
               for m in model.modules()
               for hook in [*m._forward_pre_hooks.values(), *m._forward_hooks.values()])


def assert_close_on_valid(got, expected, attention_mask, tol: float = 1e-5):
    """``got`` (re-padded, pruned or not) equals ``expected`` on each row's valid positions."""
    valid = attention_mask.bool()
    for b in range(len(valid)):
        n = int(valid[b].sum())
        torch.testing.assert_close(got[b, -n:], expected[b, valid[b]], rtol=tol, atol=tol)


def placeholders(inputs):
    """Image and video placeholder tokens."""
    ids = inputs["input_ids"]
    return (ids == IMAGE_ID) | (ids == VIDEO_ID)


def unit_positions(inputs, record):
    """Sequence positions of the record's image or video: its run among the row's placeholders
    of that modality (a Qwen3-VL video and an Idefics3 image span several runs)."""
    token = IMAGE_ID if record.modality == "image" else VIDEO_ID
    row = np.flatnonzero((inputs["input_ids"][record.row] == token).numpy())
    # kept[0] is the index of the first kept token within the unit.
    start = int(np.searchsorted(row, record.kept_positions[0])) - int(record.kept[0])
    return row[start:start + record.n_tokens]


def assert_kept_is_select(model, embeds, inputs, record, k: int, lam: float, score=None) -> int:
    """Assert that ``record`` kept exactly what ``greedyprune.select`` keeps of its image's
    candidates (every placeholder but LLaVA-NeXT / OneVision newlines, which are never
    candidates) on their merged embeddings, with saliency ``score(features, positions)`` (None:
    no saliency). Returns the number of candidates."""
    import greedyprune

    positions = unit_positions(inputs, record)
    features = embeds[record.row, positions]
    newline = getattr(model.model, "image_newline", None)
    candidates = (~(features == newline).all(-1) if newline is not None
                  else torch.ones(len(features), dtype=torch.bool))
    chosen = candidates.numpy()
    saliency = None if score is None else score(features[candidates], positions[chosen])
    picks = greedyprune.select(features[candidates].numpy(), k, saliency, lam)
    expected = np.flatnonzero(chosen)[picks]
    selected = record.kept[~np.isin(record.kept, np.flatnonzero(~chosen))]
    assert selected.tolist() == expected.tolist(), record
    return int(chosen.sum())


def merged_inputs(arch: str, model, inputs):
    """On the unhooked model: the decoder's ``inputs_embeds`` after the visual features are
    merged, the position ids of the full sequence ((B, L), or (3, B, L) M-RoPE ids on Qwen) and
    on Qwen3-VL the DeepStack features of each position (layers, B, L, D; zero off the visual
    tokens), else None. Built by hand from the model's pieces on LLaVA and Qwen; on the others,
    the merged embeddings are what the unhooked model hands its decoder."""
    if arch in QWEN_ARCHS:
        return _qwen_merged_inputs(model, inputs)
    ids = inputs["input_ids"]
    inner = model.model
    if arch in ("llava", "llava_next"):
        with torch.no_grad():
            embeds = inner.get_input_embeddings()(ids)
            visual = {k: inputs[k] for k in ("pixel_values", "image_sizes") if k in inputs}
            features = torch.cat(list(inner.get_image_features(**visual, return_dict=True)
                                      .pooler_output))
            embeds = embeds.masked_scatter((ids == IMAGE_ID)[..., None], features)
    else:
        embeds = decoder_kwargs(model, inputs)["inputs_embeds"]
    # Without position_ids, the decoders number a prefill 0..L-1 in every row.
    return embeds, torch.arange(ids.shape[1]).expand(*ids.shape), None


def _qwen_merged_inputs(model, inputs):
    inner = model.model
    ids = inputs["input_ids"]
    with torch.no_grad():
        embeds = inner.get_input_embeddings()(ids)
        deepstack = None
        for key, token in (("image", IMAGE_ID), ("video", QWEN_VIDEO_ID)):
            pixels = inputs.get("pixel_values" if key == "image" else "pixel_values_videos")
            if pixels is None:
                continue
            encode = inner.get_image_features if key == "image" else inner.get_video_features
            out = encode(pixels, inputs[f"{key}_grid_thw"], return_dict=True)
            mask = ids == token
            embeds = embeds.masked_scatter(mask[..., None], torch.cat(list(out.pooler_output)))
            layers = getattr(out, "deepstack_features", None)
            if layers:
                if deepstack is None:
                    deepstack = torch.zeros(len(layers), *embeds.shape)
                for i, per_unit in enumerate(layers):
                    deepstack[i][mask] = torch.cat(list(per_unit))
        positions, _ = inner.get_rope_index(
            ids, mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=inputs["attention_mask"])
    return embeds, positions, deepstack


def gemma3_reference_masks(model, mask, types, dtype):
    """Gemma 3's decoder masks built by hand for a prefill without cache: a key is visible when
    it is not padding and either precedes the query or lies in the query's image block (a
    maximal run of image tokens); sliding layers also need ``q - k < window``."""
    length = mask.shape[1]
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    image = types.bool()
    starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
    block = torch.where(image, starts.cumsum(1), 0)                        # 0: not an image
    same_block = (block[:, :, None] == block[:, None, :]) & (block[:, :, None] > 0)
    allowed = mask.bool()[:, None, :] & ((k <= q)[None] | same_block)
    window = model.config.text_config.sliding_window
    sliding = allowed & (q - k < window)[None]
    low = torch.finfo(dtype).min

    def as_bias(visible):
        return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, low)[:, None]

    return {"full_attention": as_bias(allowed), "sliding_attention": as_bias(sliding)}


def reference_logits(arch: str, model, inputs, records, image_blocks: bool = True):
    """The pruned prefill built by hand from the records and run through the decoder directly:
    every valid text token and the kept visual tokens, in order, with their position ids of the
    full sequence (every M-RoPE axis on Qwen), left-padded; on Qwen3-VL the DeepStack features
    of the kept visual tokens; on Gemma 3 its masks with bidirectional image blocks
    (``image_blocks=False``: plain causal masks). Returns (the new length, the logits, the
    (B, new length) mask of the valid positions)."""
    embeds, positions, deepstack = merged_inputs(arch, model, inputs)
    valid = inputs["attention_mask"].bool()
    visual = placeholders(inputs)
    rows = []
    for b in range(len(embeds)):
        kept = set(np.flatnonzero((valid[b] & ~visual[b]).numpy()).tolist())
        for record in records:
            if record.row == b:
                kept |= set(record.kept_positions.tolist())
        rows.append(sorted(kept))
    size, new_length = len(rows), max(map(len, rows))
    new_embeds = torch.zeros(size, new_length, embeds.shape[-1])
    new_positions = torch.zeros(*positions.shape[:-2], size, new_length, dtype=torch.long)
    new_mask = torch.zeros(size, new_length, dtype=torch.long)
    new_visual = torch.zeros(size, new_length, dtype=torch.bool)
    new_types = torch.zeros(size, new_length, dtype=torch.long)
    new_deep = None if deepstack is None else torch.zeros(len(deepstack), size, new_length,
                                                          embeds.shape[-1])
    for b, kept in enumerate(rows):
        start = new_length - len(kept)
        new_embeds[b, start:] = embeds[b, kept]
        new_positions[..., b, start:] = positions[..., b, kept]
        new_mask[b, start:] = 1
        new_visual[b, start:] = visual[b, kept]
        if "token_type_ids" in inputs:
            new_types[b, start:] = inputs["token_type_ids"][b, kept]
        if new_deep is not None:
            new_deep[:, b, start:] = deepstack[:, b, kept]
    extra = {}
    if new_deep is not None:
        extra = dict(visual_pos_masks=new_visual,
                     deepstack_visual_embeds=[layer[new_visual] for layer in new_deep])
    attention = new_mask
    if arch == "gemma3":
        types = new_types if image_blocks else torch.zeros_like(new_types)
        attention = gemma3_reference_masks(model, new_mask, types, embeds.dtype)
    with torch.no_grad():
        hidden = decoder_of(model)(inputs_embeds=new_embeds, attention_mask=attention,
                                   position_ids=new_positions, **extra).last_hidden_state
        expected = model.lm_head(hidden)
    return new_length, expected, new_mask.bool()


def generate_batched_and_alone(model, inputs, singles, new_tokens: int = 5, **budget):
    """Greedy generation of the batch and of each row alone under ``attach(model, **budget)``
    gives the same tokens and (to 1e-4) the same logits at every step. Returns the records and
    prefill record of the batch's call."""
    from greedyprune.hf import attach

    # min_new_tokens: a row alone stops at its end-of-sequence token; in the batch it goes on.
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    output_logits=True, return_dict_in_generate=True)
    with attach(model, **budget) as handle:
        together = model.generate(**inputs, **settings)
        records, prefill = handle.last, handle.last_prefill
        alone = [model.generate(**single, **settings) for single in singles]
    for b, single in enumerate(alone):
        assert len(together.logits) == len(single.logits) == new_tokens
        assert torch.equal(together.sequences[b, -new_tokens:],
                           single.sequences[0, -new_tokens:]), b
        for step, (got, want) in enumerate(zip(together.logits, single.logits)):
            torch.testing.assert_close(got[b], want[0], rtol=1e-4, atol=1e-4,
                                       msg=f"row {b}, step {step}")
    return records, prefill
