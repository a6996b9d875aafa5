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

Two kinds of features, reported separately: ``gaussian`` (i.i.d. normal rows: every pair is
nearly equidistant, the case meant to be hardest for the lazy evaluation of the C core) and
``clustered`` (image-like tokens on a sqrt(N) x sqrt(N) grid: a smooth low-rank spatial field, a
few object clusters and noise). Which one actually costs the lazy evaluation more is measured, not
assumed: the report counts the distances it computes (:func:`lazy_distance_evaluations`).

Every timed method's picks are checked against docs/spec.md §2 before its time is reported: replayed
in float64, each pick's gain must be within 1e-4 of the best candidate's at that step. Peak
memory is measured in a fresh subprocess per method (see :func:`measure_memory_in_child`).

Writes ``bench_select.json`` and ``bench_select.md`` into ``--out`` (default
benchmarks/results/). ``--quick`` is a smoke run (small shapes, one repeat) for the tests;
``--from-json`` measures nothing and rewrites the Markdown from the JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import heapq
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

try:
    import greedyprune
except ImportError:  # running from a checkout with an in-place build, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import greedyprune
from greedyprune import reference

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None

#: Set by load_torch(): memory-measuring child processes that do not need torch skip its import.
torch = None

SHAPES = [(576, 1024, 64), (576, 4096, 64), (576, 4096, 192), (2880, 4096, 320),
          (16384, 1024, 1024)]
