"""Benchmark greedyprune.hf inside a HuggingFace VLM: prefill time unpruned vs pruned, and the
hook's own overhead.

Run it from the repository root::

    python benchmarks/bench_hf.py                 # every entry: LLaVA-1.5 5-10 minutes on 2
                                                  # CPU cores, the two Qwen2-VL ones 5-7 more
    python benchmarks/bench_hf.py --shapes qwen2-vl-image qwen2-vl-video   # some entries (the
                                                  # others stay in bench_hf.json)
    python benchmarks/bench_hf.py --quick         # smoke run: narrow models, one repeat
    python benchmarks/update_readme.py bench_hf   # paste the table into README.md

Models have random weights (nothing is downloaded) at realistic widths. Each entry of
:data:`hf_cases.SHAPES` builds one model and its inputs.

``llava-1.5``: LlavaForConditionalGeneration with the vision tower of LLaVA-1.5 (CLIP ViT-L/14
at 336 px: 24 layers, width 1024, 577 positions, features from layer -2, so 576 visual tokens
per image) and its projector (1024 → 4096 → 4096), and a Llama-2-7B-shaped language model (width
4096, MLP 11008, 32 heads, vocabulary 32064) cut to ``--lm-layers`` decoder layers, because the
32 layers of the real one (26 GB in float32) do not fit this machine. Prompt: one image and 48
text tokens, batch 1, float32, sdpa attention.

For each budget (unpruned without hooks, then keep = 192 / 128 / 64 with ``saliency="text"``)
the benchmark times a prefill, ``model(**inputs, logits_to_keep=1)`` as ``generate()`` runs it,
``--repeats`` times (9; 3 for the Qwen entries) after one warm-up round (the budgets take turns within each round), and
records per run:

* ``prefill``: the whole forward (vision tower, projector, hooks, language model);
* ``vision`` and ``decoder``: the vision tower and the language model alone (timed by hooks
  registered around them);
* ``hook``: the pruning hooks' own time (saliency, selection, gathering the shorter inputs, and
  every other line of the hooks): timing pre-hooks registered just before and just after
  greedyprune.hf's on the same modules bracket them exactly.

This machine's two cores are shared with other jobs, which slow some runs two- to threefold,
so the table reports the fastest run of each quantity (the least disturbed) next to the median
prefill, and the median hook time. ``hook / unpruned prefill`` is the median hook time over
the fastest unpruned prefill: the conservative ratio. Every run is kept in the JSON,
and ``--from-json`` re-summarizes an earlier run without timing anything.

The language model is cut short, so the table also gives ``projected 32 layers``: the vision
time plus 32 / ``--lm-layers`` times the measured decoder time plus the hook, i.e. what the same
measurements imply for the full-depth model (an extrapolation, labelled as such).

``qwen2-vl-image`` and ``qwen2-vl-video``: Qwen2VLForConditionalGeneration shaped like
Qwen2-VL-7B (vision tower: width 1280, 16 heads, MLP 5120, 14-px patches merged 2×2, merger to
3584; language model: width 3584, MLP 18944, 28 heads, 4 KV heads, vocabulary 152064, M-RoPE
sections 16/24/24), with the tower cut to ``--qwen-vision-layers`` of its 32 blocks and the
language model to ``--qwen-lm-layers`` of its 28 layers (both 2 by default: the image's 4,800
patches take about 1.5 s per vision block on this CPU). Inputs: one 1120×840 image (80×60
patches: 1,200 visual tokens), or one 16-frame video of 448×252 frames (8 frame pairs of 32×18
patches: 1,152 visual tokens, one budget for the whole video), with 48 text tokens; budgets
keep = 384 / 256 / 128. Both entries share one model. ``projected`` there scales the vision
time too (32 / ``--qwen-vision-layers``).

Writes ``bench_hf.json`` and ``bench_hf.md`` into ``--out`` (default benchmarks/results/;
``--quick`` only prints, unless ``--out`` is given). Entries already in that bench_hf.json
that this run does not measure are kept (``--shapes`` reruns some entries without dropping
the others).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import harness
from greedyprune.hf import attach
from harness import table_head, table_row
from hf_cases import SHAPES, Shape


class Stopwatch:
    """Times a module's forward, or the span between two pre-hooks, with forward hooks."""

    def __init__(self):
        self.seconds = 0.0
        self._start = None
        self.handles = []

    def start(self, *_):
        self._start = time.perf_counter()

    def stop(self, *_):
        self.seconds += time.perf_counter() - self._start

    def around_module(self, module):
        self.handles += [module.register_forward_pre_hook(self.start),
                         module.register_forward_hook(self.stop)]
        return self

    def around_pre_hooks(self, module):
        """Bracket the pre-hooks registered on ``module`` so far: call before *and* after them."""
        self.handles.append(module.register_forward_pre_hook(self.start, prepend=True))
        self.handles.append(module.register_forward_pre_hook(self.stop))
        return self

    def remove(self):
        for handle in self.handles:
            handle.remove()


