"""The public selection functions: validate once, then hand the data to the right implementation.

NumPy arrays and array-likes, and PyTorch tensors on the CPU, go to the C core (tensors without a
copy: the C core reads their memory through their strides, bfloat16 included). Tensors on an
accelerator run :mod:`greedyprune._torch` on their own device. torch is never imported here: a
tensor can only reach us if the caller already imported it.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings

import numpy as np

from . import _core, _validate

#: Environment variable for the default thread count; it wins over OMP_NUM_THREADS.
NUM_THREADS_ENV = "GREEDYPRUNE_NUM_THREADS"


def _default_num_threads() -> int:
    value = os.environ.get(NUM_THREADS_ENV, "").strip()
    if value:
        try:
            if int(value) >= 1:
                return int(value)
        except ValueError:
            pass
        warnings.warn(
            f"ignoring {NUM_THREADS_ENV}={value!r}: expected a positive integer", stacklevel=3
        )
    return max(1, _core.default_num_threads())


_num_threads = _default_num_threads()
_num_threads_lock = threading.Lock()


def get_num_threads() -> int:
    """Threads :func:`select` uses when ``num_threads`` is not given (at most the CPUs available
    to the process: a larger setting is capped there when a call runs)."""
    return _num_threads


def set_num_threads(num_threads: int) -> int:
    """Set the package-wide thread count for :func:`select`; return the previous value.

    Any positive integer is accepted; calls use at most the CPUs available to the process."""
    global _num_threads
    num_threads = _validate.check_num_threads(num_threads, allow_none=False)
    with _num_threads_lock:
        previous, _num_threads = _num_threads, num_threads
    return previous


def select(features, k, saliency=None, lam=0.5, *, num_threads=None):
    """Keep ``k`` tokens that are salient and diverse (the rule of SPEC.md §1).

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

    Returns
    -------
    Kept indices, sorted ascending, int64, shape (k,) or (B, k): a NumPy array, or a tensor on
    the input's device when ``features`` is a tensor.
    """
    return _run(features, k, saliency, lam, num_threads, sort=True)[0]


def greedy(features, k, saliency=None, lam=0.5, *, num_threads=None):
    """Like :func:`select`, but return ``(order, gains)``: the picks in the order they were made
    and the value each added (their sum is the objective value of the selection)."""
    return _run(features, k, saliency, lam, num_threads, sort=False)


def _is_tensor(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _as_array(obj, argument) -> np.ndarray:
    array = _validate.as_array(obj, argument)
    return _aligned(array) if array.dtype.kind == "f" else array


def _aligned(array: np.ndarray) -> np.ndarray:
    """``array``, or an aligned, native-order copy where the C core could not read it as it is
    (unaligned memory, such as a buffer read at an odd offset; the other byte order)."""
    if array.flags.aligned and array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


def _run(features, k, saliency, lam, num_threads, sort):
    if _is_tensor(features):
        return _run_tensor(features, k, saliency, lam, num_threads, sort)
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
    return _core.greedy(x, s, k, lam, num_threads or _num_threads, sort)


def _tensor_as_array(tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory (bfloat16 viewed as its uint16 bit patterns), or an
    aligned copy of it."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return _aligned(tensor.view(torch.int16).numpy().view(np.uint16))
    return _aligned(tensor.numpy())


def _run_tensor(features, k, saliency, lam, num_threads, sort):
    import torch

    x = _validate.readable_tensor(features, "features")
    s = None
    if saliency is not None:
        if _is_tensor(saliency):
            s = _validate.readable_tensor(saliency, "saliency")
        else:
            with warnings.catch_warnings():  # a read-only array (a broadcast view): only read
                warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                s = torch.as_tensor(_validate.as_array(saliency, "saliency"))
        s = s.to(x.device)
    k, lam, num_threads = _validate.check_call(
        x.shape, x.dtype, k, lam, num_threads,
        None if s is None else s.shape, None if s is None else s.dtype,
    )
    if s is not None and not bool(torch.isfinite(_validate.stored(s)).all()):
        raise _validate.nonfinite_error("saliency")
    if x.device.type != "cpu":
        from . import _torch

        order, gains = _torch.greedy(x, k, s, lam)
        return (order.sort(dim=-1).values, None) if sort else (order, gains)
    order, gains = _core.greedy(
        _tensor_as_array(x), None if s is None else _tensor_as_array(s), k, lam,
        num_threads or _num_threads, sort,
    )
    return torch.from_numpy(order), None if gains is None else torch.from_numpy(gains)
