"""Argument checks shared by the C-core dispatcher and the NumPy reference.

docs/spec.md §4: every misuse raises ``ValueError`` or ``TypeError`` with a message that names the
argument and says what was expected. Both implementations call these functions, so they raise
the same exception with the same message for the same bad input.
"""
from __future__ import annotations

import numbers
import operator
import reprlib
from typing import Any, cast

import numpy as np

#: Floating dtypes the rule accepts, by name (NumPy's names; ``bfloat16`` comes from PyTorch).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
#: Where a selection may run (see :func:`greedyprune.select`).
BACKENDS = ("auto", "c", "torch")


def as_array(obj, argument: str) -> np.ndarray:
    """``np.asarray(obj)``, with ragged or otherwise unconvertible input reported by name."""
    try:
        return np.asarray(obj)
    except (ValueError, TypeError) as error:
        raise TypeError(f"{argument} must be an array-like of real numbers ({error})") from None


def aligned(array: np.ndarray) -> np.ndarray:
    """``array``, or an aligned, native-order copy where the C core could not read it as it is
    (unaligned memory, such as a buffer read at an odd offset; the other byte order)."""
    if array.flags.aligned and array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


def readable_tensor(tensor, argument: str):
    """A torch tensor's values in a form every code path reads: detached, a lazy negation
    (``torch._neg_view``, the imaginary part of a conjugate) applied, an all-zero placeholder
    (ZeroTensor) made real. Nested and sparse tensors, and tensors on the meta device (which
    hold no values), are refused by name."""
    import torch  # a tensor reached us: torch is imported already

    if tensor.is_nested:
        raise TypeError(f"{argument} must be a regular tensor, got a nested tensor: pad its "
                        f"tensors to one shape (B, N, D), or select each one on its own")
    if tensor.layout != torch.strided:
        raise TypeError(f"{argument} must be a dense tensor, got layout {tensor.layout}: "
                        f"call .to_dense() first")
    if tensor.is_meta:
        raise ValueError(f"{argument} is a tensor on the meta device, which holds no values")
    tensor = tensor.detach()
    if tensor._is_zerotensor():
        tensor = tensor.new_zeros(tensor.shape)
    return tensor.resolve_neg()


def stored(values):
    """An array or tensor with the same set of values as ``values``, each stored element once
    along the axes a broadcast repeats (stride 0): checking a broadcast view of 2**40 rows
    reads one row, not 2**40."""
    strides = values.stride() if callable(getattr(values, "stride", None)) else values.strides
    return values[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in strides)]


def tensor_to_numpy(tensor) -> np.ndarray:
    """A tensor's values as a NumPy array on the CPU, bfloat16 widened (exactly) to float32, as
    NumPy has no bfloat16. Each stored value is converted once: a broadcast tensor stays a
    broadcast (read-only) view instead of growing to its full size."""
    import torch  # a tensor reached us: torch is imported already

    values = stored(tensor)
    if values.dtype not in (torch.float32, torch.float64, torch.float16):
        values = values.float()
    array = values.cpu().numpy()
    return array if array.shape == tuple(tensor.shape) else np.broadcast_to(array, tensor.shape)


def dtype_name(dtype) -> str:
    """``'float32'`` for ``np.float32``, ``np.dtype('f4')`` and ``torch.float32`` alike."""
    name = getattr(dtype, "name", None) or str(dtype)
    return name.replace("torch.", "")


def check_features(shape, dtype) -> None:
    """Features are (N, D) or (B, N, D) with N, D >= 1, of a floating dtype."""
    name = dtype_name(dtype)
    if name not in FLOAT_DTYPES:
        raise TypeError(
            f"features must have a floating dtype ({', '.join(FLOAT_DTYPES)}), got {name}"
        )
    shape = tuple(shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"features must have 2 dimensions (N, D) or 3 (B, N, D), got {len(shape)} "
            f"(shape {shape})"
        )
    if shape[-2] < 1 or shape[-1] < 1:
        raise ValueError(
            f"features must have at least one token and one feature dimension, got shape {shape}"
        )


def check_saliency(shape, dtype, features_shape) -> None:
    """Saliency has one value per token: (N,) for (N, D) features, (B, N) for (B, N, D)."""
    name = dtype_name(dtype)
    if name not in FLOAT_DTYPES:
        raise TypeError(
            f"saliency must have a floating dtype ({', '.join(FLOAT_DTYPES)}), got {name}"
        )
    expected = tuple(features_shape[:-1])
    if tuple(shape) != expected:
        raise ValueError(
            f"saliency must have shape {expected} (one value per token of features with shape "
            f"{tuple(features_shape)}), got {tuple(shape)}"
        )


def check_k(k, n: int) -> int:
    """K is an integer in [1, N]; bools and floats are refused rather than coerced."""
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)  # int, NumPy integer scalars, 0-d integer arrays
    except TypeError:
        raise TypeError(f"k must be an integer, got {type(k).__name__}") from None
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N] = [1, {n}], got {k}")
    return k


def check_lam(lam) -> float:
    """λ is a real number in [0, 1] (NaN refused)."""
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"lam must be a real number in [0, 1], got {type(lam).__name__}")
    # Compared before any conversion: exact for integers and fractions beyond float's range,
    # and false for NaN.
    if not 0 <= cast(Any, lam) <= 1:
        raise ValueError(f"lam must be in [0, 1], got {number_text(lam)}")
    return float(lam)


def number_text(value) -> str:
    """``value`` for a message: as a float where it fits one (``2.0``, ``nan``), else shortened
    (an integer of hundreds of digits)."""
    try:
        return str(float(value))
    except OverflowError:
        return reprlib.repr(value)


def check_num_threads(num_threads, *, allow_none: bool = True):
    """A positive thread count, or None for the package-wide setting. Any size is accepted:
    the C core uses at most the CPUs available to the process."""
    if num_threads is None and allow_none:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(
            f"num_threads must be a positive integer{' or None' if allow_none else ''}, "
            f"got {type(num_threads).__name__}"
        )
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return int(num_threads)


def check_backend(backend) -> str:
    """One of :data:`BACKENDS`."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")
    return backend


def nonfinite_error(argument: str) -> ValueError:
    return ValueError(f"{argument} must be finite, but contains NaN or infinity")


def check_call(features_shape, features_dtype, k, lam, num_threads, saliency_shape=None,
               saliency_dtype=None):
    """Every check that needs no pass over the data, in the one order both implementations use.

    Returns ``(k, lam, num_threads)`` as int, float and int-or-None. Finiteness is checked after
    this, saliency first, then features.
    """
    check_features(features_shape, features_dtype)
    num_threads = check_num_threads(num_threads)
    lam = check_lam(lam)
    k = check_k(k, features_shape[-2])
    if saliency_shape is not None:
        check_saliency(saliency_shape, saliency_dtype, features_shape)
    return k, lam, num_threads
