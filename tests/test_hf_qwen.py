"""greedyprune.hf on Qwen2-VL, Qwen2.5-VL and Qwen3-VL: tiny random-weight models
(tests/hf_models.py), fp32, images and videos, M-RoPE positions.

Every property is checked against something independent of the hooks: the unhooked model, a
pruned input built by hand (the model's own ``get_rope_index`` positions, its DeepStack
features on Qwen3-VL) and run through the language model directly, per-sample generation,
``greedyprune.select`` on hand-computed features and saliency, and the model's M-RoPE
positions for the patch grids in the records.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import greedyprune  # noqa: E402
from greedyprune.hf import attach, supported_models  # noqa: E402

from hf_models import (BUILDERS, IMAGE_ID, QWEN_VIDEO_ID, make_qwen_batch,  # noqa: E402
                       _qwen_visual)

ARCHS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
#: Left padding, 1 / 2 / 0 images and 0 / 1 / 1 videos per row, images and videos mixed.
PROMPTS = [[3, "img", 2], [1, "img", 2, "vid", 1, "img", 1], [2, "vid", 1]]
PLACEHOLDERS = (IMAGE_ID, QWEN_VIDEO_ID)

_cache = {}


def tiny(arch: str, attn: str = "sdpa"):
    key = (arch, attn)
    if key not in _cache:
        _cache[key] = BUILDERS[arch](attn)
    return _cache[key]


def batch(arch, prompts=PROMPTS, seed=0):
    return make_qwen_batch(tiny(arch), prompts, seed=seed)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def placeholders(inputs):
    ids = inputs["input_ids"]
    return (ids == IMAGE_ID) | (ids == QWEN_VIDEO_ID)


def merged_inputs(model, inputs):
    """By hand, from the model's own pieces: the merged ``inputs_embeds``, the M-RoPE position
    ids of the full sequence (3, B, L), and on Qwen3-VL the DeepStack features of each
    position (layers, B, L, D; zero off the visual tokens)."""
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


def _decoder_kwargs(model, inputs, generate=False):
    """The keyword arguments the decoder receives (after the pruning hook) at the prefill."""
    seen = []

    def spy(module, args, kwargs):
        seen.append(dict(kwargs))

    spy_handle = model.model.language_model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        if generate:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        else:
            logits(model, inputs)
    finally:
        spy_handle.remove()
    return seen[0]


def _hook_count(model):
    from greedyprune.hf import PruneHandle

    return sum(isinstance(getattr(hook, "__self__", None), PruneHandle)
               for m in model.modules()
               for hook in [*m._forward_pre_hooks.values(), *m._forward_hooks.values()])


# --- equivalences ---------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_keeping_every_token_matches_the_unhooked_model(arch, attn):
    model = tiny(arch, attn).model
    inputs, _ = batch(arch)
    expected = logits(model, inputs)
    with attach(model, keep=10_000) as handle:
        got = logits(model, inputs)
    assert {r.modality for r in handle.last} == {"image", "video"}
    assert all(r.tokens_after == r.tokens_before for r in handle.last)
    valid = inputs["attention_mask"].bool()
    for b in range(len(valid)):
        n = int(valid[b].sum())
        torch.testing.assert_close(got[b, -n:], expected[b, valid[b]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_detach_restores_the_model_bit_for_bit(arch):
    model = tiny(arch).model
    inputs, _ = batch(arch)
    expected = logits(model, inputs)
    expected_gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    handle = attach(model, keep=2)
    pruned = logits(model, inputs)
    assert pruned.shape[1] < expected.shape[1]
    assert _hook_count(model) > 0
    handle.detach()
    assert _hook_count(model) == 0
    assert not any(hasattr(m, "_greedyprune_handle") for m in model.modules())
    assert torch.equal(logits(model, inputs), expected)
    assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), expected_gen)


@pytest.mark.parametrize("arch", ARCHS)
def test_attaching_to_the_inner_model_prunes_the_same(arch):
    model = tiny(arch).model
    inputs, _ = batch(arch)
    with attach(model, keep=3):
        top = logits(model, inputs)
    with attach(model.model, keep=3) as handle:
        inner = logits(model, inputs)
        assert handle.last
    assert torch.equal(top, inner)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_forward_matches_a_hand_built_reference(arch, attn):
    model = tiny(arch, attn).model
    inputs, _ = batch(arch)
    with attach(model, keep=3) as handle:
        got = logits(model, inputs)

    # Every valid text token and the kept image and video tokens, in order, with the model's
    # own M-RoPE positions of the full sequence on all three axes, left-padded; on Qwen3-VL
    # the DeepStack features of the kept visual tokens.
    embeds, positions, deepstack = merged_inputs(model, inputs)
    valid = inputs["attention_mask"].bool()
    visual = placeholders(inputs)
    text = valid & ~visual
    rows = []
    for b in range(len(embeds)):
        kept = set(np.flatnonzero(text[b].numpy()).tolist())
        for record in handle.last:
            if record.row == b:
                kept |= set(record.kept_positions.tolist())
        rows.append(sorted(kept))
    new_length = max(map(len, rows))
    batch_size = len(rows)
    new_embeds = torch.zeros(batch_size, new_length, embeds.shape[-1])
    new_positions = torch.zeros(3, batch_size, new_length, dtype=torch.long)
    new_mask = torch.zeros(batch_size, new_length, dtype=torch.long)
    new_visual = torch.zeros(batch_size, new_length, dtype=torch.bool)
    new_deep = None if deepstack is None else torch.zeros(len(deepstack), batch_size, new_length,
                                                          embeds.shape[-1])
    for b, kept in enumerate(rows):
        start = new_length - len(kept)
        new_embeds[b, start:] = embeds[b, kept]
        new_positions[:, b, start:] = positions[:, b, kept]
        new_mask[b, start:] = 1
        new_visual[b, start:] = visual[b, kept]
        if new_deep is not None:
            new_deep[:, b, start:] = deepstack[:, b, kept]
    assert handle.last_prefill.seq_len_after == new_length
    extra = {}
    if new_deep is not None:
        extra = dict(visual_pos_masks=new_visual,
                     deepstack_visual_embeds=[layer[new_visual] for layer in new_deep])
    with torch.no_grad():
        hidden = model.model.language_model(inputs_embeds=new_embeds, attention_mask=new_mask,
                                            position_ids=new_positions, **extra).last_hidden_state
        expected = model.lm_head(hidden)
    for b, kept in enumerate(rows):
        torch.testing.assert_close(got[b, -len(kept):], expected[b, -len(kept):],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prompts", [PROMPTS, [[6], [2, "vid", 1, "img", 2], [1, "img", 1]]],
                         ids=["mixed", "text-only-row"])
@pytest.mark.parametrize("arch", ARCHS)
def test_batched_generation_equals_per_sample_generation(arch, prompts):
    model = tiny(arch).model
    inputs, singles = batch(arch, prompts)
    settings = dict(max_new_tokens=5, do_sample=False, output_logits=True,
                    return_dict_in_generate=True)
    with attach(model, keep=3) as handle:
        together = model.generate(**inputs, **settings)
        assert handle.last_prefill.seq_len_after < inputs["input_ids"].shape[1]
        # generate() encodes the visual inputs first and drops *_grid_thw: the grids come from
        # the tower call.
        assert all(r.grid is not None for r in handle.last)
        alone = [model.generate(**single, **settings) for single in singles]
    for b, single in enumerate(alone):
        assert torch.equal(together.sequences[b, -5:], single.sequences[0, -5:]), b
        for step, (got, want) in enumerate(zip(together.logits, single.logits)):
            torch.testing.assert_close(got[b], want[0], rtol=1e-4, atol=1e-4,
                                       msg=f"row {b}, step {step}")


@pytest.mark.parametrize("arch", ARCHS)
def test_manual_decoding_without_positions_or_mask_matches_generate(arch):
    # A hand-written loop passes neither position_ids nor attention_mask: Qwen numbers such a
    # step itself from the cache length (plus its rope_deltas) before the decoder is reached,
    # and the pruned cache is shorter. The entry's decode_position_ids moves it back.
    model = tiny(arch).model
    _, singles = batch(arch)
    single = singles[1]  # two images and a video
    with attach(model, keep=2) as handle:
        expected = model.generate(**single, max_new_tokens=5, do_sample=False,
                                  output_logits=True, return_dict_in_generate=True)
        with torch.no_grad():
            out = model(**single, use_cache=True)
            assert handle.last_prefill.seq_len_after < single["input_ids"].shape[1]
            steps = [out.logits[:, -1]]
            for token in expected.sequences[0, -5:-1].tolist():
                out = model(input_ids=torch.tensor([[token]]), cache=out.cache)
                steps.append(out.logits[:, -1])
    for got, want in zip(steps, expected.logits):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


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


# --- positions, records, selection ----------------------------------------------------------


@pytest.mark.parametrize("generate", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_kept_tokens_keep_their_position_ids_on_every_axis(arch, generate):
    # forward: the model's [3, B, L] M-RoPE ids; generate(): its [4, B, L] ids (text axis first).
    model = tiny(arch).model
    inputs, _ = batch(arch)
    unpruned = _decoder_kwargs(model, inputs, generate)["position_ids"]
    assert unpruned.shape[:2] == ((4 if generate else 3), 3)
    with attach(model, keep=2) as handle:
        seen = _decoder_kwargs(model, inputs, generate)
    source = torch.from_numpy(handle.last_prefill.source_positions)
    mask = seen["attention_mask"].bool()
    assert torch.equal(mask, source >= 0)
    expected = unpruned.gather(-1, source.clamp(min=0).expand(unpruned.shape[0], -1, -1))
    got = seen["position_ids"]
    assert got.shape == expected.shape
    assert torch.equal(got[:, mask], expected[:, mask])
    assert all(r.tokens_after == 2 for r in handle.last)
    for record in handle.last:  # the kept tokens are where the records say
        row = source[record.row]
        assert row[np.isin(row, record.kept_positions)].tolist() == record.kept_positions.tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_patch_grids_follow_the_models_own_positions(arch):
    # Oracle: get_rope_index gives each visual token (t, h, w) positions offset from its
    # unit's start; the record's PatchGrid must say the same row and column.
    model = tiny(arch).model
    inputs, _ = batch(arch)
    _, positions, _ = merged_inputs(model, inputs)
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


@pytest.mark.parametrize("saliency", ["text", "none"])
@pytest.mark.parametrize("arch", ARCHS)
def test_kept_set_equals_select_on_the_same_features_and_saliency(arch, saliency):
    model = tiny(arch).model
    inputs, _ = batch(arch)
    embeds, _, _ = merged_inputs(model, inputs)
    valid = inputs["attention_mask"].bool()
    visual = placeholders(inputs)
    with attach(model, keep=4, lam=0.3, saliency=saliency) as handle:
        logits(model, inputs)
    assert sorted(r.modality for r in handle.last) == ["image"] * 3 + ["video"] * 2
    for record in handle.last:
        features = embeds[record.row, _unit_positions(inputs, record)]
        score = None
        if saliency == "text":
            anchor = embeds[record.row, valid[record.row] & ~visual[record.row]].mean(0)
            score = torch.nn.functional.cosine_similarity(features, anchor[None], dim=-1).numpy()
        picks = greedyprune.select(features.numpy(), 4, score, 0.3)
        assert record.kept.tolist() == picks.tolist()
        assert record.tokens_before == record.n_tokens and record.tokens_after == 4


def _unit_positions(inputs, record):
    """Sequence positions of the record's image or video: its run among the row's
    placeholders of that modality (a Qwen3-VL video spans several runs)."""
    token = IMAGE_ID if record.modality == "image" else QWEN_VIDEO_ID
    row = np.flatnonzero((inputs["input_ids"][record.row] == token).numpy())
    start = int(np.searchsorted(row, record.kept_positions[0])) - int(record.kept[0])
    return row[start:start + record.n_tokens]


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


# --- refusals, table, pictures --------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_cls_saliency_is_refused_naming_what_works(arch):
    model = tiny(arch).model
    with pytest.raises(ValueError, match=r"\[CLS\].*saliency='text' or 'none'"):
        attach(model, keep=4, saliency="cls")
    with pytest.raises(ValueError, match=arch):
        attach(model.model, keep=4, saliency="cls")
    assert _hook_count(model) == 0


def test_supported_models_list_the_qwen_family():
    names = supported_models()
    for name in ("Qwen2VLForConditionalGeneration", "Qwen2VLModel",
                 "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel",
                 "Qwen3VLForConditionalGeneration", "Qwen3VLModel"):
        assert name in names
    with pytest.raises(TypeError, match="Qwen3VLForConditionalGeneration"):
        attach(tiny("qwen2_vl").model.model.language_model, keep=4)


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
    expected = viz.draw_kept(picture, record.kept, viz.Panel(rows, cols))
    assert np.array_equal(np.asarray(drawn), np.asarray(expected))
