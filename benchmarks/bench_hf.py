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
:data:`SHAPES` builds one model and its inputs.

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
prefill, and the median hook time. ``hook / unpruned prefill`` (target < 2%) is the median hook
time over the fastest unpruned prefill: the conservative ratio. Every run is kept in the JSON,
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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

try:
    import greedyprune
except ImportError:  # running from a checkout, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import greedyprune

import torch

from greedyprune.hf import attach

BUDGETS = (None, 192, 128, 64)  # None: unpruned, no hooks attached
FULL_DEPTH = 32


@dataclass
class Shape:
    """One benchmarked architecture: ``build(args) -> (model, inputs, description)``."""

    name: str
    build: Callable
    full_depth: int
    budgets: Tuple[Optional[int], ...] = BUDGETS
    #: (vision blocks used, vision blocks of the full model) when the tower is cut short too.
    vision_depth: Optional[Callable] = None
    #: Timed runs per budget unless ``--repeats`` says otherwise.
    repeats: int = 9


def build_llava15(args):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if args.quick:  # same token counts, narrow and shallow
        vision = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4)
        text = dict(hidden_size=512, intermediate_size=1376, num_attention_heads=8,
                    num_key_value_heads=8, num_hidden_layers=2)
    else:
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16)
        text = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                    num_key_value_heads=32, num_hidden_layers=args.lm_layers)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=336, patch_size=14,
                           projection_dim=768, **vision),
        text_config=dict(model_type="llama", vocab_size=32064, max_position_embeddings=4096,
                         pad_token_id=0, **text),
        image_token_index=32000, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation("sdpa")
    generator = torch.Generator().manual_seed(0)
    before = torch.randint(3, 31999, (8,), generator=generator)
    after = torch.randint(3, 31999, (40,), generator=generator)
    ids = torch.cat([torch.tensor([1]), before, torch.full((576,), 32000), after])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn(1, 3, 336, 336, generator=generator)}
    t, v = config.text_config, config.vision_config
    description = (
        f"LlavaForConditionalGeneration, random weights, float32: CLIP ViT ({v.num_hidden_layers} "
        f"layers, width {v.hidden_size}, {v.image_size} px / {v.patch_size} px patches: 576 "
        f"visual tokens) + Llama ({t.num_hidden_layers} layers, width {t.hidden_size}, MLP "
        f"{t.intermediate_size}, vocabulary {t.vocab_size}); prompt {ids.shape[1]} tokens "
        f"(1 image + {ids.shape[1] - 576} text), batch 1"
    )
    return model, inputs, description


QWEN_IMAGE_ID, QWEN_VIDEO_ID, QWEN_VISION_START, QWEN_VISION_END = 151655, 151656, 151652, 151653
QWEN_BUDGETS = (None, 384, 256, 128)
_qwen_models = {}


