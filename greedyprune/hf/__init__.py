"""Visual-token pruning inside HuggingFace transformers vision-language models, through hooks.

::

    from greedyprune.hf import attach

    handle = attach(model, keep=64)          # or keep_ratio=0.111; lam, saliency, method, seed
    out = model.generate(**inputs)           # called exactly as before
    handle.last                              # per image: tokens before/after, kept indices, time
    handle.detach()                          # the model is exactly as before

    with attach(model, keep=64):             # the same, scoped
        ...

``handle.last`` lists one :class:`ImageRecord` per image of the last pruned prefill: its batch
row, tokens before and after, the kept tokens as indices into the image's own placeholder run
and as positions in the row, the selection time, and a :class:`PatchGrid` that maps each
placeholder token to a patch of the image (LLaVA: one ``side × side`` grid; LLaVA-NeXT: the base
grid plus the crop grid, best-fit canvas and unpadded high-resolution rows, newlines marked).
``handle.last_prefill`` (:class:`PrefillRecord`) adds the sequence lengths, where each position
of the pruned sequence came from, and the hook's time by stage.

Supported, each as the top-level ``...ForConditionalGeneration`` or its inner ``...Model``: LLaVA,
LLaVA-NeXT, LLaVA-OneVision (images and video), Qwen2-VL, Qwen2.5-VL and Qwen3-VL (images and
video), Gemma 3, Idefics3 and SmolVLM. The list comes from the table in
:mod:`greedyprune.hf._archs`; :func:`supported_models` returns it.

What happens (docs/spec.md §5):

- Pruning happens after the model merged the image features into ``inputs_embeds`` and before
  the first decoder layer, so every decoder layer and the KV cache see only the kept tokens.
  The features for diversity are the visual tokens' input embeddings (the projector output).
- Saliency: ``"text"`` (cosine to the mean embedding of the row's text tokens), ``"cls"`` (the
  vision tower's [CLS]-to-patch attention at the feature layer, averaged over heads, computed
  from that layer's q/k projections in a hook: no eager attention, no attention maps), or
  ``"none"``. The selector is looked up by ``method`` in :mod:`greedyprune.methods`.
- The budget is per image: ``keep`` tokens (an image with fewer keeps all of them) or
  ``ceil(keep_ratio · n)``. Text tokens are never pruned. Several images per prompt, and
  left-padded batches whose rows hold different numbers of images, are supported; rows that
  lose different numbers of tokens are re-left-padded to a common length.
- Kept tokens keep their original position ids and decoding continues from the unpruned
  numbering. The hook owns the attention mask for the whole request: it stores the pruned mask
  at the prefill and, at each decode step on that cache, replaces the full-length mask that
  ``generate()`` passes by the stored one extended by the new tokens. Works with the ``sdpa``
  and ``eager`` attention implementations.
- LLaVA-NeXT newline tokens: the ``image_newline`` token that ends each row of the unpadded
  high-resolution grid is never a candidate and does not count against the budget. It is kept
  exactly when at least one token of its row is kept, and dropped with its row otherwise. The
  reasons: it is the same learned vector everywhere, so a diversity rule would keep at most one
  of them and text saliency ranks them all alike, yet it is the model's only cue for the 2-D
  layout of the rows that remain; a row with nothing left needs no end marker. The base-image
  tokens that precede the grid have no newline. Newlines are recognized by value (exact copies
  of ``image_newline``) and the crop layout is confirmed against the projector's output, so
  this works when ``generate()`` encodes the images ahead of the prefill (dropping
  ``image_sizes``) as well as in a plain forward.
- Qwen2-VL, Qwen2.5-VL, Qwen3-VL: the budget applies to each image and to each video
  (``pixel_values_videos``; images and videos may share a batch and a row). The model computes
  its M-RoPE position ids on the full sequence (pass ``mm_token_type_ids``, as the processor
  returns it); the kept tokens keep theirs on every axis, and decoding continues from the
  unpruned numbering (the model's ``rope_deltas`` come from the full sequence; a decoding step
  that passes neither position ids nor a mask, which Qwen numbers from the cache length, is
  moved back to the unpruned numbering). Qwen3-VL's DeepStack features are kept for the kept
  tokens only. No [CLS] token: ``saliency="cls"`` is refused. Records carry a ``PatchGrid`` of
  the merged ``(t, h, w)`` grid.
- Gemma 3: its decoder takes a dict of 4-D masks ({"full_attention", "sliding_attention"})
  that the model builds from ``token_type_ids`` (each image's tokens attend to one another
  bidirectionally). The hook rebuilds that dict from the pruned 2-D mask and the
  ``token_type_ids`` gathered with the kept tokens, at the prefill and at every decoding step;
  an image's kept tokens stay one bidirectional block. Placeholders are found in the
  ``input_ids`` the model is called with (an out-of-vocabulary image token is embedded as 0).
- LLaVA-OneVision: images follow the LLaVA-NeXT newline rule (newlines found by value, the
  crop layout confirmed against the projector's output; a canvas the model resampled to fit
  "anyres_max_N" has no exact patch map, so its record has no grid). Each video
  (``pixel_values_videos``: pooled frames, then one ``image_newline``, which stays) has its own
  budget; tens of thousands of tokens per video are fine (the selection needs O(N) memory).
- Idefics3 / SmolVLM: every placeholder token is a candidate; the processor's markers
  (``<fake_token_around_image>``, ``<row_i_col_j>``, ``<global-img>``, newlines) are text. The
  budget is per image, over its sub-images and global image, which are grouped by the
  ``<global-img>`` marker that precedes every row's last crop; records carry the crop grid
  (view 1) and the global image (view 0). Prompts without that layout get one budget per crop.
- No [CLS] token in the SigLIP towers of Gemma 3, LLaVA-OneVision and Idefics3 / SmolVLM:
  ``saliency="cls"`` is refused there, naming "text" and "none".
- A budget that keeps every token of every image (``keep`` at least each image's count,
  ``keep_ratio=1``) changes nothing: the call runs exactly as without the hooks (same shapes,
  masks and cache; ``handle.last`` still describes the images). Pruning otherwise keeps each
  row's valid tokens: padding and masked tokens (placeholders included, which are then not
  candidates) are dropped, and rows are re-left-padded to the longest.
- Refused with a clear error rather than answered wrongly, and only when images really lose
  tokens: static or compilable caches, ``torch.compile``, several new tokens on a pruned cache
  (assisted decoding, prompt lookup, chunked prefill, continuing from a pruned
  ``past_key_values``), images in a call that continues from a cache, prepared 4-D masks,
  ``labels`` (the logits cover the pruned sequence; ``handle.last_prefill.source_positions``
  maps them back), packed rows on Gemma 3, and a model attached as the inner module of a head
  other than ``...ForConditionalGeneration`` (such as ``Gemma3ForSequenceClassification``,
  which pools at positions of the unpruned sequence; ``attach`` refuses the head itself).
- Packed rows (several sequences per row: ``position_ids`` restarting, no ``attention_mask``,
  no cache) stay apart after pruning: the decoder gets a 4-D mask of the kept tokens'
  sequences, since transformers infers sequences from unbroken position ids.
- Without a cache (``use_cache=False``) every forward is a prefill and is pruned afresh. When
  such a call extends the previous ``use_cache=False`` call's ``input_ids`` (as
  ``generate(use_cache=False)`` does at every step), text and query saliency read the previous
  call's tokens only, so the kept set, and the answer, are those of ``use_cache=True``.
- Threads: several threads may run ``generate()`` (or forward) on one attached model at once;
  each call keeps its own state and is pruned exactly as it would be alone. ``handle.last`` and
  ``handle.last_prefill`` are those of the calling thread's last prefill (in a thread that has
  run none, the last prefill of any thread). Attach and detach while no call is running.
- Sliding-window attention, where a text model has it, counts kept tokens.

torch and transformers are imported only when :func:`attach` runs: ``import greedyprune.hf``
costs nothing without them.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, List, Optional, Union

from ..config import DEFAULT_LAM, SALIENCY, PruneConfig, Saliency
from ._records import ImageRecord, PatchGrid, PrefillRecord

if TYPE_CHECKING:
    from ._handle import PruneHandle

__all__ = ["attach", "detach", "get_handle", "supported_models", "PruneConfig", "PruneHandle",
           "ImageRecord", "PatchGrid", "PrefillRecord", "SALIENCY", "DEFAULT_LAM"]


def attach(model, keep: Union[int, PruneConfig, None] = None, *,
           keep_ratio: Optional[float] = None, lam: Optional[float] = None,
           saliency: Optional[Saliency] = None, method: Optional[str] = None,
           seed: Optional[int] = None) -> "PruneHandle":
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
    lam : float, optional
        Weight of saliency against diversity, in [0, 1] (docs/spec.md §1); None (the default) means
        :data:`DEFAULT_LAM`, 0: diversity only, which kept a trained model's answers best from
        8% of the tokens up; at 4% ``lam=0.25`` with ``saliency="cls"`` did better. With
        ``saliency="none"`` there is no saliency to weigh: passing a ``lam`` other than 0 to
        method "greedyprune" then warns (every ``lam < 1`` keeps the same tokens, and
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
                     seed=seed)
    from . import _archs
    from ._handle import PruneHandle

    spec, is_top = _archs.find(model)
    if config.saliency == "cls" and spec.cls_probe is None:
        raise ValueError(f"saliency='cls' needs a vision tower with a [CLS] token, which "
                         f"{spec.name} does not have: use saliency='text' or 'none'")
    if config.lam != 0 and config.saliency == "none" and config.method == "greedyprune":
        # ŝ = 0 without saliency, so the gain is (1 − λ)·m: λ < 1 only rescales it, and λ = 1
        # zeroes it, so that the lowest indices win every tie.
        warnings.warn(f"lam={config.lam} has no effect with saliency='none' (diversity only): "
                      f"every lam < 1 keeps the same tokens as lam=0, and lam=1 zeroes every "
                      f"gain, keeping the first k tokens; leave lam out or pass lam=0, or use "
                      f"saliency='text', 'cls' or 'query'", UserWarning, stacklevel=2)
    inner = spec.inner(model) if is_top else model
    if config.saliency == "query":
        _check_query_layer(spec.decoder(inner), spec.name)
    ordered = methods.ordered(config.method)
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
