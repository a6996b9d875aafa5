"""The GreedyPrune rule of docs/spec.md §1 in plain NumPy: the slow, readable twin of the C core.

Same names and signatures as the fast functions in :mod:`greedyprune`; the tests compare the two.
Everything is computed in float64. This module favours being read over being fast: it evaluates
every candidate at every step (no lazy evaluation), in O(K·N·D) time.

Only the distance computation is chosen with care: ``(xhat * xhat[j]).sum(axis=1)`` reduces every
row with the same summation order, so exactly duplicated tokens get exactly equal distances and
the tie rule (lowest index wins) applies to them as the spec says. A matrix-vector product may
round equal rows differently depending on where they sit in memory.

Rows that point the same way or opposite ways (exact duplicates, scaled copies, every D = 1 input)
are at distance exactly 0 or 1: a cosine within :data:`COSINE_SNAP` of +1 or -1 counts as +1 or -1,
as in the C core (``GP_COSINE_SNAP_F64`` in csrc/greedyprune.h). Rounding would otherwise leave
their distances a few units in the last place apart, and decide their ties instead of the index.
Gains that differ by less than rounding for another reason (two scaled copies of a row measured
against a third row, say) may still be ordered differently here and in the C core.
"""
from __future__ import annotations

import numpy as np

from . import _validate

#: A cosine within this of +1 or -1 counts as exactly +1 or -1 (parallel or opposite rows).
COSINE_SNAP = 2.0**-32


def greedy(features, k, saliency=None, lam=0.5, *, num_threads=None):
    """Run the greedy rule and return ``(order, gains)``.

    ``order`` holds the kept indices in the order they were picked, ``gains`` the value each pick
    added (``λ·ŝ_i + (1 − λ)·m(i | S)`` at that step); their sum is the objective value. Shapes
    (k,) for features (N, D) and (B, k) for (B, N, D). ``num_threads`` is checked and ignored.
    """
    x, s, k, lam = _prepare(features, k, saliency, lam, num_threads)
    results = [_greedy_one(x[b], s[b] if s is not None else None, k, lam) for b in range(len(x))]
    order = np.array([r[0] for r in results], dtype=np.int64).reshape(len(x), k)
    gains = np.array([r[1] for r in results], dtype=np.float64).reshape(len(x), k)
    if np.ndim(features) == 2:
        return order[0], gains[0]
    return order, gains


def select(features, k, saliency=None, lam=0.5, *, num_threads=None):
    """Kept token indices, sorted ascending, int64: shape (k,) for (N, D), (B, k) for (B, N, D)."""
    order, _ = greedy(features, k, saliency, lam, num_threads=num_threads)
    return np.sort(order, axis=-1)


def normalized_saliency(s, n):
    """``ŝ = (s − min s) / (max s − min s)``; absent (None) or constant saliency gives ŝ = 0."""
    if s is None:
        return np.zeros(n)
    lo, hi = s.min(), s.max()
    if lo == hi:
        return np.zeros(n)
    with np.errstate(over="ignore"):
        span = hi - lo
    if np.isfinite(span):
        return (s - lo) / span
    # The range overflows float64 (values near ±1.8e308): halve before subtracting.
    return (s / 2 - lo / 2) / (hi / 2 - lo / 2)


def unit_rows(x):
    """``x̂_i = x_i / ||x_i||``; a zero row stays zero.

    Each row is divided by its largest magnitude before squaring, so that neither overflow
    (entries near 1e154) nor underflow (entries near 1e-160) changes the direction.
    """
    scale = np.abs(x).max(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    y = x / scale
    norms = np.sqrt((y * y).sum(axis=1, keepdims=True))
    return np.divide(y, norms, out=np.zeros_like(y), where=norms > 0)


def distances(xhat, i):
    """``d(·, i) = (1 − x̂ · x̂_i) / 2`` for every row, unclamped, with a cosine within
    :data:`COSINE_SNAP` of ±1 taken as exactly ±1."""
    cosine = (xhat * xhat[i]).sum(axis=1)
    cosine[cosine >= 1.0 - COSINE_SNAP] = 1.0
    cosine[cosine <= COSINE_SNAP - 1.0] = -1.0
    return (1.0 - cosine) / 2.0


def _greedy_one(x, s, k, lam):
    n = x.shape[0]
    xhat = unit_rows(x)
    shat = normalized_saliency(s, n)
    m = np.ones(n)  # m(i | ∅) = 1
    available = np.ones(n, dtype=bool)
    order, gains = [], []
    for _ in range(k):
        gain = lam * shat + (1.0 - lam) * m
        gain[~available] = -np.inf
        i = int(np.argmax(gain))  # argmax returns the first (lowest) index among ties
        order.append(i)
        gains.append(gain[i])
        available[i] = False
        m = np.minimum(m, distances(xhat, i))
    return order, gains


def _prepare(features, k, saliency, lam, num_threads):
    """Validate (docs/spec.md §4) and return float64 arrays shaped (B, N, D) and (B, N) or None."""
    x = _validate.as_array(features, "features")
    s = None if saliency is None else _validate.as_array(saliency, "saliency")
    k, lam, _ = _validate.check_call(
        x.shape, x.dtype, k, lam, num_threads,
        None if s is None else s.shape, None if s is None else s.dtype,
    )
    x = x.astype(np.float64).reshape((-1,) + x.shape[-2:])
    if s is not None:
        s = s.astype(np.float64).reshape(x.shape[:2])
        if not np.isfinite(s).all():
            raise _validate.nonfinite_error("saliency")
    if not np.isfinite(x).all():
        raise _validate.nonfinite_error("features")
    return x, s, k, lam
