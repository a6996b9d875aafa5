"""Benchmark ``greedyprune.select`` against its NumPy reference, an N x N PyTorch greedy and the
cost of reading the features once.

Run it from the repository root, with the OpenBLAS overrides of this machine's environment unset
(they make a current NumPy pick slower kernels; unset them for this command only)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_select.py
    python benchmarks/update_readme.py          # paste the table into README.md

Compared, in one run, for every shape (N tokens, D features, keep K), float32, lam = 0.5:

* ``stream``: one streaming pass over the features, ``X @ v`` at one thread (NumPy's BLAS held
  to one thread by threadpoolctl; torch.mv at one thread where threadpoolctl is missing). Any
  selection method must read every feature once, so this is the floor.
* ``c_1t``, ``c_2t``: ``greedyprune.select`` (the C core) at 1 and 2 threads.
* ``reference``: ``greedyprune.reference.select``, the plain-NumPy twin (float64, no laziness,
  O(K*N*D) with N x D temporaries). Skipped where one run is estimated to exceed
  ``--max-reference-seconds``; the estimate comes from two runs with a small K.
* ``torch_nxn_1t``, ``torch_nxn_2t``: the same greedy written the way peer methods usually write
  it: normalize, build the full N x N similarity matrix, then take rows of it (see
  :func:`torch_nxn_greedy`).

Also counted, not timed: the top-level ATen operations the PyTorch port (what
``select(..., backend="torch")`` runs, and tensors on a GPU by default) calls per pick, with
torch.profiler on CPU tensors; on a GPU each is a kernel launch or more.

Two kinds of features, reported separately: ``gaussian`` (i.i.d. normal rows: every pair is
nearly equidistant, the case meant to be hardest for the lazy evaluation of the C core) and
``clustered`` (image-like tokens on a sqrt(N) x sqrt(N) grid: a smooth low-rank spatial field, a
few object clusters and noise). Which one actually costs the lazy evaluation more is measured, not
assumed: the report counts the distances it computes (:func:`lazy_distance_evaluations`).

Every timed method's picks are checked against docs/spec.md §2 before its time is reported: replayed
in float64, each pick's gain must be within 1e-4 of the best candidate's at that step. Peak
memory is measured in a fresh subprocess per method (see :func:`harness.measure_in_child`).

Writes ``bench_select.json`` and ``bench_select.md`` into ``--out`` (default
benchmarks/results/). ``--quick`` is a smoke run (small shapes, one repeat) for the tests;
``--from-json`` measures nothing and rewrites the Markdown from the JSON.

This file runs the benchmark; the shapes, inputs and methods are in select_cases.py, the checks
of the picks in select_checks.py, the report in select_report.py, and what every benchmark
script shares (timing, threads, environment, memory, tables) in harness.py.
"""
from __future__ import annotations

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

import harness
from greedyprune import reference
from harness import fmt_bytes, greedyprune
from select_cases import (FEATURE_KINDS, LAM, METHOD_LABELS, METHODS, QUICK_SHAPES,
                          REFERENCE_MEMORY_K, SEED, SHAPES, c_core, expected_memory, make_inputs,
                          one_thread, stream_backend, stream_description, stream_fn,
                          torch_nxn_greedy, torch_port_ops)
from select_checks import compare_picks, lazy_distance_evaluations
from select_report import fmt_agreement, fmt_method_time, header_lines, markdown, targets

SCRIPT = Path(__file__).resolve()


# --------------------------------------------------------------------------- timing


def estimate_reference_seconds(x, k, s):
    """Seconds one reference run would take at this K, from timed runs at two small K.

    Its cost is (set-up) + K x (one step); both are fitted from the two runs.
    """
    k1, k2 = min(k, 4), min(k, 16)
    t1 = harness.time_once(lambda: reference.select(x, k1, s, LAM))
    if k2 == k1:
        return t1, [k1]
    t2 = harness.time_once(lambda: reference.select(x, k2, s, LAM))
    per_step = max(t2 - t1, 0.0) / (k2 - k1)
    return max(t1 + per_step * (k - k1), t2), [k1, k2]