def _qwen2vl_model(args):
    """The Qwen2-VL-7B-shaped model (cut short), built once for both Qwen entries."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    key = (args.quick, args.qwen_vision_layers, args.qwen_lm_layers)
    if key in _qwen_models:
        return _qwen_models[key]
    if args.quick:  # same token counts, narrow and shallow
        vision = dict(embed_dim=256, num_heads=4, hidden_size=512, depth=2)
        text = dict(hidden_size=512, intermediate_size=1376, num_attention_heads=8,
                    num_key_value_heads=8, num_hidden_layers=2, vocab_size=152064,
                    rope_parameters={"rope_type": "default", "mrope_section": [16, 8, 8],
                                     "rope_theta": 1e6})
    else:
        vision = dict(embed_dim=1280, num_heads=16, hidden_size=3584, depth=args.qwen_vision_layers)
        text = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                    num_key_value_heads=4, num_hidden_layers=args.qwen_lm_layers,
                    vocab_size=152064,
                    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                     "rope_theta": 1e6})
    config = Qwen2VLConfig(
        vision_config=dict(mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, **vision),
        text_config=dict(max_position_embeddings=32768, rms_norm_eps=1e-6, **text),
        image_token_id=QWEN_IMAGE_ID, video_token_id=QWEN_VIDEO_ID,
        vision_start_token_id=QWEN_VISION_START, vision_end_token_id=QWEN_VISION_END,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.set_attn_implementation("sdpa")
    _qwen_models.clear()
    _qwen_models[key] = model
    return model


def _qwen_prompt(token, count, generator):
    """8 text tokens, the visual run between vision start and end, 40 text tokens."""
    before = torch.randint(3, 151000, (8,), generator=generator)
    after = torch.randint(3, 151000, (40,), generator=generator)
    ids = torch.cat([before, torch.tensor([QWEN_VISION_START]), torch.full((count,), token),
                     torch.tensor([QWEN_VISION_END]), after])[None]
    types = torch.zeros_like(ids)
    types[ids == QWEN_IMAGE_ID] = 1
    types[ids == QWEN_VIDEO_ID] = 2
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types}


def _qwen_description(model, what, ids):
    v, t = model.config.vision_config, model.config.text_config
    return (f"Qwen2VLForConditionalGeneration, random weights, float32: vision tower "
            f"({v.depth} of 32 blocks, width {v.embed_dim}, {v.patch_size} px patches merged "
            f"{v.spatial_merge_size}×{v.spatial_merge_size}) + Qwen2 language model "
            f"({t.num_hidden_layers} of 28 layers, width {t.hidden_size}, MLP "
            f"{t.intermediate_size}, {t.num_attention_heads} heads / {t.num_key_value_heads} KV "
            f"heads, vocabulary {t.vocab_size}, M-RoPE); {what}; prompt {ids.shape[1]} tokens, "
            f"batch 1")


def build_qwen2vl_image(args):
    model = _qwen2vl_model(args)
    generator = torch.Generator().manual_seed(0)
    t, h, w = 1, 60, 80  # a 1120×840 image in 14-px patches
    tokens = t * h * w // 4
    inputs = _qwen_prompt(QWEN_IMAGE_ID, tokens, generator)
    inputs["pixel_values"] = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=generator)
    inputs["image_grid_thw"] = torch.tensor([[t, h, w]])
    what = f"one 1120×840 image ({w}×{h} patches: {tokens} visual tokens) + 48 text tokens"
    return model, inputs, _qwen_description(model, what, inputs["input_ids"])


def build_qwen2vl_video(args):
    model = _qwen2vl_model(args)
    generator = torch.Generator().manual_seed(1)
    t, h, w = 8, 18, 32  # 16 frames of 448×252: 8 frame pairs of 32×18 patches
    tokens = t * h * w // 4
    inputs = _qwen_prompt(QWEN_VIDEO_ID, tokens, generator)
    inputs["pixel_values_videos"] = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=generator)
    inputs["video_grid_thw"] = torch.tensor([[t, h, w]])
    what = (f"one 16-frame 448×252 video ({t} frame pairs of {w}×{h} patches: {tokens} visual "
            f"tokens, one budget) + 48 text tokens")
    return model, inputs, _qwen_description(model, what, inputs["input_ids"])


def _qwen_vision_depth(args):
    return (2 if args.quick else args.qwen_vision_layers), 32


SHAPES: Dict[str, Shape] = {
    "llava-1.5": Shape("llava-1.5", build_llava15, FULL_DEPTH),
    # 3 runs per budget keep the two Qwen entries near 5 minutes on 2 cores.
    "qwen2-vl-image": Shape("qwen2-vl-image", build_qwen2vl_image, 28, QWEN_BUDGETS,
                            _qwen_vision_depth, repeats=3),
    "qwen2-vl-video": Shape("qwen2-vl-video", build_qwen2vl_video, 28, QWEN_BUDGETS,
                            _qwen_vision_depth, repeats=3),
}


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
        row["hook_share_of_unpruned_prefill"] = row["hook_median"] / full["prefill_best"]
        row["hook_share_of_unpruned_projected"] = row["hook_median"] / full["projected_full_depth"]
        row["prefill_speedup"] = full["prefill_best"] / row["prefill_best"]
        row["decoder_speedup"] = full["decoder_best"] / row["decoder_best"]
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
            f"| keep | tokens | prefill (s) | median prefill (s) | vision (s) | decoder (s) | "
            f"hook (ms) | hook / unpruned prefill | prefill speed-up | decoder speed-up | "
            f"projected {full} layers (s) | hook / projected |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in shape["rows"]:
            pruned = row["keep"] is not None
            keep = str(row["keep"]) if pruned else "all (no hooks)"
            hook = f"{row['hook_median'] * 1e3:.1f}" if pruned else "–"
            share = f"{row['hook_share_of_unpruned_prefill']:.2%}" if pruned else "–"
            share_p = f"{row['hook_share_of_unpruned_projected']:.2%}" if pruned else "–"
            lines.append(
                f"| {keep} | {row['seq_len']} | {row['prefill_best']:.3f} | "
                f"{row['prefill_median']:.3f} | {row['vision_best']:.3f} | "
                f"{row['decoder_best']:.3f} | {hook} | {share} | {row['prefill_speedup']:.2f}× | "
                f"{row['decoder_speedup']:.2f}× | {row['projected_full_depth']:.2f} | {share_p} |")
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

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "greedyprune": getattr(greedyprune, "__version__", "?"),
        "threads": torch.get_num_threads(), "repeats": None, "quick": args.quick,
        "shapes": [],
    }
    for name in args.shapes:
        print(f"{name}: building", flush=True)
        report["shapes"].append(run_shape(SHAPES[name], args))
    report["repeats"] = report["shapes"][0]["repeats"] if report["shapes"] else args.repeats
    out = args.out
    if out is None and not args.quick:
        out = Path(__file__).resolve().parent / "results"
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
    print(markdown(report))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_hf.json").write_text(json.dumps(report, indent=1))
        (out / "bench_hf.md").write_text(markdown(report))
        print(f"wrote {out / 'bench_hf.json'} and {out / 'bench_hf.md'}")


if __name__ == "__main__":
    main()
