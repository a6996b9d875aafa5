"""Type stub of the public API of greedyprune (see greedyprune/_api.py)."""
from typing import Any, TextIO, overload

import numpy as np
import numpy.typing as npt

try:
    from torch import Tensor
except ImportError:  # torch is optional
    Tensor = Any  # type: ignore[misc, assignment]

__version__: str
has_openmp: bool
NUM_THREADS_ENV: str

@overload
def select(features: Tensor, k: int, saliency: Tensor | npt.ArrayLike | None = ...,
           lam: float = ..., *, num_threads: int | None = ...) -> Tensor: ...
@overload
def select(features: npt.ArrayLike, k: int, saliency: Tensor | npt.ArrayLike | None = ...,
           lam: float = ..., *, num_threads: int | None = ...) -> npt.NDArray[np.int64]: ...
@overload
def greedy(features: Tensor, k: int, saliency: Tensor | npt.ArrayLike | None = ...,
           lam: float = ..., *, num_threads: int | None = ...) -> tuple[Tensor, Tensor]: ...
@overload
def greedy(features: npt.ArrayLike, k: int, saliency: Tensor | npt.ArrayLike | None = ...,
           lam: float = ..., *, num_threads: int | None = ...
           ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
def get_num_threads() -> int: ...
def set_num_threads(num_threads: int | None) -> int: ...
def config_info() -> dict[str, Any]: ...
def show_config(file: TextIO | None = ...) -> None: ...
