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


def train(out, export, steps, *task):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", str(steps), "--batch", "2", "--eval-every", "1",
         "--checkpoint-every", "1", "--easy-steps", "1", "--compare-from", "1", "--relation-from", "1",
         "--final-questions", "4", "--threads", "1", "--out", str(out), "--export", str(export),
         *task],
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


def test_the_crowds_task_trains_from_its_own_recipe(tmp_path):
    out, export = tmp_path / "run", tmp_path / "model"
    train(out, export, 1, "--task", "crowds")
    record = json.loads((export / "training.json").read_text())
    assert record["task"] == "crowds" and record["recipe"]["objects"] == [8, 16]
    assert set(record["benchmark"]["by_category"]) <= {"attribute", "existence", "spatial"}


def test_each_task_has_its_recipe_and_the_command_line_overrides_it(script):
    args = script.parse_args([])
    assert (args.task, args.steps, args.compare_from, args.relation_from) == (
        "scenes", 4500, 1190, 2145)    # the recipe of the shipped scenes model
    assert args.export.endswith("greedyprune/data/scenes-llava")
    args = script.parse_args(["--task", "crowds", "--steps", "7"])
    assert (args.steps, args.objects, args.easy_objects) == (7, (8, 16), (3, 8))
    assert args.export.endswith("greedyprune/data/crowds-llava")
    assert args.out.endswith("training/run-crowds")


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_scenes
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return train_scenes


def test_spatial_comparison_targets_agree_with_the_answers(script):
    from greedyprune import scenes

    axis_class = {"left": (1, 0), "right": (1, 2), "above": (0, 0), "below": (0, 2)}
    checked = 0
    for q in scenes.questions(21, 200):
        if q.category != "spatial":
            continue
        axis, before_or_after = axis_class[next(w for w in axis_class if f" {w} " in q.question)]
        where = script.comparison(q)
        assert (where[axis] == before_or_after) == (q.answer == "yes"), q.question
        assert scenes.RELATIONS[where[2]] in q.question
        first, second = script.where_to_look(q)
        assert (set(first), set(second)) == tuple(set(t.patches) for t in script.in_order(q))
        checked += 1
    assert checked == 50


def test_where_to_look_is_the_models_own_attention(script):
    """The supervised attention, recomputed from the layer's projections, equals what the
    model's eager attention returns at the positions that predict answers."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from greedyprune import builtin

    args = script.parse_args(["--batch", "3", "--extra-questions", "2"])
    processor = builtin.processor()
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(builtin.config()).eval()
    model.set_attn_implementation("eager")
    images, tok, _, looks, _ = script.batch(processor, 5, args)
    layer = model.model.language_model.layers[args.attention_layer].self_attn
    captured = {}

    def capture(module, args_, kwargs):
        captured["hidden"], captured["rope"] = kwargs["hidden_states"], kwargs["position_embeddings"]

    hook = layer.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        out = model(pixel_values=script.pixels(images), **tok, output_attentions=True)
        vocab = processor.tokenizer.get_vocab()
        marker = (vocab["assistant"], vocab[":"])
        answers = script.answer_positions(tok["input_ids"], marker)
        loss = script.attention_loss(captured, layer, tok["input_ids"], answers, looks,
                                     vocab["<image>"])
    hook.remove()
    attention = out.attentions[args.attention_layer]          # (B, heads, T, T)
    ids = tok["input_ids"]
    rows, at = ((ids[:, :-3] == marker[0]) & (ids[:, 1:-2] == marker[1])).nonzero(as_tuple=True)
    first_image = (ids == vocab["<image>"]).int().argmax(1)
    expected = []
    assert len(looks) == len(rows) == 9
    for n, look in enumerate(looks):
        for head, patches in enumerate(look):
            row = attention[rows[n], head, at[n] + 1]
            image = row[first_image[rows[n]]:first_image[rows[n]] + 144]
            mass = image[list(patches)].sum() if patches else 1 - image.sum()
            expected.append(-torch.log(mass + 1e-6))
    assert torch.allclose(loss, torch.stack(expected).mean(), rtol=1e-4, atol=1e-5)
