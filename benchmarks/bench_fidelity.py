"""Fidelity benchmark: does each pruning method keep the built-in model's answers?

    python benchmarks/bench_fidelity.py                   # 400 questions, every method
    python benchmarks/bench_fidelity.py --questions 40    # a quick look
    python benchmarks/update_readme.py bench_fidelity     # paste the tables into README.md

The built-in model (:mod:`greedyprune.builtin`, 144 visual tokens per image) answers
``--questions`` generated scene questions (:func:`greedyprune.scenes.benchmark`, seed
``--seed``) unpruned and under every method at 6, 12, 24 and 48 kept tokens (4% to 33%):

* ``greedyprune`` at λ = 0, 0.25, 0.5, 0.75, 1 with ``saliency="text"``, ``"cls"`` and
  ``"query"``, and with ``"none"`` (diversity only, where λ has no effect: one row);
* ``cdpruner`` (conditional DPP) and ``topk`` with text and query relevance, ``divprune``,
  ``uniform`` and ``random`` (over ``--seeds``, with the spread of the per-seed means).

For every answer it also records where the kept tokens lie: the share of the question's objects
(:func:`greedyprune.scenes.mentioned`) with at least one kept token ("objects hit"). A second
pass records the saliency each kind gives the tokens (min-max scaled per image, as the rule
uses it), on the question's objects, on other objects and on the background.

Writes ``bench_fidelity.md`` and ``bench_fidelity.json`` into ``--out`` (default
benchmarks/results/) and the plot ``docs/fidelity.png``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

# The checkout's greedyprune, even where another one is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import greedyprune  # noqa: E402
import harness  # noqa: E402
from greedyprune import builtin, methods, scenes  # noqa: E402
from greedyprune.evaluate import UNPRUNED, HFAnswerer, Setting, compare  # noqa: E402
from greedyprune.hf import attach  # noqa: E402
from greedyprune.reference import normalized_saliency  # noqa: E402
from harness import table_head, table_row  # noqa: E402

BUDGETS = (6, 12, 24, 48)
LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)
SALIENCIES = ("text", "cls", "query")


def settings():
    chosen = [Setting("greedyprune", lam, saliency, f"greedyprune λ={lam:g} {saliency}")
              for saliency in SALIENCIES for lam in LAMS]
    chosen.append(Setting("greedyprune", 0.0, "none", "greedyprune none"))
    chosen += [Setting("cdpruner", saliency=s, label=f"cdpruner {s}") for s in ("text", "query")]
    chosen += [Setting("topk", saliency=s, label=f"topk {s}") for s in ("text", "query")]
    chosen += [Setting("divprune", label="divprune"), Setting("uniform", label="uniform"),
               Setting("random", label="random")]
    return chosen


def patches(things):
    """The visual tokens (raster indices, 0–143) that the objects cover."""
    return set().union(*(t.patches for t in things))


class Probe:
    """The answerer, noting for each pruned answer the share of the question's objects that
    kept at least one token."""

    def __init__(self, answerer, by_image):
        self.answerer, self.by_image, self.hits = answerer, by_image, {}

    def answer_batch(self, images, questions, method=None, keep=None, **options):
        answers = self.answerer.answer_batch(images, questions, method, keep, **options)
        if method is not None:
            key = (method, options.get("lam"), options.get("saliency"), keep)
            for row, image in enumerate(images):
                (record,) = [r for r in self.answerer.last if r.row == row]
                kept = set(record.kept.tolist())
                hit = [bool(kept.intersection(t.patches))
                       for t in scenes.mentioned(self.by_image[id(image)])]
                self.hits.setdefault(key, []).append(
                    statistics.fmean(hit) if hit else 1.0)
        return answers


def saliency_profile(model, processor, questions, kind):
    """Mean min-max-scaled saliency on the question's objects, other objects and background."""
    seen = []

    def recording(features, k, saliency=None, *, lam=0.5, seed=0):
        seen.append(None if saliency is None else np.asarray(saliency, dtype=np.float64))
        return greedyprune.select(features, k, saliency, lam)

    answerer = HFAnswerer(model, processor, max_new_tokens=1, prompt="{question}")
    groups = {"question's objects": [], "other objects": [], "background": []}
    with methods.registered("_profile", recording) as name:
        for q in questions:
            inputs = answerer.inputs(scenes.image(q.scene), q.question)
            with attach(model, keep=12, method=name, saliency=kind), torch.inference_mode():
                model(**inputs)
            s = seen[-1][0] if seen[-1].ndim == 2 else seen[-1]
            s = normalized_saliency(s, len(s))  # ŝ as the rule sees it
            asked = patches(scenes.mentioned(q))
            objects = patches(q.scene.things)
            for index, value in enumerate(s):
                group = ("question's objects" if index in asked else
                         "other objects" if index in objects else "background")
                groups[group].append(value)
    return {k: statistics.fmean(v) if v else None for k, v in groups.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the random method")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=50, help="questions per generate() call")
    p.add_argument("--out", type=Path, default=harness.RESULTS_DIR)
    p.add_argument("--plot", type=Path, default=harness.ROOT / "docs" / "fidelity.png")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        greedyprune.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]

    env = harness.environment()
    start = time.time()
    model, processor = builtin.load()
    questions = scenes.questions(args.seed, args.questions)
    records = [q.record(f"scenes-{args.seed}-{i}") for i, q in enumerate(questions)]
    probe = Probe(HFAnswerer(model, processor, max_new_tokens=4, prompt="{question}"),
                  {id(r.image): q for r, q in zip(records, questions)})
    chosen = settings()
    began = time.time()
    report = compare(probe, records, chosen, list(BUDGETS), seeds=seeds, model="built-in",
                     batch_size=args.batch_size)
    print(f"answered in {time.time() - began:.0f} s", flush=True)
    profiles = {kind: saliency_profile(model, processor, questions[:100], kind)
                for kind in SALIENCIES}
    elapsed = time.time() - start

    by_label = {s.name: s for s in chosen}
    by_category = report.summary_by_category()
    rows = []
    for row in report.rows:
        keep = None if row["keep"] == "all" else row["keep"]
        entry = dict(row)
        setting = by_label.get(row["method"])
        key = None if setting is None else (setting.method, setting.lam, setting.saliency, keep)
        entry["objects_hit"] = statistics.fmean(probe.hits[key]) if key in probe.hits else None
        entry["by_category"] = {r["category"]: {"accuracy": r["accuracy"],
                                                "agreement": r["agreement"]}
                                for r in by_category
                                if r["method"] == row["method"] and r["keep"] == row["keep"]}
        rows.append(entry)
    training = json.loads((builtin.path() / "training.json").read_text())
    result = {
        "command": "python benchmarks/bench_fidelity.py " + " ".join(argv or sys.argv[1:]),
        "questions": args.questions, "seed": args.seed, "random_seeds": seeds,
        "budgets": list(BUDGETS), "tokens": scenes.GRID * scenes.GRID,
        "settings": report.settings, "rows": rows, "saliency_profile": profiles,
        "training_benchmark": training["benchmark"],
        "training": {k: training.get(k) for k in ("steps", "batch", "questions",
                                                 "training_seconds", "threads", "device")},
        "seconds": elapsed, "machine": platform.platform(), "torch": torch.__version__,
        "greedyprune": greedyprune.__version__, "environment": env,
    }
    text = markdown(result)
    print(text)
    harness.write_report(args.out, "bench_fidelity", result, text)
    plot(result, args.plot)
    print(f"wrote {args.plot}; {elapsed / 60:.1f} min in all")
    return 0


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(result) -> str:
    rows = result["rows"]
    budgets = result["budgets"]
    n = result["tokens"]
    base = rows[0]
    train = result["training_benchmark"]
    per_type = ", ".join(f"{k} {_pct(v['accuracy'])}%" for k, v in base["by_category"].items())
    trained = ", ".join(f"{k} {_pct(v)}%" for k, v in train["by_category"].items())
    run = result["training"]
    lines = [
        f"Training: `python training/train_scenes.py`, {run['steps']:,} steps of {run['batch']} "
        f"generated scenes with {run['questions'] // (run['steps'] * run['batch'])} questions "
        f"about each ({run['questions']:,} questions in all), "
        f"{run['training_seconds'] / 60:.0f} min on this machine's {run['device'].upper()}; "
        f"from the log in `training.json` beside the weights.",
        "",
        f"Built-in model, {result['questions']} generated questions (seed {result['seed']}); "
        f"unpruned accuracy {_pct(base['accuracy'])}% ({per_type}). On {train['questions']} "
        f"other questions (seed {train['seed']}) it is {_pct(train['accuracy'])}% ({trained}).",
        "",
        "Accuracy % (agreement with the unpruned answer %) at each budget of kept visual tokens "
        f"(of {n}); `random`: mean over seeds {','.join(map(str, result['random_seeds']))} "
        "± the spread of the per-seed accuracies:",
        "",
        *table_head(["method", *(f"{k} ({100 * k / n:.0f}%)" for k in budgets)],
                    "l" + "r" * len(budgets)),
    ]
    for label in result["settings"]:
        cells_ = []
        for k in budgets:
            row = next(r for r in rows if r["method"] == label and r["keep"] == k)
            spread = f" ± {_pct(row['accuracy_sd'])}" if "accuracy_sd" in row else ""
            cells_.append(f"{_pct(row['accuracy'])}{spread} ({_pct(row['agreement'])})")
        lines.append(table_row([label, *cells_]))
    lines += ["", "Share of the question's objects that keep at least one token, %:", "",
              *table_head(["method", *budgets], "l" + "r" * len(budgets))]
    for label in result["settings"]:
        values = [next(r for r in rows if r["method"] == label and r["keep"] == k)["objects_hit"]
                  for k in budgets]
        lines.append(table_row([label, *(_pct(v) for v in values)]))
    profile = result["saliency_profile"]
    groups = list(next(iter(profile.values())))
    lines += ["", "Mean saliency after min-max scaling per image (what the rule sees), first 100 "
              "questions:", "", *table_head(["saliency", *groups], "l" + "r" * len(groups))]
    for kind, values in profile.items():
        lines.append(table_row([kind, *(f"{values[g]:.3f}" for g in groups)]))
    categories = list(base["by_category"])
    lines += ["", "<details><summary>Accuracy % (agreement %) per question type</summary>", "",
              *table_head(["method", "keep", *categories], "lr" + "r" * len(categories))]
    for row in rows:
        lines.append(table_row([row["method"], row["keep"], *(
            f"{_pct(row['by_category'][c]['accuracy'])} ({_pct(row['by_category'][c]['agreement'])})"
            for c in categories)]))
    lines += ["", "</details>", "",
              f"Measured by `{result['command'].strip()}` in {result['seconds'] / 60:.0f} min "
              f"({result['machine']}, torch {result['torch']})."]
    return "\n".join(lines) + "\n"


def plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, budgets = result["rows"], result["budgets"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110, sharex=True)
    shown = ["greedyprune λ=0.5 text", "greedyprune λ=0.5 cls", "greedyprune λ=0.5 query",
             "greedyprune none", "cdpruner text", "cdpruner query", "divprune", "topk query",
             "uniform", "random"]
    for label in [s for s in result["settings"] if s in shown]:
        chosen = [next(r for r in rows if r["method"] == label and r["keep"] == k)
                  for k in budgets]
        style = dict(marker="o", linewidth=2.2 if label.startswith("greedyprune") else 1.4,
                     linestyle="-" if label.startswith("greedyprune") else "--")
        axes[0].plot(budgets, [100 * r["accuracy"] for r in chosen], label=label, **style)
        axes[1].plot(budgets, [100 * r["objects_hit"] for r in chosen], label=label, **style)
    axes[0].axhline(100 * rows[0]["accuracy"], color="gray", linestyle=":", label=UNPRUNED)
    axes[0].set_ylabel("accuracy %")
    axes[1].set_ylabel("question's objects with a kept token %")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [f"{k}\n({100 * k / result['tokens']:.0f}%)" for k in budgets])
        ax.set_xlabel(f"kept visual tokens (of {result['tokens']})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"built-in model, {result['questions']} generated questions", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
