"""``saliency="query"``: the first decoder layer's text-to-visual attention, computed without
attention maps. Checked against the model's own eager attention maps, and on every
architecture against greedyprune.select on that relevance."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from greedyprune.hf import attach  # noqa: E402
from greedyprune.hf._prune import query_relevance  # noqa: E402

from hf_models import (BUILDERS, assert_kept_is_select, batch, decoder_of,  # noqa: E402
                       logits, merged_inputs, placeholders, tiny)
from hf_models import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread here)


def test_relevance_is_the_first_layers_attention_renormalized_over_visual_tokens():
    """Each row rebuilt with its visual tokens first and its text after, every position id 0:
    rotary embeddings are then the identity and causality lets every text token see every
    visual token, so the model's own eager attention at layer 0 is exactly the content-only
    attention the relevance is defined by."""
    model = tiny("llava", "eager").model
    inputs, _ = batch("llava")
    embeds, _, _ = merged_inputs("llava", model, inputs)
    valid = inputs["attention_mask"].bool()
    visual = placeholders(inputs)
    decoder = decoder_of(model)
    with torch.no_grad():
        relevance = query_relevance(decoder.layers[0], embeds, valid, visual)
    for b in range(len(embeds)):
        vis = torch.nonzero(visual[b] & valid[b])[:, 0]
        text = torch.nonzero(valid[b] & ~visual[b])[:, 0]
        reordered = torch.cat([embeds[b, vis], embeds[b, text]])[None]
        with torch.no_grad():
            attentions = decoder(inputs_embeds=reordered,
                                 position_ids=torch.zeros(1, reordered.shape[1], dtype=torch.long),
                                 output_attentions=True).attentions[0][0]    # (H, L, L)
        seen = attentions[:, len(vis):, :len(vis)]                            # text -> visual
        expected = (seen / seen.sum(-1, keepdim=True)).mean(dim=(0, 1))
        torch.testing.assert_close(relevance[b, vis], expected, rtol=1e-4, atol=1e-6)
        assert (relevance[b, ~visual[b]] == 0).all()


def test_a_row_without_text_or_without_images_has_no_relevance():
    model = tiny("llava").model
    decoder = decoder_of(model)
    embeds = torch.randn(2, 6, model.config.text_config.hidden_size)
    valid = torch.ones(2, 6, dtype=torch.bool)
    visual = torch.tensor([[True] * 6, [False] * 6])
    with torch.no_grad():
        assert (query_relevance(decoder.layers[0], embeds, valid, visual) == 0).all()


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_kept_set_equals_select_on_the_query_relevance(arch):
    model = tiny(arch).model
    inputs, _ = batch(arch)
    embeds, _, _ = merged_inputs(arch, model, inputs)
    valid = inputs["attention_mask"].bool()
    visual = placeholders(inputs)
    with torch.no_grad():
        relevance = query_relevance(decoder_of(model).layers[0], embeds, valid, visual)
    with attach(model, keep=3, lam=0.6, saliency="query") as handle:
        logits(model, inputs)
    assert handle.last
    for record in handle.last:
        assert_kept_is_select(model, embeds, inputs, record, 3, 0.6,
                              lambda features, positions: relevance[
                                  record.row, torch.as_tensor(positions)].numpy())


def test_query_is_refused_without_a_usable_first_layer(monkeypatch):
    model = tiny("llava").model
    monkeypatch.delattr(decoder_of(model).layers[0], "input_layernorm")
    with pytest.raises(ValueError, match="saliency='query' reads the first decoder layer's "
                                         "input_layernorm .* use saliency='text', 'cls' or 'none'"):
        attach(model, keep=2, saliency="query")
