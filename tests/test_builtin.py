"""The built-in models as users meet them: ordinary checkpoint folders that transformers loads,
that answer their task's generated questions well, and that pruning with nothing to prune leaves
alone; the eval and demo commands run on the first by default and on either with --task."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import AutoProcessor, LlavaForConditionalGeneration  # noqa: E402

from greedyprune import builtin, crowds, scenes  # noqa: E402
from greedyprune.__main__ import main  # noqa: E402
from greedyprune.evaluate import HFAnswerer, compare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Unpruned accuracy on FLOOR_SET must stay at or above these (they guard the weights and the
#: loading path): the package's quality bar, 90% overall and 80% for every question type. Answering
#: by question type alone would score about 0.39 overall on scenes (0.5 on the yes/no types, 0.3
#: and 0.25 on the others) and 0.5 on crowds (every answer is one of two).
FLOOR = 0.9
CATEGORY_FLOOR = 0.8
FLOOR_SET = dict(seed=7, n=96)
TASKS = {"scenes": scenes, "crowds": crowds}
#: The tasks whose model this checkout ships (the crowds model is still being trained); the
#: tests below run on each, and test_the_shipped_models_are_these keeps the list true.
SHIPPED = ["scenes"]


@pytest.fixture(scope="module", params=SHIPPED)
def task(request):
    return request.param


def test_the_shipped_models_are_these():
    assert list(builtin.TASKS) == list(TASKS)
    data = Path(builtin.__file__).parent / "data"
    shipped = [t for t in builtin.TASKS if (data / builtin.TASKS[t] / "model.safetensors").is_file()]
    assert shipped == SHIPPED
    for missing in set(builtin.TASKS) - set(SHIPPED):
        with pytest.raises(FileNotFoundError, match=f"the built-in {missing} model is not in "
                                                    f"this installation .* train it with "
                                                    f"training/train_scenes.py --task {missing}"):
            builtin.load(missing)


@pytest.fixture(scope="module")
def loaded(task):
    folder = builtin.path(task)
    model = LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    return model, AutoProcessor.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def floor_report(task, loaded):
    # Batched (left-padded generate calls): the answers one by one would be the same, as
    # test_batched_answers_are_the_answers_one_by_one checks.
    model, processor = loaded
    answerer = HFAnswerer(model, processor, max_new_tokens=3, prompt="{question}")
    return compare(answerer, TASKS[task].benchmark(**FLOOR_SET), ["greedyprune", "random"],
                   [144], progress=False, batch_size=16)


def test_checkpoint_is_an_ordinary_small_huggingface_folder(task, loaded):
    folder = builtin.path(task)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
            "chat_template.jinja"} <= names
    assert (folder / "model.safetensors").stat().st_size <= 25 * 2**20
    model, processor = loaded
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.text_config.model_type == "llama"
    inputs = processor(images=TASKS[task].benchmark(0, 1)[0].image,
                       text="USER: <image>\nhi ASSISTANT:", return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 144


def test_load_gives_the_same_model_in_eval_mode(task, loaded):
    model, processor = builtin.load(task)
    assert not model.training
    reference = loaded[0].state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    assert processor.chat_template == builtin.CHAT_TEMPLATE


def test_unpruned_accuracy_stays_above_the_floor(task, floor_report):
    unpruned = floor_report.rows[0]
    assert unpruned["method"] == "unpruned"
    assert unpruned["accuracy"] >= FLOOR, floor_report.table()
    by_category = {r["category"]: r["accuracy"] for r in floor_report.summary_by_category()
                   if r["method"] == "unpruned"}
    assert set(by_category) == set(TASKS[task].CATEGORIES)
    for category, accuracy in by_category.items():
        assert accuracy >= CATEGORY_FLOOR, floor_report.table_by_category()


def test_keeping_every_token_changes_no_answer(floor_report):
    for method in ("greedyprune", "random"):
        assert floor_report.agreement(method, 144) == 1.0


def test_both_prompt_styles_work(task, loaded):
    model, processor = loaded
    records = TASKS[task].benchmark(8, 24)
    for prompt in ("{question}", "{question}\nAnswer the question using a single word or phrase."):
        answerer = HFAnswerer(model, processor, max_new_tokens=3, prompt=prompt)
        report = compare(answerer, records, [], [1], progress=False, batch_size=24)
        assert report.rows[0]["accuracy"] >= 0.9, (prompt, report.table())   # 1.0 measured


def test_batched_answers_are_the_answers_one_by_one(task, loaded):
    model, processor = loaded
    answerer = HFAnswerer(model, processor, max_new_tokens=3, prompt="{question}")
    records = TASKS[task].benchmark(**FLOOR_SET)[:6]
    by_setting = {}
    for batch_size in (1, 6):
        report = compare(answerer, records, ["greedyprune"], [16], progress=False,
                         batch_size=batch_size)
        by_setting[batch_size] = sorted((r.record, r.method, str(r.keep), r.answer)
                                        for r in report.results)
    assert by_setting[6] == by_setting[1] and len(by_setting[1]) == 6 * 2


def test_training_record_says_what_was_measured(task):
    record = json.loads((builtin.path(task) / "training.json").read_text())
    bench = record["benchmark"]
    kinds = TASKS[task].CATEGORIES
    assert bench["questions"] >= 1000 and set(bench["by_category"]) == set(kinds)
    # Balanced categories: the overall accuracy is about the mean of the types'.
    assert bench["accuracy"] == pytest.approx(sum(bench["by_category"].values()) / len(kinds),
                                              abs=0.002)
    assert bench["accuracy"] >= FLOOR and min(bench["by_category"].values()) >= CATEGORY_FLOOR
    assert record["steps"] == record["log"][-1]["step"] and record["training_seconds"] > 0


def test_eval_default_runs_the_built_in_model_end_to_end(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--num-questions", "4", "--methods", "greedyprune,random", "--keep",
                 "12,144", "--seeds", "0,1", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| unpruned | all | 4 |" in text and "accuracy by category" in text
    rows = {(r["method"], r["keep"]): r for r in csv.DictReader(open(out / "summary.csv"))}
    assert float(rows["greedyprune", "144"]["agreement"]) == 1.0
    assert float(rows["random", "12"]["tokens_after"]) == 12
    assert rows["random", "12"]["agreement_sd"] != ""        # two seeds: a spread
    by_category = list(csv.DictReader(open(out / "summary_by_category.csv")))
    assert {r["category"] for r in by_category} == set(scenes.CATEGORIES)
    assert len(list(csv.DictReader(open(out / "answers.csv")))) == 4 * (1 + 2 + 2 * 2)
    assert (out / "plot.png").is_file()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["random"]["seeds"] == [0, 1]


def test_demo_default_answers_a_generated_scene(tmp_path):
    out = tmp_path / "demo.png"
    run = subprocess.run([sys.executable, "-m", "greedyprune", "demo", "--repeats", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "the built-in scenes model" in text and "RANDOM" not in text
    assert "question: " in text and "reference answer: " in text
    assert text.count("visual tokens: 144 -> 16") == 3   # greedyprune, divprune, random
    assert out.is_file()


def test_eval_task_asks_that_task_s_questions(tmp_path, capsys):
    # A model that is not the task's own answers its questions too (here the scenes model, as
    # a --model folder, on crowds questions); without --model the task's model is used.
    out = tmp_path / "eval"
    assert main(["eval", "--task", "crowds", "--model", str(builtin.path("scenes")),
                 "--num-questions", "3", "--methods", "divprune", "--keep", "16", "--out",
                 str(out), "--no-progress", "--prompt", "{question}"]) == 0
    assert "| unpruned | all | 3 |" in capsys.readouterr().out
    answers = list(csv.DictReader(open(out / "answers.csv")))
    assert {r["category"] for r in answers} == set(crowds.CATEGORIES)
    assert {r["record"] for r in answers} == {f"crowds-0-{i}" for i in range(3)}
    for missing in set(builtin.TASKS) - set(SHIPPED):
        for command in ("eval", "demo"):
            with pytest.raises(SystemExit) as exit_info:
                main([command, "--task", missing])
            assert exit_info.value.code == 2
            assert (f"argument --task: the built-in {missing} model is not in this "
                    f"installation") in capsys.readouterr().err
