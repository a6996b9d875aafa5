"""The command line, end to end: ``python -m greedyprune demo`` on the random-weight model (tiny
widths, same 576 visual tokens) and on a local checkpoint, and ``python -m greedyprune eval`` on
a tiny saved checkpoint and a JSONL file made here. No download anywhere."""
import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("transformers")

from greedyprune import __version__, builtin, demo  # noqa: E402
from greedyprune.__main__ import EVAL_METHODS, build_parser, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random-weight LLaVA saved with its processor, as a user's local checkpoint."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    demo.random_llava("tiny").save_pretrained(folder)
    demo.random_llava_processor().save_pretrained(folder)
    return folder


def test_demo_command_runs_from_a_fresh_process(tmp_path):
    out = tmp_path / "demo.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run(
        [sys.executable, "-m", "greedyprune", "demo", "--model-size", "tiny", "--out", str(out),
         "--repeats", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "RANDOM weights" in text and "576 visual tokens" in text
    assert "visual tokens: 576 -> 64" in text
    assert "unpruned: answer" in text and "speed-up" in text
    with Image.open(out) as picture:
        assert picture.width == 672 and picture.height > 672  # 2x the 336-px photo, plus a title


def test_demo_on_a_local_checkpoint_with_options(checkpoint, tmp_path, capsys):
    image = tmp_path / "red.png"
    Image.new("RGB", (400, 300), (220, 40, 40)).save(image)
    out = tmp_path / "sub" / "kept.png"
    assert main(["demo", "--model", str(checkpoint), "--image", str(image), "--question",
                 "What color is it?", "--keep", "32", "--method", "divprune", "--out", str(out),
                 "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert f"model:    {checkpoint}" in text and "RANDOM" not in text
    assert "question: What color is it?" in text
    assert "method=divprune, keep=32" in text and "576 -> 32" in text
    with Image.open(out) as picture:
        assert picture.width == 2 * 300  # LLaVA sees the centre square of the 400x300 image


def test_eval_command_end_to_end(checkpoint, tmp_path, capsys):
    Image.new("RGB", (64, 48), (30, 30, 200)).save(tmp_path / "blue.png")
    Image.new("RGB", (48, 64), (30, 200, 30)).save(tmp_path / "green.png")
    data = tmp_path / "cases.jsonl"
    data.write_text("\n".join(json.dumps(c) for c in [
        {"image": "blue.png", "question": "What color is it?", "answers": ["blue"] * 3},
        {"image": "green.png", "question": "What color is it?", "answers": ["green"]},
        {"image": "green.png", "question": "Is it square?"},
    ]))
    out = tmp_path / "results"
    assert main(["eval", "--model", str(checkpoint), "--data", str(data), "--keep", "16,576",
                 "--methods", "greedyprune,random", "--out", str(out), "--max-new-tokens", "3",
                 "--limit", "2"]) == 0
    captured = capsys.readouterr()
    assert "| method | keep |" in captured.out and "| unpruned | all | 2 |" in captured.out
    assert "answering" in captured.err  # the progress bar
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["method"], r["keep"]) for r in rows] == [
        ("unpruned", "all"), ("greedyprune", "16"), ("greedyprune", "576"), ("random", "16"),
        ("random", "576")]
    # Keeping all 576 tokens changes nothing: full agreement.
    assert float(rows[2]["agreement"]) == 1.0 and float(rows[4]["agreement"]) == 1.0
    assert float(rows[1]["tokens_after"]) == 16
    answers = list(csv.DictReader(open(out / "answers.csv")))
    assert len(answers) == 2 * 5
    assert (out / "summary.md").read_text().startswith("| method |")
    with Image.open(out / "plot.png") as plot:
        assert plot.format == "PNG"


def test_eval_sweeps_every_lam_with_every_saliency(checkpoint, tmp_path, capsys):
    Image.new("RGB", (64, 48), (30, 30, 200)).save(tmp_path / "blue.png")
    data = tmp_path / "cases.jsonl"
    data.write_text(json.dumps({"image": "blue.png", "question": "What color is it?",
                                "answers": ["blue"]}))
    out = tmp_path / "results"
    assert main(["eval", "--model", str(checkpoint), "--data", str(data), "--keep", "16",
                 "--methods", "greedyprune,topk,divprune", "--lam", "0,0.5", "--saliency",
                 "cls,query", "--out", str(out), "--max-new-tokens", "2", "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["method"] for r in rows] == [
        "unpruned", "greedyprune λ=0 cls", "greedyprune λ=0.5 cls", "greedyprune λ=0 query",
        "greedyprune λ=0.5 query", "topk cls", "topk query", "divprune"]
    described = json.loads((out / "settings.json").read_text())["settings"]
    assert (described["greedyprune λ=0.5 query"]["lam"],
            described["greedyprune λ=0.5 query"]["saliency"]) == (0.5, "query")
    assert described["topk cls"]["saliency"] == "cls"


def test_demo_runs_every_method_at_every_budget(capsys, tmp_path):
    # Fractions as in eval; --lam and --saliency as in eval.
    assert main(["demo", "--model-size", "tiny", "--keep", "0.1,0.25", "--method",
                 "greedyprune,uniform", "--lam", "0.3", "--saliency", "cls", "--repeats", "1",
                 "--out", str(tmp_path / "kept.png")]) == 0
    text = capsys.readouterr().out
    runs = [line for line in text.splitlines() if line.startswith("pruning:")]
    assert runs == [f"pruning:  method={m}, keep={k}, lam=0.3, saliency=cls"
                    for m in ("greedyprune", "uniform") for k in (0.1, 0.25)]
    # ceil(0.1 * 576) and 0.25 * 576 tokens kept, each method in turn.
    assert text.count("visual tokens: 576 -> 58 ") == 2
    assert text.count("visual tokens: 576 -> 144 ") == 2
    with Image.open(tmp_path / "kept.png") as picture:
        assert picture.width == 672   # the first method at the first budget is drawn


def test_demo_speedup_per_method_and_budget():
    runs = [demo.PrunedRun("greedyprune", keep, keep, 24 + keep, seconds, 0.001, "a")
            for keep, seconds in ((16, 0.050), (32, 0.080))]
    result = demo.DemoResult(tokens_before=576, sequence_before=600, prefill_unpruned=0.1,
                             answer_unpruned="a", pruned=runs, picture=None)
    assert result.speedup("greedyprune") == pytest.approx(2.0)   # its first budget
    assert result.speedup("greedyprune", 32) == pytest.approx(1.25)


def test_defaults_are_the_realistic_ones():
    args = build_parser().parse_args(["demo"])
    # None: chosen by model (16 of the built-in model's 144 tokens, 64 of LLaVA-1.5's 576).
    assert (args.model_size, args.keep, args.methods, args.model) == ("demo", None, None, None)
    # None: the package's defaults (greedyprune.hf.DEFAULT_LAM, DEFAULT_SALIENCY).
    assert (args.lam, args.saliency, args.repeats, args.task) == (None, None, 3, None)
    assert not args.random_weights
    widths = demo.SIZES["demo"]
    assert widths["text"]["num_hidden_layers"] >= 8 and widths["text"]["hidden_size"] >= 1024
    args = build_parser().parse_args(["eval"])
    assert (args.model, args.data, args.num_questions, args.seed) == (None, None, 200, 0)
    assert args.methods is None and EVAL_METHODS == ["greedyprune", "divprune", "topk", "random"]
    assert args.keep is None and args.seeds == [0] and args.prompt is None


def _commands(parser):
    """The subcommands' parsers, by name."""
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices


def test_every_option_has_help():
    parser = build_parser()
    for command in [parser, *_commands(parser).values()]:
        for action in command._actions:
            if action.option_strings == ["--model-size"]:
                assert action.help == argparse.SUPPRESS  # for the test suite only
            else:
                assert action.help and action.help.strip(), action.option_strings


@pytest.mark.parametrize("option", ["--task", "--model", "--device", "--methods", "--method",
                                    "--keep", "--lam", "--saliency"])
def test_demo_and_eval_share_option_definitions(option):
    commands = _commands(build_parser())
    demo_action, eval_action = (commands[name]._option_string_actions[option]
                                for name in ("demo", "eval"))
    assert demo_action.option_strings == eval_action.option_strings
    assert (demo_action.dest, demo_action.type, demo_action.choices, demo_action.default) == (
        eval_action.dest, eval_action.type, eval_action.choices, eval_action.default)


@pytest.mark.parametrize("command", ["demo", "eval"])
def test_demo_and_eval_parse_pruning_options_alike(command):
    args = build_parser().parse_args([command, "--method", "topk,random", "--keep", "0.1,0.25",
                                      "--lam", "0.5", "--saliency", "query"])
    assert (args.methods, args.keep, args.lam, args.saliency) == (
        ["topk", "random"], [0.1, 0.25], [0.5], ["query"])
    args = build_parser().parse_args([command, "--lam", "0, 0.25,1,auto", "--saliency",
                                      "cls,query", "--task", "crowds"])
    assert (args.lam, args.saliency, args.task) == ([0.0, 0.25, 1.0, "auto"], ["cls", "query"],
                                                    "crowds")
    args = build_parser().parse_args([command, "--methods", " divprune ", "--keep", "64,128"])
    assert (args.methods, args.keep) == (["divprune"], [64, 128])


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a command gets as far as building or loading a model."""
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(builtin, "load", load)
    monkeypatch.setattr(demo, "load_local", load)
    monkeypatch.setattr(demo, "random_llava", load)


@pytest.fixture
def places(tmp_path):
    """A text file, an empty folder and a folder with a config.json, under tmp_path."""
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    return tmp_path


HUB_ID = "llava-hf/llava-1.5-7b-hf"


# TMP stands for the places fixture's folder, in the arguments and in the message.
@pytest.mark.parametrize("argv, message", [
    (["demo", "--repeats", "0"], "argument --repeats: expected a positive integer, got '0'"),
    (["demo", "--keep", "0"], "argument --keep: keep must be token counts (integers >= 1) or "
                              "fractions (floats in (0, 1)), got 0"),
    (["eval", "--keep", "1.5"], "argument --keep: keep must be token counts (integers >= 1) "
                                "or fractions (floats in (0, 1)), got 1.5"),
    (["demo", "--keep", "64,0.5"], "argument --keep: keep must be all token counts or all "
                                   "fractions, got [64, 0.5]"),
    (["eval", "--keep", "a,b"], "argument --keep: expected token counts (64,128) or fractions "
                                "(0.1,0.25), got 'a'"),
    (["eval", "--keep", "64,64"], "argument --keep: 64 given more than once in '64,64'"),
    (["demo", "--keep", ","], "argument --keep: expected a comma-separated list, got ','"),
    (["demo", "--lam", "nan"], "argument --lam: expected numbers in [0, 1] or auto, got 'nan'"),
    (["eval", "--lam", "2"], "argument --lam: expected numbers in [0, 1] or auto, got '2'"),
    (["eval", "--lam", "0,0.5,0"], "argument --lam: 0 given more than once in '0,0.5,0'"),
    (["eval", "--saliency", "cls,attention"], "argument --saliency: expected saliency kinds "
                                              "from text, cls, query, none, got 'attention'"),
    (["demo", "--lam", "0,0.5"], "argument --lam: demo takes one value; eval compares several"),
    (["demo", "--saliency", "cls,query"], "argument --saliency: demo takes one value; eval "
                                          "compares several"),
    (["eval", "--saliency", "none", "--lam", "0,0.5", "--methods", "greedyprune"],
     "argument --lam: has no effect with --saliency none (diversity only), got 0,0.5"),
    (["eval", "--task", "photos"], "argument --task: invalid choice: 'photos' (choose from "
                                   "'scenes', 'crowds')"),
    (["demo", "--task", "crowds", "--random-weights"], "argument --task: picks a built-in "
                                                       "model; it has no effect with "
                                                       "--random-weights"),
    (["demo", "--method", "nope"], "argument --methods/--method: unknown method 'nope'; known "
                                   "methods: greedyprune, topk, divprune, cdpruner, random, "
                                   "uniform"),
    (["eval", "--methods", "random,fastv"], "argument --methods/--method: unknown method "
                                            "'fastv'; known methods: greedyprune, topk, "
                                            "divprune, cdpruner, random, uniform"),
    (["eval", "--methods", "random,random"], "argument --methods/--method: random given more "
                                             "than once in 'random,random'"),
    (["eval", "--saliency", "none"], "argument --saliency: method topk needs saliency; choose "
                                     "text, cls or query, or leave topk out of --methods"),
    (["demo", "--saliency", "none", "--lam", "0.5"], "argument --lam: has no effect with "
                                                     "--saliency none (diversity only), got 0.5"),
    (["demo", "--image", "missing.jpg"], "argument --image: no image file 'missing.jpg'"),
    (["demo", "--image", "TMP/empty"], "argument --image: no image file 'TMP/empty'"),
    (["demo", "--image", "TMP/notes.txt"], "argument --image: 'TMP/notes.txt' is not an image "
                                           "file Pillow can read"),
    (["demo", "--question", " "], "argument --question: expected some text, got an empty "
                                  "string"),
    (["demo", "--seed", "-1"], "argument --seed: expected a non-negative integer, got '-1'"),
    (["eval", "--seeds", "1,-2"], "argument --seeds: expected a non-negative integer, got '-2'"),
    (["demo", "--out", "picture"], "argument --out: expected a picture file name such as "
                                   "demo.png or demo.jpg, got 'picture'"),
    (["demo", "--out", "TMP/notes.txt/kept.png"], "argument --out: cannot write "
                                                  "'TMP/notes.txt/kept.png': 'TMP/notes.txt' "
                                                  "is a file"),
    (["eval", "--out", "TMP/notes.txt"], "argument --out: 'TMP/notes.txt' is a file; expected "
                                         "a folder"),
    (["demo", "--device", "abc"], "argument --device: expected a device such as cpu, cuda or "
                                  "cuda:1, got 'abc'"),
    (["demo", "--model", HUB_ID], f"argument --model: no folder '{HUB_ID}': only local "
                                  "checkpoint folders are read (nothing is downloaded). To use "
                                  f"the Hugging Face Hub model {HUB_ID}, download it first: hf "
                                  f"download {HUB_ID} --local-dir DIR (or huggingface-cli "
                                  f"download {HUB_ID} --local-dir DIR), then pass --model DIR"),
    (["eval", "--model", "./my-llava"], "argument --model: no folder './my-llava': only local "
                                        "checkpoint folders are read (nothing is downloaded)"),
    (["eval", "--model", "TMP/empty"], "argument --model: 'TMP/empty' is not a checkpoint "
                                       "folder: it has no config.json"),
    (["eval", "--model", "TMP/notes.txt"], "argument --model: expected a checkpoint folder, got "
                                           "the file 'TMP/notes.txt'"),
    (["demo", "--random-weights", "--model", "TMP/ckpt"], "argument --model: not allowed with "
                                                          "argument --random-weights"),
    (["eval", "--model", "TMP/ckpt", "--data", "missing.jsonl"],
     "argument --data: [Errno 2] No such file or directory: 'missing.jsonl'"),
    (["eval", "--num-questions", "0"], "argument --num-questions: expected a positive integer, "
                                       "got '0'"),
    (["eval", "--limit", "-3"], "argument --limit: expected a positive integer, got '-3'"),
    (["eval", "--max-new-tokens", "x"], "argument --max-new-tokens: expected a positive "
                                        "integer, got 'x'"),
    (["eval", "--prompt", "Answer briefly."], "argument --prompt: the prompt must contain "
                                              "{question}, got 'Answer briefly.'"),
    (["eval", "--prompt", "{question} in {n} words"],
     "argument --prompt: the prompt may hold no braces but {question} (write {{ and }} for "
     "literal ones), got '{question} in {n} words'"),
])
def test_bad_command_lines_exit_before_any_model_loads(argv, message, places, no_model,
                                                       monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["greedyprune"])  # as the console script is invoked
    with pytest.raises(SystemExit) as exit_info:
        main([arg.replace("TMP", str(places)) for arg in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: greedyprune {argv[0]} ")
    assert err.splitlines()[-1] == (f"greedyprune {argv[0]}: error: "
                                    + message.replace("TMP", str(places)))


def test_a_device_this_machine_lacks_is_refused(no_model, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(sys, "argv", ["greedyprune"])
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--device", "cuda:99"])
    assert exit_info.value.code == 2
    expected = ("this machine has {} cuda device(s), numbered from 0".format(
        torch.cuda.device_count()) if torch.cuda.is_available() else "no cuda device on this "
                                                                      "machine")
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"greedyprune eval: error: argument --device: 'cuda:99': {expected}")


def test_no_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["greedyprune"])
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "greedyprune: error: the following arguments are required: COMMAND")


def test_demo_run_checks_its_arguments_first():
    # No model is touched before the arguments are checked (None would fail at once).
    with pytest.raises(ValueError, match=r"^repeats must be a positive integer, got 0$"):
        demo.run(None, None, repeats=0)
    with pytest.raises(ValueError, match=r"^keep must hold at least one budget$"):
        demo.run(None, None, keep=[])


def _run(command, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env=env)


def test_usage_names_the_command_as_invoked(tmp_path):
    as_module = [sys.executable, "-m", "greedyprune"]
    python = Path(sys.executable).name
    version = _run(as_module, "--version")
    assert (version.returncode, version.stdout) == (0, f"greedyprune {__version__}\n")
    bad = _run(as_module, "demo", "--repeats", "0")
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"usage: {python} -m greedyprune demo [-h]")
    assert bad.stderr.splitlines()[-1] == (f"{python} -m greedyprune demo: error: argument "
                                           "--repeats: expected a positive integer, got '0'")
    # What the installed console script runs.
    script = tmp_path / "greedyprune"
    script.write_text("import sys\nfrom greedyprune.__main__ import main\nsys.exit(main())\n")
    version = _run([sys.executable, str(script)], "--version")
    assert (version.returncode, version.stdout) == (0, f"greedyprune {__version__}\n")
    bad = _run([sys.executable, str(script)], "eval", "--lam", "2")
    assert bad.returncode == 2
    assert bad.stderr.startswith("usage: greedyprune eval [-h]")
    assert bad.stderr.splitlines()[-1] == ("greedyprune eval: error: argument --lam: expected "
                                           "numbers in [0, 1] or auto, got '2'")
