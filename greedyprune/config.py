"""``PruneConfig``: one pruning setting (budget, method, λ, saliency, seed) as a value.

``greedyprune.hf.attach(model, config)`` takes one (or the same fields as keyword arguments);
the handle, evaluation reports and the lmms-eval models carry it, so that every result can
say how it was produced. It validates on construction and round-trips through
:meth:`PruneConfig.to_dict` / :meth:`PruneConfig.from_dict` (and so through JSON)::

    config = PruneConfig(keep=64, saliency="cls", lam=0.25)
    json.dumps(config.to_dict())
    PruneConfig.from_dict(json.loads(text)) == config
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Dict, Literal, Mapping, Optional, Tuple, Union, cast

from . import _validate

#: Where relevance comes from (see :func:`greedyprune.hf.attach`).
Saliency = Literal["text", "cls", "query", "none"]
SALIENCY: Tuple[str, ...] = ("text", "cls", "query", "none")

#: Where the selection runs (see :func:`greedyprune.select`): ``"c"``, the C core on the CPU
#: (tensors on an accelerator are copied to host memory and back); ``"torch"``, the PyTorch port
#: on the tensor's device; ``"auto"``, the C core for CPU tensors, the port on accelerators.
Backend = Literal["auto", "c", "torch"]

#: The selector names shipped with the package (:func:`greedyprune.methods.names` lists these
#: and any registered later).
Method = Literal["greedyprune", "topk", "divprune", "cdpruner", "random", "uniform"]

#: ``lam="auto"``: λ by the saliency and the kept fraction of an image's tokens, as
#: ``(largest fraction, λ)`` steps in increasing order; above the last step, and for a saliency
#: not listed, λ = 0 (diversity only). From the scenes model's fidelity table (README, "The
#: defaults, and the evidence for them"): λ = 0.25 with [CLS] saliency was the best at 4% of the
#: tokens and as good as diversity alone at 8%, with query saliency better than diversity alone
#: at 4% only, and text saliency worse at every budget; above 8%, diversity alone was best.
AUTO_LAM: Dict[str, Tuple[Tuple[float, float], ...]] = {
    "cls": ((0.085, 0.25),),
    "query": ((0.06, 0.25),),
}

#: λ when none is given (README, "The defaults, and the evidence for them").
DEFAULT_LAM: Union[float, Literal["auto"]] = 0.0
#: Saliency when none is given.
DEFAULT_SALIENCY: "Saliency" = "text"


def auto_lam(saliency: str, kept: int, total: int) -> float:
    """λ of ``lam="auto"`` for an image that keeps ``kept`` of its ``total`` tokens, with this
    saliency (:data:`AUTO_LAM`)."""
    fraction = kept / total
    return next((lam for largest, lam in AUTO_LAM.get(saliency, ()) if fraction <= largest), 0.0)


def check_lam_setting(lam: Any) -> Union[float, Literal["auto"]]:
    """A ``lam`` setting: a number in [0, 1] (as a float) or ``"auto"``."""
    if isinstance(lam, str):
        if lam != "auto":
            raise ValueError(f"lam must be a number in [0, 1] or 'auto', got {lam!r}")
        return "auto"
    return _validate.check_lam(lam)


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """How to prune: exactly one of ``keep`` (tokens per image, >= 1) and ``keep_ratio``
    (fraction per image, in (0, 1], rounded up); ``method`` (a name from
    :func:`greedyprune.methods.names`); ``lam`` in [0, 1] (weight of saliency against
    diversity), or ``"auto"``: by the saliency and the kept fraction of each image's tokens
    (:data:`AUTO_LAM`); ``saliency`` ("text", "cls", "query" or "none"); ``seed`` (for
    selectors that draw at random); ``backend`` (where method "greedyprune" runs: "auto", "c"
    or "torch", see :func:`greedyprune.select`). Invalid values raise
    ``TypeError``/``ValueError`` naming the field."""

    keep: Optional[int] = None
    keep_ratio: Optional[float] = None
    method: Union[Method, str] = "greedyprune"   # a shipped name, or one registered later
    lam: Union[float, Literal["auto"]] = DEFAULT_LAM
    saliency: Saliency = DEFAULT_SALIENCY
    seed: int = 0
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        keep, keep_ratio = check_budget(self.keep, self.keep_ratio)
        object.__setattr__(self, "keep", keep)
        object.__setattr__(self, "keep_ratio", keep_ratio)
        object.__setattr__(self, "lam", check_lam_setting(self.lam))
        if not isinstance(self.saliency, str) or self.saliency not in SALIENCY:
            raise ValueError(f"saliency must be one of {', '.join(map(repr, SALIENCY))}, "
                             f"got {self.saliency!r}")
        from . import methods

        methods.get(self.method)
        if self.saliency == "none" and methods.needs_saliency(self.method):
            raise ValueError(f"method {self.method!r} needs saliency: use saliency='text', 'cls' "
                             f"or 'query' with it, or a method that works without (e.g. "
                             f"'greedyprune')")
        if _validate.check_backend(self.backend) != "auto" and methods.ordered(self.method) is None:
            raise ValueError(f"backend={self.backend!r} applies to method 'greedyprune' only (the "
                             f"other selectors run on the CPU whatever the backend); leave "
                             f"backend='auto' with method {self.method!r}")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        object.__setattr__(self, "seed", int(seed))

    @property
    def budget(self) -> str:
        """``"keep=64"`` or ``"keep_ratio=0.25"``."""
        return f"keep={self.keep}" if self.keep is not None else f"keep_ratio={self.keep_ratio}"

    def kept(self, n: int) -> int:
        """Tokens kept of an image's ``n`` (:func:`tokens_kept`)."""
        return tokens_kept(n, self.keep, self.keep_ratio)

    def lam_for(self, kept: int, total: int) -> float:
        """The λ an image that keeps ``kept`` of its ``total`` tokens is pruned with: ``lam``,
        or for ``lam="auto"`` :func:`auto_lam` of this saliency."""
        if self.lam != "auto":
            return cast(float, self.lam)
        return auto_lam(self.saliency, kept, total)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as plain JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PruneConfig":
        """The config of :meth:`to_dict`'s output; unknown keys raise ``TypeError``."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown PruneConfig fields: {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "PruneConfig":
        """A copy with ``changes`` applied (validated); giving ``keep`` clears ``keep_ratio``
        and the other way round."""
        if changes.get("keep") is not None:
            changes.setdefault("keep_ratio", None)
        if changes.get("keep_ratio") is not None:
            changes.setdefault("keep", None)
        return dataclasses.replace(self, **changes)


def tokens_kept(n: int, keep: Optional[int], keep_ratio: Optional[float]) -> int:
    """Tokens to keep out of an image's ``n``: ``min(keep, n)``, or ``ceil(keep_ratio · n)`` and
    at least 1 (a budget beyond ``n`` keeps them all)."""
    if keep is not None:
        return min(keep, n)
    # The small slack keeps e.g. 0.25 · 576 at 144 despite floating-point rounding upwards.
    assert keep_ratio is not None, "one of keep and keep_ratio"
    return max(1, min(n, math.ceil(keep_ratio * n - 1e-9)))


def check_budget(keep, keep_ratio) -> Tuple[Optional[int], Optional[float]]:
    """Exactly one of ``keep`` (an integer >= 1) and ``keep_ratio`` (a number in (0, 1])."""
    if (keep is None) == (keep_ratio is None):
        raise ValueError("give exactly one of keep (tokens per image) and keep_ratio "
                         f"(fraction per image); got keep={keep!r}, keep_ratio={keep_ratio!r}")
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, numbers.Integral):
            raise TypeError(f"keep must be a positive integer, got {type(keep).__name__}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (tokens kept per image), got {keep}")
        return int(keep), None
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real):
        raise TypeError(f"keep_ratio must be a number in (0, 1], got {type(keep_ratio).__name__}")
    if not 0 < cast(Any, keep_ratio) <= 1:  # compared before converting: NaN and huge integers fail it
        raise ValueError(f"keep_ratio must be in (0, 1], got {_validate.number_text(keep_ratio)}")
    return None, float(keep_ratio)
