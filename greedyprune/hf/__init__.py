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
- Refused with a clear error rather than answered wrongly: static or compilable caches,
  ``torch.compile``, several new tokens on a pruned cache (assisted decoding, prompt lookup,
  chunked prefill, continuing from a pruned ``past_key_values``), images in a call that
  continues from a cache, prepared 4-D masks, ``labels`` (the logits cover the pruned
  sequence; ``handle.last_prefill.source_positions`` maps them back).
- Without a cache (``use_cache=False``) every forward is a prefill and is pruned afresh.
- Threads: several threads may run ``generate()`` (or forward) on one attached model at once;
  each call keeps its own state and is pruned exactly as it would be alone. ``handle.last`` and
  ``handle.last_prefill`` are those of the calling thread's last prefill (in a thread that has
  run none, the last prefill of any thread). Attach and detach while no call is running.
- Sliding-window attention, where a text model has it, counts kept tokens.

torch and transformers are imported only when :func:`attach` runs: ``import greedyprune.hf``
costs nothing without them.
"""
from __future__ import annotations

import numbers
import warnings
from typing import List, Optional

from .. import _validate
from ._records import ImageRecord, PatchGrid, PrefillRecord

SALIENCY = ("text", "cls", "query", "none")

#: The ``lam`` that :func:`attach` uses when none is given: diversity only. On the built-in
#: trained model it kept answers best of every λ and saliency from 8% of the tokens up (README,
#: "Does pruning keep the answers?"); weigh saliency in (``lam > 0``) for the smallest budgets.
DEFAULT_LAM = 0.0

__all__ = ["attach", "supported_models", "PruneHandle", "ImageRecord", "PatchGrid",
           "PrefillRecord", "SALIENCY"]


def attach(model, keep: Optional[int] = None, *, keep_ratio: Optional[float] = None,
           lam: Optional[float] = None, saliency: str = "text", method: str = "greedyprune",
           seed: int = 0):
    """Prune visual tokens in every forward and ``generate()`` call of ``model``.

    Parameters
    ----------
    model : a supported transformers model (see :func:`supported_models`), top-level or inner.
    keep : int, optional
        Visual tokens kept per image (>= 1). Exactly one of ``keep`` and ``keep_ratio``.
    keep_ratio : float, optional
        Fraction of each image's tokens kept, in (0, 1]; rounded up, at least one token.
    lam : float, optional
        Weight of saliency against diversity, in [0, 1] (docs/spec.md §1); None (the default) means
        :data:`DEFAULT_LAM`, 0: diversity only, which kept a trained model's answers best from
        8% of the tokens up; at 4% ``lam=0.25`` with ``saliency="cls"`` did better. With ``saliency="none"`` there is no saliency to weigh: passing a ``lam`` other
        than 0 to method "greedyprune" then warns (every ``lam < 1`` keeps the same tokens, and
        ``lam = 1`` leaves all gains at 0, keeping the first ``k`` tokens).
    saliency : {"text", "cls", "query", "none"}
        Where relevance comes from: ``"text"``, the cosine of each visual token's input
        embedding with the mean input embedding of the text tokens; ``"cls"``, the vision
        tower's [CLS] attention (CLIP-style towers); ``"query"``, the attention the first
        decoder layer's text-token queries pay each visual token (content only, computed from
        the q/k projections, no attention maps); ``"none"``, diversity only.
    method : str
        A selector name from :func:`greedyprune.methods.names` ("greedyprune" by default).
    seed : int
        Passed to the selector (used by "random").

    Returns
    -------
    PruneHandle
        With ``last``, ``last_prefill``, ``detach()``; usable as a context manager. Attaching
        to a model that already has a handle warns and replaces it. Several threads may call
        the model at once: each call is pruned as it would be alone, and ``last`` /
        ``last_prefill`` are those of the calling thread's last prefill.
    """
    from .. import methods

    keep, keep_ratio = _check_budget(keep, keep_ratio)
    lam_given = lam is not None
    lam = _validate.check_lam(DEFAULT_LAM if lam is None else lam)
    if not isinstance(saliency, str) or saliency not in SALIENCY:
        raise ValueError(f"saliency must be one of {', '.join(map(repr, SALIENCY))}, "
                         f"got {saliency!r}")
    selector = methods.get(method)
    if saliency == "none" and methods.needs_saliency(method):
        raise ValueError(f"method {method!r} needs saliency: use saliency='text', 'cls' or "
                         f"'query' with it, or a method that works without (e.g. 'greedyprune')")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

    from . import _archs
    from ._handle import ATTRIBUTE, PruneHandle

    spec, is_top = _archs.find(model)
    if saliency == "cls" and spec.cls_probe is None:
        raise ValueError(f"saliency='cls' needs a vision tower with a [CLS] token, which "
                         f"{spec.name} does not have: use saliency='text' or 'none'")
    if lam_given and lam != 0 and saliency == "none" and method == "greedyprune":
        # ŝ = 0 without saliency, so the gain is (1 − λ)·m: λ < 1 only rescales it, and λ = 1
        # zeroes it, so that the lowest indices win every tie.
        warnings.warn(f"lam={lam} has no effect with saliency='none' (diversity only): every "
                      f"lam < 1 keeps the same tokens as lam=0, and lam=1 zeroes every gain, "
                      f"keeping the first k tokens; leave lam out or pass lam=0, or use "
                      f"saliency='text', 'cls' or 'query'", UserWarning, stacklevel=2)
    inner = spec.inner(model) if is_top else model
    if saliency == "query":
        _check_query_layer(spec.decoder(inner), spec.name)
    previous = getattr(inner, ATTRIBUTE, None)
    if previous is not None:
        warnings.warn(f"{type(model).__name__} already has greedyprune.hf attached "
                      f"({previous!r}); replacing it", RuntimeWarning, stacklevel=2)
        previous.detach()
    return PruneHandle(model, spec, is_top, keep=keep, keep_ratio=keep_ratio, lam=lam,
                       saliency=saliency, method=method, seed=int(seed), selector=selector)


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


def _check_budget(keep, keep_ratio):
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
    if not 0 < keep_ratio <= 1:  # compared before converting: NaN and huge integers fail it
        raise ValueError(f"keep_ratio must be in (0, 1], got {_validate.number_text(keep_ratio)}")
    return None, float(keep_ratio)


def __getattr__(name):
    # PruneHandle lives with the hooks, which import torch: load it only when asked for.
    if name == "PruneHandle":
        from ._handle import PruneHandle

        return PruneHandle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
