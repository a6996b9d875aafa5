"""Uncertainty for accuracy tables: a confidence interval for one accuracy, and a paired test of
two configurations answered on the same questions.

    from greedyprune import stats
    low, high = stats.wilson_interval(0.93, 2000)          # 95% interval of an accuracy
    p = stats.paired_test(scores_a, scores_b)              # same questions, per-question scores

Both are exact or closed-form (no resampling), so a table regenerated from the same answers
shows the same figures.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

__all__ = ["paired_test", "wilson_interval"]

_Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(accuracy: float, n: int, z: float = _Z95) -> Tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion ``accuracy`` measured on ``n``
    questions. Unlike ``p ± z·√(p(1−p)/n)`` it stays inside [0, 1] and is not empty at 0 or 1.
    For per-question scores that are not 0/1 (a mean over seeds), it treats their mean as the
    proportion: an approximation."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy!r}")
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value that configurations ``a`` and ``b``, scored on the same questions in
    the same order, are equally accurate: the exact sign test on the questions where the scores
    differ (with 0/1 scores, the exact McNemar test). 1.0 when no question differs."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a and b must be 1-D and of the same length, got shapes {x.shape} "
                         f"and {y.shape}")
    wins, losses = int(np.sum(x > y)), int(np.sum(x < y))
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    # P(X <= k) for X ~ Binomial(n, 1/2), in logs so that large n does not overflow.
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
            for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2 * tail)
