"""The rule of docs/spec.md §1 in PyTorch, for tensors on an accelerator (the C core runs on the CPU).

Plain greedy, vectorized over the batch: each step makes one pass over the features to get every
token's distance to the new pick. The pass goes in row chunks, so half-precision input is widened
to float32 a chunk at a time and extra memory stays O(B·N + B·K + chunk·D): never N × N, and no
normalized copy of the features. Arithmetic follows the C core: float64 for float64 input, float32
products otherwise, gains in float64.
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


def _snapped(cosine: torch.Tensor, snap: float) -> torch.Tensor:
    """Cosines within ``snap`` of ±1 taken as exactly ±1, as in the C core and the reference:
    rows pointing the same or the opposite way tie exactly."""
    one = torch.ones_like(cosine)
    cosine = torch.where(cosine >= 1.0 - snap, one, cosine)
    return torch.where(cosine <= snap - 1.0, -one, cosine)


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


def greedy(features: torch.Tensor, k: int, saliency: torch.Tensor | None, lam: float):
    """``(order, gains)`` for validated (N, D) / (B, N, D) features on any device."""
    x = features if features.dim() == 3 else features.unsqueeze(0)
    b, n, d = x.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    chunks = _chunks(n, b, d)

    norms = torch.cat([_row_norms(x[:, lo:hi]) for lo, hi in chunks], 1)
    if not bool(torch.isfinite(norms).all()):
        raise nonfinite_error("features")
    inv_norm = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    if saliency is None:
        shat = torch.zeros(b, n, dtype=torch.float64, device=x.device)
    else:
        shat = _normalized_saliency(saliency.reshape(b, n))

    snap = COSINE_SNAP if compute == torch.float64 else COSINE_SNAP_F32
    rows = torch.arange(b, device=x.device)
    m = torch.ones(b, n, dtype=torch.float64, device=x.device)  # m(i | ∅) = 1
    taken = torch.zeros(b, n, dtype=torch.bool, device=x.device)
    order = torch.empty(b, k, dtype=torch.int64, device=x.device)
    gains = torch.empty(b, k, dtype=torch.float64, device=x.device)
    for step in range(k):
        gain = (lam * shat + (1.0 - lam) * m).masked_fill(taken, float("-inf"))
        pick = gain.argmax(dim=1)  # the first maximum: the lowest index wins a tie
        order[:, step] = pick
        gains[:, step] = gain[rows, pick]
        taken[rows, pick] = True
        if step + 1 == k or lam == 1.0:
            continue
        unit = (x[rows, pick].double() * inv_norm[rows, pick, None]).to(compute)  # (B, D)
        dots = torch.cat(
            [torch.bmm(x[:, lo:hi].to(compute), unit[:, :, None])[:, :, 0] for lo, hi in chunks], 1
        )
        m = torch.minimum(m, (1.0 - _snapped(dots.double() * inv_norm, snap)) / 2.0)
    if features.dim() == 2:
        return order[0], gains[0]
    return order, gains
