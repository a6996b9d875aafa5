"""greedyprune.hf on Gemma 3, LLaVA-OneVision (images and video), Idefics3 and SmolVLM: tiny
random-weight models (tests/hf_models.py), fp32.

What is specific to these families: Gemma 3's bidirectional image blocks (the hand-built
reference masks discriminate, masks rebuilt for the pruned sequence, no token_type_ids,
inputs_embeds, an image token outside the vocabulary, its pooled grid), Idefics3 / SmolVLM's
grouping of sub-images into one budget per image, and LLaVA-OneVision's newlines, packing,
multi-image rows, resampled canvases and video. The properties every architecture must satisfy
are in tests/test_hf_common.py.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from greedyprune.hf import attach  # noqa: E402

from hf_models import (IMAGE_ID, VIDEO_ID, assert_close_on_valid, batch,  # noqa: E402
                       decoder_kwargs, decoder_of, generate_batched_and_alone, logits,
                       reference_logits, tiny, unit_positions)
from hf_models import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread here)

GENERATE = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
RASTER = [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]   # (view 0, row, col) of a 2×2 raster


# --- Gemma 3 --------------------------------------------------------------------------------


def test_gemma3_reference_discriminates_the_image_blocks():
    # test_hf_common.py checks the pruned forward against a reference with Gemma 3's
    # bidirectional image blocks; that reference discriminates: without the image blocks
    # (plain causal) it differs.
    model = tiny("gemma3").model
    inputs, _ = batch("gemma3")
    with attach(model, keep=2) as handle:
        got = logits(model, inputs)
    _, plain, valid = reference_logits("gemma3", model, inputs, handle.last, image_blocks=False)
    assert not torch.allclose(plain[valid], got[valid], atol=1e-4)


def test_gemma3_without_token_type_ids_is_causal_throughout():
    # Without token_type_ids the model attends causally over images too; so does the rebuilt
    # mask.
    model = tiny("gemma3").model
    inputs, _ = batch("gemma3")
    inputs.pop("token_type_ids")
    expected = logits(model, inputs)
    with attach(model, keep=10_000):
        got = logits(model, inputs)
    assert_close_on_valid(got, expected, inputs["attention_mask"])


def test_gemma3_inputs_embeds_instead_of_input_ids_prune_the_same():
    # Without input_ids, placeholders are found by their embedding, which Gemma 3 scales in
    # its embedding module's forward.
    model = tiny("gemma3").model
    inputs, _ = batch("gemma3")
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
    with attach(model, keep=2) as handle:
        expected = logits(model, inputs)
        kept = [r.kept_positions.tolist() for r in handle.last]
        got = logits(model, dict(inputs, input_ids=None, inputs_embeds=embeds))
        assert [r.kept_positions.tolist() for r in handle.last] == kept
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gemma3_image_token_outside_the_vocabulary():
    # With an out-of-vocabulary image token the model embeds placeholders as id 0: images are
    # still found from the input_ids the inner model was called with.
    from transformers import Gemma3ForConditionalGeneration

    base = tiny("gemma3").model
    config = base.config.__class__.from_dict(base.config.to_dict())
    config.text_config.vocab_size = IMAGE_ID   # ids 0..97: the image token 98 is outside
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.3)
    inputs, singles = batch("gemma3")
    expected = logits(model, inputs)
    with attach(model, keep=10_000):
        got = logits(model, inputs)
    assert_close_on_valid(got, expected, inputs["attention_mask"])
    with attach(model, keep=1) as handle:
        together = model.generate(**inputs, **GENERATE)
        assert [r.tokens_after for r in handle.last] == [1] * 4
        alone = model.generate(**singles[1], **GENERATE)
    assert torch.equal(together.sequences[1, -4:], alone.sequences[0, -4:])


def test_gemma3_decoder_gets_masks_rebuilt_from_the_pruned_sequence():
    # At the prefill and at every decoding step, the decoder's mask dict must be sized for the
    # pruned cache, and at the prefill hold the image blocks at their new places.
    model = tiny("gemma3").model
    inputs, _ = batch("gemma3")
    shapes = []

    def spy(module, args, kwargs):
        masks = kwargs["attention_mask"]
        assert set(masks) == {"full_attention", "sliding_attention"}
        shapes.append({name: tuple(m.shape) for name, m in masks.items() if m is not None})
        shapes[-1]["embeds"] = tuple(kwargs["inputs_embeds"].shape)

    with attach(model, keep=1) as handle:
        spy_handle = decoder_of(model).register_forward_pre_hook(spy, with_kwargs=True)
        try:
            out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        finally:
            spy_handle.remove()
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    pruned = handle.last_prefill.seq_len_after
    # Each image of 4 tokens keeps 1; the longest pruned row sets the length.
    images = (inputs["input_ids"] == IMAGE_ID).sum(1) // 4
    assert pruned == int((inputs["attention_mask"].sum(1) - 3 * images).max())
    batch_size = len(inputs["input_ids"])
    assert shapes[0]["full_attention"] == (batch_size, 1, pruned, pruned)
    for step, seen in enumerate(shapes[1:], start=1):
        assert seen["embeds"][1] == 1
        assert seen["full_attention"][-1] == pruned + step


def test_gemma3_grid_is_the_pooled_raster():
    model = tiny("gemma3").model
    with attach(model, keep=1) as handle:
        logits(model, batch("gemma3")[0])
    for record in handle.last:
        assert record.grid.patch_side == 2 and record.n_tokens == 4
        assert record.grid.token_source.tolist() == RASTER


# --- Idefics3 / SmolVLM ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["idefics3", "smolvlm"])
def test_idefics3_budget_is_per_image_over_its_sub_images(arch):
    model = tiny(arch).model
    inputs, _ = batch(arch)
    with attach(model, keep=3) as handle:
        logits(model, inputs)
    shapes = [(1, 2), None, (2, 2), (2, 1)]   # the images of IDEFICS3_PROMPTS, in order
    assert [r.row for r in handle.last] == [0, 1, 1, 2]
    for record, shape in zip(handle.last, shapes):
        crops = 1 if shape is None else shape[0] * shape[1] + 1
        assert record.n_tokens == record.tokens_before == 4 * crops
        assert record.tokens_after == 3
        grid = record.grid
        assert grid.patch_side == 2 and grid.crop_grid == shape
        source = grid.token_source
        assert source[-4:].tolist() == RASTER   # the global image comes last
        if shape is not None:
            rows, cols = shape
            assert grid.canvas_pixels == (8 * rows, 8 * cols)
            expected = [[1, 2 * (k // cols) + r, 2 * (k % cols) + c]
                        for k in range(rows * cols) for _, r, c in RASTER]
            assert source[:-4].tolist() == expected


def test_idefics3_other_prompt_layouts_fall_back_to_one_budget_per_crop():
    # When the rows' last crops follow different markers, there is no <global-img> to group
    # crops by: each crop gets its own budget.
    model = tiny("idefics3").model
    inputs, _ = batch("idefics3")
    ids = inputs["input_ids"].clone()
    last_marker = int(np.flatnonzero(ids[0].numpy() == IMAGE_ID)[-1]) - 4
    assert ids[0, last_marker] == 6
    ids[0, last_marker] = 9
    with attach(model, keep=3) as handle:
        logits(model, dict(inputs, input_ids=ids))
    assert len(handle.last) == 3 + 1 + 5 + 3 and all(r.n_tokens == 4 for r in handle.last)
    assert all(r.grid.token_source.tolist() == RASTER for r in handle.last)


# --- LLaVA-OneVision images -----------------------------------------------------------------


def test_onevision_newlines_stay_with_their_rows():
    model = tiny("llava_onevision").model
    inputs, _ = batch("llava_onevision")
    newline = model.model.image_newline
    unpruned = decoder_kwargs(model, inputs)["inputs_embeds"]
    with attach(model, keep=3) as handle:
        logits(model, inputs)
    for record in handle.last:
        run = unit_positions(inputs, record)
        is_newline = (unpruned[record.row, run] == newline).all(-1).numpy()
        assert is_newline.sum() >= 1 and record.tokens_before == int((~is_newline).sum())
        kept = np.zeros(record.n_tokens, dtype=bool)
        kept[record.kept] = True
        assert int((kept & ~is_newline).sum()) == 3
        # Walk the canvas after the 16 base tokens: a newline survives iff its row does.
        row_has_kept = False
        for i in range(16, record.n_tokens):
            if is_newline[i]:
                assert kept[i] == row_has_kept, i
                row_has_kept = False
            else:
                row_has_kept |= kept[i]


def test_onevision_grid_matches_the_models_own_packing():
    # Oracle: the model's pack_image_features applied to (crop, token) indices.
    from transformers.models.llava_onevision import modeling_llava_onevision as modeling

    model = tiny("llava_onevision").model
    inner = model.model
    inputs, _ = batch("llava_onevision", prompts=[[1, "img", 1, "img", 1, "img"], [2, "img", 2]],
                      seed=5)
    with attach(model, keep=10_000) as handle:
        logits(model, inputs)
    offset, expected = 0, []
    for size in inputs["image_sizes"].tolist():
        n = modeling.image_size_to_num_patches(size, inner.config.image_grid_pinpoints, 8)
        index = (torch.arange(offset, offset + n, dtype=torch.float64)[:, None] * 16
                 + torch.arange(16, dtype=torch.float64))[..., None]
        newline = torch.tensor([-1.0], dtype=torch.float64)
        packed, _ = inner.pack_image_features([index], torch.tensor([size]), image_newline=newline)
        expected.append(packed[0][:, 0].long().numpy())
        offset += n
    grids = set()
    for record, want in zip(sorted(handle.last, key=lambda r: r.index), expected):
        grid = record.grid
        assert grid is not None and grid.crop_grid is not None
        grids.add(grid.crop_grid)
        view, row, col = grid.token_source.T
        assert np.array_equal(view < 0, want < 0)   # newlines
        crop = np.where(view == 0, 0, 1 + (row // 4) * grid.crop_grid[1] + col // 4)
        token = (row % 4) * 4 + col % 4
        first = want[want >= 0].min() // 16
        assert np.array_equal(np.where(want < 0, -1, (first + crop) * 16 + token), want)
    assert len(grids) >= 2


def test_onevision_multi_image_rows_are_not_split_into_crops():
    # With batch_num_images (what the processor returns), an image of a multi-image prompt is
    # one crop and one newline: the whole crop is a raster, the newline stays.
    model = tiny("llava_onevision").model
    rng = torch.Generator().manual_seed(3)
    ids = [1, 5, 6, *[IMAGE_ID] * 17, 7, *[IMAGE_ID] * 17, 8, 9]
    inputs = {"input_ids": torch.tensor([ids]),
              "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "pixel_values": torch.randn(2, 5, 3, 8, 8, generator=rng),
              "image_sizes": torch.tensor([[16, 16], [5, 15]]),
              "batch_num_images": torch.tensor([2])}
    expected = logits(model, inputs)
    with attach(model, keep=10_000):
        torch.testing.assert_close(logits(model, inputs), expected, rtol=1e-5, atol=1e-5)
    with attach(model, keep=3) as handle:
        out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] == len(ids) + 2
    for record in handle.last:
        assert (record.n_tokens, record.tokens_before, record.tokens_after) == (17, 16, 3)
        assert record.kept[-1] == 16   # the newline
        source = record.grid.token_source
        assert source[-1].tolist() == [-1, -1, -1]
        assert source[:-1].tolist() == [[0, i // 4, i % 4] for i in range(16)]


def test_onevision_downscaled_canvas_keeps_the_newline_rule():
    # anyres_max_1 makes the model resample every high-resolution canvas (anyres_max_9 never
    # does at this size); newlines are still found by value.
    model = tiny("llava_onevision").model
    model.config.vision_aspect_ratio = "anyres_max_1"
    try:
        inputs, singles = batch("llava_onevision")
        expected = logits(model, inputs)
        with attach(model, keep=10_000):
            got = logits(model, inputs)
        records, _ = generate_batched_and_alone(model, inputs, singles, new_tokens=4, keep=2)
    finally:
        model.config.vision_aspect_ratio = "anyres_max_9"
    assert_close_on_valid(got, expected, inputs["attention_mask"])
    assert [r.tokens_after for r in records] == [2] * 4
    assert any(r.grid is None for r in records)   # a resampled canvas has no patch map


# --- LLaVA-OneVision video ------------------------------------------------------------------


def video_batch(frames, texts=((3, 2), (1, 5)), seed=0):
    """Rows of text, one video, text (one video per row), left-padded, and each row alone."""
    model = tiny("llava_onevision").model
    rng = torch.Generator().manual_seed(seed)
    videos = torch.randn(len(texts), frames, 3, 8, 8, generator=rng)
    per_video = frames * 4 + 1   # 2×2 pooled tokens per frame, then one newline

    def text(n):
        return torch.randint(3, VIDEO_ID - 1, (n,), generator=rng).tolist()

    rows = [[1, *text(before), *[VIDEO_ID] * per_video, *text(after)] for before, after in texts]
    length = max(map(len, rows))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row):] = torch.tensor(row)
        mask[b, length - len(row):] = 1
    singles = [{"input_ids": torch.tensor([row]),
                "attention_mask": torch.ones(1, len(row), dtype=torch.long),
                "pixel_values_videos": videos[b:b + 1]} for b, row in enumerate(rows)]
    return model, {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": videos}, singles


def test_onevision_video_prunes_per_video_and_generates_like_per_sample():
    model, inputs, singles = video_batch(frames=3)
    records, _ = generate_batched_and_alone(model, inputs, singles, new_tokens=4, keep=5)
    assert [(r.modality, r.row, r.n_tokens, r.tokens_before, r.tokens_after) for r in records] == \
        [("video", 0, 13, 12, 5), ("video", 1, 13, 12, 5)]
    assert all(r.kept[-1] == 12 for r in records)   # the closing newline stays
    with attach(model, keep=10_000):
        full = logits(model, inputs)
    torch.testing.assert_close(full, logits(model, inputs), rtol=1e-5, atol=1e-5)


def test_onevision_images_and_video_in_one_batch():
    model, video_inputs, _ = video_batch(frames=2, texts=((2, 1),))
    image_inputs, _ = batch("llava_onevision", prompts=[[2, "img", 1]])
    ids = torch.cat([image_inputs["input_ids"], video_inputs["input_ids"]], 1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": image_inputs["pixel_values"],
              "image_sizes": image_inputs["image_sizes"],
              "pixel_values_videos": video_inputs["pixel_values_videos"]}
    expected = logits(model, inputs)
    with attach(model, keep=10_000):
        torch.testing.assert_close(logits(model, inputs), expected, rtol=1e-5, atol=1e-5)
    with attach(model, keep=2) as handle:
        out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 2
    assert sorted(r.modality for r in handle.last) == ["image", "video"]
    assert all(r.tokens_after == 2 for r in handle.last)


def test_onevision_long_video_of_tens_of_thousands_of_tokens():
    model, inputs, _ = video_batch(frames=5000, texts=((4, 3),))
    assert inputs["input_ids"].shape[1] > 20_000
    start = time.perf_counter()
    with attach(model, keep=64) as handle:
        out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    elapsed = time.perf_counter() - start
    (record,) = handle.last
    assert record.n_tokens == 20_001 and record.tokens_after == 64
    assert handle.last_prefill.seq_len_after == 8 + 64 + 1
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    assert elapsed < 30
