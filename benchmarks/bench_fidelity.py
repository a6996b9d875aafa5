"""Fidelity benchmark: does each pruning method keep the built-in models' answers, and which
configurations are as good as the best one?

    python benchmarks/bench_fidelity.py --task scenes      # 2000 questions, every method
    python benchmarks/bench_fidelity.py --task crowds
    python benchmarks/bench_fidelity.py --summary          # the defaults table, from both
    python benchmarks/bench_fidelity.py --task scenes --question-seeds 0 --questions 40  # a look
    python benchmarks/update_readme.py                     # paste the tables into README.md

For a built-in task (:data:`greedyprune.builtin.TASKS`) its model answers ``--questions``
generated questions from each of ``--question-seeds`` (default 5 × 400 = 2000) unpruned and
under every configuration at 6, 12, 16, 24 and 48 kept tokens (4% to 33% of 144):

* ``greedyprune none`` (λ = 0: diversity only), ``greedyprune`` at λ = 0.25, 0.5, 0.75
  and 1 with ``saliency="text"``, ``"cls"`` and ``"query"``, and at ``lam="auto"`` with
  ``"cls"`` and ``"query"``;
* ``cdpruner`` and ``topk`` with text and query relevance, ``divprune``, ``uniform`` and
  ``random`` (mean over ``--seeds``).

Every accuracy comes with its 95% Wilson interval (:func:`greedyprune.stats.wilson_interval`).
At each budget the best configuration is compared with every other on the same questions by the
exact McNemar test (:func:`greedyprune.stats.paired_test`); those with p >= 0.05 are "not
significantly worse than the best". Also recorded: the share of the question's objects
(``mentioned``) that keep at least one token ("objects hit"), and the saliency each kind gives
the question's objects, other objects and the background (first 100 questions).

Writes ``bench_fidelity_<task>.md`` / ``.json`` into ``--out`` (default benchmarks/results/)
and ``docs/fidelity_<task>.png``. ``--summary`` reads both tasks' JSON, writes their tables and
plots again from it, and writes ``bench_fidelity_defaults.md``: per budget, the configurations
not significantly worse than the best on both tasks, the evidence behind the package's defaults.
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
from greedyprune import builtin, methods, scenes, stats  # noqa: E402
from greedyprune.evaluate import UNPRUNED, HFAnswerer, Setting, compare, sweep  # noqa: E402
from greedyprune.hf import attach  # noqa: E402
from greedyprune.reference import normalized_saliency  # noqa: E402
from harness import table_head, table_row  # noqa: E402

BUDGETS = (6, 12, 16, 24, 48)
LAMS = (0.25, 0.5, 0.75, 1.0)
SALIENCIES = ("text", "cls", "query")
ALPHA = 0.05


def settings():
    """Every configuration measured, in table order."""
    chosen = [Setting("greedyprune", 0.0, "none", "greedyprune none")]
    chosen += sweep(["greedyprune"], list(LAMS), list(SALIENCIES))
    chosen += sweep(["greedyprune"], "auto", ["cls", "query"])
    chosen += sweep(["cdpruner", "topk"], saliency=["text", "query"])
    return chosen + [Setting("divprune"), Setting("uniform"), Setting("random")]


def patches(things):
    """The visual tokens (raster indices, 0–143) that the objects cover."""
    return set().union(*(t.patches for t in things))


class Probe:
    """The answerer, noting for each pruned answer the share of the question's objects that
    kept at least one token."""

    def __init__(self, answerer, by_image, mentioned):
        self.answerer, self.by_image, self.mentioned, self.hits = answerer, by_image, mentioned, {}

    def answer_batch(self, images, questions, method=None, keep=None, **options):
        answers = self.answerer.answer_batch(images, questions, method, keep, **options)
        if method is not None:
            key = (method, options.get("lam"), options.get("saliency"), keep)
            for row, image in enumerate(images):
                (record,) = [r for r in self.answerer.last if r.row == row]
                kept = set(record.kept.tolist())
                hit = [bool(kept.intersection(t.patches))
                       for t in self.mentioned(self.by_image[id(image)])]
                self.hits.setdefault(key, []).append(statistics.fmean(hit) if hit else 1.0)
        return answers


def saliency_profile(model, processor, task, questions, kind):
    """Mean min-max-scaled saliency on the question's objects, other objects and background."""
    seen = []

    def recording(features, k, saliency=None, *, lam=0.5, seed=0):
        seen.append(None if saliency is None else np.asarray(saliency, dtype=np.float64))
        return greedyprune.select(features, k, saliency, lam)

    answerer = HFAnswerer(model, processor, max_new_tokens=1, prompt="{question}")
    groups = {"question's objects": [], "other objects": [], "background": []}
    with methods.registered("_profile", recording) as name:
        for q in questions:
            inputs = answerer.inputs(task.image(q.scene), q.question)
            with attach(model, keep=12, method=name, saliency=kind), torch.inference_mode():
                model(**inputs)
            s = seen[-1][0] if seen[-1].ndim == 2 else seen[-1]
            s = normalized_saliency(s, len(s))  # ŝ as the rule sees it
            asked = patches(task.mentioned(q))
            objects = patches(q.scene.things)
            for index, value in enumerate(s):
                group = ("question's objects" if index in asked else
                         "other objects" if index in objects else "background")
                groups[group].append(value)
    return {k: statistics.fmean(v) if v else None for k, v in groups.items()}


