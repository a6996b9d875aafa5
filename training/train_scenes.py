"""Train greedyprune's built-in model from scratch on generated scenes; resumable.

    python training/train_scenes.py                     # train, then export into the package
    python training/train_scenes.py --task crowds       # the second built-in model
    python training/train_scenes.py --steps 200 --out /tmp/run --export /tmp/model   # a try

``--task`` picks the task (:data:`greedyprune.builtin.TASKS`) and its recipe (:data:`RECIPES`:
steps, scene sizes, when the comparison heads join); an option given on the command line
overrides the recipe's value.

The model is :func:`greedyprune.builtin.config` with random initial weights (seeded). Every step
draws a fresh batch of :mod:`greedyprune.scenes` questions from a stream keyed by (seed, step),
so a run resumed from a checkpoint sees exactly the batches an uninterrupted run would.

Each image comes with a conversation of ``1 + --extra-questions`` turns: a question from the
task's ``generate`` (:func:`greedyprune.scenes.generate`), then more about the same scene (its
``ask``), so one pass over the image's 144 tokens teaches several answers. The loss is the
answers' cross-entropy (each answer word and its ``</s>``) plus dense auxiliary targets on the
144 visual tokens the projector hands to the decoder, read after scaling each token to unit RMS
as the decoder's first norm does (visual tokens far larger than the text's would pass through
the decoder's residual stream unchanged, so nothing should reward growth):

* the colour and the shape covering each patch, scored by the cosine with the word embeddings
  of their names (so visual tokens of a red circle point where "red" and "circle" do), against
  a learned background score;
* the object part covering the patch (a small or a large object's top-left cell or another), and the
  patch's row and column, through a linear head;
* the patch's row and column as numbers in [-1, 1], so that comparing two positions is a
  subtraction;
* a penalty on visual tokens whose RMS exceeds 1.

Two more targets teach the decoder to use those tokens:

* where to look: at each position that predicts an answer, two heads of decoder layer
  ``--attention-layer`` should attend to the patches of the objects the question is about
  (head 0 to the first named, head 1 to the second: a spatial question's two objects), or away
  from the image when there is nothing to find (a "no" to an existence question);
* from step ``--compare-from``, where a spatial question's first object lies from its second,
  per axis (before, level, after), read by a linear head from the residual stream after that
  layer; from step ``--relation-from``, also the relation asked, read from the same place. With
  both there, the answer is one product away, which the next layer's gated MLP computes. (These
  steps are where they joined the run that made the shipped model: objects first, then
  positions, then relations.)

The auxiliary heads are training aids only; they are not part of the exported model. Half the
questions carry LLaVA-1.5's short-answer instruction, so both prompt styles work. For the
first ``--easy-steps`` steps scenes hold fewer objects (scenes: 1–3, then 2–6 as in the
benchmark; crowds: 3–8, then 8–16).

A checkpoint (model, auxiliary heads, optimizer, step) is written to ``--out`` every
``--checkpoint-every`` steps and on Ctrl-C; the same command resumes from it. At the end the
model and processor are saved with ``save_pretrained`` into ``--export`` (default: the package's
``greedyprune/data/<task>-llava``) and their accuracy on 1000 fresh benchmark questions is
written next to them in ``training.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from greedyprune import builtin, scenes  # noqa: E402
from greedyprune.evaluate import SHORT_ANSWER_PROMPT  # noqa: E402

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
#: Outputs of the linear auxiliary head: a background score for colour and for shape (the
#: named classes are scored by word embeddings), the part (0–5), the row and the column as
#: classes, and the row and the column as numbers in [-1, 1].
AUX = {"colour_bg": 1, "shape_bg": 1, "part": 5, "row": scenes.GRID, "col": scenes.GRID,
       "where": 2}
TRAIN_KEY = 0x747261696E  # keeps training streams apart from scenes.benchmark's
COSINE_SCALE = 10.0  # logits of the word-embedding targets: 10 × cosine
#: Each task's recipe: the defaults of --steps, --easy-steps, --compare-from, --relation-from,
#: and the objects per scene in the easy steps and after. The scenes recipe is the one that made
#: the shipped scenes model (its comparison heads joined that run at the steps given). The
#: crowds recipe has both heads from step 300 and a long easy phase: a first run of 2400 steps
#: with 300 easy ones stalled near chance on existence and spatial questions (held-out accuracy
#: 72/51/52% at step 1500), its supervised attention still spread over the crowd.
RECIPES = {
    "scenes": dict(steps=4500, easy_steps=400, compare_from=1190, relation_from=2145,
                   easy_objects=(1, 3), objects=(2, 6)),
    "crowds": dict(steps=6000, easy_steps=1500, compare_from=300, relation_from=300,
                   easy_objects=(3, 8), objects=(8, 16)),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=list(RECIPES), default="scenes")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int, default=32, help="images per step")
    p.add_argument("--extra-questions", type=int, default=6,
                   help="questions per image besides the first")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--easy-steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="checkpoint folder (default: training/run-<task>)")
    p.add_argument("--export", help="folder of the finished model (default: the package's)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--final-questions", type=int, default=1000)
    p.add_argument("--attention-layer", type=int, default=2,
                   help="decoder layer whose first two heads are shown where to look")
    p.add_argument("--attention-weight", type=float, default=1.0)
    p.add_argument("--compare-from", type=int,
                   help="step from which spatial questions also teach where the first object "
                        "lies from the second")
    p.add_argument("--relation-from", type=int,
                   help="step from which spatial questions also teach which relation is asked")
    args = p.parse_args(argv)
    recipe = RECIPES[args.task]
    for name, value in recipe.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.out = args.out or str(ROOT / "training" / f"run-{args.task}")
    args.export = args.export or str(ROOT / "greedyprune" / "data" / builtin.TASKS[args.task])
    return args


def pixels(images) -> torch.Tensor:
    """What the processor's CLIP image processor returns for 192-px images: rescale, normalize."""
    x = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    return torch.from_numpy(((x - CLIP_MEAN) / CLIP_STD).transpose(0, 3, 1, 2).copy())


