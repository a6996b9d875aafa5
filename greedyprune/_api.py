"""The public selection functions: validate once, then hand the data to the right implementation.

NumPy arrays and array-likes go to the C core; tensors go to :mod:`greedyprune._tensors`, which
runs the C core or the PyTorch port as ``backend`` says. torch is never imported here: a tensor
can only reach us if the caller already imported it.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from types import FrameType
from typing import TYPE_CHECKING, Any, Optional, Set, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from . import NUM_THREADS_ENV, _core, _validate

if TYPE_CHECKING:
    from torch import Tensor

    from .config import Backend

    Saliency = Union["Tensor", npt.ArrayLike, None]

#: The count set by :func:`set_num_threads`; None while the default is automatic.
_override: Optional[int] = None
_override_lock = threading.Lock()
#: Values of NUM_THREADS_ENV already warned about (one warning per value, not per call).
_warned_env_values: Set[str] = set()
_warned_serial = False


def _env_num_threads():
    """NUM_THREADS_ENV as a positive int, or None when unset or not a positive integer (the
    latter warned about once per value)."""
    value = os.environ.get(NUM_THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads >= 1:
        return threads
    if value not in _warned_env_values:
        _warned_env_values.add(value)
        _warn(f"ignoring {NUM_THREADS_ENV}={value!r}: expected a positive integer")
    return None


def _warn(message: str) -> None:
    """A UserWarning attributed to the first caller outside this package."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame: Optional[FrameType] = sys._getframe(1)
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def default_num_threads_and_source():
    """``(threads, where that number comes from)`` for a call without ``num_threads``, decided
    now: :func:`set_num_threads`, else ``GREEDYPRUNE_NUM_THREADS``, else OpenMP's current
    setting."""
    override = _override
    if override is not None:
        return override, "set by greedyprune.set_num_threads()"
    from_env = _env_num_threads()
    if from_env is not None:
        return from_env, f"from {NUM_THREADS_ENV}"
    if not _core.HAS_OPENMP:
        return 1, "built without OpenMP"
    return max(1, _core.default_num_threads()), "OpenMP's current setting, omp_get_max_threads()"


def get_num_threads() -> int:
    """Threads :func:`select` uses when ``num_threads`` is not given, decided at each call.

    In order of precedence: the count given to :func:`set_num_threads`; else the environment
    variable ``GREEDYPRUNE_NUM_THREADS``, read at each call; else OpenMP's current setting
    (``omp_get_max_threads()``: ``OMP_NUM_THREADS``, or a limit set with threadpoolctl's
    ``threadpool_limits(n, "openmp")``); 1 in a build without OpenMP. A call uses at most the
    CPUs available to the process, whatever the count."""
    return default_num_threads_and_source()[0]


def set_num_threads(num_threads: Optional[int]) -> int:
    """Set the package-wide thread count for :func:`select`; return the previous value (what
    :func:`get_num_threads` returned before).

    Any positive integer is accepted (calls use at most the CPUs available to the process);
    None goes back to the automatic default (``GREEDYPRUNE_NUM_THREADS``, else OpenMP's)."""
    global _override
    num_threads = _validate.check_num_threads(num_threads)
    _warn_if_serial(num_threads)
    with _override_lock:
        previous = get_num_threads()
        _override = num_threads
    return previous


def _warn_if_serial(num_threads) -> None:
    """Warn, once, when more than one thread is asked of a build without OpenMP."""
    global _warned_serial
    if num_threads is not None and num_threads > 1 and not _core.HAS_OPENMP and not _warned_serial:
        _warned_serial = True
        _warn(f"greedyprune was built without OpenMP, so it runs on one thread, not "
              f"{num_threads}: {_core.build_info()['no_openmp_reason']} (see "
              "greedyprune.show_config())")


@overload
def select(features: "Tensor", k: int, saliency: "Saliency" = None, lam: float = 0.5, *,
           num_threads: Optional[int] = None, backend: "Backend" = "auto") -> "Tensor": ...
@overload
def select(features: npt.ArrayLike, k: int, saliency: "Saliency" = None, lam: float = 0.5, *,
           num_threads: Optional[int] = None,
           backend: "Backend" = "auto") -> npt.NDArray[np.int64]: ...
