"""Token selectors by name: GreedyPrune and the baselines it is compared against.

Every selector has the same signature and contract, so that ``greedyprune.hf.attach(model,
method=...)``, the evaluation harness and the CLI can swap them by name::

    fn(features, k, saliency=None, *, lam=0.5, seed=0) -> kept indices

- ``features``: (N, D) or (B, N, D), a NumPy array (or array-like) or a torch tensor of a
  floating dtype; ``saliency``: (N,) / (B, N) or None.
- Returns the ``k`` kept token indices per image, sorted ascending (tokens keep their original
  order), int64, shape (k,) or (B, k), in the container and on the device of ``features``.
- Every image of a batch is selected on its own: the picks for an image do not depend on the
  other images in the batch.

Registered selectors:

``greedyprune``  SPEC.md §1: greedy on ``λ·ŝ + (1 − λ)·m`` (the C core, :func:`greedyprune.select`).
``topk``         saliency only (the rule at λ = 1): the k most salient tokens, lowest index first
                 among ties. Needs saliency.
``divprune``     max-min diversity (DivPrune, Alvar et al., CVPR 2025): first the token farthest
                 from its nearest neighbour, then farthest-point sampling, in the cosine distance
                 of SPEC.md. Ignores saliency.
``random``       a uniformly random subset, reproducible for a given ``seed`` (and N, k).
``uniform``      evenly strided: the middle token of each of k equal stretches of the sequence.

Add one with :func:`register`; look one up with :func:`get`; list them with :func:`names`.
torch is never imported here: a tensor is recognized only if torch was already imported.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import _validate

#: ``fn(features, k, saliency=None, *, lam=0.5, seed=0) -> kept indices``.
Selector = Callable[..., Any]

DEFAULT = "greedyprune"

_REGISTRY: Dict[str, Selector] = {}

# Rows of the (chunk × N) similarity block computed at once by `divprune`: about 4M entries
# (32 MB in float64) whatever N is, so memory stays O(N·chunk), never N×N.
_BLOCK_ENTRIES = 1 << 22


def register(name: str, *, wrap: bool = True) -> Callable[[Selector], Selector]:
    """Decorator that registers a selector under ``name`` (replacing any previous one).

    With ``wrap=True`` (the default) the decorated function receives NumPy inputs already
    validated and shaped ``(B, N, D)`` and ``(B, N)`` (or None), plus ``k`` (int), ``lam``
    (float) and ``seed`` (int), and returns a ``(B, k)`` integer array; the registry wraps it so
    that callers get the full contract of this module (validation, tensors in and out, sorting,
    (N, D) inputs). With ``wrap=False`` the function already honours the contract itself and is
    registered as it is.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")

    def decorator(kernel: Selector) -> Selector:
        if not wrap:
            _REGISTRY[name] = kernel
            return kernel

        def selector(features, k, saliency=None, *, lam: float = 0.5, seed: int = 0):
            x, s, k_, lam_, seed_, restore = _prepare(features, k, saliency, lam, seed)
            kept = np.sort(np.asarray(kernel(x, k_, s, lam=lam_, seed=seed_), dtype=np.int64),
                           axis=-1)
            return restore(kept)

        selector.__name__ = kernel.__name__
        selector.__qualname__ = kernel.__qualname__
        selector.__doc__ = kernel.__doc__
        selector.__wrapped__ = kernel  # type: ignore[attr-defined]
        _REGISTRY[name] = selector
        return selector

    return decorator


