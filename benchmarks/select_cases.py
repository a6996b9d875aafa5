"""The cases of benchmarks/bench_select.py: the shapes, the two kinds of features, the methods it
times and the memory each should allocate."""
from __future__ import annotations

import contextlib
import math

import numpy as np

import harness
from harness import greedyprune

SHAPES = [(576, 1024, 64), (576, 4096, 64), (576, 4096, 192), (2880, 4096, 320),
          (16384, 1024, 1024)]
QUICK_SHAPES = [(64, 32, 8), (300, 96, 24)]
LAM = 0.5
SEED = 20250613
#: docs/spec.md §2: a float32 pick must be within this of the best candidate's gain at its step.
GAIN_TOLERANCE = 1e-4
FEATURE_KINDS = {
    "gaussian": "gaussian (i.i.d.)",
    "clustered": "clustered (image-like)",
}
#: The reference's memory is measured with this K at most: its peak (N x D float64 temporaries)
#: does not depend on K, and a full run of the large shapes takes minutes.
REFERENCE_MEMORY_K = 8

METHODS = ["stream", "c_1t", "c_2t", "reference", "torch_nxn_1t", "torch_nxn_2t"]
METHOD_LABELS = {
    "stream": "streaming pass X·v, 1 thread",
    "c_1t": "C core, 1 thread",
    "c_2t": "C core, 2 threads",
    "reference": "NumPy reference",
    "torch_nxn_1t": "torch N×N, 1 thread",
    "torch_nxn_2t": "torch N×N, 2 threads",
}


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
    """The features (N, D) of one entry and its saliency (N,) or None, seeded by the entry."""
    rng = np.random.default_rng([SEED, n, d, k, list(FEATURE_KINDS).index(kind)])
    x = gaussian_features(n, d, rng) if kind == "gaussian" else clustered_features(n, d, rng)
    s = rng.random(n, dtype=np.float32) if with_saliency else None
    return x, s


# --------------------------------------------------------------------------- methods


def c_core(x, k, s, threads):
    """``greedyprune.select``: the method under test."""
    return greedyprune.select(x, k, s, LAM, num_threads=threads)


def torch_nxn_greedy(x, k, s, lam):
    """The greedy as peer methods usually write it: the full N x N similarity matrix first.

    ``x`` (N, D) and ``s`` (N,) or None are float32 tensors. Returns ``(order, gains)`` as lists.
    Memory: the N x N matrix (4·N² bytes) plus a normalized copy of the features.
    """
    torch = harness.optional_torch()
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
    if harness.threadpoolctl is not None:
        return "numpy"
    if harness.optional_torch() is not None:
        return "torch"
    return "numpy-unlimited"


def stream_description(backend):
    return {
        "numpy": "NumPy X @ v (BLAS sgemv) held to 1 thread by threadpoolctl",
        "torch": "torch.mv(X, v) with torch.set_num_threads(1) (threadpoolctl not installed)",
        "numpy-unlimited": "NumPy X @ v with BLAS threads NOT limited (threadpoolctl and torch "
                           "missing)",
    }[backend]


def one_thread(backend):
    """A context that holds the streaming pass's library to one thread."""
    if backend == "numpy":
        return harness.blas_threads(1)
    if backend == "torch":
        return harness.torch_threads(1)
    return contextlib.nullcontext()


def stream_fn(x, backend):
    """The streaming pass: one product of the features with a vector."""
    v = np.random.default_rng(SEED).standard_normal(x.shape[1], dtype=np.float32)
    if backend == "torch":
        torch = harness.optional_torch()
        xt, vt = torch.from_numpy(x), torch.from_numpy(v)
        return lambda: torch.mv(xt, vt)
    return lambda: x @ v


def torch_port_ops(x, k, s):
    """Top-level ATen operations of one run of the PyTorch port (``greedyprune._torch.greedy``,
    what ``select(..., backend="torch")`` runs) on these inputs as float32 CPU tensors (see
    :func:`harness.top_level_aten_ops`)."""
    torch = harness.optional_torch()
    from greedyprune import _torch

    xt, st = torch.from_numpy(x), None if s is None else torch.from_numpy(s)
    return harness.top_level_aten_ops(lambda: _torch.greedy(xt, k, st, LAM))


# --------------------------------------------------------------------------- expected memory

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