def scores(report, records):
    """Per-question accuracy of every configuration, in record order (the mean over seeds for a
    seeded method), by (label, keep) as the report's rows name them."""
    answers = {}
    for r in report.results:
        key = (r.method, "all" if r.keep is None else r.keep)
        answers.setdefault(key, {}).setdefault(r.record, []).append(r.accuracy)
    return {key: np.array([statistics.fmean(by_record[record.id]) for record in records])
            for key, by_record in answers.items()}


def judge(rows, per_question, budgets, default="greedyprune none"):
    """The best configuration per budget, and each one's paired p-value against it and against
    ``default`` (the package's default configuration), with the sign of the difference from the
    default."""
    for keep in budgets:
        at = [r for r in rows if r["keep"] == keep]
        best = max(at, key=lambda r: (r["accuracy"], -at.index(r)))
        for row in at:
            row["best"] = row is best
            row["p_vs_best"] = 1.0 if row is best else stats.paired_test(
                per_question[best["method"], keep], per_question[row["method"], keep])
            row["as_good_as_best"] = row["p_vs_best"] >= ALPHA
            mine, theirs = per_question[row["method"], keep], per_question[default, keep]
            row["p_vs_default"] = stats.paired_test(mine, theirs)
            row["vs_default"] = float(np.mean(mine) - np.mean(theirs))


def run_task(name, args):
    task = builtin.task(name)
    model, processor = builtin.load(name)
    questions, records = [], []
    for seed in args.question_seeds:
        made = task.questions(seed, args.questions)
        questions += made
        records += [q.record(f"{name}-{seed}-{i}") for i, q in enumerate(made)]
    probe = Probe(HFAnswerer(model, processor, max_new_tokens=4, prompt="{question}"),
                  {id(r.image): q for r, q in zip(records, questions)}, task.mentioned)
    chosen = settings()
    began = time.time()
    report = compare(probe, records, chosen, list(BUDGETS), seeds=args.seeds,
                     model=f"built-in {name}", batch_size=args.batch_size)
    print(f"{name}: answered in {time.time() - began:.0f} s", flush=True)
    profiles = {kind: saliency_profile(model, processor, task, questions[:100], kind)
                for kind in SALIENCIES}

    by_label = {s.name: s for s in chosen}
    by_category = report.summary_by_category()
    per_question, rows = scores(report, records), []
    for row in report.rows:
        keep = None if row["keep"] == "all" else row["keep"]
        entry = {k: row[k] for k in ("method", "keep", "accuracy", "agreement")}
        entry["ci"] = stats.wilson_interval(row["accuracy"], len(records))
        setting = by_label.get(row["method"])
        key = None if setting is None else (setting.method, setting.lam, setting.saliency, keep)
        entry["objects_hit"] = statistics.fmean(probe.hits[key]) if key in probe.hits else None
        entry["by_category"] = {r["category"]: r["accuracy"] for r in by_category
                                if r["method"] == row["method"] and r["keep"] == row["keep"]}
        rows.append(entry)
    judge(rows[1:], per_question, BUDGETS)
    training = json.loads((builtin.path(name) / "training.json").read_text())
    return {
        "task": name, "questions": len(records), "question_seeds": args.question_seeds,
        "per_seed": args.questions, "random_seeds": args.seeds, "budgets": list(BUDGETS),
        "tokens": scenes.GRID ** 2, "alpha": ALPHA, "settings": report.settings, "rows": rows,
        "saliency_profile": profiles, "training_benchmark": training["benchmark"],
        "training": {k: training.get(k) for k in ("task", "steps", "batch", "questions",
                                                 "training_seconds", "threads", "device")},
    }


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}"


