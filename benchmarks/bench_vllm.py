"""Offline throughput of vLLM with the greedyprune plugin, at every budget against unpruned, in
one run; writes benchmarks/results/bench_vllm.{json,md}.

Runs in the vLLM environment (``make test-vllm`` makes it)::

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--rounds R]
    python benchmarks/bench_vllm.py --from-json benchmarks/results/bench_vllm.json  # table only

Two models: the built-in LLaVA (144 visual tokens per image) and a random-weight model with
LLaVA-1.5's token geometry (CLIP at 336 px, patch 14: 576 tokens) and the built-in model's
narrow layers (at the demo's widths vLLM's CPU backend took minutes per round here). For each
budget an engine starts (vLLM's defaults for the CPU, bfloat16, but in eager mode: compiling
takes minutes per engine on a small machine) with prefix caching off, then answers rounds of
requests (48) of one image and one question with one generated token
(the prefill, which pruning shortens), each round on new images; the table gives the median
round. Fixed costs are measured beside them: engine start, the vision tower and projector
per image, a text-only request, and the selection itself per image (inside the worker).

Positions: on the built-in model in float32, the same questions are answered by vLLM (kept
tokens numbered consecutively) and by greedyprune.hf (original positions; ``python -m greedyprune
eval`` in the main environment, ``--hf-python``), at each budget with the same selection.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import harness
import numpy as np

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model's timing closure

#: (model, its tokens per image, budgets with the unpruned run first, requests per round).
CASES = [("built-in", 144, [None, 48, 16], 48), ("random, 576 tokens", 576, [None, 192, 64], 48)]
QUESTION = "What is in the image?\nAnswer the question using a single word or phrase."


#: Widths of the random model: the built-in model's tower, a decoder twice as wide (vLLM's CPU
#: attention needs heads of at least 32 channels).
WIDTHS = dict(vision=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                          num_attention_heads=4),
              text=dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                        num_attention_heads=8))


def random_checkpoint(folder: Path) -> Path:
    """A LLaVA-1.5-geometry checkpoint with random weights, saved for vLLM to load."""
    from greedyprune import demo

    demo.SIZES.setdefault("bench_vllm", WIDTHS)
    demo.random_llava("bench_vllm").save_pretrained(folder)
    demo.random_llava_processor().save_pretrained(folder)
    return folder


def images(case: str, count: int, round_: int):
    """``count`` images no other round uses (so that no cache answers for the engine)."""
    from PIL import Image

    from greedyprune import scenes

    if case == "built-in":
        return [scenes.image(q.scene) for q in scenes.questions(1000 + round_, count)]
    rng = np.random.default_rng(round_)
    return [Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8))
            for _ in range(count)]


def fixed_costs_in_worker(model, pixels, keeps, repeats=5):
    """Seconds per image of the tower and projector, and of the selection at each budget."""
    import torch
    from vllm.model_executor.models.llava import LlavaForConditionalGeneration as Stock

    from greedyprune import PruneConfig
    from greedyprune.vllm._llava import prune

    with torch.no_grad():
        tower = []
        for _ in range(repeats):
            start = time.perf_counter()
            features = Stock.embed_multimodal(model, pixel_values=pixels)
            tower.append(time.perf_counter() - start)
        select = {}
        for keep in keeps:
            config, times = PruneConfig(keep=keep, saliency="none"), []
            for _ in range(repeats):
                start = time.perf_counter()
                prune(features, None, config)
                times.append(time.perf_counter() - start)
            select[keep] = statistics.median(times) / len(pixels)
    return statistics.median(tower) / len(pixels), select


def run_case(path: str, case: str, tokens: int, keep, requests: int, rounds: int):
    from vllm import LLM, SamplingParams

    settings = {} if keep is None else {"hf_overrides": {"greedyprune": {"keep": keep}}}
    start = time.perf_counter()
    llm = LLM(model=path, enable_prefix_caching=False, enforce_eager=True, seed=0, **settings)
    started = time.perf_counter() - start
    params = SamplingParams(max_tokens=1, temperature=0.0)
    prompt = f"USER: <image>\n{QUESTION} ASSISTANT:"
    llm.generate([{"prompt": prompt, "multi_modal_data": {"image": im}}
                  for im in images(case, 4, rounds)], params)  # warm-up, not timed
    seconds, prompt_tokens = [], 0
    for round_ in range(rounds):
        batch = [{"prompt": prompt, "multi_modal_data": {"image": im}}
                 for im in images(case, requests, round_)]
        start = time.perf_counter()
        outputs = llm.generate(batch, params, use_tqdm=False)
        seconds.append(time.perf_counter() - start)
        prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    start = time.perf_counter()
    llm.generate(["USER: hello ASSISTANT:"], params, use_tqdm=False)
    text_only = time.perf_counter() - start
    llm.llm_engine.engine_core.shutdown()
    median = statistics.median(seconds)
    return {"model": case, "tokens_per_image": tokens, "keep": keep,
            "prompt_tokens_per_request": prompt_tokens / requests,
            "requests_per_s": requests / median, "prompt_tokens_per_s": prompt_tokens / median,
            "round_seconds": seconds, "engine_start_s": started, "text_only_request_s": text_only}


def worker_costs(path: str, case: str, keeps):
    """Seconds per image of the tower and projector, and of each budget's selection, measured
    inside the model (an engine in this process: ``apply_model`` cannot send a function to
    worker processes)."""
    from transformers import AutoProcessor
    from vllm import LLM

    pixels = AutoProcessor.from_pretrained(path).image_processor(
        images(case, 8, 99), return_tensors="pt")["pixel_values"]
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        llm = LLM(model=path, enforce_eager=True, seed=0)
        (costs,) = llm.apply_model(lambda model: fixed_costs_in_worker(model, pixels, keeps))
        llm.llm_engine.engine_core.shutdown()
    finally:
        del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
    return costs


def positions(path: str, keeps, questions: int, seed: int, hf_python: str):
    """Accuracy with consecutive (vLLM) and original (greedyprune.hf) positions, and how often
    the two answer alike, on the built-in model's questions."""
    import csv
    import subprocess

    from vllm import LLM, SamplingParams

    from greedyprune import scenes
    from greedyprune.evaluate import SHORT_ANSWER_PROMPT

    asked = scenes.questions(seed, questions)
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([hf_python, "-m", "greedyprune", "eval", "--out", out, "--no-progress",
                        "--methods", "greedyprune", "--keep", ",".join(map(str, keeps)),
                        "--lam", "0", "--saliency", "none", "--num-questions", str(questions),
                        "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL,
                       env={k: v for k, v in os.environ.items() if not k.startswith("VLLM")})
        with open(Path(out) / "answers.csv", newline="") as handle:
            hf = {(r["keep"], r["record"]): r["answer"] for r in csv.DictReader(handle)}
    rows = []
    for keep in [None, *keeps]:
        settings = {} if keep is None else {
            "hf_overrides": {"greedyprune": {"keep": keep, "saliency": "none"}}}
        llm = LLM(model=path, dtype="float32", max_model_len=256, enforce_eager=True, seed=0,
                  **settings)
        outputs = llm.generate(
            [{"prompt": f"USER: <image>\n{SHORT_ANSWER_PROMPT.format(question=q.question)} "
                        "ASSISTANT:", "multi_modal_data": {"image": scenes.image(q.scene)}}
             for q in asked], SamplingParams(max_tokens=16, temperature=0.0), use_tqdm=False)
        llm.llm_engine.engine_core.shutdown()
        ours = [o.outputs[0].text.strip() for o in outputs]
        theirs = [hf["" if keep is None else str(keep), f"scenes-{seed}-{i}"]
                  for i in range(questions)]
        rows.append({"keep": keep, "questions": questions,
                     "vllm": _accuracy(ours, asked), "hf": _accuracy(theirs, asked),
                     "agree": float(np.mean([a == b for a, b in zip(ours, theirs)]))})
        print(rows[-1], flush=True)
    return rows


def _accuracy(answers, questions) -> float:
    from greedyprune.evaluate import vqa_accuracy

    return float(np.mean([vqa_accuracy(a, [q.answer]) for a, q in zip(answers, questions)]))


def markdown(rows, env, position_rows) -> str:
    lines = [f"vLLM {env['vllm']} (CPU backend, bfloat16, eager mode), {env['cpu']}, "
             f"{env['logical_cpus']} logical CPUs; rounds of 48 requests of one image "
             f"each, one generated token, median of "
             f"{env['rounds']} rounds; load average at start "
             f"{env['load_average_at_start'][0]:.1f}.",
             ""]
    lines += harness.table_head(
        ["model", "visual tokens", "prompt tokens", "requests/s", "prompt tokens/s",
         "vs unpruned", "selection / image"], "llrrrrr")
    base = {}
    for row in rows:
        if row["keep"] is None:
            base[row["model"]] = row["requests_per_s"]
        kept = "all" if row["keep"] is None else f"{row['keep']} of {row['tokens_per_image']}"
        select = row["selection_s_per_image"]
        lines.append(harness.table_row([
            row["model"], kept, f"{row['prompt_tokens_per_request']:.0f}",
            f"{row['requests_per_s']:.1f}", f"{row['prompt_tokens_per_s']:.0f}",
            harness.fmt_ratio(row["requests_per_s"] / base[row["model"]]),
            "—" if select is None else harness.fmt_time(select)]))
    lines += ["", "Fixed costs, per model (from its unpruned engine): engine start, vision tower "
              "and projector per image, and a text-only request of one token:", ""]
    for row in rows:
        if row["keep"] is None:
            lines.append(f"- {row['model']}: start {row['engine_start_s']:.0f} s, tower "
                         f"{harness.fmt_time(row['tower_s_per_image'])} per image, text-only "
                         f"request {harness.fmt_time(row['text_only_request_s'])}")
    lines += ["", f"Positions, on the built-in model in float32 ({position_rows[0]['questions']} "
              "questions; the same picks, `greedyprune` at λ = 0): vLLM numbers the kept tokens "
              "consecutively, greedyprune.hf keeps their original positions.", ""]
    lines += harness.table_head(["visual tokens", "accuracy, vLLM", "accuracy, greedyprune.hf",
                                 "same answer"], "lrrr")
    for row in position_rows:
        lines.append(harness.table_row([
            "all 144" if row["keep"] is None else f"{row['keep']} of 144",
            f"{row['vllm']:.1%}", f"{row['hf']:.1%}", f"{row['agree']:.1%}"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per budget (3)")
    parser.add_argument("--questions", type=int, default=400,
                        help="questions of the positions comparison (400)")
    parser.add_argument("--hf-python", default=str(harness.ROOT / ".venv" / "bin" / "python"),
                        help="the main environment's Python, for greedyprune.hf")
    parser.add_argument("--out", type=Path, default=harness.RESULTS_DIR)
    parser.add_argument("--from-json", type=Path, metavar="FILE",
                        help="rewrite the table of a saved run (no vLLM needed)")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        document = json.loads(args.from_json.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_vllm.md").write_text(
            markdown(document["rows"], document["environment"], document["positions"]))
        return
    import vllm

    from greedyprune import builtin

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        paths = {"built-in": str(builtin.path()),
                 "random, 576 tokens": str(random_checkpoint(Path(scratch) / "random"))}
        for case, tokens, keeps, requests in CASES:
            tower, select = worker_costs(paths[case], case, [k for k in keeps if k is not None])
            for keep in keeps:
                rows.append(run_case(paths[case], case, tokens, keep, requests, args.rounds))
                rows[-1].update(tower_s_per_image=tower, selection_s_per_image=select.get(keep))
                print(rows[-1], flush=True)
    position_rows = positions(str(builtin.path()), [48, 16], args.questions, 11, args.hf_python)
    env = harness.environment(vllm=vllm.__version__, rounds=args.rounds)
    harness.write_report(args.out, "bench_vllm",
                         {"environment": env, "rows": rows, "positions": position_rows},
                         markdown(rows, env, position_rows))


if __name__ == "__main__":
    main()
