"""Settings at engine start: every mistake stops ``LLM(...)`` with a message naming it; a budget
beyond an image's tokens keeps them all; an architecture the plugin does not prune is refused."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import engine, engine_args, first_logprob, requests, sampling
from transformers import Qwen2VLConfig

from greedyprune import builtin, scenes

BAD = [
    ({"kep": 48}, ValueError, r"unknown greedyprune setting 'kep'; the settings are keep, "
                              r"keep_ratio, method, lam, saliency, seed, backend"),
    ({}, ValueError, "give exactly one of keep .* and keep_ratio"),
    ({"keep": 0}, ValueError, r"keep must be >= 1"),
    ({"keep": 48, "keep_ratio": 0.5}, ValueError, "give exactly one of keep"),
    ({"keep_ratio": 1.5}, ValueError, r"keep_ratio must be in \(0, 1\], got 1.5"),
    ({"keep": 48, "lam": 2}, ValueError, r"lam must be"),
    ({"keep": 48, "method": "fastv"}, ValueError, "fastv"),
    ({"keep": 48, "saliency": "text"}, ValueError,
     "saliency='text', which reads the prompt's tokens, cannot be computed"),
    ({"keep": 48, "saliency": "query"}, ValueError, "saliency='query'"),
    ({"keep": 48, "method": "topk", "saliency": "none"}, ValueError, "needs saliency"),
    ({"keep": "48"}, TypeError, "keep must be a positive integer, got str"),
    ({"keep": 48, "backend": "cuda"}, ValueError, "backend"),
    ({"keep": 48, "method": "divprune", "backend": "c"}, ValueError,
     "backend='c' applies to method 'greedyprune' only"),
    (48, TypeError, r"hf_overrides\['greedyprune'\] must be a dict of settings"),
]


@pytest.mark.parametrize("settings, error, message", BAD, ids=[json.dumps(b[0]) for b in BAD])
def test_bad_settings_stop_the_engine_at_start(settings, error, message):
    from vllm import LLM

    args = engine_args()
    args["hf_overrides"] = {"greedyprune": settings}
    with pytest.raises(error, match=message):
        LLM(**args)


def test_budget_beyond_the_tokens_keeps_them_all(plain_answers):
    questions, plain = plain_answers
    with engine(**engine_args(keep=10**6, method="divprune")) as llm:
        outputs = llm.generate(requests(questions), sampling())
    assert [(o.outputs[0].text.strip(), first_logprob(o), list(o.prompt_token_ids))
            for o in outputs] == plain


def test_unsupported_architecture_is_refused_naming_the_supported_one(tmp_path):
    """A Qwen2-VL checkpoint (config and tokenizer: the refusal comes before any weight)."""
    from vllm import LLM

    folder = tmp_path / "qwen2-vl"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(builtin.path() / name, folder / name)
    Qwen2VLConfig(
        text_config=dict(vocab_size=64, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2),
        architectures=["Qwen2VLForConditionalGeneration"]).save_pretrained(folder)
    args = engine_args()
    args.update(model=str(folder), hf_overrides={"greedyprune": {"keep": 16}})
    with pytest.raises(ValueError, match=r"greedyprune's vLLM plugin prunes "
                                         r"LlavaForConditionalGeneration .*, not "
                                         r"Qwen2VLForConditionalGeneration: .*M-RoPE"):
        LLM(**args)


def test_keep_ratio_rounds_up_as_greedyprune_hf_does(plain_answers):
    """0.1 of 144 tokens: 15, with another selector than the default."""
    questions, _ = plain_answers
    with engine(**engine_args(keep_ratio=0.1, method="random", seed=3)) as llm:
        (output,) = llm.generate(requests(questions[:1]), sampling(1))
    assert output.prompt_token_ids.count(builtin.SPECIAL_TOKENS.index("<image>")) == 15
