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

``greedyprune``  docs/spec.md §1: greedy on ``λ·ŝ + (1 − λ)·m`` (the C core, :func:`greedyprune.select`;
                 its keyword ``backend`` chooses between the C core and the PyTorch port).
``topk``         saliency only (the rule at λ = 1): the k most salient tokens, lowest index first
                 among ties. Needs saliency.
``divprune``     max-min diversity (DivPrune, Alvar et al., CVPR 2025): first the token farthest
                 from its nearest neighbour, then farthest-point sampling, in the cosine distance
                 of docs/spec.md. Ignores saliency.
``cdpruner``     conditional-DPP MAP (CDPruner, Zhang et al., NeurIPS 2025): greedy log-det on the
                 kernel ``q_i·(x̂_i·x̂_j)·q_j``, q the min-max normalized saliency (constant
                 without it: a plain DPP on cosine similarity). Ignores ``lam``.
``random``       a uniformly random subset, reproducible for a given ``seed`` (and N, k).
``uniform``      evenly strided: the middle token of each of k equal stretches of the sequence.

Add one with :func:`register` (for a ``with`` block only: :func:`registered`); look one up with
:func:`get`; list them with :func:`names`; ask whether one needs saliency with
:func:`needs_saliency`, whether it reads it at all with :func:`uses_saliency`.
torch is never imported here: a tensor is recognized only if torch was already imported.

Threads: the NumPy matrix products here (``divprune``'s nearest neighbours, ``cdpruner``) run
inside :func:`blas_threads`, which holds NumPy's BLAS to :func:`greedyprune.get_num_threads`
threads when threadpoolctl is installed. Otherwise OpenBLAS sizes its own pool, which no
greedyprune or torch setting reaches, and inside a model's prefill it competes with torch's
threads.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple,
                    cast)

import numpy as np

from . import _validate

if TYPE_CHECKING:
    from .config import Backend

class Selector(Protocol):
    """What :func:`get` returns: ``selector(features, k, saliency=None, *, lam=0.5, seed=0)``
    gives the kept indices, sorted, int64, (k,) or (B, k): a NumPy array, or a tensor on the
    input's device for a tensor input."""

    def __call__(self, features: Any, k: int, saliency: Any = None, *, lam: float = 0.5,
                 seed: int = 0) -> Any: ...


#: What :func:`register` decorates: with ``wrap=True``, ``kernel(x, k, s, *, lam, seed)`` on
#: validated NumPy ``(B, N, D)`` / ``(B, N)`` inputs; with ``wrap=False``, a :class:`Selector`.
Kernel = Callable[..., Any]

DEFAULT = "greedyprune"

_REGISTRY: Dict[str, Selector] = {}
_NEEDS_SALIENCY: Dict[str, bool] = {}
_USES_SALIENCY: Dict[str, bool] = {}

# Rows of the (chunk × N) similarity block computed at once by `divprune`: about 4M entries
# (32 MB in float64) whatever N is, so memory stays O(N·chunk), never N×N.
_BLOCK_ENTRIES = 1 << 22

