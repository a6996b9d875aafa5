"""What every benchmark script here shares: timing, thread control, the environment record that
goes into each JSON, peak memory measured in a fresh process, and Markdown tables.

The scripts import it as ``harness`` (Python puts a script's own folder first on ``sys.path``).
Importing it also makes ``import greedyprune`` work from a checkout that is not installed.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

try:
    import greedyprune
except ImportError:  # running from a checkout with an in-place build, not installed
    sys.path.insert(0, str(ROOT))
    import greedyprune

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None

#: The variables that change how fast NumPy's BLAS, OpenMP and the C core run.
THREAD_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                    greedyprune.NUM_THREADS_ENV)


@functools.cache
def optional_torch():
    """The torch module, or None where it is not installed (imported on first use only, so
    that processes which do not need it never pay for it)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# --------------------------------------------------------------------------- timing


def time_once(fn):
    """Seconds one call of ``fn()`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(fn, budget_s, min_repeats, max_repeats, slow_min_repeats=None):
    """Timings of ``fn()`` in seconds, and the result of its first call.

    The first call is a warm-up and is discarded, unless it alone took ``budget_s`` or more (then
    one-time costs are negligible and it counts). Calls repeat until ``budget_s`` has passed and
    at least ``min_repeats`` timings exist (``slow_min_repeats`` of them for a slow first call),
    ``max_repeats`` at most.
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
        times.append(time_once(fn))
    return times, result


def summary(times):
    """The JSON record of a list of timings: median, fastest and count."""
    return {"median_s": float(statistics.median(times)), "repeats": len(times),
            "min_s": float(min(times))}


def ratio(numerator, denominator):
    """``numerator / denominator``, or None where either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


# --------------------------------------------------------------------------- threads


@contextlib.contextmanager
def blas_threads(limit):
    """Hold NumPy's BLAS to ``limit`` threads (nothing happens where threadpoolctl is missing)."""
    if threadpoolctl is None:
        yield
        return
    with threadpoolctl.threadpool_limits(limits=limit, user_api="blas"):
        yield


@contextlib.contextmanager
def torch_threads(threads):
    """Run torch's intra-op work on ``threads`` threads, then restore the previous setting."""
    torch = optional_torch()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- operation counts


def top_level_aten_ops(fn):
    """How many ATen operators ``fn()`` calls itself, not counting those they call in turn,
    recorded by torch.profiler on the CPU. A count, not a timing: the same for the same code and
    shapes. On an accelerator each such operator is a kernel launch or more (view operators
    such as ``slice`` launch none)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for event in prof.events()
               if event.name.startswith("aten::") and not _inside_aten(event))


def _inside_aten(event):
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


# --------------------------------------------------------------------------- environment


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def blas_libraries():
    """NumPy's BLAS libraries as 'name version, kernels' strings (empty without threadpoolctl)."""
    if threadpoolctl is None:
        return []
    return [
        f"{i.get('internal_api')} {i.get('version')}"
        + (f", {i['architecture']} kernels" if i.get("architecture") else "")
        for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"
    ]


def environment(**extra):
    """Versions, CPU, load and thread settings of this run, for its JSON; ``extra`` is appended
    as is (what one benchmark alone records)."""
    torch = optional_torch()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "greedyprune": greedyprune.__version__,
        "greedyprune_path": str(Path(greedyprune.__file__).parent),
        "openmp": greedyprune.has_openmp,
        "greedyprune_default_threads": greedyprune.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": blas_libraries(),
        "torch": None if torch is None else torch.__version__,
        "torch_default_threads": None if torch is None else torch.get_num_threads(),
        "threadpoolctl": None if threadpoolctl is None else threadpoolctl.__version__,
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "environment_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        **extra,
    }


# --------------------------------------------------------------------------- peak memory

#: The hidden option with which a benchmark script runs one memory measurement in a child.
MEMORY_CHILD_OPTION = "--_memory-child"


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


def peak_extra_memory(run):
    """Call ``run()`` once; its peak resident memory above the memory in use before the call.

    Every allocation counts (Python, NumPy, torch, C malloc), rounded to pages. Meaningful only
    in a fresh process that has already imported its libraries and loaded its inputs (see
    :func:`measure_in_child`): a process's peak never goes down.
    """
    reset = _reset_peak_rss()
    baseline_kib = _proc_status_kib("VmRSS") if reset else _proc_status_kib("VmHWM")
    run()
    peak_kib = _proc_status_kib("VmHWM")
    return {"extra_bytes": max(0, peak_kib - baseline_kib) * 1024, "peak_reset": reset}


def measure_in_child(script, spec, timeout_s=600):
    """Run ``script MEMORY_CHILD_OPTION <spec as JSON>`` in a fresh interpreter and return the
    JSON object its last output line holds, or ``{"error": ...}`` where it failed.

    One fresh interpreter per measurement: memory freed by an earlier measurement stays mapped
    in the allocator, so measurements must not share one. (The kernel's VmHWM is read rather
    than ru_maxrss, which a child inherits from its parent.)
    """
    cmd = [sys.executable, str(script), MEMORY_CHILD_OPTION, json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- reports


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


def table_row(cells):
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table_head(headers, aligns):
    """A Markdown table's header row and rule; ``aligns`` holds one letter per column, ``l``
    (text, left-aligned) or ``r`` (numbers, right-aligned)."""
    if len(aligns) != len(headers) or set(aligns) - {"l", "r"}:
        raise ValueError(f"aligns must hold one 'l' or 'r' per header ({len(headers)}), "
                         f"got {aligns!r}")
    return [table_row(headers), "|" + "".join("---|" if a == "l" else "---:|" for a in aligns)]


def write_report(out, stem, document, markdown):
    """Write ``out/STEM.json`` and ``out/STEM.md`` (``out`` is created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(document, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}", flush=True)
