"""One generator of test inputs for every selection test: the nasty cases, written once.

``cases()`` yields ``Case`` objects covering ties, exact duplicate tokens, zero vectors, constant
saliency, λ = 0 and 1, K = 1 and K = N, N = 1, D = 1, batches, and strided/transposed/reversed
views. Tests loop over them and compare the C core with the NumPy reference.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal

import numpy as np

from greedyprune import reference


@dataclasses.dataclass
class Case:
    name: str
    features: np.ndarray
    k: int
    saliency: np.ndarray | None = None
    lam: float = 0.5
    #: Some candidates tie in exact arithmetic but not in floating point (x and 2x against a
    #: third row z: their distances to z differ by rounding only): either pick may win, so tests
    #: compare gains, not indices, for these. Rows pointing the same way tie exactly.
    exact_ties: bool = False

    def args(self):
        return self.features, self.k, self.saliency, self.lam

    def __repr__(self):
        return f"Case({self.name})"


def _rng(seed=0):
    return np.random.default_rng(seed)


def cases(dtype=np.float64):
    """Every named case, with features (and saliency) cast to ``dtype``."""
    rng = _rng(1234)
    out = []

    def add(name, x, k, s=None, lam=0.5, exact_ties=False):
        x = np.asarray(x, dtype=dtype)
        s = None if s is None else np.asarray(s, dtype=dtype)
        out.append(Case(name, x, k, s, lam, exact_ties))

    x = rng.normal(size=(40, 6))
    s = rng.random(40)
    for lam in (0.0, 0.25, 0.5, 1.0):
        add(f"random lam={lam}", x, 7, s, lam)
        add(f"random no-saliency lam={lam}", x, 7, None, lam)
    add("k=1", x, 1, s)
    add("k=N", x, 40, s)
    add("k=N lam=0", x, 40, None, 0.0)
    add("N=1", x[:1], 1, s[:1])
    add("D=1", rng.normal(size=(30, 1)), 5, rng.random(30))
    add("D=1 positive", rng.random((30, 1)) + 0.5, 5, None, 0.0)   # parallel rows: exact ties
    add("one-hot ties", np.eye(8)[[0, 3, 3, 1, 7, 1, 2, 5, 6, 4]], 6, None, 0.0)
    add("one-hot ties with saliency", np.eye(5)[[0, 1, 2, 3, 4, 0, 1]], 4,
        [1, 0, 1, 0, 1, 1, 0], 0.5)
    dup = x[:12].copy()
    dup[5] = dup[2]
    dup[9] = dup[2]
    dup[11] = dup[7]
    add("duplicates", dup, 6, None, 0.0)
    add("duplicates with equal saliency", dup, 6, np.where(np.arange(12) % 2, 1.0, 3.0), 0.3)
    add("scaled duplicates", np.vstack([x[:5], 2 * x[:5], 3 * x[:5]]), 8, None, 0.0,
        exact_ties=True)
    zeros = x[:15].copy()
    zeros[[0, 4, 9]] = 0
    add("zero rows", zeros, 8, s[:15], 0.5)
    add("zero rows lam=0", zeros, 10, None, 0.0)
    add("all zero", np.zeros((6, 3)), 4, None, 0.5)
    add("constant saliency", x, 9, np.full(40, 2.5), 0.7)
    add("tied saliency", x, 9, np.round(s * 3), 0.6)
    add("negative saliency", x, 9, -10 * s, 0.5)
    # Entries whose squares overflow, and a saliency range that overflows the dtype.
    info = np.finfo(dtype)
    huge, tiny = float(np.sqrt(info.max)) * 8 / 3, {np.float64: 1e-170, np.float32: 1e-25}.get(dtype, 1e-3)
    add("huge values", x * huge, 6, (s - 0.5) * float(info.max) * 1.9, 0.5)
    add("tiny values", x * tiny, 6, s, 0.5)
    add("clustered", np.repeat(rng.normal(size=(4, 16)), 10, axis=0)
        + 1e-3 * rng.normal(size=(40, 16)), 8, None, 0.2)
    add("batch", rng.normal(size=(3, 25, 5)), 6, rng.random((3, 25)), 0.5)
    add("batch no saliency", rng.normal(size=(4, 25, 5)), 25, None, 0.1)
    add("batch of one", rng.normal(size=(1, 9, 4)), 3, rng.random((1, 9)), 0.5)
    # Views: the C core reads these through their strides.
    big = np.asarray(rng.normal(size=(60, 20)), dtype=dtype)
    out.append(Case("rows strided", big[::3], 5, None, 0.3))
    out.append(Case("cols strided", big[:, ::4], 5, None, 0.3))
    out.append(Case("transposed", np.asarray(rng.normal(size=(7, 30)), dtype=dtype).T, 6, None, 0.0))
    out.append(Case("reversed", big[::-1, ::-1], 6, np.asarray(rng.random(60), dtype=dtype)[::-1], 0.5))
    batch = np.asarray(rng.normal(size=(5, 4, 12, 3)), dtype=dtype)
    out.append(Case("batch strided", batch[::2, 1, :, :], 4,
                    np.asarray(rng.random((12, 3)), dtype=dtype).T, 0.5))
    out.append(Case("broadcast rows", np.broadcast_to(np.asarray(x[0], dtype=dtype), (10, 6)), 3, None, 0.5))
    return out


def step_gains(features, saliency, lam, order):
    """For each step of ``order`` (one image), every candidate's gain in float64 given the picks
    before it, as a (k, N) array with -inf for already-picked tokens (docs/spec.md §1)."""
    x = np.asarray(features, dtype=np.float64)
    xhat = reference.unit_rows(x)
    s = None if saliency is None else np.asarray(saliency, dtype=np.float64)
    shat = reference.normalized_saliency(s, len(x))
    m = np.ones(len(x))
    out = []
    taken = np.zeros(len(x), dtype=bool)
    for i in order:
        g = lam * shat + (1 - lam) * m
        g[taken] = -np.inf
        out.append(g)
        taken[i] = True
        m = np.minimum(m, (1 - xhat @ xhat[i]) / 2)
    return np.array(out)


def assert_near_greedy(features, saliency, lam, order, tol=1e-4):
    """docs/spec.md §2 for reduced precision: each pick within ``tol`` in gain of that step's best."""
    gains = step_gains(features, saliency, lam, order)
    for step, (g, i) in enumerate(zip(gains, order)):
        assert np.isfinite(g[i]), f"step {step}: index {i} picked twice"
        assert g[i] >= g.max() - tol, f"step {step}: picked {i} with gain {g[i]}, best {g.max()}"


@contextlib.contextmanager
def python_sigint_handler():
    """Python's own Ctrl-C handler (KeyboardInterrupt) for the block, whatever an earlier test in
    this process left installed (a signal that is ignored or left to the system never raises)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
