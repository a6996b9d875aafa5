"""greedyprune.hf: what every architecture must satisfy, parametrized over all the tiny
random-weight models of tests/hf_models.py (``BUILDERS``), fp32.

Each property is checked against something independent of the hooks: the unhooked model, a
pruned input built by hand and run through the decoder directly (``reference_logits``: the
model's own M-RoPE positions and DeepStack features on Qwen, Gemma 3's bidirectional image-block
masks built by hand), per-sample generation, ``greedyprune.select`` on hand-computed features
and saliency, and the decoder's own unpruned inputs. What is specific to one family lives in
tests/test_hf_llava.py, tests/test_hf_qwen.py and tests/test_hf_more.py.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from greedyprune.hf import attach, supported_models  # noqa: E402

from hf_models import (BUILDERS, CLS_ARCHS, PROMPTS, QWEN_ARCHS,  # noqa: E402
                       QWEN_GENERATION_PROMPTS, QWEN_PROMPTS, WITH_ATTN,
                       assert_close_on_valid, assert_kept_is_select, batch, decoder_kwargs,
                       decoder_of, generate_batched_and_alone, hook_count, logits,
                       merged_inputs, placeholders, prompt_modalities, reference_logits, tiny)
from hf_models import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread here)

ARCHS = list(BUILDERS)
NO_CLS = [arch for arch in ARCHS if arch not in CLS_ARCHS]
#: Generation (the slowest check) under eager attention only on LLaVA and Gemma 3; Qwen's eager
#: prefill is checked by the keep-all and hand-built-reference tests.
GENERATE_WITH_ATTN = [(arch, attn) for arch, attn in WITH_ATTN
                      if attn == "sdpa" or arch not in QWEN_ARCHS]


# --- equivalences ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch,attn", WITH_ATTN)
def test_keeping_every_token_matches_the_unhooked_model(arch, attn):
    model = tiny(arch, attn).model
    inputs, _ = batch(arch)
    expected = logits(model, inputs)
    with attach(model, keep=10_000) as handle:
        got = logits(model, inputs)
    assert sorted(r.modality for r in handle.last) == prompt_modalities(PROMPTS[arch])
    assert all(r.tokens_after == r.tokens_before for r in handle.last)
    # Padding is dropped and re-added: compare the valid positions of each row.
    assert_close_on_valid(got, expected, inputs["attention_mask"])


@pytest.mark.parametrize("arch", ARCHS)
def test_detach_restores_the_model_bit_for_bit(arch):
    model = tiny(arch).model
    inputs, _ = batch(arch)
    expected = logits(model, inputs)
    expected_gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    # With every hook the architecture has ([CLS] recording too where there is one).
    handle = attach(model, keep=2, saliency="cls" if arch in CLS_ARCHS else "text")
    assert logits(model, inputs).shape[1] < expected.shape[1]
    assert hook_count(model) > 0
    handle.detach()
    assert hook_count(model) == 0
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


@pytest.mark.parametrize("arch,attn", WITH_ATTN)
def test_pruned_forward_matches_a_hand_built_reference(arch, attn):
    model = tiny(arch, attn).model
    inputs, _ = batch(arch)
    with attach(model, keep=2) as handle:
        got = logits(model, inputs)
    new_length, expected, valid = reference_logits(arch, model, inputs, handle.last)
    assert handle.last_prefill.seq_len_after == new_length < inputs["input_ids"].shape[1]
    assert got.shape == expected.shape
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,attn", GENERATE_WITH_ATTN)
def test_batched_generation_equals_per_sample_generation(arch, attn):
    model = tiny(arch, attn).model
    prompts = QWEN_GENERATION_PROMPTS if arch in QWEN_ARCHS else PROMPTS[arch]
    inputs, singles = batch(arch, prompts)
    records, prefill = generate_batched_and_alone(model, inputs, singles, keep=2)
    assert prefill.seq_len_after < inputs["input_ids"].shape[1]
    assert sorted(r.modality for r in records) == prompt_modalities(prompts)
    assert all(r.tokens_after == 2 for r in records)
    # generate() encodes the visual inputs before the prefill (and Qwen's drops *_grid_thw):
    # the patch grids come from the tower call.
    assert all(r.grid is not None for r in records)


@pytest.mark.parametrize("arch", ARCHS)
def test_manual_decoding_without_positions_or_mask_matches_generate(arch):
    # A hand-written decoding loop passes neither position_ids nor attention_mask (nor, for
    # Gemma 3, token_type_ids) after the prefill: the hook must number new tokens after the
    # *unpruned* prompt (Qwen numbers such a step itself from the shorter cache, and the entry's
    # decode_position_ids moves it back) and extend its own mask (Gemma 3: its mask dict).
    model = tiny(arch).model
    _, singles = batch(arch)
    single = singles[1]   # the row with the most images
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
    assert len(steps) == len(expected.logits) == 5
    for got, want in zip(steps, expected.logits):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- what is kept ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch,generate", [(arch, False) for arch in ARCHS]
                         + [(arch, True) for arch in QWEN_ARCHS])
def test_kept_tokens_keep_their_original_position_ids(arch, generate):
    # The position ids the unhooked decoder gets. For a forward: on Qwen its own [3, B, L]
    # M-RoPE ids; on the others generate()'s padding-aware numbering (different in every row),
    # passed as position_ids. In generate() on Qwen: its [4, B, L] ids (text axis first).
    model = tiny(arch).model
    inputs, _ = batch(arch)
    if not generate and arch not in QWEN_ARCHS:
        inputs = dict(inputs, position_ids=(inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0))
    unpruned = decoder_kwargs(model, inputs, generate)["position_ids"]
    assert unpruned.shape[-2:] == inputs["input_ids"].shape
    if arch in QWEN_ARCHS:
        assert unpruned.shape[0] == (4 if generate else 3)
    with attach(model, keep=2) as handle:
        seen = decoder_kwargs(model, inputs, generate)
    source = torch.from_numpy(handle.last_prefill.source_positions)
    kept = source >= 0
    if torch.is_tensor(seen["attention_mask"]):   # Gemma 3's decoder gets a dict of masks
        assert torch.equal(seen["attention_mask"].bool(), kept)
    expected = unpruned.gather(-1, source.clamp(min=0).expand(*unpruned.shape[:-2], -1, -1))
    got = seen["position_ids"]
    assert got.shape == expected.shape
    assert torch.equal(got[..., kept], expected[..., kept])
    assert seen["inputs_embeds"].shape[1] == source.shape[1]
    assert all(r.tokens_after == 2 for r in handle.last)
    for record in handle.last:   # the kept tokens are where the records say
        row = source[record.row]
        assert row[np.isin(row, record.kept_positions)].tolist() == record.kept_positions.tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_kept_set_equals_select_on_the_same_features_and_saliency(arch):
    model = tiny(arch).model
    inputs, _ = batch(arch)
    embeds, _, _ = merged_inputs(arch, model, inputs)
    valid = inputs["attention_mask"].bool()
    visual = placeholders(inputs)
    for saliency in ("text", "none"):
        lam = 0.3 if saliency == "text" else 0.0   # λ has no effect without saliency
        with attach(model, keep=3, lam=lam, saliency=saliency) as handle:
            logits(model, inputs)
        assert sorted(r.modality for r in handle.last) == prompt_modalities(PROMPTS[arch])
        for record in handle.last:
            b = record.row
            score = None
            if saliency == "text":   # cosine with the mean embedding of the row's text
                score = cosine_to(embeds[b, valid[b] & ~visual[b]].mean(0))
            candidates = assert_kept_is_select(model, embeds, inputs, record, 3, lam, score)
            assert record.tokens_before == candidates and record.tokens_after == 3


def cosine_to(anchor):
    """Saliency ``score(features, positions)``: each feature's cosine with ``anchor``."""
    return lambda features, positions: torch.nn.functional.cosine_similarity(
        features, anchor[None], dim=-1).numpy()


