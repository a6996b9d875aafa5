"""The command line, end to end: ``python -m greedyprune demo`` on the random-weight model (tiny
widths, same 576 visual tokens) and on a local checkpoint, and ``python -m greedyprune eval`` on
a tiny saved checkpoint and a JSONL file made here. No download anywhere."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("transformers")

from greedyprune import demo  # noqa: E402
from greedyprune.__main__ import build_parser, main  # noqa: E402

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


def test_defaults_are_the_realistic_ones():
    args = build_parser().parse_args(["demo"])
    # None: chosen by model (16 of the built-in model's 144 tokens, 64 of LLaVA-1.5's 576).
    assert (args.model_size, args.keep, args.method, args.model) == ("demo", None, None, None)
    assert not args.random_weights
    widths = demo.SIZES["demo"]
    assert widths["text"]["num_hidden_layers"] >= 8 and widths["text"]["hidden_size"] >= 1024
    args = build_parser().parse_args(["eval"])
    assert (args.model, args.data, args.num_questions, args.seed) == (None, None, 200, 0)
    assert args.methods == ["greedyprune", "divprune", "topk", "random"]
    assert args.keep is None and args.seeds == [0] and args.prompt is None


@pytest.mark.parametrize("argv, words", [
    (["eval", "--model", "m", "--data", "d", "--methods", "fastv"], "unknown method 'fastv'"),
    (["eval", "--model", "m", "--data", "d", "--keep", "a,b"], "comma-separated"),
    (["demo", "--method", "nope"], "unknown method 'nope'"),
    (["eval", "--model", "m", "--data", "d", "--keep", "64,0.5"], "all token counts or all"),
    (["eval", "--model", "m", "--data", "missing.jsonl"], "--data: [Errno 2]"),
    (["eval", "--num-questions", "0"], "expected a positive integer"),
    (["eval", "--limit", "-3"], "expected a positive integer"),
    (["eval", "--seeds", "1,-2"], "non-negative integers"),
    (["eval", "--prompt", "Answer briefly."], "must contain {question}"),
    (["eval", "--lam", "1.5"], "--lam: must be in [0, 1]"),
    (["demo", "--keep", "0"], "expected a positive integer"),
    (["demo", "--model", "m", "--random-weights"], "not allowed with argument"),
    ([], "COMMAND"),
])
def test_bad_command_lines_exit_with_a_message(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err
