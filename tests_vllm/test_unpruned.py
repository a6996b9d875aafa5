"""Without ``greedyprune`` settings the plugin changes nothing: the engine answers as transformers
does, and bit for bit as vLLM without the plugin."""
from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TOKENS, engine_args, prompt, run_python
from transformers import AutoProcessor, LlavaForConditionalGeneration

from greedyprune import builtin, scenes

HERE = Path(__file__).resolve().parent


def test_entry_point_registers_the_model_classes():
    (entry,) = [e for e in importlib.metadata.entry_points(group="vllm.general_plugins")
                if e.name == "greedyprune"]
    assert entry.value == "greedyprune.vllm:register"
    from vllm.model_executor.models.registry import ModelRegistry
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    llava = ModelRegistry.models["LlavaForConditionalGeneration"]
    assert (llava.module_name, llava.class_name) == (
        "greedyprune.vllm._llava", "LlavaForConditionalGeneration")
    qwen = ModelRegistry.models["Qwen2VLForConditionalGeneration"]
    assert qwen.module_name == "greedyprune.vllm._refused"


def test_prompts_hold_every_image_token(plain_answers):
    questions, result = plain_answers
    tokenizer = AutoProcessor.from_pretrained(builtin.path()).tokenizer
    for question, (_, _, ids) in zip(questions, result):
        assert len(ids) == len(tokenizer(prompt(question.question)).input_ids) + TOKENS - 1


def test_answers_and_logprobs_equal_transformers(plain_answers):
    questions, result = plain_answers
    model = LlavaForConditionalGeneration.from_pretrained(builtin.path()).eval()
    processor = AutoProcessor.from_pretrained(builtin.path())
    for question, (text, logprob, ids) in zip(questions, result):
        inputs = processor(images=scenes.image(question.scene), text=prompt(question.question),
                           return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == ids
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=16, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True)
        new = out.sequences[0, inputs["input_ids"].shape[1]:]
        expected = processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        assert text == expected
        first = torch.log_softmax(out.scores[0][0].double(), -1)[new[0]].item()
        assert logprob == pytest.approx(first, abs=1e-4)


_STOCK = """
import json, os
from greedyprune import scenes
from conftest import engine, engine_args, first_logprob, requests, sampling
args = engine_args()
args["model"] = {folder!r}
with engine(**args) as llm:
    outputs = llm.generate(requests(scenes.questions(3, 64)), sampling())
print(json.dumps([[o.outputs[0].text.strip(), first_logprob(o)] for o in outputs]))
"""


def test_bit_identical_to_vllm_without_the_plugin(plain_answers, tmp_path):
    """vLLM without plugins (``VLLM_PLUGINS=none``) cannot read a transformers 5 checkpoint's
    tower weights: it gets a copy with the names it expects."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "stock"
    shutil.copytree(builtin.path(), folder)
    weights = load_file(folder / "model.safetensors")
    save_file({re.sub(r"^(model\.)?vision_tower\.", r"\1vision_tower.vision_model.", name): value
               for name, value in weights.items()}, folder / "model.safetensors")
    stock = run_python(_STOCK.format(folder=str(folder)),
                       env={"VLLM_PLUGINS": "none", "PYTHONPATH": str(HERE)})
    _, result = plain_answers
    assert [[text, logprob] for text, logprob, _ in result] == stock