def select(features: Any, k: int, saliency: Any = None, lam: float = 0.5, *,
           num_threads: Optional[int] = None, backend: "Backend" = "auto") -> Any:
    """Keep ``k`` tokens that are salient and diverse (the rule of docs/spec.md §1).

    Parameters
    ----------
    features : array_like or torch.Tensor, shape (N, D) or (B, N, D)
        One row per visual token; float16, bfloat16 (tensors), float32 or float64. Tensors
        must be dense and hold values (sparse, nested and meta tensors are refused).
    k : int
        Tokens to keep per image, ``1 <= k <= N``.
    saliency : array_like or torch.Tensor, shape (N,) or (B, N), optional
        Relevance of each token (higher is more relevant); min-max normalized per image.
    lam : float
        Weight of saliency against diversity, in [0, 1]. 1 is top-k by saliency, 0 is
        farthest-point sampling from token 0.
    num_threads : int, optional
        Threads for the C core, at least 1 (at most the CPUs available to the process are used,
        whatever the value); defaults to :func:`get_num_threads`. The answer never depends on
        it.
    backend : {"auto", "c", "torch"}
        Where a tensor's selection runs. ``"c"``: the C core, on the CPU; a tensor on an
        accelerator is copied to host memory first and the indices go back to its device.
        ``"torch"``: the PyTorch port of the same rule, on the tensor's own device (CPU
        included); NumPy input is refused. ``"auto"`` (the default): the C core for arrays and
        CPU tensors, the PyTorch port for tensors on an accelerator, until a measurement on a
        GPU says which is faster there. Both follow docs/spec.md, §2 for the precision.

    Returns
    -------
    Kept indices, sorted ascending, int64, shape (k,) or (B, k): a NumPy array, or a tensor on
    the input's device when ``features`` is a tensor.
    """
    return _run(features, k, saliency, lam, num_threads, backend, sort=True)[0]


@overload
def greedy(features: "Tensor", k: int, saliency: "Saliency" = None, lam: float = 0.5, *,
           num_threads: Optional[int] = None,
           backend: "Backend" = "auto") -> Tuple["Tensor", "Tensor"]: ...
@overload
def greedy(features: npt.ArrayLike, k: int, saliency: "Saliency" = None, lam: float = 0.5, *,
           num_threads: Optional[int] = None, backend: "Backend" = "auto"
           ) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
def greedy(features: Any, k: int, saliency: Any = None, lam: float = 0.5, *,
           num_threads: Optional[int] = None, backend: "Backend" = "auto") -> Any:
    """Like :func:`select`, but return ``(order, gains)``: the picks in the order they were made
    and the value each added (their sum is the objective value of the selection)."""
    return _run(features, k, saliency, lam, num_threads, backend, sort=False)


def _threads_for_call(num_threads) -> int:
    """The call's ``num_threads`` (validated), else the default decided now."""
    if num_threads is None:
        return get_num_threads()
    _warn_if_serial(num_threads)
    return num_threads


def _is_tensor(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _as_array(obj, argument) -> np.ndarray:
    array = _validate.as_array(obj, argument)
    return _validate.aligned(array) if array.dtype.kind == "f" else array


def _run(features, k, saliency, lam, num_threads, backend, sort):
    backend = _validate.check_backend(backend)
    if _is_tensor(features):
        from . import _tensors

        return _tensors.run(features, k, saliency, lam, num_threads, backend, sort,
                            _threads_for_call)
    if backend == "torch":
        raise ValueError("backend='torch' runs the PyTorch port on a tensor's device, but "
                         "features is not a tensor: pass torch.from_numpy(features), or use "
                         "backend='auto' or 'c'")
    x = _as_array(features, "features")
    s = None
    if saliency is not None:
        if _is_tensor(saliency):
            saliency = _validate.tensor_to_numpy(_validate.readable_tensor(saliency, "saliency"))
        s = _as_array(saliency, "saliency")
    k, lam, num_threads = _validate.check_call(
        x.shape, x.dtype, k, lam, num_threads,
        None if s is None else s.shape, None if s is None else s.dtype,
    )
    if s is not None and not np.isfinite(_validate.stored(s)).all():
        raise _validate.nonfinite_error("saliency")
    return _core.greedy(x, s, k, lam, _threads_for_call(num_threads), sort)