def turn(question: str, instruct: bool, image: bool):
    text = SHORT_ANSWER_PROMPT.format(question=question) if instruct else question
    parts = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": parts}


def prompt(processor, question: str, instruct: bool) -> str:
    return processor.apply_chat_template([turn(question, instruct, True)],
                                         add_generation_prompt=True)


def batch(processor, step: int, args):
    """The batch of a step: conversations with their answers, and patch targets."""
    rng = np.random.default_rng([args.seed, TRAIN_KEY, step])
    objects = args.easy_objects if step < args.easy_steps else args.objects
    task = builtin.task(args.task)
    images, texts, labels, looks, compares = [], [], [], [], []
    for i in range(args.batch):
        category = task.CATEGORIES[int(rng.integers(len(task.CATEGORIES)))]
        scene, question, answer = task.generate(rng, category, objects)
        conversation = [turn(question, bool(rng.integers(2)), True),
                        {"role": "assistant", "content": answer}]
        asked = [scenes.Question(scene, question, answer, category)]
        for _ in range(args.extra_questions):
            question, answer, kind = task.ask(rng, scene)
            conversation += [turn(question, bool(rng.integers(2)), False),
                             {"role": "assistant", "content": answer}]
            asked.append(scenes.Question(scene, question, answer, kind))
        looks += [where_to_look(q) for q in asked]
        compares += [comparison(q) for q in asked]
        images.append(scene.render())
        texts.append(processor.apply_chat_template(conversation))
        labels.append(scenes.patch_labels(scene))
    tok = processor.tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")
    tok["input_ids"] = expand_images(processor, tok["input_ids"])
    tok["attention_mask"] = (tok["input_ids"] != processor.tokenizer.pad_token_id).long()
    return images, tok, labels, looks, compares


def in_order(question):
    """The two objects of a spatial question, in the order it names them."""
    return sorted(scenes.mentioned(question),
                  key=lambda t: question.question.index(f"{t.colour} {t.shape}"))


def comparison(question):
    """For a spatial question, where the first named object's centre lies from the second's,
    per axis (row, column): 0 before (above / left), 1 level (less than a cell apart), 2 after;
    then the relation asked (its index in ``scenes.RELATIONS``). None for other questions."""
    if question.category != "spatial":
        return None
    first, second = in_order(question)
    where = tuple(int(np.sign(a - b)) + 1 if abs(a - b) >= 1 else 1
                  for a, b in zip(first.centre, second.centre))
    return where + (next(i for i, r in enumerate(scenes.RELATIONS)
                         if f" {r} " in question.question),)


def where_to_look(question):
    """The patches the two supervised heads should attend to when answering: the objects the
    question is about (the first and the second named, for a spatial relation), or ``[(), ()]``
    where there is nothing to find (a "no" to an existence question): then the heads should
    look away from the image."""
    if question.category == "spatial":
        return [t.patches for t in in_order(question)]
    things = scenes.mentioned(question)
    if not things:
        return [(), ()]
    patches = tuple(p for t in things for p in t.patches)
    return [patches, patches]