def bench_shape(kind, shape, opts, backend):
    """Time every method on one shape and one kind of features; check that they agree."""
    n, d, k = shape
    x, s = make_inputs(kind, n, d, k, opts.saliency)
    entry = {"features": kind, "n": n, "d": d, "k": k, "methods": {}}
    orders = {}

    def timed(fn, **slow):
        return harness.measure(fn, opts.budget, opts.min_repeats, opts.max_repeats, **slow)

    def record(name, times, **extra):
        entry["methods"][name] = {**harness.summary(times), **extra}

    with one_thread(backend):
        times, _ = timed(stream_fn(x, backend))
    record("stream", times, how=stream_description(backend))

    for threads in (1, 2):
        name = f"c_{threads}t"
        times, picked = timed(lambda: c_core(x, k, s, threads))
        order, _ = greedyprune.greedy(x, k, s, LAM, num_threads=threads)
        assert np.array_equal(np.sort(order), picked)
        orders[name] = order.tolist()
        record(name, times)

    estimate, from_k = estimate_reference_seconds(x, k, s)
    if estimate > opts.max_reference_seconds:
        entry["methods"]["reference"] = {
            "skipped": True, "estimate_s": estimate, "estimated_from_k": from_k,
            "reason": f"one run estimated at {estimate:.0f} s (> {opts.max_reference_seconds:g} s)",
        }
    else:
        # Fewer repeats for the slow reference: a single run once one run takes the budget.
        times, (order, _) = timed(lambda: reference.greedy(x, k, s, LAM), slow_min_repeats=1)
        orders["reference"] = order.tolist()
        record("reference", times, estimate_s=estimate, estimated_from_k=from_k)

    torch = harness.optional_torch()
    if torch is None:
        for name in ("torch_nxn_1t", "torch_nxn_2t"):
            entry["methods"][name] = {"skipped": True, "reason": "torch is not installed"}
    else:
        xt = torch.from_numpy(x)
        st = None if s is None else torch.from_numpy(s)
        for threads in (1, 2):
            name = f"torch_nxn_{threads}t"
            with harness.torch_threads(threads):
                times, (order, _) = timed(lambda: torch_nxn_greedy(xt, k, st, LAM))
            orders[name] = order
            record(name, times, torch_threads=threads)

    entry["agreement"] = compare_picks(x, s, orders)
    entry["ratios"] = ratios(entry["methods"])
    entry["lazy_distance_evaluations"] = lazy_distance_evaluations(x, s, k, LAM)
    return entry


def ratios(methods):
    """The ratios of medians the report shows (None where a method was skipped)."""
    def median(name):
        m = methods.get(name, {})
        return None if m.get("skipped") else m.get("median_s")

    def ratio(a, b):
        return harness.ratio(median(a), median(b))

    return {
        "c_1t_over_stream": ratio("c_1t", "stream"),
        "reference_over_c_1t": ratio("reference", "c_1t"),
        "torch_nxn_1t_over_c_1t": ratio("torch_nxn_1t", "c_1t"),
        "torch_nxn_2t_over_c_2t": ratio("torch_nxn_2t", "c_2t"),
        "c_1t_over_c_2t": ratio("c_1t", "c_2t"),
    }


# --------------------------------------------------------------------------- memory


