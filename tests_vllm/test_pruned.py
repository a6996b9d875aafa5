"""Pruning in a real engine: fewer placeholders, the rows greedyprune.select picks, answers that
do not depend on the batch, accuracy next to greedyprune.hf's, bad images refused per request."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (TOKENS, engine, engine_args, first_logprob, hf_eval, prompt, requests,
                      sampling)
from transformers import AutoProcessor, LlavaForConditionalGeneration

import greedyprune
from greedyprune import builtin, scenes
from greedyprune.evaluate import vqa_accuracy

KEEP, LAM = 48, 0.25
SETTINGS = dict(keep=KEEP, method="greedyprune", lam=LAM, saliency="cls")


@pytest.fixture(scope="module")
def llm():
    with engine(**engine_args(**SETTINGS)) as pruned:
        yield pruned


@pytest.fixture(scope="module")
def processor():
    return AutoProcessor.from_pretrained(builtin.path())


@pytest.mark.parametrize("images", [1, 2])
def test_prompt_shrinks_by_the_pruned_tokens(llm, processor, images):
    questions = scenes.questions(4, 4)
    batch = [{"prompt": prompt(q.question, images),
              "multi_modal_data": {"image": [scenes.image(q.scene)] * images}}
             for q in questions]
    for question, output in zip(questions, llm.generate(batch, sampling(2))):
        text = len(processor.tokenizer(prompt(question.question, images)).input_ids) - images
        assert len(output.prompt_token_ids) == text + images * KEEP
        assert len(output.prompt_token_ids) == text + images * TOKENS - images * (TOKENS - KEEP)
        placeholders = output.prompt_token_ids.count(builtin.SPECIAL_TOKENS.index("<image>"))
        assert placeholders == images * KEEP


def _cls_saliency(pixel_values: torch.Tensor) -> torch.Tensor:
    """[CLS]-to-patch attention of the tower's feature layer, from transformers' eager CLIP
    (independent of the plugin's own computation), averaged over heads."""
    model = LlavaForConditionalGeneration.from_pretrained(
        builtin.path(), attn_implementation="eager").eval()
    with torch.no_grad():
        out = model.model.vision_tower(pixel_values, output_attentions=True)
    return out.attentions[-1][:, :, 0, 1:].mean(1)


def test_kept_rows_are_what_select_picks(llm, processor):
    images = [scenes.image(q.scene) for q in scenes.questions(6, 6)]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    saliency = _cls_saliency(pixels)

    def embed(model):
        from vllm.model_executor.models.llava import LlavaForConditionalGeneration as Stock

        with torch.no_grad():
            full = Stock.embed_multimodal(model, pixel_values=pixels)
            kept = model.embed_multimodal(pixel_values=pixels)
        return full, kept

    (full, kept), = llm.apply_model(embed)
    assert full.shape == (6, TOKENS, full.shape[2]) and kept.shape == (6, KEEP, full.shape[2])
    picks = greedyprune.select(full, KEEP, saliency, LAM)
    for image in range(6):
        assert torch.equal(kept[image], full[image, picks[image]])
    assert torch.equal(picks, picks.sort(dim=1).values)  # original order


def test_each_request_gets_the_answer_it_gets_alone(llm):
    batch = requests(scenes.questions(7, 8))
    together = llm.generate(batch, sampling())
    for single, output in zip(batch, together):
        (alone,) = llm.generate([single], sampling())
        assert alone.outputs[0].text == output.outputs[0].text
        assert first_logprob(alone) == pytest.approx(first_logprob(output), abs=1e-5)


def test_accuracy_is_within_two_points_of_greedyprune_hf(llm, tmp_path):
    seed, n = 5, 200
    questions = scenes.questions(seed, n)
    outputs = llm.generate(requests(questions), sampling())
    ours = np.mean([vqa_accuracy(o.outputs[0].text.strip(), [q.answer])
                    for o, q in zip(outputs, questions)])
    hf = hf_eval(tmp_path, methods="greedyprune", keep=KEEP, lam=LAM, saliency="cls",
                 num_questions=n, seed=seed)["greedyprune"]
    theirs = np.mean([vqa_accuracy(hf[f"scenes-{seed}-{i}"], [q.answer])
                      for i, q in enumerate(questions)])
    print(f"accuracy at keep={KEEP}: vLLM {ours:.3f}, greedyprune.hf {theirs:.3f}")
    assert abs(ours - theirs) <= 0.02


def test_nonfinite_image_is_refused_and_the_engine_serves_on(llm):
    question = scenes.questions(8, 1)[0]
    image = np.asarray(scenes.image(question.scene), dtype=np.float32) / 255
    image[5, 7, 1] = np.nan
    with pytest.raises(ValueError, match="image must be finite, but contains NaN or infinity"):
        llm.generate([{"prompt": prompt(question.question),
                       "multi_modal_data": {"image": image}}], sampling())
    (output,) = llm.generate(requests([question]), sampling())
    assert output.outputs[0].text.strip() == question.answer


def test_lam_auto_prunes_each_image_with_the_lam_of_its_kept_fraction():
    from greedyprune import PruneConfig
    from greedyprune.vllm import _llava

    features = torch.randn(2, 144, 8, generator=torch.Generator().manual_seed(0))
    saliency = torch.rand(2, 144, generator=torch.Generator().manual_seed(1))
    for keep, lam in ((6, 0.25), (48, 0.0)):   # 4% and 33% of 144, with cls saliency
        auto = _llava.prune(features, saliency, PruneConfig(keep=keep, lam="auto", saliency="cls"))
        fixed = _llava.prune(features, saliency, PruneConfig(keep=keep, lam=lam, saliency="cls"))
        assert torch.equal(auto, fixed)
