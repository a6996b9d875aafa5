from typing import Any, Dict, List, Optional, Tuple

import numpy as np

SALIENCY: Tuple[str, ...]
DEFAULT_LAM: float

class PatchGrid:
    patch_side: int
    token_source: np.ndarray
    crop_grid: Optional[Tuple[int, int]]
    canvas_pixels: Optional[Tuple[int, int]]
    image_size: Optional[Tuple[int, int]]

class ImageRecord:
    row: int
    index: int
    index_in_row: int
    modality: str
    n_tokens: int
    tokens_before: int
    tokens_after: int
    kept: np.ndarray
    kept_positions: np.ndarray
    select_seconds: float
    grid: Optional[PatchGrid]

class PrefillRecord:
    images: Tuple[ImageRecord, ...]
    seq_len_before: int
    seq_len_after: int
    source_positions: np.ndarray
    seconds: Dict[str, float]
    @property
    def hook_seconds(self) -> float: ...

class PruneHandle:
    model: Any
    arch: str
    keep: Optional[int]
    keep_ratio: Optional[float]
    lam: float
    saliency: str
    method: str
    seed: int
    @property
    def last_prefill(self) -> Optional[PrefillRecord]: ...
    @property
    def last(self) -> List[ImageRecord]: ...
    @property
    def attached(self) -> bool: ...
    def detach(self) -> None: ...
    def __enter__(self) -> PruneHandle: ...
    def __exit__(self, *exc: Any) -> None: ...

def attach(
    model: Any,
    keep: Optional[int] = ...,
    *,
    keep_ratio: Optional[float] = ...,
    lam: Optional[float] = ...,
    saliency: str = ...,
    method: str = ...,
    seed: int = ...,
) -> PruneHandle: ...
def supported_models() -> List[str]: ...
