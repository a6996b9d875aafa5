"""The vocabulary of the architecture table: what an entry is, how a unit of placeholder tokens
is described, registration and lookup, and the helpers several families share.

The generic code relies on three conventions, true of every registered family in transformers
5.24: the inner model fills placeholder tokens with features in row-major order over (batch,
sequence) (``masked_scatter``), one image's tokens lie in one row, and the decoder is called with
keyword arguments only. See docs/architectures.md for what each family does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .._records import PatchGrid


@dataclass(frozen=True)
class UnitLayout:
    """The run of placeholder tokens of one image (or video), in sequence order.

    ``structural`` (bool, per token) marks tokens that are never candidates for pruning; each
    is kept exactly when some selected token has the same ``group`` value (a LLaVA-NeXT
    newline stays with the row it ends; group -1 is no group). ``vision_index`` (int, per token)
    is the flat index ``crop * T + column`` of the token's source in the vision tower's output of
    this call (T tokens per crop, column 0 being [CLS]); -1 where there is none. Both None mean
    "every token is a candidate" and "unknown".
    """

    n_tokens: int
    structural: Optional[np.ndarray] = None
    group: Optional[np.ndarray] = None
    vision_index: Optional[np.ndarray] = None
    grid: Optional[PatchGrid] = None


@dataclass
class VisionRecord:
    """What the hooks recorded during one run of the vision tower that ``units`` functions read.

    ``tower_kwargs``: the small keyword arguments of the tower call (such as Qwen2-VL's
    ``grid_thw``, which ``generate()`` no longer passes to the model once it has encoded the
    images). ``fingerprint``: a few feature dimensions (``fingerprint_dims``) of every token the
    projector emitted, a (crops, tokens, dims) CPU tensor, to confirm a layout against the data;
    None where the entry names no projector or it did not run.
    """

    tower_kwargs: Dict[str, Any] = field(default_factory=dict)
    fingerprint: Any = None
    fingerprint_dims: Any = None


@dataclass(frozen=True)
class UnitsContext:
    """What a ``units`` function gets to describe one call's placeholder runs.

    ``inputs``: the inner forward's keyword arguments named in ``ArchSpec.call_inputs`` (None
    where absent). ``total``: this media's placeholder tokens in the batch. ``encoder_output``:
    the vision encoder's output object for this call (its ``pooler_output`` holds the per-image
    features, as ``get_image_features`` left them), whether the encoder ran inside the forward
    or ``generate()`` ran it beforehand and passed it as ``mm_encoder_outputs``; None if
    unknown. ``vision``: what the hooks recorded for that output, or None.
    """

    inner: Any
    inputs: Dict[str, Any]
    total: int
    encoder_output: Any = None
    vision: Optional[VisionRecord] = None


#: ``units(ctx) -> [UnitLayout, ...]``, one per image (or video) in feature order.
UnitsFn = Callable[[UnitsContext], List[UnitLayout]]


@dataclass(frozen=True)
class Media:
    """One kind of visual input: the budget applies to each of its units separately.

    ``token_id(config)`` is its placeholder token id. ``pixel_key`` names the inner forward's
    argument carrying its raw input and ``encoder_key`` its key in ``mm_encoder_outputs``
    ("image", "video"): a call carries this media only when one of them is given (a placeholder
    token id in a call without either, such as a generated token, is plain text to the model,
    and so to the hooks).
    """

    name: str
    token_id: Callable[[Any], int]
    units: UnitsFn
    pixel_key: str = "pixel_values"
    encoder_key: str = "image"


@dataclass(frozen=True)
class ArchSpec:
    """What greedyprune.hf needs to know about one architecture.

    - ``top_classes`` / ``inner_classes``: the class names ``attach`` accepts. ``inner(top)``
      goes from the top-level model to the *inner* model, whose forward merges visual features
      into the embeddings and calls the decoder; ``decoder(inner)`` finds the decoder.
    - ``media``: each kind of visual input (:class:`Media`).
    - ``call_inputs``: the inner forward's keyword arguments the ``units`` functions read.
    - ``vision_tower(inner)``: the module whose output object ``get_image_features`` returns
      (records are tied to that object, because ``generate()`` runs the encoder before the
      prefill and hands its output over as ``mm_encoder_outputs``). ``projector(inner)``:
      optional, a module whose output holds each crop's tokens before any re-packing (recorded
      as :attr:`VisionRecord.fingerprint`).
    - ``cls_probe(inner, inputs)``: the attention module whose [CLS] row gives
      ``saliency="cls"``; None when the tower has no [CLS] token (``saliency="cls"`` is then
      refused at attach time).
    - ``seq_kwargs``: decoder keyword arguments, besides ``inputs_embeds``, ``position_ids`` and
      ``attention_mask``, with one value per token on their last axis, gathered at the kept
      positions (any other tensor shaped ``(..., B or 1, L)`` is gathered too; naming one here
      makes it explicit).
    - ``decoder_mask(inner, mask, kwargs, per_token)``: for decoders that take a prepared mask
      instead of the 2-D padding mask: builds it from the pruned 2-D ``mask`` (B, kv length) at
      the prefill and at every decode step; ``kwargs`` are the decoder's pruned keyword
      arguments and ``per_token`` maps each name in ``mask_inputs`` (inner-forward arguments
      with a token axis last) to its values for every cached token, aligned with ``mask``. The
      2-D padding mask then comes from the inner forward's ``attention_mask``.
    - ``prune_kwargs(kwargs, new, keep)``: at the prefill, shortens decoder arguments the
      generic gathering cannot (updates ``new`` in place; ``keep`` is the (B, L) keep mask).
    - ``decode_position_ids(inner, inputs, position_ids, shift)``: for inner models that number
      a decode step themselves from the cache length: returns the position ids of the unpruned
      numbering, ``shift`` being the tokens the prefill removed.
    """

    name: str
    top_classes: Tuple[str, ...]
    inner_classes: Tuple[str, ...]
    media: Tuple[Media, ...]
    inner: Callable[[Any], Any] = attrgetter("model")
    decoder: Callable[[Any], Any] = attrgetter("language_model")
    call_inputs: Tuple[str, ...] = ()
    vision_tower: Optional[Callable[[Any], Any]] = None
    projector: Optional[Callable[[Any], Any]] = None
    cls_probe: Optional[Callable[[Any, Dict[str, Any]], Any]] = None
    seq_kwargs: Tuple[str, ...] = ()
    decoder_mask: Optional[Callable[..., Any]] = None
    mask_inputs: Tuple[str, ...] = ()
    prune_kwargs: Optional[Callable[..., None]] = None
    decode_position_ids: Optional[Callable[..., Any]] = None

    @property
    def classes(self) -> Tuple[str, ...]:
        return self.top_classes + self.inner_classes


# --- the table ----------------------------------------------------------------------------------

#: The table. Keys are the architecture names used in messages and in ``handle.arch``.
ARCHS: Dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    ARCHS[spec.name] = spec
    return spec


def supported_classes() -> List[str]:
    """Every model class name ``attach`` accepts, from the table."""
    return [name for spec in ARCHS.values() for name in spec.classes]


def find(model) -> Tuple[ArchSpec, bool]:
    """The entry for ``model`` and whether it is the top-level class (else the inner one).

    Matches on the class and its bases by name, so user subclasses work; TypeError otherwise.
    """
    for cls in type(model).__mro__:
        for spec in ARCHS.values():
            if cls.__name__ in spec.top_classes:
                return spec, True
            if cls.__name__ in spec.inner_classes:
                return spec, False
    name = type(model).__name__
    for child in getattr(model, "children", lambda: ())():
        try:
            spec, is_top = find(child)
        except TypeError:
            continue
        if not is_top:
            raise TypeError(
                f"greedyprune.hf.attach does not support {name}: it wraps "
                f"{type(child).__name__}, whose visual tokens greedyprune.hf can prune, but "
                f"its head reads the model's outputs at positions of the unpruned sequence; "
                f"supported: {' or '.join(spec.classes)}")
    raise TypeError(
        f"greedyprune.hf.attach does not support {name}; supported models: "
        f"{', '.join(supported_classes())}"
    )


# --- shared helpers -----------------------------------------------------------------------------


def image_token_id(config) -> int:
    return int(config.image_token_id)


def video_token_id(config) -> int:
    return int(config.video_token_id)


def tolist(value):
    return value.tolist() if hasattr(value, "tolist") else list(value)


def encoded_images(ctx: UnitsContext):
    """Per-image feature tensors of this call (the ``pooler_output`` list of the vision
    encoder's output), or None when the call carried none we can see."""
    output = ctx.encoder_output
    features = getattr(output, "pooler_output", None) if output is not None else None
    return list(features) if isinstance(features, (list, tuple)) else None


def even_counts(ctx: UnitsContext, per_unit: int, what: str) -> List[int]:
    """``ctx.total`` placeholder tokens split into units of ``per_unit`` tokens."""
    if per_unit <= 0 or ctx.total % per_unit:
        raise ValueError(f"{ctx.total} {what} placeholder tokens are not a whole number of "
                         f"{what}s of {per_unit} tokens")
    return [per_unit] * (ctx.total // per_unit)


def cell_grid(side: int, n: int, first_patch: int = 0) -> PatchGrid:
    """A PatchGrid for ``n`` tokens that are the cells of one ``side × side`` raster (view 0),
    token ``i`` being cell ``i + first_patch``; cells outside the raster are marked -1."""
    return PatchGrid(patch_side=side, token_source=cell_source(side, np.arange(n) + first_patch))


def cell_source(side: int, cell: np.ndarray, view: int = 0) -> np.ndarray:
    """(view, row, col) of each ``cell`` of a ``side × side`` raster; -1 outside it."""
    cell = np.asarray(cell, dtype=np.int64)
    source = np.stack([np.full(len(cell), view, np.int64), cell // side, cell % side], axis=1)
    source[(cell < 0) | (cell >= side * side)] = -1
    return source


# --- CLIP-style vision towers: the [CLS] probe --------------------------------------------------


def feature_strategy(inner, inputs) -> str:
    strategy = inputs.get("vision_feature_select_strategy")
    return strategy if strategy is not None else inner.config.vision_feature_select_strategy


def has_cls_token(tower) -> bool:
    """Whether a vision tower puts a [CLS] token before its patches (CLIP yes, SigLIP no)."""
    return getattr(getattr(tower, "embeddings", None), "class_embedding", None) is not None


def _vision_layers(tower, num_layers: int):
    """The tower's list of encoder layers, found by shape rather than by attribute path (the path
    differs across transformers versions: ``vision_model.encoder.layers`` vs ``encoder.layers``)."""
    import torch.nn as nn

    for name, module in tower.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith("layers") and len(module) == num_layers:
            return module
    raise TypeError(f"could not find the {num_layers} encoder layers of {type(tower).__name__}")


def _attention_of(layer):
    """The self-attention module of an encoder layer: the child with q_proj and k_proj."""
    attn = getattr(layer, "self_attn", None)
    if attn is not None and hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
        return attn
    for module in layer.modules():
        if hasattr(module, "q_proj") and hasattr(module, "k_proj"):
            return module
    raise TypeError(f"could not find the self-attention of {type(layer).__name__}")


def clip_cls_probe(inner, inputs: Dict[str, Any]):
    """The attention module inside the encoder layer that produces the feature layer.

    ``hidden_states[0]`` is the tower's embedding output and ``hidden_states[i]`` the output of
    encoder layer ``i - 1``, so feature layer ``f`` (e.g. -2) is produced by layer
    ``(f mod (L + 1)) - 1``, and ``attentions[(f mod (L + 1)) - 1]`` of an eager run with
    ``output_attentions=True`` is that same layer's attention (checked in the tests).
    """
    config = inner.config
    tower = inner.vision_tower
    if not has_cls_token(tower):
        raise ValueError(
            f"saliency='cls' needs a vision tower with a [CLS] token; {type(tower).__name__} has "
            "none: use saliency='text' or 'none'"
        )
    layer = inputs.get("vision_feature_layer")
    layer = config.vision_feature_layer if layer is None else layer
    if not isinstance(layer, int):
        raise ValueError(
            "saliency='cls' needs a single vision_feature_layer (an int), got "
            f"{layer!r}: use saliency='text' or 'none'"
        )
    num_layers = config.vision_config.num_hidden_layers
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(f"vision_feature_layer {layer} is out of range for {num_layers} layers")
    produced_by = layer % (num_layers + 1) - 1
    if produced_by < 0:
        raise ValueError(
            "saliency='cls' is undefined when the features are the vision tower's embedding "
            "output (vision_feature_layer selects hidden_states[0]): use saliency='text' or 'none'"
        )
    return _attention_of(_vision_layers(tower, num_layers)[produced_by])