def expand_images(processor, ids: torch.Tensor) -> torch.Tensor:
    """The processor's expansion of one ``<image>`` into 144 placeholders (same ids)."""
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    n = scenes.GRID * scenes.GRID
    out = []
    for row in ids:
        at = int((row == image_id).nonzero()[0, 0])
        out.append(torch.cat([row[:at], row.new_full((n,), image_id), row[at + 1:]]))
    return torch.stack(out)


def answer_positions(input_ids, marker):
    """(rows, positions) of every answer's ``:`` (of ``assistant :``), in conversation order:
    the positions whose outputs predict the answer words."""
    assistant, colon = marker
    starts = (input_ids[:, :-3] == assistant) & (input_ids[:, 1:-2] == colon)
    rows, at = starts.nonzero(as_tuple=True)
    return rows, at + 1


def answer_loss(logits, input_ids, answers):
    """Cross-entropy of every answer word and its ``</s>``: the two tokens after each
    ``assistant :`` (``answers``: :func:`answer_positions`). Also whether each first answer's
    word is the top prediction."""
    rows, at = answers
    at = at + 1                                               # the answer word
    targets = torch.stack([input_ids[rows, at], input_ids[rows, at + 1]], 1)
    scores = torch.stack([logits[rows, at - 1], logits[rows, at]], 1)
    loss = torch.nn.functional.cross_entropy(scores.flatten(0, 1).float(), targets.flatten())
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    correct = scores[first, 0].argmax(-1) == targets[first, 0]
    return loss, correct