def _cell(row):
    """``93.1 [91.9–94.2]``, in bold when not significantly worse than the best."""
    low, high = row["ci"]
    value = f"**{_pct(row['accuracy'])}**" if row["as_good_as_best"] else _pct(row["accuracy"])
    return f"{value} [{_pct(low)}–{_pct(high)}]"


def markdown(result) -> str:
    rows, budgets, n, name = result["rows"], result["budgets"], result["tokens"], result["task"]
    base, pruned = rows[0], rows[1:]
    train = result["training_benchmark"]
    run = result["training"]
    trained = ", ".join(f"{k} {_pct(v)}%" for k, v in train["by_category"].items())
    per_type = ", ".join(f"{k} {_pct(v)}%" for k, v in base["by_category"].items())
    minutes = "-" if run["training_seconds"] is None else f"{run['training_seconds'] / 60:.0f}"
    lines = [
        f"Training: `python training/train_scenes.py --task {name}`, {run['steps']:,} steps of "
        f"{run['batch']} generated pictures with "
        f"{run['questions'] // (run['steps'] * run['batch'])} questions about each, {minutes} "
        f"min on this machine's {run['device'].upper()} ({run['threads']} thread); from "
        f"`training.json` beside the weights. On {train['questions']} fresh questions (seed "
        f"{train['seed']}) it answers {_pct(train['accuracy'])}% right ({trained}).",
        "",
        f"The {name} model on {result['questions']} generated questions ({result['per_seed']} "
        f"from each of seeds {','.join(map(str, result['question_seeds']))}); unpruned accuracy "
        f"{_pct(base['accuracy'])}% [{_pct(base['ci'][0])}–{_pct(base['ci'][1])}] ({per_type}).",
        "",
        f"Accuracy % [95% interval] at each budget of kept visual tokens (of {n}). **Bold**: not "
        f"significantly worse than the budget's best (exact McNemar test on the same questions, "
        f"p ≥ {result['alpha']}). `random`: mean over seeds "
        f"{','.join(map(str, result['random_seeds']))}.",
        "",
        *table_head(["method", *(f"{k} ({100 * k / n:.0f}%)" for k in budgets)],
                    "l" + "r" * len(budgets)),
    ]
    for label in result["settings"]:
        lines.append(table_row([label, *(_cell(next(r for r in pruned if r["method"] == label
                                                      and r["keep"] == k)) for k in budgets)]))
    lines += ["", "Best per budget: " + "; ".join(
        f"{k}: {r['method']} {_pct(r['accuracy'])}%" for k in budgets
        for r in pruned if r["keep"] == k and r["best"]) + "."]
    if all("p_vs_default" in r for r in pruned):
        lines += ["", "Each greedyprune configuration against the default (`greedyprune none`), "
                  "in accuracy points; `*`: significant (exact McNemar test, p < "
                  f"{result['alpha']}):", "",
                  *table_head(["configuration", *budgets], "l" + "r" * len(budgets))]
        for label in result["settings"]:
            if label.startswith("greedyprune") and label != "greedyprune none":
                at = [next(r for r in pruned if r["method"] == label and r["keep"] == k)
                      for k in budgets]
                marks = ["*" if r["p_vs_default"] < result["alpha"] else "" for r in at]
                lines.append(table_row([label, *(f"{100 * r['vs_default']:+.1f}{mark}"
                                                 for r, mark in zip(at, marks))]))
    lines += ["", "<details><summary>Share of the question's objects that keep at least one "
              "token, %; saliency per region; accuracy per question type</summary>", "",
              *table_head(["method", *budgets], "l" + "r" * len(budgets))]
    for label in result["settings"]:
        values = [next(r for r in pruned if r["method"] == label and r["keep"] == k)[
            "objects_hit"] for k in budgets]
        lines.append(table_row([label, *(_pct(v) for v in values)]))
    profile = result["saliency_profile"]
    groups = list(next(iter(profile.values())))
    lines += ["", "Mean saliency after min-max scaling per image (what the rule sees), first 100 "
              "questions:", "", *table_head(["saliency", *groups], "l" + "r" * len(groups))]
    for kind, values in profile.items():
        lines.append(table_row([kind, *(f"{values[g]:.3f}" for g in groups)]))
    categories = list(base["by_category"])
    lines += ["", "Accuracy % per question type:", "",
              *table_head(["method", "keep", *categories], "lr" + "r" * len(categories))]
    for row in rows:
        lines.append(table_row([row["method"], row["keep"],
                                *(_pct(row["by_category"][c]) for c in categories)]))
    lines += ["", "</details>", "",
              f"Measured by `{result['command'].strip()}` in {result['seconds'] / 60:.0f} min "
              f"({result['machine']}, torch {result['torch']})."]
    return "\n".join(lines) + "\n"