# `cdpruner`: the floor added to the normalized saliency, so that the least relevant token keeps
# a non-zero quality (the official code adds 1e-6 too, see `cdpruner`).
_CDPRUNER_FLOOR = 1e-6
# `cdpruner`: a token whose residual d²(S) (squared distance of x̂_i to the span of the picked
# tokens, 1 for a fresh unit row) is at most this is treated as lying in that span: its log-det
# gain is -inf. Well above the rounding noise of d² after hundreds of picks, far below any
# distinct direction a real feature set has.
_CDPRUNER_SPAN_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def register(name: str, *, wrap: bool = True, needs_saliency: bool = False,
             uses_saliency: bool = True) -> Callable[[Kernel], Selector]:
    """Decorator that registers a selector under ``name`` (replacing any previous one).

    With ``wrap=True`` (the default) the decorated function receives NumPy inputs already
    validated and shaped ``(B, N, D)`` and ``(B, N)`` (or None), plus ``k`` (int), ``lam``
    (float) and ``seed`` (int), and returns a ``(B, k)`` integer array; the registry wraps it so
    that callers get the full contract of this module (validation, tensors in and out, sorting,
    (N, D) inputs, an empty batch). With ``wrap=False`` the function already honours the
    contract itself and is registered as it is.

    ``needs_saliency=True`` declares that the selector cannot work without saliency: the
    wrapped selector then refuses ``saliency=None``, and ``greedyprune.hf.attach`` refuses
    ``saliency="none"`` with it (see :func:`needs_saliency`). ``uses_saliency=False`` declares
    that it ignores saliency, so that a sweep over saliency kinds
    (:func:`greedyprune.evaluate.sweep`) runs it once.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")

    def decorator(kernel: Kernel) -> Selector:
        _NEEDS_SALIENCY[name] = bool(needs_saliency)
        _USES_SALIENCY[name] = bool(uses_saliency or needs_saliency)
        if not wrap:
            _REGISTRY[name] = cast(Selector, kernel)
            return cast(Selector, kernel)

        def selector(features: Any, k: int, saliency: Any = None, *, lam: float = 0.5,
                     seed: int = 0) -> Any:
            x, s, k_, lam_, seed_, restore = _prepare(features, k, saliency, lam, seed)
            if needs_saliency and s is None:
                raise ValueError(f"saliency is required by method {name!r}")
            if len(x) == 0:  # an empty batch: nothing to select
                return restore(np.empty((0, k_), dtype=np.int64))
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


@contextlib.contextmanager
def registered(name: str, selector: Selector, *, needs_saliency: bool = False) -> Iterator[str]:
    """Register ``selector`` (which honours the contract itself, as with ``wrap=False``) as
    ``name`` inside the ``with`` block only, e.g. a recording wrapper for a demo or a
    benchmark; whatever was registered under ``name`` before is back afterwards. Yields
    ``name``."""
    previous = (_REGISTRY.get(name), _NEEDS_SALIENCY.get(name), _USES_SALIENCY.get(name))
    register(name, wrap=False, needs_saliency=needs_saliency)(selector)
    try:
        yield name
    finally:
        if previous[0] is None:
            _REGISTRY.pop(name, None)
            _NEEDS_SALIENCY.pop(name, None)
            _USES_SALIENCY.pop(name, None)
        else:
            _REGISTRY[name] = previous[0]
            _NEEDS_SALIENCY[name], _USES_SALIENCY[name] = bool(previous[1]), bool(previous[2])


def ordered(name: str, *, backend: Backend = "auto") -> Optional[Selector]:
    """A selector that picks what ``get(name)`` picks but returns the picks in the order it made
    them (not sorted), where the method has one: the built-in greedy rule ("greedyprune",
    whose order the C core returns at no extra cost), run where ``backend`` says (see
    :func:`greedyprune.select`). None for every other method."""
    _validate.check_backend(backend)
    if get(name) is not greedyprune:
        return None

    def in_pick_order(features, k, saliency=None, *, lam: float = 0.5, seed: int = 0):
        import greedyprune as _gp

        _check_seed(seed)
        return _gp.greedy(features, k, saliency, lam, backend=backend)[0]

    return in_pick_order


def needs_saliency(name: str) -> bool:
    """Whether the selector registered as ``name`` needs saliency (``topk`` does); ValueError
    naming the known ones for an unknown name."""
    get(name)
    return _NEEDS_SALIENCY[name]


def uses_saliency(name: str) -> bool:
    """Whether the selector registered as ``name`` reads saliency (``divprune``, ``random`` and
    ``uniform`` do not); ValueError naming the known ones for an unknown name."""
    get(name)
    return _USES_SALIENCY[name]


def names() -> List[str]:
    """Registered selector names, the default first, then in the order they were registered."""
    return sorted(_REGISTRY, key=lambda n: n != DEFAULT)  # a stable sort keeps that order


# --- the selectors ----------------------------------------------------------------------------


@register("greedyprune", wrap=False)
def greedyprune(features, k, saliency=None, *, lam: float = 0.5, seed: int = 0,
                backend: Backend = "auto"):
    """GreedyPrune (docs/spec.md §1): joint saliency and diversity, solved greedily by the C core
    (or, as ``backend`` says, its PyTorch port: see :func:`greedyprune.select`)."""
    # Straight to the core, which validates, reads tensors without a copy and runs tensors on an
    # accelerator on their own device. The rule is deterministic: the seed is checked, unused.
    import greedyprune as _gp  # imported here: the package must import without this module

    _check_seed(seed)
    return _gp.select(features, k, saliency, lam, backend=backend)


@register("topk", needs_saliency=True)
def topk(x, k, s, *, lam, seed):
    """The k most salient tokens (the rule at λ = 1; lowest index first among equal saliency)."""
    # A stable sort of -s puts equal saliencies in index order: the spec's tie rule, in
    # O(N log N) rather than a greedy pass.
    return np.argsort(-s, axis=-1, kind="stable")[:, :k]


@register("divprune", uses_saliency=False)
def divprune(x, k, s, *, lam, seed):
    """Max-min diversity, starting from the token farthest from its nearest neighbour."""
    with blas_threads(_pairwise_work(x)):
        first = np.array([_farthest_from_nearest_neighbour(xb) for xb in x])
    # After the first pick the rule is farthest-point sampling, which is GreedyPrune with the
    # diversity term alone. A saliency that is 1 at the first pick and 0 elsewhere, at λ = 1/2,
    # makes the core pick it first (gain 1 against at most 1/2) and then leaves gains of exactly
    # m/2: the same argmax, ties included, as max-min on m.
    onehot = np.zeros(x.shape[:2], dtype=np.float32 if x.dtype != np.float64 else np.float64)
    onehot[np.arange(len(x)), first] = 1.0
    import greedyprune as _gp

    return _gp.select(x, k, onehot, 0.5)


@register("cdpruner")
def cdpruner(x, k, s, *, lam, seed):
    """Conditional-DPP MAP (CDPruner): greedy ``log det`` of ``L = diag(q)·S·diag(q)``.

    ``S_ij = x̂_i·x̂_j`` is the cosine similarity of the features and ``q`` each token's
    relevance: ``q = ŝ + 1e-6`` with ``ŝ`` the min-max normalized saliency of docs/spec.md §1
    (per image), or ``q = 1`` when saliency is absent or constant (a plain DPP on cosine
    similarity). Each step adds the token that most increases ``log det L_S``, that is the
    largest ``d_i² = q_i²·(S_ii − ||c_i||²)`` of the incremental Cholesky of Chen et al.
    (NeurIPS 2018); the lowest index wins a tie. ``lam`` and ``seed`` are checked and unused.

    Followed: the official code (github.com/Theia-4869/CDPruner, ``llava_arch.py``), which
    builds ``relevance = (r − min r + 1e-6) / (max r − min r)`` and the kernel
    ``relevance_i · S_ij · relevance_j``, then runs the fast greedy MAP above on the full
    kernel. Differences: (a) the 1e-6 floor is added after normalizing, so that it does not
    depend on the saliency's scale (it only matters for the least relevant token), and min
    and max are per image, as every selector here treats each image on its own (the official
    code takes them over its whole batch, e.g. across LLaVA-NeXT's crops); (b) relevance is
    whatever ``saliency`` says, higher = more relevant: the official LLaVA code negates the
    mean CLIP text-image similarity first, a choice of the saliency, not of the selector;
    (c) no N×N kernel is stored: the recursion runs on ``S``, one row ``S_j· = X̂·x̂_j``
    computed per pick, and ranks by ``q²·d²(S)``, which equals ``d²(L)`` exactly (``L``'s
    Schur complements are ``S``'s scaled by ``q_i²``), with ``S_ii = 1`` exactly for a
    non-zero row; O(N·k·D + N·k²) time, O(N·k) memory beyond the normalized features;
    (d) degenerate input is handled as below (the official code divides by the vanishing
    ``d_j`` and continues on rounding noise).

    ``lam`` is ignored because the official method has no such weight by default: its code
    offers an optional θ (``q = exp(θ·ŝ / (2(1 − θ)))``, the relevance-diversity trade-off of
    Chen et al.) only as a comment, and no θ turns the exponential into the default linear
    ``q``, so mapping ``lam`` onto θ would make the default call differ from CDPruner. (Intel's
    Python port turns θ = 0.5 on by default; OpenVINO GenAI's C++ port uses the linear ``q``.)

    Degenerate input: a token whose residual ``d²(S)`` is numerically zero (an exact
    duplicate of a picked token, a zero row, anything in the span of the picks once k exceeds
    the rank of X) has gain ``−inf``. Exact duplicates are recognized up front, so that the
    lowest index among equally relevant copies is the one the greedy may pick. When no token
    with a positive gain is left, the remaining picks go to the most relevant remaining tokens
    (largest q), lowest index first: exactly k distinct indices, whatever the input.
    """
    work = np.float64 if x.dtype == np.float64 else np.float32
    with blas_threads(_pairwise_work(x)):
        return np.stack([
            cdpruner_order(x[b], k, cdpruner_quality(None if s is None else s[b], work))
            for b in range(len(x))
        ])


def cdpruner_quality(s: Optional[np.ndarray], dtype=np.float64) -> Optional[np.ndarray]:
    """CDPruner's per-token quality ``q = ŝ + 1e-6`` for one image's saliency ``s`` (N,), or
    None (meaning q = 1) when ``s`` is None or constant."""
    if s is None:
        return None
    from .reference import normalized_saliency

    s = np.asarray(s, dtype=np.float64)
    if s.min() == s.max():
        return None
    return (normalized_saliency(s, len(s)) + _CDPRUNER_FLOOR).astype(dtype)


def cdpruner_order(x: np.ndarray, k: int, q: Optional[np.ndarray] = None) -> np.ndarray:
    """The k tokens of one image (``x`` (N, D)) in the order `cdpruner` picks them, for quality
    ``q`` (N,) (None: q = 1). Computed in float64 for float64 ``x``, float32 otherwise."""
    from .reference import unit_rows

    work = np.float64 if x.dtype == np.float64 else np.float32
    xhat = unit_rows(np.asarray(x, dtype=work))
    n = len(xhat)
    q = np.ones(n, dtype=work) if q is None else np.asarray(q, dtype=work)
    tol = _CDPRUNER_SPAN_TOL[np.dtype(work)]

    # d_i²(S) before any pick is S_ii: exactly 1 for a unit row (not its rounded square norm,
    # which would break the tie between all tokens at the first pick), 0 for a zero row.
    residual = (xhat != 0).any(axis=1).astype(work)
    quality2 = q * q
    candidate = _first_of_equal_rows(xhat, q)
    picked = np.zeros(n, dtype=bool)
    cholesky = np.empty((k, n), dtype=work)  # row t: the t-th column of the Cholesky factor
    order: List[int] = []
    for t in range(k):
        live = candidate & (residual > tol)
        if not live.any():
            break  # every gain is -inf from here on: the span of the picks holds them all
        j = int(np.argmax(np.where(live, quality2 * residual, -np.inf)))
        order.append(j)
        picked[j], candidate[j] = True, False
        if t + 1 == k:
            break
        # Kernel row j on demand (never N×N), orthogonalized against the earlier picks.
        row = xhat @ xhat[j] - cholesky[:t, j] @ cholesky[:t]
        cholesky[t] = row / np.sqrt(residual[j])
        residual -= cholesky[t] * cholesky[t]
    if len(order) < k:
        rest = np.flatnonzero(~picked)
        rest = rest[np.lexsort((rest, -q[rest]))]  # most relevant first, then lowest index
        order.extend(rest[:k - len(order)].tolist())
    return np.array(order, dtype=np.int64)


def _first_of_equal_rows(xhat: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Mask of the tokens the greedy may pick: of each group of bitwise-equal rows of ``xhat``,
    only the most relevant (largest q, then lowest index). The others have exactly the same
    gain or a lower one at every step until that token is picked, and zero gain after it, but
    the matrix products may round their d² differently by position; ruling them out keeps the
    tie rule exact."""
    n = len(xhat)
    mask = np.ones(n, dtype=bool)
    # Rows that differ in their first few entries cannot be equal: compare whole rows only
    # among those that share them (none, for most images).
    _, prefix_group, prefix_count = np.unique(_row_keys(xhat[:, :8]), return_inverse=True,
                                              return_counts=True)
    maybe = np.flatnonzero(prefix_count[prefix_group.ravel()] > 1)
    if len(maybe) == 0:
        return mask
    _, group = np.unique(_row_keys(xhat[maybe]), return_inverse=True)
    by_group = np.lexsort((maybe, -q[maybe], group.ravel()))
    later = np.zeros(len(maybe), dtype=bool)
    later[1:] = group.ravel()[by_group[1:]] == group.ravel()[by_group[:-1]]
    mask[maybe[by_group[later]]] = False
    return mask


def _row_keys(rows: np.ndarray) -> np.ndarray:
    """One opaque scalar per row, equal exactly when the rows are bitwise equal."""
    rows = np.ascontiguousarray(rows)
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()


@register("random", uses_saliency=False)
def random(x, k, s, *, lam, seed):
    """A uniformly random k-subset; the same (seed, N, k) always gives the same subset."""
    # One generator per image, seeded identically, so an image's picks do not depend on its
    # position in the batch (nor on the batch size).
    n = x.shape[1]
    return np.stack([np.random.default_rng(seed).choice(n, size=k, replace=False)
                     for _ in range(len(x))])


@register("uniform", uses_saliency=False)
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
    with blas_threads(_pairwise_work(xhat[None])):
        for start in range(0, n, block):
            stop = min(n, start + block)
            dist = (1.0 - xhat[start:stop] @ xhat.T) / 2.0
            dist[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not its own
            nearest[start:stop] = dist.min(axis=1)
    return nearest


def _farthest_from_nearest_neighbour(x: np.ndarray) -> int:
    # argmax returns the lowest index among ties, as everywhere in the spec.
    return int(np.argmax(nearest_neighbour_distance(x)))


# --- BLAS threads -----------------------------------------------------------------------------

_blas_lock = threading.RLock()
_blas_depth = 0
_blas_controller: Any = None  # a threadpoolctl controller of the BLAS libraries; False: none


def _blas() -> Any:
    """The threadpoolctl controller of the loaded BLAS libraries, built once (about a
    millisecond); None without threadpoolctl or without a BLAS it knows. NumPy's BLAS is
    loaded when NumPy is imported, before this module, so one scan finds it."""
    global _blas_controller
    if _blas_controller is not None:
        return _blas_controller or None
    with _blas_lock:
        if _blas_controller is not None:
            return _blas_controller or None
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_controller = False
        else:
            found = ThreadpoolController().select(user_api="blas")
            _blas_controller = found if found.lib_controllers else False
    return _blas_controller or None


#: Below this many multiply-adds a block's BLAS stays on one thread: waking OpenBLAS's threads
#: costs more than they save on small inputs, and they keep spinning afterwards, taking cores
#: from the model's own threads (on two cores, a 144-token image's divprune then slowed the
#: model's next prefills several-fold).
_BLAS_PARALLEL_MIN_WORK = 1 << 26


def _pairwise_work(x) -> int:
    """Multiply-adds of all the pairwise products of a (B, N, D) batch."""
    batch, n, d = x.shape
    return int(batch) * int(n) * int(n) * int(d)


@contextlib.contextmanager
def blas_threads(work: int) -> Iterator[None]:
    """Hold NumPy's BLAS to :func:`greedyprune.get_num_threads` threads inside the block, or
    to one thread when the block does fewer than ``_BLAS_PARALLEL_MIN_WORK`` multiply-adds.

    Needs threadpoolctl; without it (or without a BLAS it can control) the block runs
    unchanged. Re-entrant. Blocks in different Python threads take turns: OpenBLAS's thread
    count is process-wide, so a limit set in one thread and restored in another would leak
    (threadpoolctl lets only the thread that set a limit change it). A few tens of
    microseconds per block.
    """
    global _blas_depth
    controller = _blas()
    if controller is None:
        yield
        return
    with _blas_lock:
        if _blas_depth:  # nested in this thread: the limit is already in place
            _blas_depth += 1
            try:
                yield
            finally:
                _blas_depth -= 1
            return
        from ._api import get_num_threads

        _blas_depth = 1
        try:
            # The setting may exceed what the BLAS takes (a C int): use at most one per CPU.
            threads = min(get_num_threads(), _cpus_available())
            with controller.limit(limits=threads if work >= _BLAS_PARALLEL_MIN_WORK else 1):
                yield
        finally:
            _blas_depth = 0


def _cpus_available() -> int:
    """CPUs this process may run on (its affinity mask, where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks here (macOS, Windows)
        return os.cpu_count() or 1


def _torch_tensor_type():
    torch = sys.modules.get("torch")
    return torch.Tensor if torch is not None else None


def _prepare(features, k, saliency, lam, seed) -> Tuple[np.ndarray, Optional[np.ndarray], int,
                                                         float, int, Callable]:
    """Validate (docs/spec.md §4) and bring the inputs to NumPy, shaped (B, N, D) and (B, N).

    Returns the arrays, the checked scalars and ``restore(kept)``, which turns a (B, k) int64
    array back into the caller's container, device and rank.
    """
    tensor_type = _torch_tensor_type()

    def is_tensor(value) -> bool:
        return tensor_type is not None and isinstance(value, tensor_type)

    device = features.device if is_tensor(features) else None
    if is_tensor(features):
        x = _validate.readable_tensor(features, "features")
    else:
        x = _validate.as_array(features, "features")
    if is_tensor(saliency):
        saliency = _validate.readable_tensor(saliency, "saliency")
    elif saliency is not None:
        saliency = _validate.as_array(saliency, "saliency")
    k, lam, _ = _validate.check_call(
        x.shape, x.dtype, k, lam, None,
        None if saliency is None else saliency.shape, None if saliency is None else saliency.dtype,
    )
    seed = _check_seed(seed)
    x = _validate.tensor_to_numpy(x) if is_tensor(x) else x
    if is_tensor(saliency):
        saliency = _validate.tensor_to_numpy(saliency)
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


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)