def aux_loss(head, words, features, labels, device):
    """Per-patch targets: colour and shape scored by the cosine with their names' word
    embeddings (times a fixed scale, plus a learned background score), part, row and column
    by the linear head. Both read the features scaled to unit RMS, as the decoder's first norm
    does, so that no target rewards visual tokens for growing: tokens far larger than the
    text's would pass through the decoder's residual stream unchanged."""
    raw = features = features.float()
    features = features * torch.rsqrt(features.pow(2).mean(-1, keepdim=True) + 1e-6)
    out = head(features)                                      # (B, 144, sum(AUX))
    unit = torch.nn.functional.normalize(features, dim=-1)
    named = {name: COSINE_SCALE * unit @ torch.nn.functional.normalize(embedding.float(), dim=-1).T
             for name, embedding in words.items()}           # colour, shape
    n = scenes.GRID * scenes.GRID
    cells = np.arange(n)
    targets = {k: torch.as_tensor(np.stack([lab[k] for lab in labels])) for k in
               ("colour", "shape", "part")}
    targets["row"] = torch.as_tensor(np.broadcast_to(cells // scenes.GRID, (len(labels), n)).copy())
    targets["col"] = torch.as_tensor(np.broadcast_to(cells % scenes.GRID, (len(labels), n)).copy())
    columns, start = {}, 0
    for name, size in AUX.items():
        columns[name] = out[..., start:start + size]
        start += size
    scores = {"colour": torch.cat([columns["colour_bg"], named["colour"]], -1),
              "shape": torch.cat([columns["shape_bg"], named["shape"]], -1),
              "part": columns["part"], "row": columns["row"], "col": columns["col"]}
    total, accuracy = 0.0, {}
    for name, score in scores.items():
        target = targets[name].to(device)
        total = total + torch.nn.functional.cross_entropy(score.flatten(0, 1), target.flatten())
        accuracy[name] = float((score.argmax(-1) == target).float().mean())
    # Positions as numbers too, so that comparing two objects' positions is a subtraction.
    middle = (scenes.GRID - 1) / 2
    where = torch.stack([targets["row"], targets["col"]], -1).to(device).float() / middle - 1
    total = total + 10 * torch.nn.functional.mse_loss(columns["where"], where)
    # Visual tokens no larger than unit RMS: far larger ones would pass through the decoder's
    # residual stream unchanged.
    excess = torch.relu(raw.pow(2).mean(-1).sqrt() - 1.0).pow(2).mean()
    return total + excess, accuracy


def attention_loss(captured, attention, input_ids, answers, looks, image_id):
    """-log of the attention two heads of one decoder layer pay, from the position that
    predicts each answer, to the patches of the objects the question is about (head 0: the
    first object, head 1: the second), or to anything but the image when there is nothing to
    find. Recomputed from the layer's own query and key projections and rotary embedding, for
    those positions only; padding is on the right."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hidden, (cos, sin) = captured["hidden"], captured["rope"]
    rows, at = answers
    b, t, _ = hidden.shape
    d = attention.head_dim
    q = attention.q_proj(hidden).view(b, t, -1, d)[:, :, :2].transpose(1, 2)
    k = attention.k_proj(hidden).view(b, t, -1, d)[:, :, :2].transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    scores = torch.einsum("nhd,nhtd->nht", q[rows, :, at], k[rows]) * attention.scaling
    later = torch.arange(t, device=hidden.device)[None, :] > at[:, None]
    probs = scores.float().masked_fill(later[:, None], float("-inf")).softmax(-1)
    first_image = (input_ids == image_id).int().argmax(1)
    image = first_image[rows][:, None] + torch.arange(scenes.GRID ** 2, device=hidden.device)
    on_image = probs.gather(2, image[:, None].expand(-1, 2, -1)).sum(-1)    # (answers, 2)
    losses = []
    for n, look in enumerate(looks):
        for head, patches in enumerate(look):
            if patches:
                where = first_image[rows[n]] + torch.as_tensor(patches, device=hidden.device)
                losses.append(-torch.log(probs[n, head, where].sum() + 1e-6))
            else:
                losses.append(-torch.log((1 - on_image[n, head]).clamp_min(0) + 1e-6))
    return torch.stack(losses).mean()


def compare_loss(head, hidden, answers, compares, relation=None):
    """Cross-entropy of where the first object of a spatial question lies from the second
    (:func:`comparison`), read by a linear head from the residual stream at the position that
    predicts the answer, after the supervised attention layer; and, given a ``relation`` head,
    of the relation asked, read from the same place (an answer is then one product away)."""
    rows, at = answers
    chosen = [n for n, c in enumerate(compares) if c is not None]
    if not chosen:
        return hidden.new_zeros(())
    x = hidden[rows[chosen], at[chosen]].float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    scores = head(x).view(len(chosen), 2, 3)
    targets = torch.as_tensor([compares[n] for n in chosen], device=hidden.device)
    loss = torch.nn.functional.cross_entropy(scores.flatten(0, 1), targets[:, :2].flatten())
    if relation is not None:
        loss = loss + torch.nn.functional.cross_entropy(relation(x), targets[:, 2])
    return loss


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.inference_mode()
def quick_eval(model, processor, records, device):
    """Teacher-free accuracy of the first generated token, per category (fast)."""
    texts = [prompt(processor, r.question, False) for r in records]
    inputs = processor(images=[r.image for r in records], text=texts, return_tensors="pt",
                       padding=True).to(device)
    logits = model(**inputs, logits_to_keep=1).logits[:, -1]
    words = processor.tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
    hits = {}
    for record, word in zip(records, words):
        hits.setdefault(record.category, []).append(word == record.answers[0])
    return {k: float(np.mean(v)) for k, v in sorted(hits.items())}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    processor = builtin.processor()
    torch.manual_seed(args.seed)
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(builtin.config()).to(device)
    width = model.config.text_config.hidden_size
    head = torch.nn.Linear(width, sum(AUX.values())).to(device)
    compare = torch.nn.Linear(width, 6).to(device)
    relation = torch.nn.Linear(width, len(scenes.RELATIONS)).to(device)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW([{"params": params}, {"params": list(compare.parameters())},
                                   {"params": list(relation.parameters())}],
                                  lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    params += list(compare.parameters()) + list(relation.parameters())
    start, log = 0, []
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        compare.load_state_dict(state["compare"])
        relation.load_state_dict(state["relation"])
        optimizer.load_state_dict(state["optimizer"])
        start, log = state["step"], state["log"]
        print(f"resumed from {checkpoint} at step {start}", flush=True)

    vocab = processor.tokenizer.get_vocab()
    word_ids = {"colour": [vocab[c] for c in scenes.COLOURS],
                "shape": [vocab[s] for s in scenes.SHAPES]}
    marker = (vocab["assistant"], vocab[":"])
    features = {}
    model.model.multi_modal_projector.register_forward_hook(
        lambda module, args_, output: features.__setitem__("x", output))
    image_id = vocab["<image>"]
    attention = model.model.language_model.layers[args.attention_layer].self_attn

    def capture(module, args_, kwargs):
        features["hidden"] = args_[0] if args_ else kwargs["hidden_states"]
        features["rope"] = kwargs["position_embeddings"]

    attention.register_forward_pre_hook(capture, with_kwargs=True)
    model.model.language_model.layers[args.attention_layer + 1].register_forward_pre_hook(
        lambda module, args_, kwargs: features.__setitem__(
            "after", args_[0] if args_ else kwargs["hidden_states"]), with_kwargs=True)

    def save(step):
        tmp = out / "checkpoint.tmp"
        torch.save({"model": model.state_dict(), "head": head.state_dict(),
                    "compare": compare.state_dict(), "relation": relation.state_dict(),
                    "optimizer": optimizer.state_dict(), "step": step, "log": log}, tmp)
        os.replace(tmp, checkpoint)

    interrupted = []
    signal.signal(signal.SIGTERM, lambda *a: interrupted.append(True))
    signal.signal(signal.SIGINT, lambda *a: interrupted.append(True))
    # A seed the README's benchmark does not use.
    held_out = builtin.task(args.task).benchmark(seed=10**6, n=256)
    model.train()
    began = time.time()
    seconds_before = log[-1]["seconds"] if log else 0.0
    for step in range(start, args.steps):
        images, tok, labels, looks, compares = batch(processor, step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        inputs = {k: v.to(device) for k, v in tok.items()}
        logits = model(pixel_values=pixels(images).to(device), **inputs).logits
        answers = answer_positions(inputs["input_ids"], marker)
        loss_a, correct = answer_loss(logits, inputs["input_ids"], answers)
        embedding = model.get_input_embeddings().weight
        words = {k: embedding[v] for k, v in word_ids.items()}
        loss_x, aux_acc = aux_loss(head, words, features["x"], labels, device)
        loss_l = attention_loss(features, attention, inputs["input_ids"], answers, looks,
                                image_id)
        loss = loss_a + loss_x + args.attention_weight * loss_l
        if step >= args.compare_from:
            loss_c = compare_loss(compare, features["after"], answers, compares,
                                  relation if step >= args.relation_from else None)
            loss = loss + loss_c
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        done = step + 1
        if done % 10 == 0:
            if step >= args.compare_from:
                print(f"compare {loss_c.item():.3f}", end=" ")
            visual = features["x"].detach().norm(dim=-1).mean().item()
            print(f"step {done} loss {loss_a.item():.3f} aux {loss_x.item():.3f} "
                  f"look {loss_l.item():.3f} "
                  f"visual-norm {visual:.2f} "
                  f"train-acc {float(correct.float().mean()):.2f} "
                  f"aux-acc {' '.join(f'{k}={v:.2f}' for k, v in aux_acc.items())} "
                  f"lr {lr_at(step, args):.2e} {time.time() - began:.0f}s", flush=True)
        if done % args.eval_every == 0 or done == args.steps:
            model.eval()
            acc = quick_eval(model, processor, held_out, device)
            model.train()
            log.append({"step": done, "seconds": seconds_before + time.time() - began,
                        "images": done * args.batch, "held_out": acc})
            print(f"eval step {done}: {acc}", flush=True)
        if done % args.checkpoint_every == 0 or done == args.steps or interrupted:
            save(done)
        if interrupted:
            print(f"stopped at step {done}; run the same command to resume", flush=True)
            return 1
    export(model, processor, args, log)
    return 0


def export(model, processor, args, log):
    """save_pretrained into --export, then measure it as users load it."""
    from greedyprune.evaluate import HFAnswerer, compare

    folder = Path(args.export)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    loaded = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    answerer = HFAnswerer(loaded, AutoProcessor.from_pretrained(folder), max_new_tokens=4,
                          prompt="{question}")
    records = builtin.task(args.task).benchmark(seed=0, n=args.final_questions)
    report = compare(answerer, records, methods=[], keep=[1], progress=False)
    per = {}
    for result, record in zip(report.results, records):
        per.setdefault(record.category, []).append(result.accuracy)
    summary = {
        "steps": args.steps, "batch": args.batch, "images": args.steps * args.batch,
        "questions": args.steps * args.batch * (1 + args.extra_questions),
        "task": args.task, "recipe": {k: getattr(args, k) for k in RECIPES[args.task]},
        "seed": args.seed, "training_seconds": log[-1]["seconds"] if log else None,
        "threads": args.threads, "device": args.device,
        "benchmark": {"seed": 0, "questions": len(records),
                      "accuracy": float(np.mean([r.accuracy for r in report.results])),
                      "by_category": {k: float(np.mean(v)) for k, v in sorted(per.items())}},
        "log": log,
    }
    (folder / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["benchmark"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
