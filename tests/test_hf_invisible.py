"""greedyprune.hf is invisible when it prunes nothing and correct when it does: the properties
transformers' own model tests check (padding on either side, masks with zeros anywhere, packed
rows, output shapes, continuing from a returned cache, saving while hooked, other heads), on
the tiny random-weight models of tests/hf_models.py.

With a budget that keeps every token, each hooked call must give exactly (bit for bit) what the
plain model gives, and nothing may be refused; with a real budget, the packed rows, masked
placeholders, Gemma 3's token count and ``use_cache=False`` generation are checked against
independent references.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from greedyprune.hf import attach  # noqa: E402

from hf_models import (BUILDERS, IMAGE_ID, PAD_ID, QWEN_ARCHS, SIGLIP_CONFIG,  # noqa: E402
                       TEXT_CONFIG, VIDEO_ID, batch, hook_count, logits, tiny)
from hf_models import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread here)

ARCHS = list(BUILDERS)
ALL = 10 ** 9  # a budget that keeps every token
#: Random weights may generate a placeholder id, which a later step would read as an image.
SPECIAL = [IMAGE_ID, VIDEO_ID]


def _per_token_names(inputs):
    ids = inputs["input_ids"]
    return [name for name, value in inputs.items()
            if isinstance(value, torch.Tensor) and value.shape == ids.shape]


def _repadded(inputs, side: str, extra: int = 0):
    """The batch with each row's tokens moved to ``side`` ("left" or "right") and ``extra``
    more padding columns for every row."""
    names = _per_token_names(inputs)
    mask = inputs["attention_mask"].bool()
    length = mask.shape[1] + extra
    out = dict(inputs)
    for name in names:
        value = inputs[name]
        fill = PAD_ID if name == "input_ids" else 0
        new = torch.full((len(value), length), fill, dtype=value.dtype)
        for b in range(len(value)):
            row = value[b, mask[b]]
            if side == "left":
                new[b, length - len(row):] = row
            else:
                new[b, :len(row)] = row
        out[name] = new
    return out


def _mask_variants(arch):
    inputs, _ = batch(arch)
    right = _repadded(inputs, "right")
    holes = dict(inputs)
    holes["attention_mask"] = inputs["attention_mask"].clone()
    text = (inputs["attention_mask"][0] == 1) & (inputs["input_ids"][0] != IMAGE_ID)
    holes["attention_mask"][0, int(np.flatnonzero(text.numpy())[1])] = 0  # a text token inside
    masked_images = dict(inputs)
    masked_images["attention_mask"] = inputs["attention_mask"].clone()
    masked_images["attention_mask"][0, np.flatnonzero((inputs["input_ids"][0] == IMAGE_ID)
                                                      .numpy())[:2]] = 0
    variants = {"left": inputs, "every row padded": _repadded(inputs, "left", extra=2),
                "right": right}
    if arch not in QWEN_ARCHS:  # Qwen's M-RoPE numbering itself refuses zeros inside a row
        variants.update({"zeros inside": holes, "masked placeholders": masked_images})
    return variants


def _outputs(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_budget_that_keeps_everything_changes_nothing(arch):
    model = tiny(arch).model
    for name, inputs in _mask_variants(arch).items():
        expected = _outputs(model, inputs, output_hidden_states=True)
        with attach(model, keep=ALL) as handle:
            got = _outputs(model, inputs, output_hidden_states=True)
        assert torch.equal(got.logits, expected.logits), name
        assert len(got.hidden_states) == len(expected.hidden_states), name
        assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, expected.hidden_states))
        assert got.cache.get_seq_length() == expected.cache.get_seq_length()
        records = handle.last
        assert records and all(r.tokens_after == r.tokens_before for r in records), name
        assert handle.last_prefill.seq_len_after == handle.last_prefill.seq_len_before
    assert hook_count(model) == 0


@pytest.mark.parametrize("arch", ["llava", "gemma3", "qwen2_vl"])
def test_a_budget_that_keeps_everything_keeps_shapes_and_tuples(arch):
    model = tiny(arch, "eager").model
    inputs, _ = batch(arch)
    plain = _outputs(model, inputs, output_attentions=True, logits_to_keep=1)
    plain_tuple = _outputs(model, inputs, return_dict=False)
    with attach(model, keep=ALL):
        got = _outputs(model, inputs, output_attentions=True, logits_to_keep=1)
        got_tuple = _outputs(model, inputs, return_dict=False)
    assert got.logits.shape == plain.logits.shape and torch.equal(got.logits, plain.logits)
    assert [a.shape for a in got.attentions] == [a.shape for a in plain.attentions]
    assert torch.equal(got_tuple[0], plain_tuple[0])


def test_a_real_budget_with_return_dict_false_gives_the_same_logits():
    model = tiny("llava").model
    inputs, _ = batch("llava")
    with attach(model, keep=3):
        expected = _outputs(model, inputs).logits
        got = _outputs(model, inputs, return_dict=False)[0]
    assert torch.equal(got, expected) and got.shape[1] < inputs["input_ids"].shape[1]


def test_masked_placeholders_are_never_kept_nor_attended():
    model = tiny("llava").model
    inputs = _mask_variants("llava")["masked placeholders"]
    hidden = np.flatnonzero((inputs["attention_mask"][0] == 0).numpy()
                            & (inputs["input_ids"][0] == IMAGE_ID).numpy())
    assert len(hidden) == 2
    with attach(model, keep=3, saliency="none") as handle:
        _outputs(model, inputs)
    (first, *_) = [r for r in handle.last if r.row == 0]
    assert first.tokens_before == first.n_tokens - 2
    assert not np.isin(hidden, first.kept_positions).any()
    # Every position of the pruned sequence is a valid token or new padding.
    source = handle.last_prefill.source_positions[0]
    assert not np.isin(hidden, source).any()


# --- nothing is refused when nothing is pruned ------------------------------------------------


def test_a_budget_that_keeps_everything_refuses_nothing():
    model = tiny("llava").model
    inputs, singles = batch("llava")
    one = singles[0]
    ids = torch.tensor([[1, 7, 8, 9, 10, 11] + [IMAGE_ID] * 16 + [7, 8]])
    calls = {
        "labels": lambda: _outputs(model, one, labels=one["input_ids"]).loss,
        "static cache": lambda: model.generate(**inputs, max_new_tokens=3, do_sample=False,
                                               cache_implementation="static"),
        "prompt lookup": lambda: model.generate(
            input_ids=ids, pixel_values=one["pixel_values"], max_new_tokens=3,
            do_sample=False, prompt_lookup_num_tokens=2),
        "images on a text cache": lambda: _outputs(
            model, one, cache=_text_cache(model)).logits,
    }
    expected = {name: call() for name, call in calls.items()}
    with attach(model, keep=ALL):
        for name, call in calls.items():
            assert torch.equal(call(), expected[name]), name
    with attach(model, keep=3):
        with pytest.raises(ValueError, match="labels are not supported while greedyprune.hf "
                                             "prunes: with this budget images lose tokens"):
            _outputs(model, one, labels=one["input_ids"])


def _text_cache(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 5, 6]]), use_cache=True).cache


@pytest.mark.parametrize("arch", ["llava", "gemma3", "qwen2_vl"])
def test_generation_continues_from_the_returned_cache(arch):
    model = tiny(arch).model
    _, singles = batch(arch)
    inputs = singles[0]

    def twice():
        first = model.generate(**inputs, max_new_tokens=2, do_sample=False,
                               return_dict_in_generate=True, suppress_tokens=SPECIAL)
        ids = torch.cat([first.sequences, torch.tensor([[5, 6]])], 1)
        # The images are in the cache: the second call passes text only, as transformers'
        # own continuation tests do.
        follow = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
        for name in ("token_type_ids", "mm_token_type_ids"):
            if name in inputs:
                follow[name] = torch.cat([inputs[name], torch.zeros(1, 4, dtype=torch.long)], 1)
        return model.generate(**follow, cache=first.past_key_values,
                              max_new_tokens=2, do_sample=False, suppress_tokens=SPECIAL)

    expected = twice()
    with attach(model, keep=ALL):
        assert torch.equal(twice(), expected)
    with attach(model, keep=2):
        with pytest.raises(ValueError, match="pruned cache"):
            twice()


# --- packed rows ------------------------------------------------------------------------------


def _packed(model):
    """Two single-image prompts packed into one row (position ids restart, no mask)."""
    _, singles = batch("llava", prompts=[[3, "img", 2], [2, "img", 4]])
    ids = torch.cat([s["input_ids"] for s in singles], 1)
    positions = torch.cat([torch.arange(s["input_ids"].shape[1]) for s in singles])[None]
    pixels = torch.cat([s["pixel_values"] for s in singles])
    return dict(input_ids=ids, position_ids=positions, pixel_values=pixels), singles


def test_packed_rows_stay_apart_unpruned_and_pruned():
    model = tiny("llava").model
    packed, singles = _packed(model)
    first = singles[0]["input_ids"].shape[1]
    plain = _outputs(model, packed, use_cache=False).logits
    with attach(model, keep=ALL):
        assert torch.equal(_outputs(model, packed, use_cache=False).logits, plain)
    # Pruned: each prompt's last token sees exactly what it sees when pruned alone.
    with attach(model, keep=3, saliency="none") as handle:
        got = _outputs(model, packed, use_cache=False).logits[0]
        source = handle.last_prefill.source_positions[0]
        alone = [_outputs(model, single, use_cache=False).logits[0, -1] for single in singles]
    for end, expected in zip([first - 1, packed["input_ids"].shape[1] - 1], alone):
        slot = int(np.flatnonzero(source == end)[0])
        torch.testing.assert_close(got[slot], expected, rtol=1e-5, atol=1e-5)


def test_packed_rows_on_gemma3_are_refused_only_when_pruning():
    model = tiny("gemma3").model
    _, singles = batch("gemma3", prompts=[[3, "img", 2], [2, "img", 4]])
    packed = dict(input_ids=torch.cat([s["input_ids"] for s in singles], 1),
                  token_type_ids=torch.cat([s["token_type_ids"] for s in singles], 1),
                  position_ids=torch.cat([torch.arange(s["input_ids"].shape[1])
                                          for s in singles])[None],
                  pixel_values=torch.cat([s["pixel_values"] for s in singles]))
    plain = _outputs(model, packed, use_cache=False).logits
    with attach(model, keep=ALL):
        assert torch.equal(_outputs(model, packed, use_cache=False).logits, plain)
    with attach(model, keep=2):
        with pytest.raises(ValueError, match="cannot prune packed sequences"):
            _outputs(model, packed, use_cache=False)


# --- Gemma 3 token counts, heads around the inner model ---------------------------------------


def _gemma3(mm_tokens_per_image: int, head: str = "Gemma3ForConditionalGeneration"):
    import transformers

    text = dict(TEXT_CONFIG, model_type="gemma3_text", head_dim=8, sliding_window=8,
                layer_types=["sliding_attention", "full_attention"])
    config = transformers.Gemma3Config(
        text_config=text, vision_config=dict(SIGLIP_CONFIG, image_size=20, patch_size=5),
        mm_tokens_per_image=mm_tokens_per_image, image_token_id=IMAGE_ID, boi_token_id=3,
        eoi_token_id=4)
    torch.manual_seed(0)
    model = getattr(transformers, head)(config).eval()
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.3)
    return model


def _gemma3_inputs(per_image: int, images: int = 2):
    ids = [1, 5] + ([3] + [IMAGE_ID] * per_image + [4, 6]) * images + [7]
    input_ids = torch.tensor([ids])
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                token_type_ids=(input_ids == IMAGE_ID).long(),
                pixel_values=torch.randn(images, 3, 20, 20, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("mm_tokens_per_image,emitted", [(5, 4), (2, 1), (16, 16)])
def test_gemma3_counts_the_tokens_the_model_emits(mm_tokens_per_image, emitted):
    model = _gemma3(mm_tokens_per_image)
    inputs = _gemma3_inputs(emitted)
    expected = _outputs(model, inputs).logits
    with attach(model, keep=ALL) as handle:
        assert torch.equal(_outputs(model, inputs).logits, expected)
    assert [r.n_tokens for r in handle.last] == [emitted, emitted]
    with attach(model, keep=1) as handle:
        _outputs(model, inputs)
    assert [r.tokens_after for r in handle.last] == [1, 1]  # one budget per image


def test_heads_other_than_generation_are_refused_and_say_why():
    model = _gemma3(4, "Gemma3ForSequenceClassification")
    model.config.pad_token_id = PAD_ID
    with pytest.raises(TypeError, match="does not support Gemma3ForSequenceClassification: it "
                                        "wraps Gemma3Model"):
        attach(model, keep=2)
    inputs = _gemma3_inputs(4)
    expected = _outputs(model, inputs).logits
    with attach(model.model, keep=ALL):
        assert torch.equal(_outputs(model, inputs).logits, expected)
    with attach(model.model, keep=2):
        with pytest.raises(ValueError, match="cannot prune Gemma3Model inside "
                                             "Gemma3ForSequenceClassification"):
            _outputs(model, inputs)
        _outputs(model.model, inputs)  # called directly: pruned
    assert hook_count(model) == 0


# --- saving, use_cache=False ------------------------------------------------------------------


def test_save_and_load_while_hooked(tmp_path):
    model = tiny("llava").model
    inputs, _ = batch("llava")
    with attach(model, keep=3):
        expected = logits(model, inputs)
        model.save_pretrained(tmp_path)
        assert torch.equal(logits(model, inputs), expected)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert hook_count(loaded) == 0
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
    with attach(loaded, keep=3):
        assert torch.equal(logits(loaded, inputs), expected)
    assert "greedyprune" not in (tmp_path / "config.json").read_text()


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_generation_without_a_cache_keeps_the_answers_of_generation_with_one(arch):
    # Saliency weighs in (lam > 0): without a cache every step prunes afresh, and text
    # saliency must read the prompt only for the kept set to stay the prefill's.
    model = tiny(arch).model
    with attach(model, keep=3, saliency="text", lam=0.9) as handle:
        for seed in range(10):
            inputs, _ = batch(arch, seed=seed)
            runs, kept = [], []
            for use_cache in (True, False):
                runs.append(model.generate(**inputs, max_new_tokens=8, do_sample=False,
                                           use_cache=use_cache, suppress_tokens=SPECIAL))
                kept.append([r.kept.tolist() for r in handle.last])
            assert kept[0] == kept[1], seed
            assert torch.equal(*runs), seed
