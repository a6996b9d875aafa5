"""greedyprune.lmms: greedyprune's lmms-eval models through lmms-eval's own CLI and evaluator,
offline, on a local task (a YAML and a dataset written here) of generated scene questions."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval",
                    reason="lmms-eval is not installed: pip install 'greedyprune[lmms]'")
torch = pytest.importorskip("torch")

import greedyprune  # noqa: E402
from greedyprune import builtin, scenes  # noqa: E402
from greedyprune.hf import attach  # noqa: E402
from greedyprune.lmms import FAMILIES, wrap  # noqa: E402

QUESTIONS = 16
TASK = "scenes_qa"

TASK_YAML = """\
task: {task}
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{{{question}}}}\\nAnswer the question using a single word or phrase."
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A local lmms-eval task: generated scene questions saved with ``datasets``."""
    import datasets

    root = tmp_path_factory.mktemp("lmms-task")
    records = scenes.benchmark(0, QUESTIONS)
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    columns = {"image": [r.image for r in records], "question": [r.question for r in records],
               "answer": [r.answers[0] for r in records]}
    data = datasets.Dataset.from_dict(columns, features=features)
    datasets.DatasetDict({"test": data}).save_to_disk(str(root / "data"))
    (root / "utils.py").write_text(
        "def doc_to_visual(doc):\n    return [doc['image'].convert('RGB')]\n")
    (root / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=root / "data"))
    return root


@pytest.fixture(scope="module")
def random_llava(tmp_path_factory):
    """A LLaVA-HF checkpoint folder: the built-in model's architecture with random weights."""
    from transformers import LlavaForConditionalGeneration

    folder = tmp_path_factory.mktemp("random-llava")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(builtin.config()).save_pretrained(folder)
    builtin.processor().save_pretrained(folder)
    return folder


def test_models_are_registered_through_lmms_eval_entry_points():
    from lmms_eval import models

    listed = models.list_available_models(include_aliases=True)
    missing = [name for name, family in FAMILIES.items()
               for name in (name, *family.aliases) if name not in listed]
    assert not missing, (f"lmms-eval does not list {missing}: greedyprune's lmms_eval.models "
                         f"entry point is missing; reinstall greedyprune (pip install -e .)")
    for name, family in FAMILIES.items():
        for chat, path in ((True, family.chat), (False, family.simple)):
            if path is None:
                continue
            module, base = path.split(":")
            cls = models.get_model(name, force_simple=not chat)
            assert issubclass(cls, getattr(__import__(module, fromlist=[base]), base))
            assert cls.__module__ == "greedyprune.lmms._models" and cls.is_simple is not chat
    assert models.get_model("greedyprune_llava_onevision") is models.get_model(
        "greedyprune_llava_hf")


def test_the_cli_evaluates_a_pruned_checkpoint(task_dir, random_llava, tmp_path):
    # The README's command, on a local task and the CPU; greedyprune as this test imports it.
    model_args = f"pretrained={random_llava},keep=16,method=greedyprune"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=str(Path(greedyprune.__file__).parents[1]))
    run = subprocess.run(
        [str(Path(sys.executable).with_name("lmms-eval")), "--model", "greedyprune_llava_hf",
         "--model_args", model_args, "--tasks", TASK, "--include_path", str(task_dir),
         "--batch_size", "1", "--device", "cpu", "--limit", "4", "--verbosity", "INFO",
         "--output_path", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # 4 questions, one image each: 144 visual tokens per image, 16 kept.
    assert "greedyprune: 4 images in 4 prefills so far, 576 -> 64 visual tokens" in run.stdout
    (results_file,) = tmp_path.glob("*/*_results.json")
    results = json.loads(results_file.read_text())
    assert results["config"]["model"] == "greedyprune_llava_hf"
    assert results["config"]["model_args"] == model_args
    assert results["n-samples"][TASK]["effective"] == 4
    assert 0 <= results["results"][TASK]["exact_match,none"] <= 1


def test_the_trained_model_answers_pruned_through_the_evaluator(task_dir):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    model, processor = builtin.load()
    lm = wrap(model, processor, keep=48)
    assert lm.model is model and lm.pruning.model is model and lm.pruning.keep == 48
    results = simple_evaluate(model=lm, tasks=[TASK], batch_size=1, device="cpu",
                              bootstrap_iters=0,
                              task_manager=TaskManager(include_path=str(task_dir),
                                                       include_defaults=False))
    assert lm.pruning_counts == {"prefills": QUESTIONS, "images": QUESTIONS,
                                 "visual_tokens_before": 144 * QUESTIONS,
                                 "visual_tokens_after": 48 * QUESTIONS}
    # Unpruned it answers these questions all right; at 48 of 144 tokens it did in every
    # measurement so far.
    assert results["results"][TASK]["exact_match,none"] >= 0.9


@pytest.mark.parametrize("model_args", [
    "keep=0", "keep=16,keep_ratio=0.5", "keep=16.5", "keep=-1", "keep_ratio=1.5",
    "keep=16,saliency=attention", "keep=16,method=fastv", "keep=16,lam=2", "keep=16,seed=-1",
])
def test_settings_fail_as_attach_does_before_the_weights_load(random_llava, monkeypatch,
                                                              model_args):
    from lmms_eval import models
    from lmms_eval.utils import simple_parse_args_string
    from transformers import LlavaForConditionalGeneration

    model, _ = builtin.load()
    with pytest.raises((TypeError, ValueError)) as expected:
        attach(model, **simple_parse_args_string(model_args))   # the values lmms-eval passes
    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained",
                        lambda *args, **kwargs: pytest.fail("loaded the weights"))
    with pytest.raises(expected.type, match=re.escape(str(expected.value))):
        models.get_model("greedyprune_llava_hf").create_from_arg_string(
            f"pretrained={random_llava},{model_args}", {"device": "cpu"})


def test_architecture_checks_run_on_the_config_alone(tmp_path):
    # Only config.json: the settings are refused before anything else is read.
    from hf_models import build_qwen2_vl
    from lmms_eval import models

    tiny = build_qwen2_vl()
    tiny.model.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError) as expected:
        attach(tiny.model, keep=4, saliency="cls")
    with pytest.raises(ValueError, match=re.escape(str(expected.value))):
        models.get_model("greedyprune_qwen2_vl")(pretrained=str(tmp_path), device="cpu",
                                                 keep=4, saliency="cls")


def test_wrap_names_the_models_it_takes():
    with pytest.raises(TypeError, match=r"model must be one of LlavaForConditionalGeneration, "
                                        r"LlavaNextForConditionalGeneration, .*got Linear"):
        wrap(torch.nn.Linear(1, 1), None, keep=1)


def test_importing_the_bridge_imports_neither_lmms_eval_nor_torch():
    code = ("import sys, greedyprune.lmms; "
            "print(sorted({'lmms_eval', 'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(greedyprune.__file__).parents[1], check=True).stdout
    assert out.strip() == "[]"
