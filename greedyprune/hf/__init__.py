"""Visual-token pruning inside HuggingFace transformers vision-language models, through hooks.

::

    from greedyprune.hf import attach

    handle = attach(model, keep=64)          # or keep_ratio=0.111; lam, saliency, method, seed
    out = model.generate(**inputs)           # called exactly as before
    handle.last                              # per image: tokens before/after, kept indices, time
    handle.detach()                          # the model is exactly as before

    with attach(model, keep=64):             # the same, scoped
        ...

Supported: the classes :func:`supported_models` returns, each as the top-level
``...ForConditionalGeneration`` or its inner ``...Model``. ``handle.last`` lists one
:class:`ImageRecord` per image (or video) of the last pruned prefill, with a :class:`PatchGrid`
mapping each token to a patch; ``handle.last_prefill`` (:class:`PrefillRecord`) adds
sequence-level bookkeeping and timings.

What happens (docs/spec.md §5), per architecture, and what is refused: docs/architectures.md.

``torch.compile``: while pruning, ``torch.compile(model)``, ``model.compile()`` or a compiled
``model.forward`` with the default settings prune exactly as the uncompiled model (the hooks run
outside the graph, a graph break each); ``fullgraph=True`` is refused by torch.compile (its
message says to compile without it), and so are static or compilable caches, which
``generate()``'s ``compile_config`` needs (``ValueError``: use the default dynamic cache). A
budget that cannot prune as the configuration and shapes show (``keep_ratio=1``, or ``keep`` at
least the call's sequence length) leaves the compiled graph the plain model's: ``fullgraph=True``,
static caches and ``compile_config`` all work, and such calls leave ``handle.last`` as it was.

torch and transformers are imported only when :func:`attach` runs: ``import greedyprune.hf``
costs nothing without them.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, List, Optional, Union

from ..config import DEFAULT_LAM, DEFAULT_SALIENCY, SALIENCY, Backend, PruneConfig, Saliency
from ._records import ImageRecord, PatchGrid, PrefillRecord

if TYPE_CHECKING:
    from ._handle import PruneHandle

__all__ = ["attach", "detach", "get_handle", "supported_models", "PruneConfig", "PruneHandle",
           "ImageRecord", "PatchGrid", "PrefillRecord", "SALIENCY", "DEFAULT_LAM",
           "DEFAULT_SALIENCY"]


def attach(model, keep: Union[int, PruneConfig, None] = None, *,
           keep_ratio: Optional[float] = None, lam: Optional[Union[float, str]] = None,
           saliency: Optional[Saliency] = None, method: Optional[str] = None,
           seed: Optional[int] = None, backend: Optional[Backend] = None) -> "PruneHandle":
    """Prune visual tokens in every forward and ``generate()`` call of ``model``.

    Parameters
    ----------
    model : a supported transformers model (see :func:`supported_models`), top-level or inner.
    keep : int or PruneConfig, optional
        Visual tokens kept per image (>= 1). Exactly one of ``keep`` and ``keep_ratio``. A
        :class:`~greedyprune.PruneConfig` instead gives every setting at once; keyword
        arguments then override its fields.
    keep_ratio : float, optional
        Fraction of each image's tokens kept, in (0, 1]; rounded up, at least one token.
    lam : float or "auto", optional
        Weight of saliency against diversity, in [0, 1] (docs/spec.md §1); None (the default) means
        :data:`DEFAULT_LAM`, 0: diversity only, which kept a trained model's answers best from
        8% of the tokens up; at 4% ``lam=0.25`` with ``saliency="cls"`` did better.
        ``"auto"``: λ per image by its saliency and kept fraction (docs/spec.md §7), e.g. 0.25
        with ``saliency="cls"`` up to 8.5% of the tokens and 0 above. With
        ``saliency="none"`` there is no saliency to weigh: passing a ``lam`` other than 0 or
        "auto" to method "greedyprune" then warns (every ``lam < 1`` keeps the same tokens, and
        ``lam = 1`` leaves all gains at 0, keeping the first ``k`` tokens).
    saliency : {"text", "cls", "query", "none"}, optional
        Where relevance comes from (default ``"text"``): ``"text"``, the cosine of each visual
        token's input embedding with the mean input embedding of the text tokens; ``"cls"``,
        the vision tower's [CLS] attention (CLIP-style towers); ``"query"``, the attention the
        first decoder layer's text-token queries pay each visual token (content only, computed
        from the q/k projections, no attention maps); ``"none"``, diversity only.
    method : str, optional
        A selector name from :func:`greedyprune.methods.names` (default "greedyprune").
    seed : int, optional
        Passed to the selector (used by "random"; default 0).
    backend : {"auto", "c", "torch"}, optional
        Where method "greedyprune" runs (default "auto"): see :func:`greedyprune.select`.

    Returns
    -------
    PruneHandle
        With ``config``, ``last``, ``last_prefill``, ``detach()`` and ``disabled()``; usable as
        a context manager. Attaching to a model that already has a handle suspends that one
        until the new one is detached (nested ``with`` blocks each prune with their own
        settings). Several threads may call the model at once: each call is pruned as it
        would be alone, and ``last`` / ``last_prefill`` are those of the calling thread's last
        prefill.
    """
    from .. import methods

    config = _config(keep, keep_ratio=keep_ratio, lam=lam, saliency=saliency, method=method,
                     seed=seed, backend=backend)
    from . import _archs
    from ._handle import PruneHandle

    spec, is_top = _archs.find(model)
    if config.saliency == "cls" and spec.cls_probe is None:
        raise ValueError(f"saliency='cls' needs a vision tower with a [CLS] token, which "
                         f"{spec.name} does not have: use saliency='text' or 'none'")
    if config.lam not in (0, "auto") and config.saliency == "none" and \
            config.method == "greedyprune":
        # ŝ = 0 without saliency, so the gain is (1 − λ)·m: λ < 1 only rescales it, and λ = 1
        # zeroes it, so that the lowest indices win every tie.
        warnings.warn(f"lam={config.lam} has no effect with saliency='none' (diversity only): "
                      f"every lam < 1 keeps the same tokens as lam=0, and lam=1 zeroes every "
                      f"gain, keeping the first k tokens; leave lam out or pass lam=0, or use "
                      f"saliency='text', 'cls' or 'query'", UserWarning, stacklevel=2)
    inner = spec.inner(model) if is_top else model
    if config.saliency == "query":
        _check_query_layer(spec.decoder(inner), spec.name)
    ordered = methods.ordered(config.method, backend=config.backend)
    return PruneHandle(model, spec, is_top, config, ordered or methods.get(config.method),
                       ordered is not None)


def get_handle(model) -> Optional["PruneHandle"]:
    """The handle pruning ``model`` now (the last one attached and not detached), or None."""
    from ._handle import handles

    stack = handles(_inner_of(model))
    return stack[-1] if stack else None


def detach(model) -> List["PruneHandle"]:
    """Detach every handle attached to ``model`` (top-level or inner), newest first, and return
    them: the model is exactly as before the first ``attach``."""
    from ._handle import handles

    detached = handles(_inner_of(model))[::-1]
    for handle in detached:
        handle.detach()
    return detached


def _inner_of(model):
    from . import _archs

    spec, is_top = _archs.find(model)
    return spec.inner(model) if is_top else model


def _config(keep, **fields) -> PruneConfig:
    """attach's arguments as a PruneConfig: ``keep`` may be one, and the fields given (not
    None) override it."""
    given = {name: value for name, value in fields.items() if value is not None}
    if isinstance(keep, PruneConfig):
        return keep.replace(**given) if given else keep
    return PruneConfig(keep=keep, **given)


def supported_models() -> List[str]:
    """Class names :func:`attach` accepts."""
    from ._archs import supported_classes

    return supported_classes()


def _check_query_layer(decoder, name: str) -> None:
    layers = getattr(decoder, "layers", None)
    layer = layers[0] if layers is not None and len(layers) else None
    attention = getattr(layer, "self_attn", None)
    if not (hasattr(layer, "input_layernorm") and hasattr(attention, "q_proj")
            and hasattr(attention, "k_proj")):
        raise ValueError(f"saliency='query' reads the first decoder layer's input_layernorm and "
                         f"self_attn.q_proj/k_proj, which {name}'s decoder does not have: use "
                         f"saliency='text', 'cls' or 'none'")


def __getattr__(name):
    # PruneHandle lives with the hooks, which import torch: load it only when asked for.
    if name == "PruneHandle":
        from ._handle import PruneHandle

        return PruneHandle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
