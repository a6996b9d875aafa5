"""greedyprune.hf on Qwen2-VL, Qwen2.5-VL and Qwen3-VL: tiny random-weight models
(tests/hf_models.py), fp32, images and videos, M-RoPE positions.

What is specific to Qwen: the M-RoPE numbering of decoding steps, the patch grids checked
against the model's own ``get_rope_index`` positions, videos (one budget per video, tens of
thousands of tokens), and drawing a record. The properties every architecture must satisfy
(with Qwen's M-RoPE positions and DeepStack features in the hand-built reference, and a
text-only row in batched generation) are in tests/test_hf_common.py.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from greedyprune.hf import attach  # noqa: E402

from hf_models import (QWEN_ARCHS, QWEN_VIDEO_ID, _qwen_visual, batch,  # noqa: E402
                       logits, merged_inputs, tiny)

ARCHS = list(QWEN_ARCHS)


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_steps_are_numbered_as_in_the_unpruned_model(arch):
    # The same hand-written loop on the padded batch, unhooked and pruned: each step's M-RoPE
    # position ids reaching the decoder are the same (every axis, every row).
    model = tiny(arch).model
    inputs, _ = batch(arch)

    def decode_positions():
        seen = []

        def spy(module, args, kwargs):
            seen.append(kwargs["position_ids"].clone())

        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            hook = model.model.language_model.register_forward_pre_hook(spy, with_kwargs=True)
            try:
                for token in (5, 6, 7):
                    out = model(input_ids=torch.full((3, 1), token), cache=out.cache)
            finally:
                hook.remove()
        return seen

    expected = decode_positions()
    with attach(model, keep=2):
        got = decode_positions()
    assert len(got) == 3
    for step, (g, e) in enumerate(zip(got, expected)):
        assert torch.equal(g, e), step


# --- positions, records ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_patch_grids_follow_the_models_own_positions(arch):
    # Oracle: get_rope_index gives each visual token (t, h, w) positions offset from its
    # unit's start; the record's PatchGrid must say the same row and column.
    model = tiny(arch).model
    inputs, _ = batch(arch)
    _, positions, _ = merged_inputs(arch, model, inputs)
    with attach(model, keep=10_000) as handle:
        logits(model, inputs)
    for record in handle.last:
        grid = record.grid
        assert grid is not None and grid.token_source.shape == (record.n_tokens, 3)
        pos = positions[:, record.row, record.kept_positions].numpy()
        views = grid.token_source[:, 0]
        for view in np.unique(views):  # Qwen3-VL numbers each frame pair from its own start
            here = views == view
            assert np.array_equal(pos[1, here] - pos[1, here].min(), grid.token_source[here, 1])
            assert np.array_equal(pos[2, here] - pos[2, here].min(), grid.token_source[here, 2])
        if record.modality == "image":
            assert (views == 0).all()
        else:  # one view per frame pair, in order
            t = int(views.max()) + 1
            assert t > 1 and np.array_equal(views, np.repeat(np.arange(t), record.n_tokens // t))


# --- video ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_video_prunes_per_video_and_generates(arch):
    model = tiny(arch).model
    inputs, singles = batch(arch, prompts=[[2, "vid", 3], [1, "vid", 1, "vid", 2]], seed=3)
    if arch == "qwen2_5_vl":  # seconds per frame pair: spaces the videos' temporal positions
        inputs["second_per_grid_ts"] = torch.tensor([0.5, 1.0, 2.0])
        singles[1]["second_per_grid_ts"] = torch.tensor([1.0, 2.0])
    with attach(model, keep_ratio=0.25) as handle:
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        records = handle.last
        alone = model.generate(**singles[1], max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    assert torch.equal(out[1, -4:], alone[0, -4:])
    assert [r.modality for r in records] == ["video"] * 3
    assert [r.row for r in records] == [0, 1, 1]
    for record, (t, h, w) in zip(records, inputs["video_grid_thw"].tolist()):
        assert record.n_tokens == t * h * w // 4
        assert record.tokens_after == -(-record.n_tokens // 4)  # ceil: the budget is per video


def test_a_video_of_tens_of_thousands_of_tokens_prunes():
    # 80 frame pairs of 32×32 patches: 20,480 video tokens in one prompt. The selection is
    # O(N) in memory (an N×N matrix would be 1.6 GB); the decoder sees only the kept tokens.
    tiny_model = tiny("qwen2_vl")
    model = tiny_model.model
    visual = _qwen_visual([(80, 32, 32)], "video", torch.Generator().manual_seed(0))
    n = 80 * 32 * 32 // 4
    ids = torch.tensor([[1, 5, 96] + [QWEN_VIDEO_ID] * n + [95, 6, 7]])
    inputs = dict(visual, input_ids=ids, attention_mask=torch.ones_like(ids),
                  mm_token_type_ids=(ids == QWEN_VIDEO_ID).long() * 2)
    with attach(model, keep=64) as handle:
        out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    (record,) = handle.last
    assert record.n_tokens == n == 20_480 and record.tokens_after == 64
    assert handle.last_prefill.seq_len_after == ids.shape[1] - n + 64
    assert out.shape[1] == ids.shape[1] + 2


# --- pictures -------------------------------------------------------------------------------


def test_records_of_an_image_can_be_drawn():
    pytest.importorskip("PIL")
    from greedyprune import viz

    model = tiny("qwen2_vl").model
    inputs, _ = batch("qwen2_vl")
    with attach(model, keep=3) as handle:
        logits(model, inputs)
    record = next(r for r in handle.last if r.modality == "image")
    rows = int(record.grid.token_source[:, 1].max()) + 1
    cols = int(record.grid.token_source[:, 2].max()) + 1
    picture = np.zeros((rows * 10, cols * 10, 3), dtype=np.uint8) + 200
    drawn = viz.draw_record(picture, record)
    # The record carries the greedy rule's pick order: the drawing numbers the picks.
    assert sorted(record.order.tolist()) == record.kept.tolist()
    expected = viz.draw_kept(picture, None, viz.Panel(rows, cols), order=record.order)
    assert np.array_equal(np.asarray(drawn), np.asarray(expected))
