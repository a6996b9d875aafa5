"""training/train_scenes.py runs, checkpoints, resumes where it stopped and exports a folder that
transformers loads (a few steps on tiny batches: the script, not the model's quality)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_scenes.py"


def train(out, export, steps):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", str(steps), "--batch", "2", "--eval-every", "1",
         "--checkpoint-every", "1", "--easy-steps", "1", "--final-questions", "4", "--threads",
         "1", "--out", str(out), "--export", str(export)],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_trains_checkpoints_resumes_and_exports(tmp_path):
    out, export = tmp_path / "run", tmp_path / "model"
    first = train(out, export, 2)
    assert "eval step 2" in first and (out / "checkpoint.pt").is_file()
    second = train(out, export, 3)
    assert "resumed from" in second and "at step 2" in second
    assert "eval step 2" not in second and "eval step 3" in second
    record = json.loads((export / "training.json").read_text())
    assert record["steps"] == 3 and [e["step"] for e in record["log"]] == [1, 2, 3]
    assert record["benchmark"]["questions"] == 4
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(export)
    processor = AutoProcessor.from_pretrained(export)
    assert model.config.vision_config.image_size == 192
    assert processor.chat_template