def time_prefill(model, inputs, keep):
    """One timed prefill at budget ``keep`` (None: no hooks attached)."""
    inner = model.model
    handle = attach(model, keep=keep) if keep is not None else None
    tower = inner.vision_tower if hasattr(inner, "vision_tower") else inner.visual  # Qwen
    vision = Stopwatch().around_module(tower)
    # Registered after greedyprune.hf's pre-hook, so this span is the language model's own work.
    decoder = Stopwatch().around_module(inner.language_model)
    hooks = [Stopwatch().around_pre_hooks(inner.language_model),
             Stopwatch().around_pre_hooks(inner)] if handle is not None else []
    try:
        start = time.perf_counter()
        with torch.no_grad():
            model(**inputs, logits_to_keep=1, use_cache=True)
        run = {"prefill": time.perf_counter() - start, "vision": vision.seconds,
               "decoder": decoder.seconds, "hook": sum(w.seconds for w in hooks)}
        if handle is not None:
            record = handle.last_prefill
            run["hook_stages"] = dict(record.seconds)
            run["seq_len"] = record.seq_len_after
            run["kept_per_image"] = [r.tokens_after for r in record.images]
        else:
            run["seq_len"] = int(inputs["input_ids"].shape[1])
        return run
    finally:
        for watch in (vision, decoder, *hooks):
            watch.remove()
        if handle is not None:
            handle.detach()


def run_shape(shape: Shape, args):
    start = time.perf_counter()
    model, inputs, description = shape.build(args)
    build_seconds = time.perf_counter() - start
    # Budgets take turns within each repeat, so that a change in the machine's load during
    # the run spreads over all of them instead of skewing one.
    budgets = shape.budgets
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else shape.repeats
    runs = {keep: [] for keep in budgets}
    for repeat in range(repeats + 1):
        for keep in budgets:
            run = time_prefill(model, inputs, keep)
            if repeat:  # the first round is a warm-up
                runs[keep].append(run)
        print(f"  {shape.name}: round {repeat} of {repeats} done", flush=True)
    result = {"shape": shape.name, "description": description,
              "lm_layers": model.config.text_config.num_hidden_layers,
              "full_depth": shape.full_depth, "build_seconds": build_seconds,
              "date": datetime.date.today().isoformat(), "repeats": repeats,
              "rows": [{"keep": keep, "runs": runs[keep]} for keep in budgets]}
    if shape.vision_depth is not None:
        result["vision_layers"], result["vision_full_depth"] = shape.vision_depth(args)
    return summarize(result)


