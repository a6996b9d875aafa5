"""Type stub of the private C extension (see greedyprune/_core.c)."""
import numpy as np
import numpy.typing as npt

HAS_OPENMP: int
VERSION_NUMBER: int

def greedy(
    features: npt.NDArray[np.floating] | npt.NDArray[np.uint16],
    saliency: npt.NDArray[np.floating] | npt.NDArray[np.uint16] | None,
    k: int,
    lam: float,
    num_threads: int,
    sort: bool,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64] | None]: ...
def default_num_threads() -> int: ...
def build_info() -> dict[str, str | int | None]: ...