# --- refusals and the table -----------------------------------------------------------------


@pytest.mark.parametrize("arch", NO_CLS)
def test_cls_saliency_is_refused_for_towers_without_cls(arch):
    model = tiny(arch).model
    with pytest.raises(ValueError, match=r"\[CLS\].*saliency='text' or 'none'"):
        attach(model, keep=2, saliency="cls")
    with pytest.raises(ValueError, match=arch):
        attach(model.model, keep=2, saliency="cls")
    assert hook_count(model) == 0
    with attach(model, keep=2, saliency="none") as handle:
        logits(model, batch(arch)[0])
    assert handle.last


@pytest.mark.parametrize("arch", ARCHS)
def test_supported_with_the_inner_model_and_the_decoder_refused(arch):
    model = tiny(arch).model
    names = supported_models()
    assert type(model).__name__ in names and type(model.model).__name__ in names
    with pytest.raises(TypeError) as refused:
        attach(decoder_of(model), keep=4)
    assert all(name in str(refused.value) for name in names)   # naming what works
    assert hook_count(model) == 0


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llava_next", "qwen2_vl", "gemma3"])
def test_two_threads_generating_on_one_handle_get_the_sequential_answers(arch):
    # Two requests of different layouts. A pre-hook that runs before the pruning hook makes the
    # two threads meet at every decoder call, so that their prefills, decode steps and records
    # are in flight at the same time, every time; each must stay its thread's own.
    import threading

    model = tiny(arch).model
    prompts = QWEN_PROMPTS if arch in QWEN_ARCHS else PROMPTS[arch]
    requests = [batch(arch, prompts[:1], seed=1)[0], batch(arch, prompts[1:], seed=2)[0]]
    settings = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    meeting, together = threading.Barrier(2, timeout=2), threading.Event()

    def meet(module, args, kwargs):
        if together.is_set():
            try:
                meeting.wait()
            except threading.BrokenBarrierError:  # the other thread failed or is elsewhere
                pass

    meet_handle = decoder_of(model).register_forward_pre_hook(meet, with_kwargs=True)
    try:
        with attach(model, keep=2) as handle:
            expected = [(model.generate(**inputs, **settings), [r.kept for r in handle.last])
                        for inputs in requests]  # one at a time
            got, errors = [None, None], []

            def work(i):
                try:
                    for _ in range(2):
                        sequences = model.generate(**requests[i], **settings)
                        got[i] = (sequences, [r.kept for r in handle.last])
                except Exception as error:  # reported below, with the thread's number
                    errors.append((i, error))
                    meeting.abort()

            together.set()
            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            # This thread's own last prefill, whatever the others did since.
            mine = [r.kept for r in handle.last]
            assert len(mine) == len(expected[1][1])
            assert all(np.array_equal(a, b) for a, b in zip(mine, expected[1][1]))
    finally:
        meet_handle.remove()
    assert not errors, errors
    for i, ((sequences, kept), (want_sequences, want_kept)) in enumerate(zip(got, expected)):
        assert torch.equal(sequences, want_sequences), i
        assert len(kept) == len(want_kept) > 0
        assert all(np.array_equal(a, b) for a, b in zip(kept, want_kept)), i
