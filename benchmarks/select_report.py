"""The Markdown report of bench_select.py, written from its JSON: tables, key figures, and the
verdicts on the performance targets (which stay in the JSON and the exit status)."""
from __future__ import annotations

import math

from harness import THREAD_VARIABLES, fmt_bytes, fmt_ratio, fmt_time, table_head, table_row
from select_cases import (C_BYTES_PER_TOKEN, FEATURE_KINDS, GAIN_TOLERANCE, LAM, METHOD_LABELS,
                          METHODS, REFERENCE_MEMORY_K, SHAPES, stream_description)

#: The shape and limits of the performance targets (the JSON records a verdict for each).
TARGET_SHAPE = (576, 4096, 64)
TARGET_MAX_STREAM_RATIO = 4.0
TARGET_MIN_REFERENCE_SPEEDUP = 10.0
#: Top-level ATen operations per pick of the PyTorch port at the benchmark's shapes: half the
#: 35 to 50 it took before its loop was merged into in-place updates.
TARGET_MAX_PORT_OPS_PER_PICK = 17.5
#: Allowance over the C core's documented allocation before the memory target is missed:
#: page rounding, OpenMP thread start-up and the output array.
C_MEMORY_SLACK_BYTES = 4 << 20


def header_lines(env, opts):
    """The lines that head the report: versions, CPU, thread settings and inputs (measured at
    run time and kept in the JSON)."""
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
        "Environment: " + ", ".join(var(name) for name in THREAD_VARIABLES),
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


def targets(results, memory, port_ops=()):
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

    counted = [row for row in port_ops if [row["n"], row["d"], row["k"]] in map(list, SHAPES)]
    if counted:
        most = max(counted, key=lambda row: row["ops_per_pick"])
        text = (f"the PyTorch port calls at most {most['ops_per_pick']:.1f} top-level operations "
                f"per pick at these shapes ({fmt_shape(most)}), each a kernel launch or more on "
                "a GPU")
        out.append({"target": "torch_port_ops_per_pick", "value": most["ops_per_pick"],
                    "limit": TARGET_MAX_PORT_OPS_PER_PICK, "line": text,
                    "verdict": "PASS" if most["ops_per_pick"] <= TARGET_MAX_PORT_OPS_PER_PICK
                    else "MISS"})
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


def markdown(document):
    """The report of one run, from its JSON ``document`` (the same text for the same JSON)."""
    results, memory, env = document["results"], document["memory"], document["environment"]
    command = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_select.py"
    lines = [
        "<!-- generated by benchmarks/bench_select.py; do not edit by hand -->",
        f"Generated by `{command}{' --quick' if document['config']['quick'] else ''}`; "
        "`python benchmarks/update_readme.py` pastes it into README.md.",
        "",
        *[f"- {line}" for line in document["header_lines"]],
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
        *_time_table(results),
        "",
        "**Ratios** (of medians; above 1 in the reference and torch columns means the C core is "
        "faster, and in the last column that the second thread helps)",
        "",
        *_ratio_table(results),
    ]
    if memory:
        lines += _memory_section(memory)
    port_ops = document.get("torch_port_ops", [])
    if port_ops:
        lines += _port_ops_section(port_ops)
    load_start, load_end = env["load_average_at_start"][0], document["load_average_at_end"][0]
    lines += [
        "",
        f"Machine load (1-minute load average, this benchmark alone adds about 1) was "
        f"{load_start:.1f} at the start and {load_end:.1f} at the end, on "
        f"{env['logical_cpus']} CPUs shared with other jobs: times are noisy, the 2-thread "
        "columns most of all (a second thread competes with those jobs for a core).",
        "",
        "**Key figures**",
        "",
        *[f"- {t['line']}" for t in targets(results, memory, port_ops)],
        "",
        "Picks: every method's greedy order is replayed in float64; a pick passes when its gain "
        f"is within {GAIN_TOLERANCE:g} of the best candidate's at that step (docs/spec.md §2). "
        "\"tokens differing\" counts kept tokens not kept by the C core at 1 thread.",
    ]
    return "\n".join(lines) + "\n"


def _time_table(results):
    lines = table_head(["features", "N × D, K", *(METHOD_LABELS[m] for m in METHODS),
                        "picks agree"], "ll" + "r" * len(METHODS) + "l")
    for entry in results:
        lines.append(table_row([FEATURE_KINDS[entry["features"]], fmt_shape(entry),
                                *(fmt_method_time(entry["methods"].get(m)) for m in METHODS),
                                fmt_agreement(entry["agreement"])]))
    return lines


def _ratio_table(results):
    lines = table_head(["features", "N × D, K", "distances computed ÷ N",
                        "C 1 thread ÷ streaming pass", "reference ÷ C 1 thread",
                        "torch N×N ÷ C, 1 thread", "torch N×N ÷ C, 2 threads",
                        "C 1 thread ÷ C 2 threads"], "llrrrrrr")
    for entry in results:
        r = entry["ratios"]
        ref = entry["methods"].get("reference", {})
        ref_text = fmt_ratio(r["reference_over_c_1t"])
        if ref.get("skipped") and "estimate_s" in ref:
            estimate = ref["estimate_s"] / entry["methods"]["c_1t"]["median_s"]
            ref_text = f"~{fmt_ratio(estimate)} (est.)"
        lines.append(table_row([
            FEATURE_KINDS[entry["features"]], fmt_shape(entry),
            f"{entry['lazy_distance_evaluations'] / entry['n']:.1f} of {entry['k'] - 1}",
            fmt_ratio(r["c_1t_over_stream"]), ref_text, fmt_ratio(r["torch_nxn_1t_over_c_1t"]),
            fmt_ratio(r["torch_nxn_2t_over_c_2t"]), fmt_ratio(r["c_1t_over_c_2t"])]))
    return lines


def _memory_cell(m, k):
    if m is None:
        return "n/a"
    if "error" in m:
        return "failed"
    text = f"{fmt_bytes(m['extra_bytes'])} ({fmt_bytes(m['expected_bytes'])})"
    return text + (f" at K = {m['k_used']}" if m["k_used"] != k else "")


def _memory_section(memory):
    lines = [
        "",
        "**Peak extra memory** (resident memory above the baseline, one fresh process per "
        "entry, gaussian features: no method's allocations depend on the values; expected "
        "figure in parentheses)",
        "",
        *table_head(["N × D, K", "C core, 1 thread", "C core, 2 threads", "NumPy reference",
                     "torch N×N", "streaming pass", "one N×N float32 matrix"], "lrrrrrr"),
    ]
    for row in memory:
        cells = [_memory_cell(row["methods"].get(method), row["k"])
                 for method in ("c_1t", "c_2t", "reference", "torch_nxn_1t", "stream")]
        lines.append(table_row([fmt_shape(row), *cells, fmt_bytes(4 * row["n"] ** 2)]))
    return lines + [
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


def _port_ops_section(port_ops):
    return [
        "",
        "**PyTorch port: operations per pick** (`select(..., backend=\"torch\")`, which tensors "
        "on a GPU run by default: the top-level ATen operations of one run on float32 CPU "
        "tensors, counted by torch.profiler; on a GPU each is a kernel launch or more, view "
        "operations none)",
        "",
        *table_head(["N × D, K", "operations", "per pick"], "lrr"),
        *[table_row([fmt_shape(row), row["ops"], f"{row['ops_per_pick']:.1f}"])
          for row in port_ops],
    ]
