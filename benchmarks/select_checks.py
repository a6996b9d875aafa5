"""How bench_select.py checks the picks of every method against docs/spec.md §2, and counts the
distances the C core's lazy greedy computes."""
from __future__ import annotations

import heapq

import numpy as np

import harness
from greedyprune import reference
from select_cases import GAIN_TOLERANCE, LAM



def pick_shortfall(x, s, lam, order):
    """docs/spec.md §2 check of a greedy order, in float64: the largest amount by which any
    pick's gain falls short of the best candidate's gain at that step (given the same earlier
    picks).

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
    with harness.blas_threads(1):
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