def get(name: str) -> Selector:
    """The selector registered as ``name``; ValueError naming the known ones otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a string naming a selector, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; known methods: {', '.join(names())}"
        ) from None


def names() -> List[str]:
    """Registered selector names, the default first, then in the order they were registered."""
    return sorted(_REGISTRY, key=lambda n: n != DEFAULT)  # a stable sort keeps that order


# --- the selectors ----------------------------------------------------------------------------


@register("greedyprune", wrap=False)
def greedyprune(features, k, saliency=None, *, lam: float = 0.5, seed: int = 0):
    """GreedyPrune (SPEC.md §1): joint saliency and diversity, solved greedily by the C core."""
    # Straight to the core, which validates, reads tensors without a copy and runs tensors on an
    # accelerator on their own device. The rule is deterministic: the seed is checked, unused.
    import greedyprune as _gp  # imported here: the package must import without this module

    _check_seed(seed)
    return _gp.select(features, k, saliency, lam)


@register("topk")
def topk(x, k, s, *, lam, seed):
    """The k most salient tokens (the rule at λ = 1; lowest index first among equal saliency)."""
    if s is None:
        raise ValueError("saliency is required by method 'topk' (it ranks tokens by saliency)")
    # A stable sort of -s puts equal saliencies in index order: the spec's tie rule, in
    # O(N log N) rather than a greedy pass.
    return np.argsort(-s, axis=-1, kind="stable")[:, :k]


@register("divprune")
def divprune(x, k, s, *, lam, seed):
    """Max-min diversity, starting from the token farthest from its nearest neighbour."""
    first = np.array([_farthest_from_nearest_neighbour(xb) for xb in x])
    # After the first pick the rule is farthest-point sampling, which is GreedyPrune with the
    # diversity term alone. A saliency that is 1 at the first pick and 0 elsewhere, at λ = 1/2,
    # makes the core pick it first (gain 1 against at most 1/2) and then leaves gains of exactly
    # m/2: the same argmax, ties included, as max-min on m.
    onehot = np.zeros(x.shape[:2], dtype=np.float32 if x.dtype != np.float64 else np.float64)
    onehot[np.arange(len(x)), first] = 1.0
    import greedyprune as _gp

    return _gp.select(x, k, onehot, 0.5)


@register("random")
def random(x, k, s, *, lam, seed):
    """A uniformly random k-subset; the same (seed, N, k) always gives the same subset."""
    # One generator per image, seeded identically, so an image's picks do not depend on its
    # position in the batch (nor on the batch size).
    n = x.shape[1]
    return np.stack([np.random.default_rng(seed).choice(n, size=k, replace=False)
                     for _ in range(len(x))])


@register("uniform")
def uniform(x, k, s, *, lam, seed):
    """The middle token of each of k equal stretches: index ⌊(2i + 1)·N / 2k⌋ for i < k."""
    n = x.shape[1]
    # Consecutive indices differ by N/k >= 1 before flooring, so they are distinct; k = N gives
    # every index.
    picks = (2 * np.arange(k, dtype=np.int64) + 1) * n // (2 * k)
    return np.broadcast_to(picks, (len(x), k))


# --- shared pieces ----------------------------------------------------------------------------


def nearest_neighbour_distance(x: np.ndarray) -> np.ndarray:
    """For each row of ``x`` (N, D): the cosine distance ``(1 − x̂_i·x̂_j)/2`` to its nearest
    other row (``inf`` when N = 1). Computed in row blocks: O(N·block) memory, never N×N."""
    from .reference import unit_rows

    work = np.float64 if x.dtype == np.float64 else np.float32
    xhat = unit_rows(np.asarray(x, dtype=work))
    n = len(xhat)
    nearest = np.full(n, np.inf, dtype=work)
    block = max(1, min(n, _BLOCK_ENTRIES // n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist = (1.0 - xhat[start:stop] @ xhat.T) / 2.0
        dist[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not its own neighbour
        nearest[start:stop] = dist.min(axis=1)
    return nearest


def _farthest_from_nearest_neighbour(x: np.ndarray) -> int:
    # argmax returns the lowest index among ties, as everywhere in the spec.
    return int(np.argmax(nearest_neighbour_distance(x)))


def _torch_tensor_type():
    torch = sys.modules.get("torch")
    return torch.Tensor if torch is not None else None


def _prepare(features, k, saliency, lam, seed) -> Tuple[np.ndarray, Optional[np.ndarray], int,
                                                         float, int, Callable]:
    """Validate (SPEC.md §4) and bring the inputs to NumPy, shaped (B, N, D) and (B, N).

    Returns the arrays, the checked scalars and ``restore(kept)``, which turns a (B, k) int64
    array back into the caller's container, device and rank.
    """
    tensor_type = _torch_tensor_type()

    def is_tensor(value) -> bool:
        return tensor_type is not None and isinstance(value, tensor_type)

    device = features.device if is_tensor(features) else None
    x = features if is_tensor(features) else _validate.as_array(features, "features")
    if saliency is not None and not is_tensor(saliency):
        saliency = _validate.as_array(saliency, "saliency")
    k, lam, _ = _validate.check_call(
        x.shape, x.dtype, k, lam, None,
        None if saliency is None else saliency.shape, None if saliency is None else saliency.dtype,
    )
    seed = _check_seed(seed)
    x = _tensor_to_numpy(x) if is_tensor(x) else x
    if is_tensor(saliency):
        saliency = _tensor_to_numpy(saliency)
    if saliency is not None and not np.isfinite(saliency).all():
        raise _validate.nonfinite_error("saliency")
    if not np.isfinite(x).all():
        raise _validate.nonfinite_error("features")

    single = x.ndim == 2
    x = x.reshape((-1,) + x.shape[-2:])
    s = None if saliency is None else saliency.reshape(x.shape[:2])

    def restore(kept: np.ndarray):
        kept = np.ascontiguousarray(kept, dtype=np.int64)
        if single:
            kept = kept[0]
        if device is None:
            return kept
        import torch

        return torch.from_numpy(kept).to(device)

    return x, s, k, lam, seed, restore


def _tensor_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64, torch.float16):
        t = t.float()  # bfloat16 has no NumPy dtype; the core computes it in float32 anyway
    return t.cpu().numpy()


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)