def memory_child(spec):
    """Run one method once in this (fresh) process and return its peak extra resident memory.

    Inputs are loaded from .npy files (read straight into their arrays, no temporaries) and every
    library is imported before the baseline, so the peak above the baseline is the method's own.
    """
    x = np.load(spec["x"])
    s = np.load(spec["s"]) if spec["s"] else None
    k, method, threads = spec["k"], spec["method"], spec["threads"]
    backend = spec.get("stream_backend", "numpy")
    with contextlib.ExitStack() as stack:
        if method.startswith("torch"):
            torch = harness.optional_torch()
            torch.set_num_threads(threads)
            xt, st = torch.from_numpy(x), None if s is None else torch.from_numpy(s)
            run = functools.partial(torch_nxn_greedy, xt, k, st, LAM)
        elif method.startswith("c_"):
            run = functools.partial(c_core, x, k, s, threads)
        elif method == "reference":
            run = functools.partial(reference.select, x, k, s, LAM)
            tracemalloc.start()  # NumPy reports its buffers to tracemalloc: a second opinion
            stack.callback(tracemalloc.stop)
        else:
            stack.enter_context(one_thread(backend))
            run = stream_fn(x, backend)
        out = harness.peak_extra_memory(run)
        if tracemalloc.is_tracing():
            out["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
    return out


def measure_memory(shape, with_saliency, methods, backend, workdir):
    """Peak extra memory of each method at one shape, one fresh process each (gaussian
    features: no method's allocations depend on the values)."""
    n, d, k = shape
    x, s = make_inputs("gaussian", n, d, k, with_saliency)
    x_path = os.path.join(workdir, f"x_{n}_{d}_{k}.npy")
    np.save(x_path, x)
    s_path = ""
    if s is not None:
        s_path = os.path.join(workdir, f"s_{n}_{d}_{k}.npy")
        np.save(s_path, s)
    del x, s
    out = {}
    for method in methods:
        if method == "torch_nxn_2t":
            continue  # same allocations as at one thread
        k_used = min(k, REFERENCE_MEMORY_K) if method == "reference" else k
        threads = 2 if method.endswith("2t") else 1
        spec = {"method": method, "x": x_path, "s": s_path, "k": k_used, "threads": threads,
                "stream_backend": backend}
        result = harness.measure_in_child(SCRIPT, spec)
        expected, formula = expected_memory(method, n, d, k_used)
        result.update({"expected_bytes": expected, "expected_formula": formula, "k_used": k_used})
        out[method] = result
    os.remove(x_path)
    if s_path:
        os.remove(s_path)
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", choices=["gaussian", "clustered", "both"], default="both",
                        help="which features to time (default: both, reported separately)")
    parser.add_argument("--no-saliency", dest="saliency", action="store_false",
                        help="diversity only (default: a random saliency)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small shapes, one repeat (for the tests)")
    parser.add_argument("--out", type=Path, default=harness.RESULTS_DIR,
                        help=f"output folder (default: {harness.RESULTS_DIR})")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="seconds of repeated calls per entry (default 1)")
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--max-repeats", type=int, default=1000)
    parser.add_argument("--max-reference-seconds", type=float, default=60.0,
                        help="skip the reference where one run is estimated to take longer")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory measurements")
    parser.add_argument("--from-json", action="store_true",
                        help="measure nothing: rewrite bench_select.md from the bench_select.json "
                             "in --out (after a change to how the report is written)")
    parser.add_argument(harness.MEMORY_CHILD_OPTION, dest="memory_child", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.budget, opts.min_repeats, opts.max_repeats = 0.0, 1, 1
    return opts


def rewrite_markdown(out):
    """Write ``out/bench_select.md`` again from ``out/bench_select.json``, as the measuring run
    would have written it with this version of the script."""
    document = json.loads((out / "bench_select.json").read_text())
    (out / "bench_select.md").write_text(markdown(document))
    print(f"wrote {out / 'bench_select.md'} from {out / 'bench_select.json'}")
    return 0


def main(argv=None):
    opts = parse_args(argv)
    if opts.memory_child:
        print(json.dumps(memory_child(json.loads(opts.memory_child))))
        return 0
    if opts.from_json:
        return rewrite_markdown(opts.out)
    started = time.perf_counter()
    backend = stream_backend()
    env = harness.environment(stream_backend=backend)
    env_lines = header_lines(env, opts)
    for line in env_lines:
        print(line, flush=True)
    shapes = QUICK_SHAPES if opts.quick else SHAPES
    kinds = list(FEATURE_KINDS) if opts.features == "both" else [opts.features]

    results = []
    for shape in shapes:
        for kind in kinds:
            t0 = time.perf_counter()
            entry = bench_shape(kind, shape, opts, backend)
            results.append(entry)
            times = ", ".join(f"{name} {fmt_method_time(entry['methods'].get(name))}"
                              for name in METHODS)
            print(f"{kind:9s} {shape}: {times}; picks agree: {fmt_agreement(entry['agreement'])} "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)

    memory = []
    if opts.memory:
        methods = [m for m in METHODS
                   if harness.optional_torch() is not None or not m.startswith("torch")]
        with tempfile.TemporaryDirectory(prefix="bench_select_") as workdir:
            for shape in shapes:
                row = {"n": shape[0], "d": shape[1], "k": shape[2],
                       "methods": measure_memory(shape, opts.saliency, methods, backend, workdir)}
                memory.append(row)
                print(f"memory {shape}: " + ", ".join(
                    f"{name} {fmt_bytes(m.get('extra_bytes'))}"
                    for name, m in row["methods"].items()), flush=True)

    port_ops = []
    if harness.optional_torch() is not None:
        for n, d, k in shapes:  # a count, the same for any values: gaussian features only
            x, s = make_inputs("gaussian", n, d, k, opts.saliency)
            ops = torch_port_ops(x, k, s)
            port_ops.append({"n": n, "d": d, "k": k, "ops": ops, "ops_per_pick": ops / k})
            print(f"torch port {(n, d, k)}: {ops} operations, {ops / k:.1f} per pick", flush=True)

    target_list = targets(results, memory, port_ops)
    for t in target_list:
        print(f"{t['verdict']}: {t['line']}")

    document = {
        "environment": env,
        "header_lines": env_lines,
        "config": {
            "shapes": [list(s) for s in shapes], "features": kinds, "lam": LAM,
            "saliency": opts.saliency, "dtype": "float32", "seed": SEED, "quick": opts.quick,
            "budget_s": opts.budget, "min_repeats": opts.min_repeats,
            "max_reference_seconds": opts.max_reference_seconds,
        },
        "methods": METHOD_LABELS,
        "results": results,
        "memory": memory,
        "torch_port_ops": port_ops,
        "targets": target_list,
        "load_average_at_end": list(os.getloadavg()),
        "total_seconds": time.perf_counter() - started,
    }
    harness.write_report(opts.out, "bench_select", document, markdown(document))
    print(f"[{document['total_seconds']:.0f} s]")
    # The targets' verdicts: in the JSON and here, not in the tables.
    return 1 if any(t["verdict"] == "MISS" for t in target_list) else 0


if __name__ == "__main__":
    sys.exit(main())
