"""Tensors in, tensors out: where :func:`greedyprune.select` runs a tensor's selection.

* The C core, on the CPU (``backend="c"``): a CPU tensor is read in place, without a copy (the
  core reads its memory through its strides, bfloat16 included); a tensor on an accelerator is
  copied to host memory first, and the indices go back to its device.
* The PyTorch port (:mod:`greedyprune._torch`, ``backend="torch"``), on the tensor's own device,
  the CPU included.
* ``backend="auto"``: the C core for CPU tensors, the port for tensors on an accelerator.

Imported only once a tensor has reached :mod:`greedyprune._api`, so torch is already loaded.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from . import _core, _torch, _validate


def on_host(tensor: torch.Tensor) -> bool:
    """Whether the tensor's values are in host memory, where the C core can read them."""
    return tensor.device.type == "cpu"


def runs_port(features: torch.Tensor, backend: str) -> bool:
    """Whether ``backend`` sends these (validated) features to the PyTorch port."""
    return backend == "torch" or (backend == "auto" and not on_host(features))


def host_array(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy view of a tensor's values in host memory (bfloat16 viewed as its uint16 bit
    patterns): a CPU tensor's own memory, or an aligned copy of it. A tensor elsewhere is copied
    to the host first, each stored value once (a broadcast stays a broadcast)."""
    if not on_host(tensor):
        tensor = _validate.stored(tensor).cpu().expand(tensor.shape)
    if tensor.dtype == torch.bfloat16:
        return _validate.aligned(tensor.view(torch.int16).numpy().view(np.uint16))
    return _validate.aligned(tensor.numpy())


def run(features, k, saliency, lam, num_threads, backend, sort, threads_for_call):
    """``(order or sorted indices, gains or None)`` as tensors on the device of ``features``;
    ``threads_for_call(num_threads)`` gives the C core's thread count."""
    x = _validate.readable_tensor(features, "features")
    s = None
    if saliency is not None:
        if isinstance(saliency, torch.Tensor):
            s = _validate.readable_tensor(saliency, "saliency")
        else:
            with warnings.catch_warnings():  # a read-only array (a broadcast view): only read
                warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                s = torch.as_tensor(_validate.as_array(saliency, "saliency"))
    k, lam, num_threads = _validate.check_call(
        x.shape, x.dtype, k, lam, num_threads,
        None if s is None else s.shape, None if s is None else s.dtype,
    )
    if s is not None and not bool(torch.isfinite(_validate.stored(s)).all()):
        raise _validate.nonfinite_error("saliency")
    if runs_port(x, backend):
        order, gains = _torch.greedy(x, k, None if s is None else s.to(x.device), lam)
        return (order.sort(dim=-1).values, None) if sort else (order, gains)
    order, gains = _core.greedy(
        host_array(x), None if s is None else host_array(s), k, lam,
        threads_for_call(num_threads), sort,
    )
    return (torch.from_numpy(order).to(x.device),
            None if gains is None else torch.from_numpy(gains).to(x.device))
