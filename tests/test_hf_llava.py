"""greedyprune.hf on LLaVA and LLaVA-NeXT: tiny random-weight models (tests/hf_models.py), fp32.

What is specific to LLaVA: [CLS] saliency against an eager-attention run of the vision tower,
LLaVA-NeXT's crop packing and newlines, and the argument checks, refusals and table mechanics
(exercised on LLaVA). The properties every architecture must satisfy are in
tests/test_hf_common.py.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from greedyprune import methods  # noqa: E402
from greedyprune.hf import DEFAULT_LAM, attach, supported_models  # noqa: E402

from hf_models import (IMAGE_ID, batch, decoder_kwargs, hook_count, logits,  # noqa: E402
                       merged_inputs, tiny, unit_positions)


# --- [CLS] saliency and methods -------------------------------------------------------------


def test_cls_saliency_is_the_eager_cls_attention_row_at_the_feature_layer():
    from greedyprune.hf import _prune

    model = tiny("llava").model
    inputs, _ = batch("llava")
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    captured = {}

    def record_cls(module, args, kwargs):
        captured.setdefault("rows", _prune.cls_attention(module, kwargs["hidden_states"]))

    with attach(model, keep=3, saliency="cls") as handle:
        hook = handle._cls_module.register_forward_pre_hook(record_cls, with_kwargs=True)
        logits(model, inputs)
        hook.remove()
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = tower(inputs["pixel_values"], output_attentions=True,
                          output_hidden_states=True)
    finally:
        tower.set_attn_implementation("sdpa")
    n_layers = model.config.vision_config.num_hidden_layers
    # hidden_states[layer] is the output of encoder layer (layer mod (L + 1)) - 1.
    produced_by = layer % (n_layers + 1) - 1
    expected = eager.attentions[produced_by][:, :, 0, :].mean(1)
    torch.testing.assert_close(captured["rows"], expected, rtol=1e-5, atol=1e-6)
    # ... and it is what the selector saw: top-k by it at lam=1 gives the same picks.
    with attach(model, keep=3, saliency="cls", lam=1.0) as handle:
        logits(model, inputs)
    for record in handle.last:
        top = np.sort(np.argsort(-expected[record.index, 1:].numpy(), kind="stable")[:3])
        assert record.kept.tolist() == top.tolist()


def test_cls_saliency_survives_generate_pre_encoding_images():
    # generate() runs get_image_features before the prefill and passes mm_encoder_outputs:
    # the [CLS] rows must follow that object.
    model = tiny("llava_next").model
    inputs, _ = batch("llava_next")
    with attach(model, keep=2, saliency="cls", lam=1.0) as handle:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        from_generate = [r.kept.tolist() for r in handle.last]
        logits(model, inputs)
        from_forward = [r.kept.tolist() for r in handle.last]
    assert from_generate == from_forward


@pytest.mark.parametrize("method", ["uniform", "random", "divprune"])
def test_methods_are_looked_up_by_name(method):
    model = tiny("llava").model
    inputs, _ = batch("llava")
    embeds, _, _ = merged_inputs("llava", model, inputs)
    with attach(model, keep=5, method=method, seed=3, saliency="none") as handle:
        logits(model, inputs)
    selector = methods.get(method)
    for record in handle.last:
        features = embeds[record.row, unit_positions(inputs, record)]
        assert record.kept.tolist() == selector(features, 5, None, seed=3).tolist()


def test_keep_ratio_and_oversized_keep():
    model = tiny("llava").model
    inputs, _ = batch("llava")
    with attach(model, keep_ratio=0.3) as handle:
        logits(model, inputs)
    assert {r.tokens_after for r in handle.last} == {5}  # ceil(0.3 · 16)
    with attach(model, keep=17) as handle:
        logits(model, inputs)
    assert all(r.tokens_after == r.tokens_before == 16 for r in handle.last)


# --- LLaVA-NeXT layout ----------------------------------------------------------------------


def test_next_layout_matches_the_models_own_packing():
    # Oracle: the model's pack_image_features applied to (crop, column) indices.
    model = tiny("llava_next").model
    inner = model.model
    inputs, _ = batch("llava_next", prompts=[[1, "img", 1, "img", 1, "img"], [2, "img", 2]],
                      seed=5)
    with attach(model, keep=10_000, saliency="cls") as handle:
        logits(model, inputs)
    import transformers.models.llava_next.modeling_llava_next as modeling

    per_crop = 17
    offset, expected = 0, []
    for size in inputs["image_sizes"].tolist():
        n = modeling.image_size_to_num_patches(size, inner.config.image_grid_pinpoints, 16)
        index = (torch.arange(offset, offset + n, dtype=torch.float64)[:, None] * per_crop
                 + torch.arange(1, per_crop, dtype=torch.float64))[..., None]
        packed, _ = inner.pack_image_features([index], torch.tensor([size]), "default",
                                              image_newline=torch.tensor([-1.0], dtype=torch.float64))
        expected.append(packed[0][:, 0].long().numpy())
        offset += n
    records = sorted(handle.last, key=lambda r: r.index)
    grids = set()
    for record, want in zip(records, expected):
        grid = record.grid
        assert grid is not None and grid.crop_grid is not None
        grids.add(grid.crop_grid)
        source = grid.token_source
        assert np.array_equal(source[:, 0] < 0, want < 0)  # newlines
        # (view, row, col) -> (crop, column) must reproduce the packing.
        crop = np.where(source[:, 0] == 0, 0,
                        1 + (source[:, 1] // 4) * grid.crop_grid[1] + source[:, 2] // 4)
        column = 1 + (source[:, 1] % 4) * 4 + source[:, 2] % 4
        first = want[want >= 0].min() // per_crop
        got = np.where(want < 0, -1, (first + crop) * per_crop + column)
        assert np.array_equal(got, want)
    assert len(grids) >= 2


def test_next_newlines_stay_with_their_rows():
    model = tiny("llava_next").model
    inputs, _ = batch("llava_next")
    with attach(model, keep=3) as handle:
        logits(model, inputs)
    for record in handle.last:
        source = record.grid.token_source
        newline = source[:, 0] < 0
        assert record.tokens_before == int((~newline).sum())
        kept = np.zeros(record.n_tokens, dtype=bool)
        kept[record.kept] = True
        assert int((kept & ~newline).sum()) == 3
        # Walk the rows of the high-resolution canvas: a newline survives iff its row does.
        row_has_kept = False
        for i in range(record.n_tokens):
            if newline[i]:
                assert kept[i] == row_has_kept, i
                row_has_kept = False
            elif source[i, 0] == 1:
                row_has_kept |= kept[i]


# --- refusals and arguments -----------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    model = tiny("llava").model
    with pytest.raises(ValueError, match="keep"):
        attach(model, keep=0)
    with pytest.raises(ValueError, match="keep_ratio"):
        attach(model, keep_ratio=1.5)
    with pytest.raises(ValueError, match="keep_ratio"):
        attach(model, keep_ratio=0.0)
    with pytest.raises(ValueError, match="exactly one of keep"):
        attach(model, keep=4, keep_ratio=0.5)
    with pytest.raises(ValueError, match="exactly one of keep"):
        attach(model)
    with pytest.raises(TypeError, match="keep"):
        attach(model, keep=2.5)
    with pytest.raises(ValueError, match="saliency"):
        attach(model, keep=4, saliency="attention")
    with pytest.raises(ValueError, match="method"):
        attach(model, keep=4, method="nope")
    with pytest.raises(ValueError, match="lam"):
        attach(model, keep=4, lam=1.5)
    with pytest.raises(ValueError, match="seed"):
        attach(model, keep=4, seed=-1)
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration"):
        attach(model.model.language_model, keep=4)
    with pytest.raises(TypeError, match="LlavaNextModel"):
        attach(torch.nn.Linear(2, 2), keep=4)
    # Numbers beyond float's range are out of range, not an OverflowError.
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got 1000.*\.\.\..*000$"):
        attach(model, keep=4, lam=10**400)
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\], got 1000.*\.\.\."):
        attach(model, keep_ratio=10**400)
    with pytest.raises(ValueError, match="keep_ratio must be in .*, got nan"):
        attach(model, keep_ratio=float("nan"))
    # A selector that needs saliency is refused without it when attaching, not at every call.
    with pytest.raises(ValueError, match="method 'topk' needs saliency: use saliency='text'"):
        attach(model, keep=4, method="topk", saliency="none")
    assert hook_count(model) == 0
    with attach(model, keep=2, method="topk", saliency="text") as handle:
        logits(model, batch("llava")[0])
    assert all(r.tokens_after == 2 for r in handle.last)


def test_lam_with_saliency_none_warns_when_given_to_greedyprune():
    model = tiny("llava").model
    inputs, _ = batch("llava")

    def kept(**options):
        with attach(model, keep=3, saliency="none", **options) as handle:
            logits(model, inputs)
        return [r.kept.tolist() for r in handle.last]

    with pytest.warns(UserWarning, match=r"lam=0\.3 has no effect with saliency='none'") as got:
        attach(model, keep=3, lam=0.3, saliency="none").detach()
    assert len(got) == 1 and got[0].filename == __file__  # points at the caller's line
    # What it says is so: any lam < 1 keeps what lam = 0 keeps; lam = 1 the first k tokens.
    with pytest.warns(UserWarning, match="no effect"):
        at_03 = kept(lam=0.3)
    assert at_03 == kept(lam=0.0)
    with pytest.warns(UserWarning, match="first k tokens"):
        assert kept(lam=1.0) == [[0, 1, 2]] * len(at_03)
    assert hook_count(model) == 0


def test_no_lam_warning_for_the_default_or_where_lam_matters_or_is_unused():
    import warnings

    model = tiny("llava").model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for options in (dict(saliency="none"), dict(saliency="none", lam=0.0),
                        dict(saliency="text", lam=0.3), dict(saliency="cls", lam=1.0),
                        dict(saliency="none", lam=0.3, method="divprune")):
            handle = attach(model, keep=3, **options)
            handle.detach()
    handle = attach(model, keep=3, saliency="none")  # lam left out means DEFAULT_LAM, 0
    assert handle.lam == DEFAULT_LAM == 0.0 and "lam=0.0" in repr(handle)
    handle.detach()
    assert hook_count(model) == 0


def test_lam_auto_prunes_each_image_with_the_lam_of_its_kept_fraction(monkeypatch):
    from greedyprune import config as config_module

    model = tiny("llava").model
    inputs, _ = batch("llava")
    # A table with a step inside the tiny model's 16 tokens per image: λ 0.75 up to 25%.
    monkeypatch.setattr(config_module, "AUTO_LAM", {"text": ((0.25, 0.75),)})
    seen = []

    def recording(features, k, saliency=None, *, lam=0.5, seed=0):
        seen.append((k, lam))
        return methods.get("greedyprune")(features, k, saliency, lam=lam, seed=seed)

    with methods.registered("_recording", recording) as name:
        for keep, lam in ((4, 0.75), (5, 0.0)):   # 4/16 and 5/16 of the tokens
            with attach(model, keep=keep, lam="auto", saliency="text", method=name) as auto:
                logits(model, inputs)
            with attach(model, keep=keep, lam=lam, saliency="text") as fixed:
                logits(model, inputs)
            assert [r.kept.tolist() for r in auto.last] == [r.kept.tolist() for r in fixed.last]
            assert {lam_seen for _, lam_seen in seen} == {lam} and auto.lam == "auto"
            seen.clear()


def test_supported_models_come_from_the_table():
    from greedyprune.hf import _archs

    names = supported_models()
    # Other architectures follow in the table (see tests/test_hf_more.py).
    assert names[:4] == ["LlavaForConditionalGeneration", "LlavaModel",
                         "LlavaNextForConditionalGeneration", "LlavaNextModel"]
    assert names == [name for spec in _archs.ARCHS.values() for name in spec.classes]


def test_unsupported_generation_modes_are_refused():
    model = tiny("llava").model
    inputs, singles = batch("llava")
    with attach(model, keep=3):
        with pytest.raises(ValueError, match="static or compilable cache"):
            model.generate(**inputs, max_new_tokens=2, do_sample=False,
                           cache_implementation="static")
        # Prompt lookup proposes several tokens at once when the prompt's last bigram (7, 8)
        # occurred before.
        ids = torch.tensor([[1, 7, 8, 9, 10, 11] + [IMAGE_ID] * 16 + [7, 8]])
        with pytest.raises(ValueError, match="not supported on a pruned cache"):
            model.generate(input_ids=ids, pixel_values=singles[0]["pixel_values"],
                           max_new_tokens=3, do_sample=False, prompt_lookup_num_tokens=2)
        with torch.no_grad():
            out = model(**singles[0], use_cache=True)
            follow = torch.cat([singles[0]["input_ids"], torch.tensor([[5, 6]])], 1)
            with pytest.raises(ValueError, match="not supported on a pruned cache"):
                model(input_ids=follow[:, -2:], cache=out.cache)
            with pytest.raises(ValueError, match="labels"):
                model(**singles[0], labels=singles[0]["input_ids"])
            # A cache this handle never pruned, with new images: refused, not mis-pruned.
            with pytest.raises(ValueError, match="past_key_values"):
                model(**singles[0], cache=_text_cache(model))
    assert hook_count(model) == 0


def _text_cache(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 5, 6]]), use_cache=True).cache


def test_text_only_calls_pass_through():
    model = tiny("llava").model
    ids = {"input_ids": torch.tensor([[1, 5, 6, 7]])}
    expected = model.generate(**ids, max_new_tokens=3, do_sample=False)
    with attach(model, keep=1) as handle:
        got = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(got, expected) and handle.last == []


def test_importing_greedyprune_hf_does_not_import_torch():
    code = ("import sys, greedyprune, greedyprune.hf; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_new_table_entry_plugs_in_with_per_token_mask_inputs():
    # An architecture is one ArchSpec. This one is LLaVA's entry under another class name, with
    # a decoder_mask callback standing in for Gemma 3's mask builder: it must receive the
    # per-token inputs (here input_ids) gathered at the kept positions, then extended by each
    # decoding step, always aligned with the 2-D mask.
    import dataclasses

    from transformers import LlavaForConditionalGeneration

    from greedyprune.hf import _archs

    class PluggedLlava(LlavaForConditionalGeneration):
        pass

    seen = []

    def decoder_mask(inner, mask, kwargs, per_token):
        assert per_token["input_ids"].shape == mask.shape
        seen.append(per_token["input_ids"].clone())
        return mask

    spec = dataclasses.replace(_archs.ARCHS["llava"], name="plugged", top_classes=("PluggedLlava",),
                               inner_classes=(), mask_inputs=("input_ids",),
                               decoder_mask=decoder_mask)
    _archs.register(spec)
    try:
        base = tiny("llava").model
        model = PluggedLlava(base.config).eval()
        model.load_state_dict(base.state_dict())
        inputs, _ = batch("llava")
        with attach(model, keep=2) as handle:
            assert handle.arch == "plugged"
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
            with attach(base, keep=2):
                assert torch.equal(out, base.generate(**inputs, max_new_tokens=3, do_sample=False))
    finally:
        del _archs.ARCHS["plugged"]
    source = torch.from_numpy(handle.last_prefill.source_positions)
    prefill_ids = inputs["input_ids"].gather(1, source.clamp(min=0))
    assert torch.equal(seen[0][source >= 0], prefill_ids[source >= 0])
    assert len(seen) == 3  # the prefill and two decoding steps
    assert torch.equal(seen[-1][:, -2:], out[:, -3:-1])
    assert "PluggedLlava" not in supported_models()


@pytest.mark.parametrize("saliency", ["text", "cls"])
def test_bfloat16_model_prunes_and_generates(saliency):
    import copy

    model = copy.deepcopy(tiny("llava_next").model).to(torch.bfloat16)
    inputs, _ = batch("llava_next")
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    with attach(model, keep=3, saliency=saliency) as handle:
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert [r.tokens_after for r in handle.last] == [3] * 4


def test_gradients_flow_through_the_kept_tokens():
    # Selecting needs no gradient, but the shorter inputs are gathered with autograd, so a
    # pruned model can be fine-tuned.
    import copy

    model = copy.deepcopy(tiny("llava").model)
    inputs, _ = batch("llava")
    with attach(model, keep=3):
        model(**inputs).logits.square().mean().backward()
    assert model.model.multi_modal_projector.linear_2.weight.grad.abs().sum() > 0


def test_next_features_encoded_without_the_hooks_keep_the_newline_rule():
    # Features the hooks never saw (encoded before attach): the newlines are still found by
    # value, but the patch grid cannot be confirmed, so saliency="cls" refuses.
    model = tiny("llava_next").model
    inputs, _ = batch("llava_next")
    with torch.no_grad():
        encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                                 return_dict=True)
    text_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    with attach(model, keep=3) as handle:
        with torch.no_grad():
            model(**text_inputs, mm_encoder_outputs={"image": encoded})
        records = handle.last
    with attach(model, keep=3) as reference:
        logits(model, inputs)
    for got, want in zip(records, reference.last):
        assert got.grid is None and want.grid is not None
        assert got.kept.tolist() == want.kept.tolist()
    with attach(model, keep=3, saliency="cls"):
        with pytest.raises(ValueError, match="saliency='cls'"), torch.no_grad():
            model(**text_inputs, mm_encoder_outputs={"image": encoded})


def test_per_token_arguments_passed_through_to_the_decoder_are_gathered():
    # A processor may return mm_token_type_ids; LLaVA hands it to its decoder, which ignores
    # it. The hook gathers it with the tokens rather than leave it at the unpruned length.
    model = tiny("llava").model
    inputs, _ = batch("llava")
    types = (inputs["input_ids"] == IMAGE_ID).long()
    with attach(model, keep=2) as handle:
        seen = decoder_kwargs(model, dict(inputs, mm_token_type_ids=types))
    source = torch.from_numpy(handle.last_prefill.source_positions)
    expected = types.gather(1, source.clamp(min=0)).masked_fill(source < 0, 0)
    assert torch.equal(seen["mm_token_type_ids"], expected)