QUICK_SHAPES = [(64, 32, 8), (300, 96, 24)]
#: The shape and limits of the performance targets (the JSON records a verdict for each).
TARGET_SHAPE = (576, 4096, 64)
TARGET_MAX_STREAM_RATIO = 4.0
TARGET_MIN_REFERENCE_SPEEDUP = 10.0
LAM = 0.5
SEED = 20250613
#: docs/spec.md §2: a float32 pick must be within this of the best candidate's gain at its step.
GAIN_TOLERANCE = 1e-4
FEATURE_KINDS = {
    "gaussian": "gaussian (i.i.d.)",
    "clustered": "clustered (image-like)",
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The reference's memory is measured with this K at most: its peak (N x D float64 temporaries)
#: does not depend on K, and a full run of the large shapes takes minutes.
REFERENCE_MEMORY_K = 8
#: Allowance over the C core's documented allocation before the memory target is missed:
#: page rounding, OpenMP thread start-up and the output array.
C_MEMORY_SLACK_BYTES = 4 << 20

METHODS = ["stream", "c_1t", "c_2t", "reference", "torch_nxn_1t", "torch_nxn_2t"]
METHOD_LABELS = {
    "stream": "streaming pass X·v, 1 thread",
    "c_1t": "C core, 1 thread",
    "c_2t": "C core, 2 threads",
    "reference": "NumPy reference",
    "torch_nxn_1t": "torch N×N, 1 thread",
    "torch_nxn_2t": "torch N×N, 2 threads",
}


def load_torch():
    """Import torch if it is installed; True when it is."""
    global torch
    if torch is None:
        try:
            import torch as module
        except ImportError:
            return False
        torch = module
    return True


# --------------------------------------------------------------------------- inputs


def gaussian_features(n, d, rng):
    """I.i.d. standard normal rows: in high dimension every pair is nearly orthogonal, so every
    distance is close to 1/2 and no candidate's stale bound stands out: the case meant to be
    hardest for the lazy greedy."""
    return rng.standard_normal((n, d), dtype=np.float32)


def clustered_features(n, d, rng, rank=8, objects=6):
    """Image-like tokens: token i sits at cell (i // side, i % side) of a side x side grid,
    side = ceil(sqrt(N)), and its features are the sum of

    * a component shared by every token (vision-transformer features have a large common mean),
    * a smooth low-rank field over the grid (``rank`` low-frequency waves, each along its own
      random direction in feature space): neighbouring tokens look alike,
    * the centre of the object that owns its cell (``objects`` centres; a cell belongs to the
      nearest of ``objects`` random seed points, so objects are contiguous regions),
    * noise.
    """
    side = math.ceil(math.sqrt(n))
    rows, cols = np.divmod(np.arange(n), side)
    position = np.stack([rows, cols], axis=1) / side  # (N, 2) in [0, 1)
    frequencies = rng.integers(-2, 3, size=(rank, 2))
    phases = rng.uniform(0, 2 * np.pi, size=rank)
    waves = np.cos(2 * np.pi * position @ frequencies.T + phases)  # (N, rank)
    field = waves @ rng.standard_normal((rank, d)) / math.sqrt(rank)
    seeds = rng.random((objects, 2))
    owner = ((position[:, None, :] - seeds[None]) ** 2).sum(axis=2).argmin(axis=1)
    centres = rng.standard_normal((objects, d))
    shared = rng.standard_normal(d)
    x = 0.5 * shared + field + centres[owner] + 0.5 * rng.standard_normal((n, d))
    return x.astype(np.float32)


def make_inputs(kind, n, d, k, with_saliency):
    rng = np.random.default_rng([SEED, n, d, k, list(FEATURE_KINDS).index(kind)])
    x = gaussian_features(n, d, rng) if kind == "gaussian" else clustered_features(n, d, rng)
    s = rng.random(n, dtype=np.float32) if with_saliency else None
    return x, s


# --------------------------------------------------------------------------- methods


def c_core(x, k, s, threads):
    return greedyprune.select(x, k, s, LAM, num_threads=threads)


def torch_nxn_greedy(x, k, s, lam):
    """The greedy as peer methods usually write it: the full N x N similarity matrix first.

    ``x`` (N, D) and ``s`` (N,) or None are float32 tensors. Returns ``(order, gains)`` as lists.
    Memory: the N x N matrix (4·N² bytes) plus a normalized copy of the features.
    """
    xhat = torch.nn.functional.normalize(x, dim=1)  # zero rows stay zero
    similarity = xhat @ xhat.T  # (N, N)
    n = x.shape[0]
    if s is None or bool(s.max() == s.min()):
        shat = torch.zeros(n, dtype=x.dtype)
    else:
        shat = (s - s.min()) / (s.max() - s.min())
    m = torch.ones(n, dtype=x.dtype)  # m(i | {}) = 1
    taken = torch.zeros(n, dtype=torch.bool)
    order, gains = [], []
    for _ in range(k):
        gain = (lam * shat + (1 - lam) * m).masked_fill(taken, float("-inf"))
        i = int(gain.argmax())  # the first maximum: lowest index wins a tie
        order.append(i)
        gains.append(float(gain[i]))
        taken[i] = True
        m = torch.minimum(m, (1 - similarity[i]) / 2)
    return order, gains


def stream_backend():
    """How the streaming pass is held to one thread: 'numpy' (threadpoolctl) or 'torch'."""
    if threadpoolctl is not None:
        return "numpy"
    if load_torch():
        return "torch"
    return "numpy-unlimited"


def stream_description(backend):
    return {
        "numpy": "NumPy X @ v (BLAS sgemv) held to 1 thread by threadpoolctl",
        "torch": "torch.mv(X, v) with torch.set_num_threads(1) (threadpoolctl not installed)",
        "numpy-unlimited": "NumPy X @ v with BLAS threads NOT limited (threadpoolctl and torch "
                           "missing)",
    }[backend]


class OneThread:
    """Context that holds the streaming pass's library to one thread."""

    def __init__(self, backend):
        self.backend = backend

    def __enter__(self):
        if self.backend == "numpy":
            self._limit = threadpoolctl.threadpool_limits(limits=1, user_api="blas")
        elif self.backend == "torch":
            self._previous = torch.get_num_threads()
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.backend == "numpy":
            self._limit.unregister()
        elif self.backend == "torch":
            torch.set_num_threads(self._previous)


class TorchThreads:
    def __init__(self, threads):
        self.threads = threads

    def __enter__(self):
        self._previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        torch.set_num_threads(self._previous)


def stream_fn(x, backend):
    v = np.random.default_rng(SEED).standard_normal(x.shape[1], dtype=np.float32)
    if backend == "torch":
        xt, vt = torch.from_numpy(x), torch.from_numpy(v)
        return lambda: torch.mv(xt, vt)
    return lambda: x @ v


# --------------------------------------------------------------------------- timing


def measure(fn, budget_s, min_repeats, max_repeats, slow_min_repeats=None):
    """Median-ready timings of ``fn()`` in seconds, and the result of its first call.

    The first call is a warm-up and is discarded, unless it alone took ``budget_s`` or more (then
    one-time costs are negligible and it counts). Calls repeat until ``budget_s`` has passed and
    at least ``min_repeats`` timings exist (``slow_min_repeats`` of them for a slow first call).
    """
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    times = []
    needed = min_repeats
    if first >= budget_s:
        times.append(first)
        if slow_min_repeats is not None:
            needed = slow_min_repeats
    while len(times) < max_repeats and (
        len(times) < needed or time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times, result


def estimate_reference_seconds(x, k, s):
    """Seconds one reference run would take at this K, from timed runs at two small K.

    Its cost is (set-up) + K x (one step); both are fitted from the two runs.
    """
    k1, k2 = min(k, 4), min(k, 16)
    t1 = _time_once(lambda: reference.select(x, k1, s, LAM))
    if k2 == k1:
        return t1, [k1]
    t2 = _time_once(lambda: reference.select(x, k2, s, LAM))
    per_step = max(t2 - t1, 0.0) / (k2 - k1)
    return max(t1 + per_step * (k - k1), t2), [k1, k2]


def _time_once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- checking the picks


def pick_shortfall(x, s, lam, order):
    """docs/spec.md §2 check of a greedy order, in float64: the largest amount by which any pick's gain
    falls short of the best candidate's gain at that step (given the same earlier picks).

    Uses only the distances from every token to the picks (N x K), never N x N.
    """
    order = np.asarray(order, dtype=np.int64)
    n, k = x.shape[0], len(order)
    xhat = reference.unit_rows(x.astype(np.float64))
    shat = reference.normalized_saliency(None if s is None else s.astype(np.float64), n)
    m = np.ones((n, k))  # m[:, t]: m(i | first t picks)
    if k > 1:
        distances = (1.0 - xhat @ xhat[order[:-1]].T) / 2.0
        m[:, 1:] = np.minimum.accumulate(distances, axis=1)
    gain = lam * shat[:, None] + (1.0 - lam) * m
    picked_at = np.full(n, k)
    picked_at[order] = np.arange(k)
    gain[picked_at[:, None] < np.arange(k)[None, :]] = -np.inf  # taken before step t
    best = gain.max(axis=0)
    chosen = gain[order, np.arange(k)]
    return float(np.max(best - chosen))


def compare_picks(x, s, orders):
    """Agreement of every method's greedy order: docs/spec.md §2 shortfall, and how many of its kept
    tokens differ from the C core's (1 thread) or, without it, the first method's."""
    baseline_name = "c_1t" if "c_1t" in orders else next(iter(orders))
    baseline = set(np.asarray(orders[baseline_name]).tolist())
    per_method = {}
    for name, order in orders.items():
        kept = set(np.asarray(order).tolist())
        shortfall = pick_shortfall(x, s, LAM, order)
        per_method[name] = {
            "max_gain_shortfall": shortfall,
            "within_tolerance": shortfall <= GAIN_TOLERANCE,
            "tokens_differing_from_" + baseline_name: len(kept - baseline),
            "same_order_as_" + baseline_name: list(order) == list(orders[baseline_name]),
        }
    thread_independent = (
        "c_2t" not in orders or list(orders["c_1t"]) == list(orders["c_2t"])
    )
    return {
        "baseline": baseline_name,
        "tolerance": GAIN_TOLERANCE,
        "methods": per_method,
        "c_core_same_at_1_and_2_threads": thread_independent,
        "all_agree": thread_independent and all(v["within_tolerance"] for v in per_method.values()),
    }


def lazy_distance_evaluations(x, s, k, lam):
    """How many token-to-pick distances (D-long dot products) the C core computes at one thread.

    A model of its lazy greedy (csrc/greedyprune.c): the first pick needs no distances, and the
    pass that finds the norms also compares every token with it. Then a max-heap of candidates
    by (stale gain, lowest index): while the top has not been compared with every pick, compare
    it with the picks it has not seen, oldest first, stopping as soon as it ranks below the best
    other candidate, and let it sink. Which candidate is on top depends only on that order, so
    the count is the C core's, up to float32 rounding. The plain greedy computes (K - 1)·N.
    """
    n = x.shape[0]
    if lam == 1.0 or k == 1:
        return 0
    xhat = reference.unit_rows(x.astype(np.float64))
    shat = reference.normalized_saliency(None if s is None else s.astype(np.float64), n)
    first = int(np.argmax(lam * shat + (1.0 - lam)))  # every m is 1: the lowest index on ties
    distance_to_pick = np.empty((n, k))  # column t: every token's distance to pick t
    distance_to_pick[:, 0] = (1.0 - xhat @ xhat[first]) / 2.0
    m = np.minimum(1.0, distance_to_pick[:, 0])
    seen = np.ones(n, dtype=np.int64)
    evaluations = n  # the first pass
    heap = [(-(lam * shat[i] + (1.0 - lam) * m[i]), i) for i in range(n) if i != first]
    heapq.heapify(heap)
    # One BLAS thread: on a busy machine a threaded matrix-vector product per pick can cost
    # milliseconds of fork and join.
    with OneThread("numpy") if threadpoolctl is not None else contextlib.nullcontext():
        for step in range(1, k):
            while seen[heap[0][1]] < step:
                i = heap[0][1]
                rival = min(heap[1:3]) if len(heap) > 1 else None  # the best other candidate
                t = seen[i]
                while t < step:
                    m[i] = min(m[i], distance_to_pick[i, t])
                    t += 1
                    evaluations += 1
                    if rival is not None and rival < (-(lam * shat[i] + (1.0 - lam) * m[i]), i):
                        break
                seen[i] = t
                heapq.heapreplace(heap, (-(lam * shat[i] + (1.0 - lam) * m[i]), i))
            pick = heapq.heappop(heap)[1]
            if step + 1 < k:
                distance_to_pick[:, step] = (1.0 - xhat @ xhat[pick]) / 2.0
    return int(evaluations)


# --------------------------------------------------------------------------- memory


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(spec):
    """Run one method once in this (fresh) process and return its peak extra resident memory.

    Inputs are loaded from .npy files (read straight into their arrays, no temporaries) and every
    library is imported before the baseline, so the peak above the baseline is the method's own:
    its allocations, whether from Python, NumPy, torch or the C core's malloc.
    """
    x = np.load(spec["x"])
    s = np.load(spec["s"]) if spec["s"] else None
    k, method, threads = spec["k"], spec["method"], spec["threads"]
    backend = spec.get("stream_backend", "numpy")
    if method.startswith("torch") or backend == "torch":
        load_torch()
    with contextlib.ExitStack() as stack:
        if method.startswith("torch"):
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
            stack.enter_context(OneThread(backend))
            run = stream_fn(x, backend)
        reset = _reset_peak_rss()
        baseline_kib = _proc_status_kib("VmRSS") if reset else _proc_status_kib("VmHWM")
        run()
        peak_kib = _proc_status_kib("VmHWM")
        out = {"extra_bytes": max(0, peak_kib - baseline_kib) * 1024, "peak_reset": reset}
        if tracemalloc.is_tracing():
            out["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
    return out


def measure_memory_in_child(spec, timeout_s=600):
    """One fresh interpreter per measurement: a process's peak RSS never goes down, and memory
    freed by an earlier method stays mapped in the allocator, so methods must not share one.
    (The kernel's VmHWM is read rather than ru_maxrss, which a child inherits from its parent.)"""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


#: Bytes the C core allocates per token: shat, m, gain, inv_norm, scale (double), seen, heap
#: (int64); ``per_candidate`` in greedy_image, csrc/greedyprune.c.
C_BYTES_PER_TOKEN = 56


def c_core_expected_bytes(n, d, k, threads):
    """The C core's allocation for one float32 image, as greedy_image (csrc/greedyprune.c)
    computes it: the per-token bookkeeping, the K x D picked unit rows and one scratch row of D
    doubles per thread (one image only gets threads when N·D >= 2^18), plus the int64 output."""
    threads = threads if threads > 1 and n * d >= 1 << 18 else 1
    return C_BYTES_PER_TOKEN * n + 4 * k * d + 8 * threads * d + 8 * k


def expected_memory(method, n, d, k):
    """What each method should allocate (bytes) and how that figure is derived."""
    if method.startswith("c_"):
        return c_core_expected_bytes(n, d, k, 2 if method == "c_2t" else 1), \
            f"{C_BYTES_PER_TOKEN}·N + 4·K·D + 8·D·threads (+ the output)"
    if method.startswith("torch"):
        return 4 * n * n + 4 * n * d, "N×N float32 similarity + normalized N×D copy"
    if method == "reference":
        return 3 * 8 * n * d, "three N×D float64 arrays (copy, unit rows, one temporary)"
    return 4 * n, "the N outputs"


def measure_memory(shape, with_saliency, methods, backend, workdir):
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
        result = measure_memory_in_child(spec)
        expected, formula = expected_memory(method, n, d, k_used)
        result.update({"expected_bytes": expected, "expected_formula": formula, "k_used": k_used})
        out[method] = result
    os.remove(x_path)
    if s_path:
        os.remove(s_path)
    return out


# --------------------------------------------------------------------------- one shape


def bench_shape(kind, shape, opts, backend):
    """Time every method on one shape and one kind of features; check that they agree."""
    n, d, k = shape
    x, s = make_inputs(kind, n, d, k, opts.saliency)
    entry = {"features": kind, "n": n, "d": d, "k": k, "methods": {}}
    orders = {}

    def record(name, times, **extra):
        entry["methods"][name] = {
            "median_s": float(np.median(times)), "repeats": len(times),
            "min_s": float(np.min(times)), **extra,
        }

    with OneThread(backend):
        times, _ = measure(stream_fn(x, backend), opts.budget, opts.min_repeats, opts.max_repeats)
    record("stream", times, how=stream_description(backend))

    for threads in (1, 2):
        name = f"c_{threads}t"
        times, picked = measure(lambda: c_core(x, k, s, threads), opts.budget, opts.min_repeats,
                                opts.max_repeats)
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
        times, (order, _) = measure(lambda: reference.greedy(x, k, s, LAM), opts.budget,
                                    opts.min_repeats, opts.max_repeats, slow_min_repeats=1)
        orders["reference"] = order.tolist()
        record("reference", times, estimate_s=estimate, estimated_from_k=from_k)

    if torch is None:
        for name in ("torch_nxn_1t", "torch_nxn_2t"):
            entry["methods"][name] = {"skipped": True, "reason": "torch is not installed"}
    else:
        xt = torch.from_numpy(x)
        st = None if s is None else torch.from_numpy(s)
        for threads in (1, 2):
            name = f"torch_nxn_{threads}t"
            with TorchThreads(threads):
                times, (order, _) = measure(lambda: torch_nxn_greedy(xt, k, st, LAM), opts.budget,
                                            opts.min_repeats, opts.max_repeats)
            orders[name] = order
            record(name, times, torch_threads=threads)

    entry["agreement"] = compare_picks(x, s, orders)
    entry["ratios"] = ratios(entry["methods"])
    entry["lazy_distance_evaluations"] = lazy_distance_evaluations(x, s, k, LAM)
    return entry


def ratios(methods):
    def median(name):
        m = methods.get(name, {})
        return None if m.get("skipped") else m.get("median_s")

    def ratio(a, b):
        ta, tb = median(a), median(b)
        return None if ta is None or tb is None or tb == 0 else ta / tb

    return {
        "c_1t_over_stream": ratio("c_1t", "stream"),
        "reference_over_c_1t": ratio("reference", "c_1t"),
        "torch_nxn_1t_over_c_1t": ratio("torch_nxn_1t", "c_1t"),
        "torch_nxn_2t_over_c_2t": ratio("torch_nxn_2t", "c_2t"),
        "c_1t_over_c_2t": ratio("c_1t", "c_2t"),
    }


# --------------------------------------------------------------------------- report


def environment(backend):
    """Versions, CPU and thread settings, for the header and the JSON."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = []
    if threadpoolctl is not None:
        blas = [
            f"{i.get('internal_api')} {i.get('version')}"
            + (f", {i['architecture']} kernels" if i.get("architecture") else "")
            for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"
        ]
    variables = {name: os.environ.get(name) for name in (
        "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
        greedyprune.NUM_THREADS_ENV)}
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "greedyprune": greedyprune.__version__,
        "greedyprune_path": str(Path(greedyprune.__file__).parent),
        "openmp": greedyprune.has_openmp,
        "greedyprune_default_threads": greedyprune.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": blas,
        "torch": None if torch is None else torch.__version__,
        "torch_default_threads": None if torch is None else torch.get_num_threads(),
        "threadpoolctl": None if threadpoolctl is None else threadpoolctl.__version__,
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "environment_variables": variables,
        "stream_backend": backend,
    }


def header_lines(env, opts):
    variables = env["environment_variables"]

    def var(name):
        value = variables.get(name)
        return f"{name}={value}" if value is not None else f"{name} unset"

    blas = "; ".join(env["numpy_blas"]) or "BLAS unknown (threadpoolctl missing)"
    torch_text = f"torch {env['torch']}" if env["torch"] else "torch not installed"
    saliency = "random saliency (uniform in [0, 1))" if opts.saliency else "no saliency"
    return [
        f"greedyprune {env['greedyprune']} (OpenMP: {'yes' if env['openmp'] else 'no'}) · "
        f"Python {env['python']} · NumPy {env['numpy']} ({blas}) · {torch_text}"
        + (f" · threadpoolctl {env['threadpoolctl']}" if env["threadpoolctl"] else ""),
        f"CPU: {env['cpu']}, {env['logical_cpus']} logical CPUs, shared with other jobs: "
        "timings are noisy (a few tens of percent between runs)",
        f"Environment: {var('OPENBLAS_CORETYPE')}, {var('OPENBLAS_L2_SIZE')}, "
        f"{var('OMP_NUM_THREADS')}, {var('OMP_WAIT_POLICY')}, {var(greedyprune.NUM_THREADS_ENV)}",
        "Threads: C core `num_threads=1` and `2`; torch N×N `torch.set_num_threads(1)` and `(2)` "
        f"(default {env['torch_default_threads']}); NumPy reference: elementwise NumPy, one "
        f"thread; streaming pass: {stream_description(env['stream_backend'])}",
        f"Inputs: float32, λ = {LAM}, {saliency}, seeded; "
        + ("quick smoke run: one timed call per entry after a warm-up" if opts.quick else
           f"times are medians of repeated calls (at least {opts.min_repeats}, until "
           f"~{opts.budget:g} s per entry, after a warm-up, warm caches; the reference runs "
           "once where one run takes longer than that)")
        + f"; {env['date_utc']} UTC",
    ]


def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_ratio(value):
    if value is None:
        return "n/a"
    return f"{value:.0f}×" if value >= 100 else f"{value:.3g}×"


def fmt_bytes(value):
    if value is None:
        return "n/a"
    if value >= 1 << 30:
        return f"{value / (1 << 30):.2f} GiB"
    if value >= 1 << 20:
        return f"{value / (1 << 20):.1f} MiB"
    return f"{value / 1024:.0f} KiB"


def fmt_method_time(m):
    if m is None:
        return "n/a"
    if m.get("skipped"):
        if "estimate_s" in m:
            return f"skipped (est. {fmt_time(m['estimate_s'])})"
        return "n/a"
    return fmt_time(m["median_s"])


def fmt_shape(entry):
    return f"{entry['n']} × {entry['d']}, K = {entry['k']}"


def fmt_agreement(agreement):
    methods = agreement["methods"]
    key = "tokens_differing_from_" + agreement["baseline"]
    differing = {name: v[key] for name, v in methods.items() if v[key]}
    worst = max(v["max_gain_shortfall"] for v in methods.values())
    if not agreement["all_agree"]:
        bad = [name for name, v in methods.items() if not v["within_tolerance"]]
        if not agreement["c_core_same_at_1_and_2_threads"]:
            bad.append("C core differs between 1 and 2 threads")
        return "**NO**: " + ", ".join(bad)
    if not differing:
        return "yes, identical"
    listed = ", ".join(f"{name} {count}" for name, count in differing.items())
    return f"yes (tokens differing: {listed}; gains within {worst:.1g})"


def targets(results, memory):
    """The performance targets, each with a verdict (kept in the JSON) and a sentence that gives
    the measured numbers (shown in the Markdown, which states no verdicts)."""
    out = []
    n, d, k = TARGET_SHAPE
    for entry in results:
        if (entry["n"], entry["d"], entry["k"]) != TARGET_SHAPE:
            continue
        label = FEATURE_KINDS[entry["features"]]
        r = entry["ratios"]
        stream_ratio = r["c_1t_over_stream"]
        ok = stream_ratio is not None and stream_ratio <= TARGET_MAX_STREAM_RATIO
        c1 = entry["methods"]["c_1t"]["median_s"]
        stream = entry["methods"]["stream"]["median_s"]
        text = (f"({n}, {d}, {k}), {label}, 1 thread: select takes {fmt_time(c1)} = "
                f"{fmt_ratio(stream_ratio)} the streaming pass ({fmt_time(stream)}). The exact "
                f"lazy greedy computes {entry['lazy_distance_evaluations'] / n:.1f}·N "
                f"token-to-pick distances here (a plain greedy: {k - 1}·N), the first N in the "
                f"pass that also finds the norms; each is a {d}-long dot product with a token's "
                "row, which costs about what one row of the streaming pass costs")
        out.append({"target": "select_vs_stream", "features": entry["features"],
                    "value": stream_ratio, "limit": TARGET_MAX_STREAM_RATIO,
                    "verdict": "PASS" if ok else "MISS", "line": text})

        speedup = r["reference_over_c_1t"]
        ok = speedup is not None and speedup >= TARGET_MIN_REFERENCE_SPEEDUP
        text = (f"({n}, {d}, {k}), {label}, 1 thread: select is {fmt_ratio(speedup)} faster "
                "than the NumPy reference")
        out.append({"target": "select_vs_reference", "features": entry["features"],
                    "value": speedup, "limit": TARGET_MIN_REFERENCE_SPEEDUP,
                    "verdict": "PASS" if ok else "MISS", "line": text})
    if not out:
        out.append({"target": "select_vs_stream", "verdict": "NOT RUN", "value": None,
                    "line": f"the shape {TARGET_SHAPE} was not in this run"})

    # Memory: the C core's measured peak must stay within its (linear) documented allocation.
    worst, ok, largest = None, True, None
    for row in memory:
        for method in ("c_1t", "c_2t"):
            m = row["methods"].get(method)
            if m is None:
                continue
            if "extra_bytes" not in m:
                ok = False
                continue
            limit = 1.5 * m["expected_bytes"] + C_MEMORY_SLACK_BYTES
            ok = ok and m["extra_bytes"] <= limit
            if worst is None or m["extra_bytes"] / limit > worst[0]:
                worst = (m["extra_bytes"] / limit, row, method, m)
        if largest is None or row["n"] > largest["n"]:
            largest = row
    if largest is not None and worst is not None:
        c = largest["methods"].get("c_1t", {})
        nxn = 4 * largest["n"] ** 2
        _, wrow, wmethod, wm = worst
        verb, where, worst_text = (
            ("no shape uses memory quadratic in N: the C core's peak extra memory stays within",
             "at every shape", "nearest that limit") if ok else
            ("the C core's peak extra memory exceeds", "at some shape", "furthest over it"))
        text = (f"{verb} its linear allocation {C_BYTES_PER_TOKEN}·N + 4·K·D + 8·D·threads "
                f"(×1.5 + {fmt_bytes(C_MEMORY_SLACK_BYTES)}) {where} ({worst_text}: "
                f"{fmt_bytes(wm.get('extra_bytes'))} measured vs {fmt_bytes(wm['expected_bytes'])} "
                f"expected, {wmethod}, N = {wrow['n']}); "
                f"at N = {largest['n']} it is {fmt_bytes(c.get('extra_bytes'))}, where one N×N "
                f"float32 matrix alone is {fmt_bytes(nxn)}")
        out.append({"target": "memory_not_quadratic", "verdict": "PASS" if ok else "MISS",
                    "value": worst[0], "limit": 1.0, "line": text})
    return out


def _tracemalloc_note(memory):
    """How tracemalloc's view of the reference (NumPy reports its buffers to it) compares."""
    row = max(memory, key=lambda r: r["n"] * r["d"])
    m = row["methods"].get("reference", {})
    if not m.get("tracemalloc_peak_bytes") or not m.get("extra_bytes"):
        return ""
    gap = max(1, math.ceil(100 * abs(m["tracemalloc_peak_bytes"] / m["extra_bytes"] - 1)))
    return (f" Cross-check: for the reference at {fmt_shape(row)}, tracemalloc's peak "
            f"({fmt_bytes(m['tracemalloc_peak_bytes'])}) is within {gap}% of the RSS figure.")


def markdown(env, env_lines, results, memory, target_list, opts, load_end):
    command = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_select.py"
    lines = [
        "<!-- generated by benchmarks/bench_select.py; do not edit by hand -->",
        f"Generated by `{command}{' --quick' if opts.quick else ''}`; "
        "`python benchmarks/update_readme.py` pastes it into README.md.",
        "",
        *[f"- {line}" for line in env_lines],
        "",
        "Features: **gaussian** = i.i.d. normal rows, every pair nearly equidistant, meant as the "
        "hard case for the C core's lazy evaluation; **clustered** = image-like tokens on a "
        "√N × √N grid (a smooth low-rank spatial field, six object clusters, noise). Which one "
        "costs the lazy evaluation more is measured in the *distances computed* column "
        "(D-long dot products, ÷ N; a plain greedy computes K − 1). Only the C core's time "
        "depends on the features: the reference and the N×N greedy do the same work for any "
        "input.",
        "",
        "**Time per call** (median)",
        "",
        "| features | N × D, K | " + " | ".join(METHOD_LABELS[m] for m in METHODS)
        + " | picks agree |",
        "|---|---|" + "---:|" * len(METHODS) + "---|",
    ]
    for entry in results:
        cells = [fmt_method_time(entry["methods"].get(m)) for m in METHODS]
        lines.append(f"| {FEATURE_KINDS[entry['features']]} | {fmt_shape(entry)} | "
                     + " | ".join(cells) + f" | {fmt_agreement(entry['agreement'])} |")
    lines += [
        "",
        "**Ratios** (of medians; above 1 in the reference and torch columns means the C core is "
        "faster, and in the last column that the second thread helps)",
        "",
        "| features | N × D, K | distances computed ÷ N | C 1 thread ÷ streaming pass | "
        "reference ÷ C 1 thread | torch N×N ÷ C, 1 thread | torch N×N ÷ C, 2 threads | "
        "C 1 thread ÷ C 2 threads |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in results:
        r = entry["ratios"]
        ref = entry["methods"].get("reference", {})
        ref_text = fmt_ratio(r["reference_over_c_1t"])
        if ref.get("skipped") and "estimate_s" in ref:
            estimate = ref["estimate_s"] / entry["methods"]["c_1t"]["median_s"]
            ref_text = f"~{fmt_ratio(estimate)} (est.)"
        lines.append(
            f"| {FEATURE_KINDS[entry['features']]} | {fmt_shape(entry)} | "
            f"{entry['lazy_distance_evaluations'] / entry['n']:.1f} of {entry['k'] - 1} | "
            f"{fmt_ratio(r['c_1t_over_stream'])} | {ref_text} | "
            f"{fmt_ratio(r['torch_nxn_1t_over_c_1t'])} | "
            f"{fmt_ratio(r['torch_nxn_2t_over_c_2t'])} | {fmt_ratio(r['c_1t_over_c_2t'])} |")
    if memory:
        lines += [
            "",
            "**Peak extra memory** (resident memory above the baseline, one fresh process per "
            "entry, gaussian features: no method's allocations depend on the values; expected "
            "figure in parentheses)",
            "",
            "| N × D, K | C core, 1 thread | C core, 2 threads | NumPy reference | "
            "torch N×N | streaming pass | one N×N float32 matrix |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in memory:
            cells = []
            for method in ("c_1t", "c_2t", "reference", "torch_nxn_1t", "stream"):
                m = row["methods"].get(method)
                if m is None:
                    cells.append("n/a")
                elif "error" in m:
                    cells.append("failed")
                else:
                    text = f"{fmt_bytes(m['extra_bytes'])} ({fmt_bytes(m['expected_bytes'])})"
                    if method == "reference" and m["k_used"] != row["k"]:
                        text += f" at K = {m['k_used']}"
                    cells.append(text)
            lines.append(f"| {fmt_shape(row)} | " + " | ".join(cells)
                         + f" | {fmt_bytes(4 * row['n'] ** 2)} |")
        lines += [
            "",
            "How memory is measured: each method runs once in a fresh Python process that has "
            "already imported every library and loaded its inputs; the kernel's peak-RSS mark "
            "(VmHWM) is reset before the call and read after it, so the figure covers every "
            "allocation (Python, NumPy, torch, the C core's malloc), rounded to pages. Expected "
            f"figures: C core, its allocation {C_BYTES_PER_TOKEN}·N + 4·K·D + 8·D·threads bytes "
            "as csrc/greedyprune.c computes it (+ the int64 output); torch N×N, 4·N² + 4·N·D; "
            f"reference, 3·8·N·D (measured at K ≤ {REFERENCE_MEMORY_K}: its peak does not depend "
            "on K); streaming pass, its 4·N-byte output." + _tracemalloc_note(memory),
        ]
    load_start = env["load_average_at_start"][0]
    lines += [
        "",
        f"Machine load (1-minute load average, this benchmark alone adds about 1) was "
        f"{load_start:.1f} at the start and {load_end[0]:.1f} at the end, on "
        f"{env['logical_cpus']} CPUs shared with other jobs: times are noisy, the 2-thread "
        "columns most of all (a second thread competes with those jobs for a core).",
        "",
        "**Key figures**",
        "",
    ]
    lines += [f"- {t['line']}" for t in target_list]
    lines += [
        "",
        "Picks: every method's greedy order is replayed in float64; a pick passes when its gain "
        f"is within {GAIN_TOLERANCE:g} of the best candidate's at that step (docs/spec.md §2). "
        "\"tokens differing\" counts kept tokens not kept by the C core at 1 thread.",
    ]
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"output folder (default: {RESULTS_DIR})")
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
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.budget, opts.min_repeats, opts.max_repeats = 0.0, 1, 1
    return opts


def rewrite_markdown(out):
    """Write ``out/bench_select.md`` again from ``out/bench_select.json``, as the measuring run
    would have written it with this version of the script."""
    document = json.loads((out / "bench_select.json").read_text())
    results, memory = document["results"], document["memory"]
    opts = argparse.Namespace(quick=document["config"]["quick"])
    (out / "bench_select.md").write_text(markdown(
        document["environment"], document["header_lines"], results, memory,
        targets(results, memory), opts, document["load_average_at_end"]))
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
    load_torch()
    backend = stream_backend()
    env = environment(backend)
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
        with tempfile.TemporaryDirectory(prefix="bench_select_") as workdir:
            for shape in shapes:
                methods = [m for m in METHODS if torch is not None or not m.startswith("torch")]
                row = {"n": shape[0], "d": shape[1], "k": shape[2],
                       "methods": measure_memory(shape, opts.saliency, methods, backend, workdir)}
                memory.append(row)
                print(f"memory {shape}: " + ", ".join(
                    f"{name} {fmt_bytes(m.get('extra_bytes'))}"
                    for name, m in row["methods"].items()), flush=True)

    target_list = targets(results, memory)
    for t in target_list:
        print(f"{t['verdict']}: {t['line']}")

    opts.out.mkdir(parents=True, exist_ok=True)
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
        "targets": target_list,
        "load_average_at_end": list(os.getloadavg()),
        "total_seconds": time.perf_counter() - started,
    }
    (opts.out / "bench_select.json").write_text(json.dumps(document, indent=1) + "\n")
    (opts.out / "bench_select.md").write_text(markdown(
        env, env_lines, results, memory, target_list, opts, document["load_average_at_end"]))
    print(f"wrote {opts.out / 'bench_select.json'} and {opts.out / 'bench_select.md'} "
          f"[{document['total_seconds']:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