def summary(results) -> str:
    """Per budget, how each candidate default stands on every task: its accuracy, and whether
    it is not significantly worse than that task's best."""
    budgets = results[0]["budgets"]
    # The defaults are greedyprune's λ and saliency: its configurations are the candidates.
    candidates = [label for label in results[0]["settings"] if label.startswith("greedyprune")
                  and all(label in r["settings"] for r in results)]
    missing = [name for name in builtin.TASKS if name not in {r["task"] for r in results}]
    lines = [f"Not measured yet: the {', '.join(missing)} task (no results; its model is not "
             f"in this checkout).", ""] if missing else []
    lines += [f"The greedyprune configurations not significantly worse than the best (of every "
              f"method) at a budget on every task measured "
              f"({', '.join(r['task'] for r in results)}), from the tables above:", "",
             *table_head(["budget", "on every task", "best per task"], "rll")]
    for k in budgets:
        good = [label for label in candidates if all(
            next(row for row in r["rows"][1:] if row["method"] == label and row["keep"] == k)[
                "as_good_as_best"] for r in results)]
        best = "; ".join(
            f"{r['task']}: {row['method']} {_pct(row['accuracy'])}% "
            f"[{_pct(row['ci'][0])}–{_pct(row['ci'][1])}]"
            for r in results for row in r["rows"][1:] if row["keep"] == k and row["best"])
        lines.append(table_row([k, ", ".join(good) or "none", best]))
    lines += ["", "The configurations that lose least against each budget's best, over every "
              "task measured and every budget: the largest shortfall (points) and the budgets "
              "where it is significant, then the mean accuracy per task, %:", "",
              *table_head(["configuration", "largest shortfall", "significantly worse at",
                           *(r["task"] for r in results)], "lrl" + "r" * len(results))]
    ranked = []
    for label in candidates:
        mine = [(r["task"], row) for r in results for row in r["rows"][1:]
                if row["method"] == label]
        best = {(r["task"], row["keep"]): row["accuracy"] for r in results
                for row in r["rows"][1:] if row["best"]}
        shortfall = max(best[task, row["keep"]] - row["accuracy"] for task, row in mine)
        worse = [f"{task} {row['keep']}" for task, row in mine if not row["as_good_as_best"]]
        per = [statistics.fmean(row["accuracy"] for task, row in mine if task == r["task"])
               for r in results]
        ranked.append((shortfall, label, worse, per))
    for shortfall, label, worse, per in sorted(ranked)[:8]:
        lines.append(table_row([label, f"{100 * shortfall:.1f}", ", ".join(worse) or "nowhere",
                                *(_pct(v) for v in per)]))
    return "\n".join(lines) + "\n"


def plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, budgets = result["rows"][1:], result["budgets"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110, sharex=True)
    shown = ["greedyprune none", "greedyprune λ=0.25 cls", "greedyprune λ=0.25 query",
             "greedyprune λ=0.5 text", "cdpruner query", "divprune", "topk query", "uniform",
             "random"]
    for label in [s for s in result["settings"] if s in shown]:
        chosen = [next(r for r in rows if r["method"] == label and r["keep"] == k)
                  for k in budgets]
        style = dict(marker="o", linewidth=2.2 if label.startswith("greedyprune") else 1.4,
                     linestyle="-" if label.startswith("greedyprune") else "--", capsize=3)
        accuracy = np.array([100 * r["accuracy"] for r in chosen])
        # Clipped at 0: at 100% the interval's top equals the estimate up to rounding.
        low = np.clip(accuracy - np.array([100 * r["ci"][0] for r in chosen]), 0, None)
        high = np.clip(np.array([100 * r["ci"][1] for r in chosen]) - accuracy, 0, None)
        axes[0].errorbar(budgets, accuracy, yerr=[low, high], label=label, **style)
        axes[1].plot(budgets, [100 * r["objects_hit"] for r in chosen], label=label,
                     **{k: v for k, v in style.items() if k != "capsize"})
    axes[0].axhline(100 * result["rows"][0]["accuracy"], color="gray", linestyle=":",
                    label=UNPRUNED)
    axes[0].set_ylabel("accuracy % (95% interval)")
    axes[1].set_ylabel("question's objects with a kept token %")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [f"{k}\n({100 * k / result['tokens']:.0f}%)" for k in budgets])
        ax.set_xlabel(f"kept visual tokens (of {result['tokens']})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"built-in {result['task']} model, {result['questions']} generated questions",
                    fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def _ints(text):
    return [int(s) for s in text.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=list(builtin.TASKS), help="measure this task")
    p.add_argument("--summary", action="store_true",
                   help="write every task's tables and the defaults table from their JSON")
    p.add_argument("--questions", type=int, default=400, help="questions per question seed")
    p.add_argument("--question-seeds", type=_ints, default=[0, 1, 2, 3, 4])
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="seeds of the random method")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=50, help="questions per generate() call")
    p.add_argument("--out", type=Path, default=harness.RESULTS_DIR)
    p.add_argument("--docs", type=Path, default=harness.ROOT / "docs")
    args = p.parse_args(argv)
    if args.summary:
        found = [args.out / f"bench_fidelity_{name}.json" for name in builtin.TASKS]
        results = [json.loads(path.read_text()) for path in found if path.is_file()]
        if not results:
            p.error(f"no results in {args.out}: run --task NAME first")
        for result in results:   # each task's table and plot again, from its JSON
            (args.out / f"bench_fidelity_{result['task']}.md").write_text(markdown(result))
            plot(result, args.docs / f"fidelity_{result['task']}.png")
        text = summary(results)
        print(text)
        (args.out / "bench_fidelity_defaults.md").write_text(text)
        return 0
    if args.task is None:
        p.error("give --task NAME or --summary")
    try:
        builtin.path(args.task)
    except FileNotFoundError as error:
        p.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
        greedyprune.set_num_threads(args.threads)
    env = harness.environment()
    start = time.time()
    result = run_task(args.task, args)
    result.update({
        "command": "python benchmarks/bench_fidelity.py " + " ".join(argv or sys.argv[1:]),
        "seconds": time.time() - start, "machine": platform.platform(),
        "torch": torch.__version__, "greedyprune": greedyprune.__version__,
        "environment": env})
    text = markdown(result)
    print(text)
    harness.write_report(args.out, f"bench_fidelity_{args.task}", result, text)
    path = args.docs / f"fidelity_{args.task}.png"
    plot(result, path)
    print(f"wrote {path}; {result['seconds'] / 60:.1f} min in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