def summarize(result):
    """Fill each row of ``result`` with statistics of its raw ``runs`` (in place)."""
    rows, depth, full_depth = result["rows"], result["lm_layers"], result["full_depth"]
    vision_scale = result.get("vision_full_depth", 1) / result.get("vision_layers", 1)
    for row in rows:
        runs = row["runs"]
        for stale in ("prefill", "vision", "decoder", "hook", "hook_stages"):
            row.pop(stale, None)  # summaries of an older layout (--from-json)
        row.update(repeats=len(runs), seq_len=runs[0]["seq_len"])
        for key in ("prefill", "vision", "decoder", "hook"):
            row[key + "_median"] = statistics.median(run[key] for run in runs)
            row[key + "_best"] = min(run[key] for run in runs)
        if row["keep"] is not None:
            row["hook_stages_best"] = {stage: min(r["hook_stages"][stage] for r in runs)
                                       for stage in runs[0]["hook_stages"]}
            row["kept_per_image"] = runs[0]["kept_per_image"]
        row["projected_full_depth"] = (row["vision_best"] * vision_scale
                                       + row["decoder_best"] * full_depth / depth
                                       + row["hook_median"])
    full = rows[0]
    for row in rows:
        # Conservative: the median hook time over the *fastest* unpruned prefill.
        row["hook_share_of_unpruned_prefill"] = harness.ratio(row["hook_median"],
                                                              full["prefill_best"])
        row["hook_share_of_unpruned_projected"] = harness.ratio(row["hook_median"],
                                                                full["projected_full_depth"])
        row["prefill_speedup"] = harness.ratio(full["prefill_best"], row["prefill_best"])
        row["decoder_speedup"] = harness.ratio(full["decoder_best"], row["decoder_best"])
    for row in rows:
        print(f"  {result['shape']} keep={row['keep']}: prefill {row['prefill_best']:.3f} s, "
              f"decoder {row['decoder_best']:.3f} s, hook {row['hook_median'] * 1e3:.1f} ms",
              flush=True)
    return result


