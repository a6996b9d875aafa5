"""The rule of docs/spec.md §1 in PyTorch, for tensors on an accelerator (the C core runs on the CPU).

Plain greedy, vectorized over the batch: each step makes one pass over the features to get every
token's distance to the new pick. The pass goes in row chunks, so half-precision input is widened
to float32 a chunk at a time and extra memory stays O(B·N + B·K + chunk·D): never N × N, and no
normalized copy of the features (each token's 1/‖x‖ is applied to its dot product instead).
Arithmetic follows the C core: float64 for float64 input, float32 products otherwise, gains in
float64.

On an accelerator every tensor operation is at least one kernel launch, so a step is written as
few operations as the exact arithmetic allows, in place into buffers allocated once:

* The gain ``λ·ŝ + (1 − λ)·m`` is kept itself, not recomputed from ``m``: rounding is monotone,
  so ``fl(λŝ + fl((1 − λ)·min(m, d))) = min(fl(λŝ + fl((1 − λ)·m)), fl(λŝ + fl((1 − λ)·d)))``,
  bit for bit. Picked tokens' gains are set to -inf after each update, with no mask.
* ``(1 − λ)·d = (1 − λ)·(1 − cos)/2`` is one product with ``(1 − λ)/2``: halving is exact, so
  both round the same real number.
* The snap of cosines to ±1 (docs/spec.md §2) is two ``threshold_`` calls: near -1 on the cosine,
  near +1 on ``1 − cos``, which is exact (Sterbenz) wherever ``cos >= 1/2``.
"""
from __future__ import annotations

import torch

from ._validate import nonfinite_error
from .reference import COSINE_SNAP

#: Elements widened at once when streaming over the features.
CHUNK_ELEMENTS = 1 << 22
#: The C core's snap of float32 cosines to ±1 (``GP_COSINE_SNAP_F32``; float64 uses the
#: reference's :data:`~greedyprune.reference.COSINE_SNAP`, ``GP_COSINE_SNAP_F64``).
COSINE_SNAP_F32 = 2.0**-16


def _chunks(n: int, b: int, d: int):
    step = max(1, CHUNK_ELEMENTS // max(1, b * d))
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """Norms of (B, n, D) rows in float64, scaled by each row's largest entry so that squares
    cannot overflow; NaN for rows holding NaN or infinity."""
    x = x.double()
    scale = x.abs().amax(dim=2, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.linalg.vector_norm(x / scale, dim=2) * scale[..., 0]


def _normalized_saliency(s: torch.Tensor) -> torch.Tensor:
    s = s.double()
    lo = s.min(dim=1, keepdim=True).values
    hi = s.max(dim=1, keepdim=True).values
    span = hi - lo
    shat = torch.where(torch.isfinite(span), (s - lo) / span, (s / 2 - lo / 2) / (hi / 2 - lo / 2))
    return torch.where(span == 0, torch.zeros_like(shat), shat)


def _dot_passes(x: torch.Tensor, compute: torch.dtype, dots: torch.Tensor):
    """``(block, widened, out)`` per row chunk: ``block`` of the features, a buffer to widen it
    into first (None when it already has the compute dtype) and the view of ``dots`` it fills."""
    b, n, d = x.shape
    chunks = _chunks(n, b, d)
    if len(chunks) == 1:  # widened once: the one chunk is the whole input
        return [(x.to(compute), None, dots)]
    rows = chunks[0][1]
    scratch = None if x.dtype == compute else x.new_empty(b * rows * d, dtype=compute)
    return [(x[:, lo:hi],
             None if scratch is None else scratch[:b * (hi - lo) * d].view(b, hi - lo, d),
             dots[:, lo:hi]) for lo, hi in chunks]


def greedy(features: torch.Tensor, k: int, saliency: torch.Tensor | None, lam: float):
    """``(order, gains)`` for validated (N, D) / (B, N, D) features on any device."""
    x = features if features.dim() == 3 else features.unsqueeze(0)
    order, gains = greedy_with_norms(x, inverse_norms(x), k, saliency, lam)
    if features.dim() == 2:
        return order[0], gains[0]
    return order, gains


def inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """``1 / ‖x_i‖`` of (B, N, D) features, (B, N) float64, 0 for zero rows; ValueError where
    a row holds NaN or infinity (the one step that waits for the device)."""
    b, n, d = x.shape
    chunks = _chunks(n, b, d)
    norms = (_row_norms(x) if len(chunks) == 1 else
             torch.cat([_row_norms(x[:, lo:hi]) for lo, hi in chunks], 1))
    if not bool(torch.isfinite(norms).all()):
        raise nonfinite_error("features")
    return torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))


def greedy_with_norms(x: torch.Tensor, inv_norm: torch.Tensor, k: int,
                      saliency: torch.Tensor | None, lam: float):
    """``(order, gains)``, (B, K) each, for (B, N, D) features and their
    :func:`inverse_norms`; nothing in it waits for the device, so a CUDA graph can capture it."""
    b, n, d = x.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    # λ·ŝ; None where it is 0 (no saliency, or λ = 0), and adding it would change nothing.
    offset = None
    if saliency is not None and lam != 0.0:
        offset = lam * _normalized_saliency(saliency.reshape(b, n))
    weight = 1.0 - lam
    gain = torch.full((b, n), weight, dtype=torch.float64, device=x.device)  # m(i | ∅) = 1
    if offset is not None:
        gain.add_(offset)

    snap = COSINE_SNAP if compute == torch.float64 else COSINE_SNAP_F32
    one = torch.ones((), dtype=torch.float64, device=x.device)
    rows = torch.arange(b, device=x.device)[:, None]
    inv_norm_3d = inv_norm[:, :, None]
    order = torch.empty(b, k, dtype=torch.int64, device=x.device)
    gains = torch.empty(b, k, dtype=torch.float64, device=x.device)
    unit = x.new_empty((b, 1, d), dtype=compute)  # the pick's unit row
    unit_column = unit.view(b, d, 1)
    dots = x.new_empty((b, n, 1), dtype=compute)
    dots_2d = dots.view(b, n)
    cosine = torch.empty(b, n, dtype=torch.float64, device=x.device)
    passes = _dot_passes(x, compute, dots) if k > 1 and lam != 1.0 else []
    for step, (pick, value) in enumerate(zip(order.split(1, dim=1), gains.split(1, dim=1))):
        torch.max(gain, 1, keepdim=True, out=(value, pick))  # the first maximum wins a tie
        if step + 1 == k:
            break
        if lam == 1.0:  # top-k by saliency: the gains never change
            gain.scatter_(1, pick, float("-inf"))
            continue
        torch.mul(x[rows, pick], inv_norm_3d[rows, pick], out=unit)  # in float64, then rounded
        for block, widened, out in passes:
            if widened is not None:
                block = widened.copy_(block)
            torch.bmm(block, unit_column, out=out)
        torch.mul(dots_2d, inv_norm, out=cosine)  # in float64
        torch.threshold_(cosine, snap - 1.0, -1.0)  # cos <= -1 + snap: -1
        torch.sub(one, cosine, out=cosine)  # 1 − cos
        torch.threshold_(cosine, snap, 0.0)  # cos >= 1 − snap: 1 − cos = 0
        cosine.mul_(weight / 2.0)  # (1 − λ)·d
        if offset is not None:
            cosine.add_(offset)
        torch.minimum(gain, cosine, out=gain)
        # Every pick so far, not only this one: a NaN distance (a subnormal row's 1/‖x‖
        # overflows) would otherwise bring a picked token back.
        gain.scatter_(1, order[:, :step + 1], float("-inf"))
    return order, gains