def markdown(report):
    counts = {shape.get("repeats", report["repeats"]) for shape in report["shapes"]}
    uniform = len(counts) == 1
    runs = f"{counts.pop()} runs per budget" if uniform else "Runs per budget as noted per entry"
    lines = [
        "#### greedyprune.hf: prefill time, unpruned vs pruned",
        "",
        f"Generated by `benchmarks/bench_hf.py` on {report['date']} ({report['machine']}); "
        f"torch {report['torch']}, transformers {report['transformers']}, greedyprune "
        f"{report['greedyprune']}, {report['threads']} threads"
        f"{' (--quick smoke run: not a measurement)' if report['quick'] else ''}. "
        f"{runs} after a warm-up round, the budgets taking turns; "
        "`saliency=\"text\"`, `method=\"greedyprune\"`, lam 0.5.",
        "",
    ]
    for shape in report["shapes"]:
        depth, full = shape["lm_layers"], shape["full_depth"]
        measured = ""
        if not uniform or shape.get("date", report["date"]) != report["date"]:
            measured = (f" Measured {shape.get('date', report['date'])}, "
                        f"{shape.get('repeats', report['repeats'])} runs per budget.")
        lines += [
            f"**{shape['shape']}**: {shape['description']}.{measured}",
            "",
            *table_head(["keep", "tokens", "prefill (s)", "median prefill (s)", "vision (s)",
                         "decoder (s)", "hook (ms)", "hook / unpruned prefill", "prefill speed-up",
                         "decoder speed-up", f"projected {full} layers (s)", "hook / projected"],
                        "r" * 12),
        ]
        for row in shape["rows"]:
            pruned = row["keep"] is not None
            keep = str(row["keep"]) if pruned else "all (no hooks)"
            hook = f"{row['hook_median'] * 1e3:.1f}" if pruned else "–"
            share = f"{row['hook_share_of_unpruned_prefill']:.2%}" if pruned else "–"
            share_p = f"{row['hook_share_of_unpruned_projected']:.2%}" if pruned else "–"
            lines.append(table_row([
                keep, row["seq_len"], f"{row['prefill_best']:.3f}", f"{row['prefill_median']:.3f}",
                f"{row['vision_best']:.3f}", f"{row['decoder_best']:.3f}", hook, share,
                f"{row['prefill_speedup']:.2f}×", f"{row['decoder_speedup']:.2f}×",
                f"{row['projected_full_depth']:.2f}", share_p]))
        pruned_rows = [r for r in shape["rows"] if r["keep"] is not None]
        if pruned_rows:
            parts = "; ".join(
                f"keep {r['keep']}: " + ", ".join(f"{k} {v * 1e3:.1f}"
                                                 for k, v in r["hook_stages_best"].items())
                for r in pruned_rows)
            lines += ["", f"Hook stages, fastest run (ms): {parts}. The rest of the hook time "
                          "is bookkeeping (placeholder masks, layouts, records)."]
        lines += [
            "",
            "This machine's two cores are shared with other jobs, which slow some runs two- to "
            "threefold, so times are the fastest run (the least disturbed), except `median "
            "prefill` and `hook`, which are medians; every run is in bench_hf.json. `hook / "
            "unpruned prefill` is the median hook time over the fastest unpruned prefill (the "
            "conservative ratio). `tokens` is the sequence length the decoder sees. The "
            f"language model has {depth} of its {full} layers"
            + (f" and the vision tower {shape['vision_layers']} of its "
               f"{shape['vision_full_depth']} blocks" if "vision_layers" in shape else "")
            + f"; `projected {full} layers` = "
            + (f"{shape['vision_full_depth']}/{shape['vision_layers']} × vision"
               if "vision_layers" in shape else "vision")
            + f" + {full}/{depth} × decoder + hook, an extrapolation from these "
            "measurements, not a measurement.",
            "",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: narrow model, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per budget (default: 9 for llava-1.5, 3 for the Qwen "
                             "entries, 1 with --quick)")
    parser.add_argument("--lm-layers", type=int, default=4,
                        help="decoder layers of the width-4096 language model (4)")
    parser.add_argument("--qwen-vision-layers", type=int, default=2,
                        help="vision blocks of the Qwen2-VL-7B-shaped tower (2 of 32)")
    parser.add_argument("--qwen-lm-layers", type=int, default=2,
                        help="decoder layers of the Qwen2-VL-7B-shaped language model (2 of 28)")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-summarize the raw runs of an earlier bench_hf.json (no timing)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write bench_hf.json/.md (default benchmarks/results/; "
                             "--quick writes nothing unless given)")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        for result in report["shapes"]:
            summarize(result)
        write(report, args.out if args.out is not None else args.from_json.parent)
        return
    import transformers

    env = harness.environment(transformers=transformers.__version__)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "torch": env["torch"], "transformers": env["transformers"],
        "greedyprune": env["greedyprune"], "threads": env["torch_default_threads"],
        "repeats": None, "quick": args.quick, "environment": env, "shapes": [],
    }
    for name in args.shapes:
        print(f"{name}: building", flush=True)
        report["shapes"].append(run_shape(SHAPES[name], args))
    report["repeats"] = report["shapes"][0]["repeats"] if report["shapes"] else args.repeats
    out = args.out
    if out is None and not args.quick:
        out = harness.RESULTS_DIR
    if out is not None:
        keep_earlier(report, out / "bench_hf.json")
    write(report, out)


def keep_earlier(report, path: Path) -> None:
    """Add to ``report`` the entries of an earlier ``path`` that this run did not measure, in
    the earlier order (each keeps its own date and repeat count)."""
    if not path.exists():
        return
    earlier = json.loads(path.read_text())
    if earlier.get("quick") != report["quick"]:
        return
    fresh = {shape["shape"]: shape for shape in report["shapes"]}
    merged = []
    for shape in earlier.get("shapes", []):
        if shape["shape"] in fresh:
            merged.append(fresh.pop(shape["shape"]))
        else:
            shape.setdefault("date", earlier.get("date"))
            shape.setdefault("repeats", earlier.get("repeats"))
            merged.append(shape)
    report["shapes"] = merged + list(fresh.values())


def write(report, out):
    text = markdown(report)
    print(text)
    if out is not None:
        harness.write_report(out, "bench_hf", report, text)


if __name__ == "__main__":
    main()
