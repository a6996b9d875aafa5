"""Everything greedyprune.hf knows about particular model architectures, in one table.

The hooks in :mod:`greedyprune.hf._handle` are generic: they wait for the model to merge image
features into ``inputs_embeds``, then shorten what the language model (the *decoder*) receives.
What differs between architectures is only where things are and how a run of image
placeholder tokens maps to images and patches. That knowledge lives in one :class:`ArchSpec`
per architecture, registered in :data:`ARCHS`. Adding an architecture is one entry (plus a
tiny-model builder and tests, see ``tests/hf_models.py``).

An entry answers:

- ``top_classes`` / ``inner_classes``: the class names ``attach`` accepts. ``inner(top)`` goes
  from the top-level model to the *inner* model, the module whose forward merges visual
  features into the embeddings and calls the decoder; ``decoder(inner)`` finds the decoder.
- ``media``: each kind of visual input (images; videos for the architectures that have them)
  with its placeholder token id and a ``units(ctx)`` function describing each image's run of
  placeholder tokens as a :class:`UnitLayout`: how many tokens, which are structural and never
  pruned, which vision-tower position each came from (for ``saliency="cls"``), the patch grid
  (for ``handle.last``). ``ctx`` (:class:`UnitsContext`) carries the inner forward's keyword
  arguments named in ``call_inputs`` and the vision encoder's output for the call.
- ``vision_tower(inner)``: the module whose output object ``get_image_features`` returns (its
  hooks tie what they record to that object, because ``generate()`` runs the encoder *before*
  the prefill and hands its output over as ``mm_encoder_outputs``). ``projector(inner)``:
  optional, a module whose output holds each crop's tokens before any re-packing; a few of its
  feature dimensions are recorded so that ``units`` can confirm a layout against the data.
- ``cls_probe(inner, inputs)``: the attention module whose [CLS] row gives ``saliency="cls"``,
  or None when the vision tower has no [CLS] token (``saliency="cls"`` is then refused at
  attach time, naming the sources that work).
- ``seq_kwargs``: decoder keyword arguments, besides ``inputs_embeds``, ``position_ids`` and
  ``attention_mask``, that carry one value per token on their last axis; they are gathered at
  the kept positions like the position ids, whose leading axes may be anything (Qwen2-VL's
  M-RoPE ids are [3 or 4, B, L]). Any other tensor argument shaped ``(..., B or 1, L)`` is
  gathered the same way; naming one here makes it explicit.
- ``decoder_mask(inner, mask, kwargs, per_token)``: for decoders that receive a prepared mask
  (a dict of 4-D masks in Gemma 3) instead of the 2-D padding mask, builds that argument from
  the pruned 2-D ``mask`` (B, kv length), at the prefill and at every decode step; ``kwargs``
  are the decoder's (already pruned) keyword arguments and ``per_token`` maps each name in
  ``mask_inputs`` (inner-forward arguments with a token axis last, such as Gemma 3's
  ``token_type_ids``) to its values for every token in the cache, aligned with ``mask``:
  gathered at the kept positions at the prefill, extended by each decode step's values (zeros
  when a step passes none). The 2-D padding mask itself then comes from the inner forward's
  ``attention_mask`` argument. None means the decoder takes the 2-D mask as
  ``attention_mask``.
- ``prune_kwargs(kwargs, new, keep)``: for decoder arguments the generic gathering cannot
  shorten (Qwen3-VL's ``deepstack_visual_embeds``, a list of per-visual-token features aligned
  with ``visual_pos_masks``): called at the prefill with the decoder's original keyword
  arguments, the pruned ones (update them in place) and the (B, L) keep mask. None: nothing to do.
- ``decode_position_ids(inner, inputs, position_ids, shift)``: for inner models that number a
  decode step themselves from the cache length (Qwen2-VL's M-RoPE: cache length plus the cached
  ``rope_deltas`` when the call has neither position ids nor an attention mask): called at each
  decode step on a pruned cache with the inner forward's ``call_inputs``, the position ids the
  decoder received (possibly None) and ``shift``, the tokens the prefill removed (L - L');
  returns the position ids of the unpruned numbering. None: the decoder's position ids are kept
  as given (missing ones are numbered after the unpruned prompt).

Conventions the generic code relies on (true of LLaVA, LLaVA-NeXT, Qwen2-VL, Gemma 3 in
transformers 5.24): the inner model fills placeholder tokens with features in row-major order
over (batch, sequence) (``masked_scatter``), one image's tokens lie in one row, and the decoder
is called with keyword arguments only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ._compat import get_block_sequence_ids_for_mask
from ._records import PatchGrid


@dataclass(frozen=True)
class UnitLayout:
    """The run of placeholder tokens of one image (or video), in sequence order.

    ``structural`` (bool, per token) marks tokens that are never candidates for pruning; each
    is kept exactly when some selected token has the same ``group`` value (a LLaVA-NeXT
    newline stays with the row it ends). ``vision_index`` (int, per token) is the flat index
    ``crop * T + column`` of the token's source in the vision tower's output of this call (T
    tokens per crop, column 0 being [CLS]); -1 where there is none. Both None mean "every token
    is a candidate" and "unknown".
    """

    n_tokens: int
    structural: Optional[np.ndarray] = None
    group: Optional[np.ndarray] = None
    vision_index: Optional[np.ndarray] = None
    grid: Optional[PatchGrid] = None


@dataclass(frozen=True)
class UnitsContext:
    """What a ``units`` function gets to describe one call's placeholder runs.

    ``inputs``: the inner forward's keyword arguments named in ``ArchSpec.call_inputs`` (None
    where absent). ``total``: this media's placeholder tokens in the batch. ``encoder_output``:
    the vision encoder's output object for this call (its ``pooler_output`` holds the per-image
    features, as ``get_image_features`` left them), whether the encoder ran inside the forward
    or ``generate()`` ran it beforehand and passed it as ``mm_encoder_outputs``; None if
    unknown. ``run``: what the vision hooks recorded for that output (``cls_rows``,
    ``fingerprint``, ``fingerprint_dims``, and ``tower_kwargs``, the small keyword arguments of
    the tower call such as Qwen2-VL's ``grid_thw``, which ``generate()`` no longer passes to
    the model), or None.
    """

    inner: Any
    inputs: Dict[str, Any]
    total: int
    encoder_output: Any = None
    run: Any = None


#: ``units(ctx) -> [UnitLayout, ...]``, one per image (or video) in feature order.
UnitsFn = Callable[[UnitsContext], List[UnitLayout]]


@dataclass(frozen=True)
class Media:
    """One kind of visual input: the budget applies to each of its units separately.

    ``pixel_key`` names the inner forward's argument carrying its raw input and
    ``encoder_key`` its key in ``mm_encoder_outputs`` ("image", "video"): a call carries this
    media only when one of them is given (a placeholder token id in a call without either, such
    as a generated token, is plain text to the model, and so to the hooks).
    """

    name: str
    token_id: Callable[[Any], int]
    units: UnitsFn
    pixel_key: str = "pixel_values"
    encoder_key: str = "image"


@dataclass(frozen=True)
class ArchSpec:
    """What greedyprune.hf needs to know about one architecture (see the module docstring)."""

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


# --- shared pieces for CLIP-style vision towers ------------------------------------------------


def _feature_strategy(inner, inputs) -> str:
    strategy = inputs.get("vision_feature_select_strategy")
    return strategy if strategy is not None else inner.config.vision_feature_select_strategy


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
    if getattr(getattr(tower, "embeddings", None), "class_embedding", None) is None:
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


# --- LLaVA ------------------------------------------------------------------------------------


def _encoded_images(ctx: "UnitsContext"):
    """Per-image feature tensors of this call (the ``pooler_output`` list of the vision
    encoder's output), or None when the call carried none we can see."""
    output = ctx.encoder_output
    features = getattr(output, "pooler_output", None) if output is not None else None
    return list(features) if isinstance(features, (list, tuple)) else None


def llava_units(ctx: "UnitsContext") -> List[UnitLayout]:
    """LLaVA: one token per patch of the image (plus [CLS] first under
    ``vision_feature_select_strategy="full"``), in raster order."""
    inner = ctx.inner
    vision = inner.config.vision_config
    full = _feature_strategy(inner, ctx.inputs) == "full"
    images = _encoded_images(ctx)
    if images is not None:
        counts = [int(t.shape[0]) for t in images]
    else:
        pixel_values = ctx.inputs.get("pixel_values")
        n_images = 0 if pixel_values is None else int(pixel_values.shape[0])
        if n_images == 0 or ctx.total % n_images:
            raise ValueError(f"{ctx.total} image placeholder tokens cannot be split evenly "
                             f"among {n_images} images")
        counts = [ctx.total // n_images] * n_images
    side = int(getattr(vision, "image_size", 0)) // int(getattr(vision, "patch_size", 0) or 1)
    per_crop = side * side + 1  # a CLIP tower's sequence: [CLS], then the patches
    # CLIP's image processor resizes the shorter side and crops the centre square.
    center_crop = getattr(vision, "model_type", "") == "clip_vision_model"
    units = []
    for i, n in enumerate(counts):
        if n != side * side + full:  # not a square CLIP grid (e.g. a native-resolution tower)
            units.append(UnitLayout(n))
            continue
        columns = np.arange(per_crop - n, per_crop)
        patch = columns - 1
        source = np.stack([np.zeros(n, np.int64), patch // side, patch % side], axis=1)
        source[patch < 0] = -1
        units.append(UnitLayout(n, vision_index=i * per_crop + columns,
                                grid=PatchGrid(patch_side=side, token_source=source,
                                               center_crop=center_crop)))
    return units


# --- LLaVA-NeXT -------------------------------------------------------------------------------


def llava_next_units(ctx: "UnitsContext") -> List[UnitLayout]:
    """LLaVA-NeXT ("anyres"): each image is a base crop (the whole image at the tower's
    resolution, ``side²`` tokens, no newline) followed by a grid of high-resolution crops that
    the model stitches into one canvas, unpads (drops the rows or columns that were letterbox
    padding, equally on both sides) and ends row by row with the ``image_newline`` token.

    The layout is read from the data, because ``generate()`` encodes the images before the
    prefill and drops ``image_sizes`` from the model's inputs: the newline tokens (exact copies
    of ``image_newline``) give the unpadded canvas's rows and columns; among the crop grids of
    ``image_grid_pinpoints`` that unpad to that shape, the layout is the one whose projector
    outputs, read at the implied crop and patch, reproduce the image's tokens exactly (compared
    on a few feature dimensions recorded by the projector hook). Without such a confirmation
    the newlines are still known, but the patch grid and the [CLS] index are not
    (``saliency="cls"`` then raises).
    """
    inner = ctx.inner
    config, vision = inner.config, inner.config.vision_config
    images = _encoded_images(ctx)
    if images is None:
        raise ValueError("LLaVA-NeXT: could not see this call's image features (pass "
                         "pixel_values and image_sizes, or mm_encoder_outputs from the model)")
    side = vision.image_size // vision.patch_size
    first_column = 0 if _feature_strategy(inner, ctx.inputs) == "full" else 1
    per_crop = side * side + 1  # the tower's sequence: [CLS], then the patches
    base = per_crop - first_column
    sizes = ctx.inputs.get("image_sizes")
    sizes = None if sizes is None else [tuple(int(v) for v in s) for s in _tolist(sizes)]
    grids = sorted({(h // vision.image_size, w // vision.image_size)
                    for h, w in config.image_grid_pinpoints}, key=lambda g: (g[0] * g[1], g))
    check = _FingerprintCheck(ctx.run, first_column)

    units, crop = [], 0
    for index, tokens in enumerate(images):
        n = int(tokens.shape[0])
        newline = (tokens == inner.image_newline.to(tokens)).all(-1).cpu().numpy()
        group = np.cumsum(newline) - newline  # a newline closes the tokens since the last one
        size = sizes[index] if sizes is not None and index < len(sizes) else None
        layout = None
        if n == base + 1 and newline[-1] and newline.sum() == 1:
            # A single crop: its features and one newline.
            sources = [(crop, c) for c in range(first_column, per_crop)]
            if check.confirms(tokens, newline, sources, required=False):
                layout = _next_layout(newline, group, crop, sources, side, None, size, vision)
                crop += 1
        else:
            rows = int(newline.sum())
            width = (n - base) // max(rows, 1) - 1  # tokens per row before its newline
            group = np.where(np.arange(n) < base, -1, group)  # the base has no newline
            if rows and width > 0 and base + rows * (width + 1) == n:
                for grid in grids:
                    sources = _next_sources(crop, grid, rows, width, side, first_column)
                    if sources is not None and check.confirms(tokens, newline, sources):
                        layout = _next_layout(newline, group, crop, sources, side, grid, size,
                                              vision)
                        crop += 1 + grid[0] * grid[1]
                        break
        if layout is None:
            # Unconfirmed: keep the newline rule, lose the patch map (and, since this image's
            # crop count is unknown, the later images' too).
            check.disable()
            layout = UnitLayout(n, structural=newline, group=group.astype(np.int64))
        units.append(layout)
    return units


class _FingerprintCheck:
    """Compares tokens with the projector outputs recorded for this call's vision run."""

    def __init__(self, run, first_column: int):
        self.fingerprint = getattr(run, "fingerprint", None)   # (crops, tokens, k), CPU
        self.dims = getattr(run, "fingerprint_dims", None)
        self.first_column = first_column

    def disable(self) -> None:
        self.fingerprint = None

    def confirms(self, tokens, newline, sources, required: bool = True) -> bool:
        import torch

        if self.fingerprint is None:
            return not required
        crops = torch.tensor([c for c, _ in sources])
        columns = torch.tensor([col for _, col in sources]) - self.first_column
        if int(crops.max()) >= self.fingerprint.shape[0]:
            return False
        expected = self.fingerprint[crops, columns]
        observed = tokens[torch.from_numpy(~newline).to(tokens.device)][:, self.dims].cpu()
        return expected.shape == observed.shape and bool((expected.to(observed) == observed).all())


def _unpad_offset(grid, rows, width, side):
    """Where an unpadded ``rows`` × ``width`` token canvas sits in a ``grid`` of crops of
    ``side`` × ``side`` tokens: ``(top, left)``, the padding having been removed evenly from
    one axis (LLaVA-NeXT's and OneVision's unpadding); None when that grid cannot unpad to it."""
    height, full_width = grid[0] * side, grid[1] * side
    if rows == height and width <= full_width and (full_width - width) % 2 == 0:
        return 0, (full_width - width) // 2
    if width == full_width and rows <= height and (height - rows) % 2 == 0:
        return (height - rows) // 2, 0
    return None


def _next_sources(first_crop, grid, rows, width, side, first_column):
    """(crop, column) of the base tokens and of an unpadded ``rows`` × ``width`` canvas cut
    from a ``grid`` of crops, in sequence order (newlines excluded); None when that grid cannot
    unpad to that shape."""
    offset = _unpad_offset(grid, rows, width, side)
    if offset is None:
        return None
    top, left = offset
    sources = [(first_crop, c) for c in range(first_column, side * side + 1)]
    for r in range(top, top + rows):
        for c in range(left, left + width):
            crop = first_crop + 1 + (r // side) * grid[1] + c // side
            sources.append((crop, 1 + (r % side) * side + c % side))
    return sources


def _next_layout(newline, group, first_crop, sources, side, grid, image_size, vision):
    """The UnitLayout (vision index and patch grid) of an image whose tokens came from
    ``sources`` (one (crop, tower column) per non-newline token)."""
    n = len(newline)
    crops = np.array([c for c, _ in sources], dtype=np.int64)
    columns = np.array([col for _, col in sources], dtype=np.int64)
    tokens = np.flatnonzero(~newline)
    vision_index = np.full(n, -1, dtype=np.int64)
    vision_index[tokens] = crops * (side * side + 1) + columns
    local, patch = crops - first_crop, columns - 1
    view = np.where(local > 0, 1, 0)
    row, col = patch // side, patch % side
    if grid is not None:
        crop_row, crop_col = np.divmod(np.maximum(local - 1, 0), grid[1])
        row = np.where(view == 1, crop_row * side + row, row)
        col = np.where(view == 1, crop_col * side + col, col)
    source = np.full((n, 3), -1, dtype=np.int64)
    is_patch = patch >= 0
    source[tokens[is_patch]] = np.stack([view, row, col], axis=1)[is_patch]
    return UnitLayout(
        n, structural=newline, group=group.astype(np.int64), vision_index=vision_index,
        grid=PatchGrid(
            patch_side=side, token_source=source,
            crop_grid=None if grid is None else (int(grid[0]), int(grid[1])),
            canvas_pixels=None if grid is None else (grid[0] * vision.image_size,
                                                     grid[1] * vision.image_size),
            image_size=image_size,
        ),
    )


def _tolist(value):
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _image_token_id(config) -> int:
    return int(config.image_token_id)


_LLAVA_INPUTS = ("pixel_values", "image_sizes", "mm_encoder_outputs", "vision_feature_layer",
                 "vision_feature_select_strategy")

#: The table. Keys are the architecture names used in messages and in ``handle.arch``.
ARCHS: Dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    ARCHS[spec.name] = spec
    return spec


register(ArchSpec(
    name="llava",
    top_classes=("LlavaForConditionalGeneration",),
    inner_classes=("LlavaModel",),
    media=(Media("image", _image_token_id, llava_units),),
    call_inputs=_LLAVA_INPUTS,
    vision_tower=attrgetter("vision_tower"),
    cls_probe=clip_cls_probe,
))

register(ArchSpec(
    name="llava_next",
    top_classes=("LlavaNextForConditionalGeneration",),
    inner_classes=("LlavaNextModel",),
    media=(Media("image", _image_token_id, llava_next_units),),
    call_inputs=_LLAVA_INPUTS,
    vision_tower=attrgetter("vision_tower"),
    projector=attrgetter("multi_modal_projector"),
    cls_probe=clip_cls_probe,
))


# --- Gemma 3, LLaVA-OneVision, Idefics3 / SmolVLM (issue 5) --------------------------------------
#
# Their vision towers are SigLIP (Idefics3 / SmolVLM: a SigLIP variant; every LLaVA-OneVision
# checkpoint too), which has no [CLS] token, so these entries have no ``cls_probe``:
# ``saliency="cls"`` is refused at attach time.


def _cell_grid(side: int, n: int, first_patch: int = 0) -> PatchGrid:
    """A PatchGrid for ``n`` tokens that are the cells of one ``side × side`` raster (view 0),
    token ``i`` being cell ``i + first_patch``; cells outside the raster are marked -1."""
    cell = np.arange(n, dtype=np.int64) + first_patch
    source = np.stack([np.zeros(n, np.int64), cell // side, cell % side], axis=1)
    source[(cell < 0) | (cell >= side * side)] = -1
    return PatchGrid(patch_side=side, token_source=source)


def _even_counts(ctx: "UnitsContext", per_unit: int, what: str) -> List[int]:
    if per_unit <= 0 or ctx.total % per_unit:
        raise ValueError(f"{ctx.total} {what} placeholder tokens are not a whole number of "
                         f"{what}s of {per_unit} tokens")
    return [per_unit] * (ctx.total // per_unit)


# --- Gemma 3 ---


def gemma3_units(ctx: "UnitsContext") -> List[UnitLayout]:
    """Gemma 3: every image is an ``s × s`` raster of tokens, the SigLIP patches average-pooled,
    all of them candidates. ``s`` is what the projector emits: its ``patches_per_image``
    pooled by its ``kernel_size`` (``config.mm_tokens_per_image`` is only the target; a
    non-square value or a patch count it does not divide gives another count). The
    ``<start_of_image>`` and ``<end_of_image>`` tokens around the run are text to the model,
    and so to the hooks."""
    projector = ctx.inner.multi_modal_projector
    side = int(projector.patches_per_image) // int(projector.kernel_size)
    return [UnitLayout(n, grid=_cell_grid(side, n))
            for n in _even_counts(ctx, side * side, "image")]


def gemma3_decoder_mask(inner, mask, kwargs, per_token):
    """Gemma 3's decoder takes a dict of 4-D masks ({"full_attention", "sliding_attention"}),
    which the inner model builds from the unpruned sequence. Rebuild it the way the model does,
    from the pruned 2-D ``mask`` and the ``token_type_ids`` gathered with the kept tokens: each
    image's kept tokens still form one contiguous block that attends to itself bidirectionally
    (causally to everything else), and sliding layers keep their window over the cached, i.e.
    kept, tokens. At a decode step (one text token, type 0) this is the causal mask."""
    from transformers.masking_utils import create_masks_for_generate
    from transformers.models.gemma3 import modeling_gemma3

    embeds = kwargs["inputs_embeds"]
    cache = kwargs.get("cache")
    cache = cache if cache is not None else kwargs.get("past_key_values")
    mask_kwargs = dict(config=inner.config.get_text_config(), inputs_embeds=embeds,
                       attention_mask=mask, cache=cache, position_ids=kwargs.get("position_ids"))
    types = per_token.get("token_type_ids")
    if types is None:
        return create_masks_for_generate(**mask_kwargs)
    blocks = get_block_sequence_ids_for_mask(types, device=embeds.device)
    return modeling_gemma3.create_masks_for_vision_model(block_sequence_ids=blocks, **mask_kwargs)


register(ArchSpec(
    name="gemma3",
    top_classes=("Gemma3ForConditionalGeneration",),
    inner_classes=("Gemma3Model",),
    media=(Media("image", _image_token_id, gemma3_units),),
    call_inputs=("pixel_values", "mm_encoder_outputs"),
    vision_tower=attrgetter("vision_tower"),
    decoder_mask=gemma3_decoder_mask,
    mask_inputs=("token_type_ids",),
))


# --- LLaVA-OneVision ---


def _onevision_tokens_per_crop(inner, inputs) -> Tuple[int, int, int]:
    """(tokens per tower crop after the feature strategy, patches per side, patch index of a
    crop's first token). A SigLIP tower (the usual one) has no [CLS]: "full" keeps its side²
    patches; a CLIP tower's [CLS] is patch -1."""
    vision = inner.config.vision_config
    side = int(vision.image_size) // int(vision.patch_size)
    embeddings = getattr(inner.vision_tower, "embeddings", None)
    has_cls = getattr(embeddings, "class_embedding", None) is not None
    dropped = int(_feature_strategy(inner, inputs) == "default")
    return side * side + int(has_cls) - dropped, side, dropped - int(has_cls)


def onevision_image_units(ctx: "UnitsContext") -> List[UnitLayout]:
    """LLaVA-OneVision images, packed as in LLaVA-NeXT: a base crop (one tower input, no
    newline), then the unpadded high-resolution canvas row by row, each row ended by
    ``image_newline``; an image of a multi-image prompt (which the model does not split, see
    ``batch_num_images``) is one crop plus one newline.

    Newlines follow the LLaVA-NeXT rule (never candidates; one is kept exactly when a token of
    its row is kept) and are recognized by value, since ``generate()`` drops ``image_sizes``
    and ``batch_num_images`` once it has encoded the images. The patch grid is read from the
    data as for LLaVA-NeXT: the crop grid whose projector outputs reproduce the image's tokens
    exactly. A canvas larger than "anyres_max_N" allows was resampled by the model: its tokens
    have no exact patch, so that image (and, its crop count being unknown, every later image of
    the call) gets no grid; the newline rule does not need one.
    """
    inner = ctx.inner
    config, vision = inner.config, inner.config.vision_config
    images = _encoded_images(ctx)
    if images is None:
        raise ValueError("LLaVA-OneVision: could not see this call's image features (pass "
                         "pixel_values and image_sizes, or mm_encoder_outputs from the model)")
    per_crop, side, first_patch = _onevision_tokens_per_crop(inner, ctx.inputs)
    sizes = ctx.inputs.get("image_sizes")
    sizes = None if sizes is None else [tuple(int(v) for v in s) for s in _tolist(sizes)]
    grids = sorted({(h // vision.image_size, w // vision.image_size)
                    for h, w in config.image_grid_pinpoints}, key=lambda g: (g[0] * g[1], g))
    check = _FingerprintCheck(ctx.run, 0)   # sources below index the projector's tokens
    units, crop = [], 0
    for index, tokens in enumerate(images):
        n = int(tokens.shape[0])
        newline = (tokens == inner.image_newline.to(tokens)).all(-1).cpu().numpy()
        group = (np.cumsum(newline) - newline).astype(np.int64)
        if n == per_crop + 1 and newline[-1] and newline.sum() == 1:
            # The newline falls outside the raster (cell side²) and is marked -1.
            units.append(UnitLayout(n, structural=newline, group=group,
                                    grid=_cell_grid(side, n, first_patch)))
            crop += 1
            continue
        group = np.where(np.arange(n) < per_crop, -1, group)  # the base crop has no newline
        rows = int(newline.sum())
        width = (n - per_crop) // max(rows, 1) - 1   # canvas tokens per row, newline excluded
        grid = None
        if rows and width > 0 and per_crop + rows * (width + 1) == n:
            for shape in grids:
                placed = _onevision_canvas(crop, shape, rows, width, side, per_crop, first_patch)
                if placed is not None and check.confirms(tokens, newline, placed[0]):
                    size = sizes[index] if sizes is not None and index < len(sizes) else None
                    grid = PatchGrid(
                        patch_side=side, token_source=_with_newlines(placed[1], newline),
                        crop_grid=(int(shape[0]), int(shape[1])),
                        canvas_pixels=(shape[0] * vision.image_size, shape[1] * vision.image_size),
                        image_size=size)
                    crop += 1 + shape[0] * shape[1]
                    break
        if grid is None:
            check.disable()
        units.append(UnitLayout(n, structural=newline, group=group, grid=grid))
    return units


def _onevision_canvas(first_crop, shape, rows, width, side, per_crop, first_patch):
    """For an image whose high-resolution crops form a ``shape`` grid and unpad to ``rows`` ×
    ``width`` tokens: each non-newline token's (crop, index in that crop's projector output),
    and its (view, row, col) patch; None when that grid cannot unpad to that shape."""
    offset = _unpad_offset(shape, rows, width, side)
    if offset is None:
        return None
    top, left = offset
    base = np.arange(per_crop)
    patch = base + first_patch
    r, c = np.divmod(np.arange(rows * width), width)
    r, c = r + top, c + left
    crops = np.r_[np.full(per_crop, first_crop), first_crop + 1 + (r // side) * shape[1] + c // side]
    cells = np.r_[patch, (r % side) * side + c % side]
    index = cells - first_patch   # a token's place in its crop's projector output
    source = np.concatenate([
        np.stack([np.zeros(per_crop, np.int64), patch // side, patch % side], axis=1),
        np.stack([np.ones(rows * width, np.int64), r, c], axis=1)])
    source[:per_crop][(patch < 0) | (patch >= side * side)] = -1
    return list(zip(crops.tolist(), index.tolist())), source


def _with_newlines(source, newline):
    """Spread per-token rows over the full run, -1 at the newline positions."""
    full = np.full((len(newline), 3), -1, dtype=np.int64)
    full[~newline] = source
    return full


def onevision_video_units(ctx: "UnitsContext") -> List[UnitLayout]:
    """LLaVA-OneVision videos: every frame's patches pooled 2× per side, frame after frame, then
    one ``image_newline`` for the whole video. One budget per video; the newline is structural
    and stays (every video keeps at least one token)."""
    import torch

    features = getattr(ctx.encoder_output, "pooler_output", None)
    if isinstance(features, torch.Tensor):
        counts = [int(features.shape[1])] * int(features.shape[0])
    else:
        videos = ctx.inputs.get("pixel_values_videos")
        count = 0 if videos is None else int(videos.shape[0])
        counts = _even_counts(ctx, ctx.total // count if count else 0, "video")
    units = []
    for n in counts:
        structural = np.zeros(n, dtype=bool)
        structural[-1] = True
        units.append(UnitLayout(n, structural=structural, group=np.zeros(n, dtype=np.int64)))
    return units


def _video_token_id(config) -> int:
    return int(config.video_token_id)


register(ArchSpec(
    name="llava_onevision",
    top_classes=("LlavaOnevisionForConditionalGeneration",),
    inner_classes=("LlavaOnevisionModel",),
    media=(Media("image", _image_token_id, onevision_image_units),
           Media("video", _video_token_id, onevision_video_units,
                 pixel_key="pixel_values_videos", encoder_key="video")),
    call_inputs=_LLAVA_INPUTS + ("pixel_values_videos",),
    vision_tower=attrgetter("vision_tower"),
    projector=attrgetter("multi_modal_projector"),
))


# --- Idefics3 / SmolVLM ---


def idefics3_units(ctx: "UnitsContext") -> List[UnitLayout]:
    """Idefics3 and SmolVLM: the processor splits an image into ``R × C`` sub-images (crops of
    the tower's size) plus a downscaled global image, and writes each crop as its own run of
    ``image_seq_len`` placeholders after a marker: ``<fake_token_around_image><row_i_col_j>``
    for a sub-image (a newline after each row of them), ``<fake_token_around_image><global-img>``
    for the global image, which comes last (an image too small to split is its global image
    alone). The markers and newlines are text, never candidates. Every placeholder token is a
    candidate: the pixel-shuffled raster of its crop (``scale_factor²`` patches per token).

    The budget is per image, so the crops of one image are grouped. The marker ids are the
    processor's, not in the model's config, so they are read from the data: every row's last
    crop is a global image, which names the ``<global-img>`` id, and a crop after that marker
    closes an image. A row of sub-images ends where more than the two marker tokens separate
    two consecutive sub-images (the newline). Recorded grid: view 0 the global image, view 1 the
    ``R × C`` crops. Prompts that follow another layout (no common marker before every row's
    last crop, runs that are not whole crops, no ``input_ids``) fall back to one budget per
    crop, with one grid per crop.
    """
    config = ctx.inner.config
    vision = config.vision_config
    side = int(vision.image_size) // int(vision.patch_size) // int(config.scale_factor)
    per_crop = side * side
    counts = _even_counts(ctx, per_crop, "image")
    per_crop_units = [UnitLayout(n, grid=_cell_grid(side, n)) for n in counts]
    images = _idefics3_images(ctx.inputs.get("input_ids"), int(config.image_token_id), per_crop)
    if images is None or sum(len(starts) for starts in images) != len(counts):
        return per_crop_units
    return [_idefics3_layout(starts, side, int(vision.image_size)) for starts in images]


def _idefics3_images(input_ids, image_token_id: int, per_crop: int):
    """Each image's crop start positions (row-major over the batch), or None when the prompt
    does not follow the processor's layout."""
    if input_ids is None:
        return None
    ids = input_ids.cpu().numpy()
    runs = []   # per row: [(start, marker id)]
    for row in ids:
        positions = np.flatnonzero(row == image_token_id)
        if not len(positions):
            runs.append([])
            continue
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        starts = positions[np.r_[0, breaks]]
        stops = positions[np.r_[breaks - 1, len(positions) - 1]] + 1
        if np.any(stops - starts != per_crop) or starts[0] == 0:
            return None
        runs.append([(int(s), int(row[s - 1])) for s in starts])
    closers = {row_runs[-1][1] for row_runs in runs if row_runs}
    if len(closers) != 1:
        return None
    (global_marker,) = closers
    images = []
    for row_runs in runs:
        current = []
        for start, marker in row_runs:
            current.append(start)
            if marker == global_marker:
                images.append(current)
                current = []
    return images


def _idefics3_layout(starts, side: int, image_size: int) -> UnitLayout:
    """One image of ``len(starts)`` crops (sub-images, then the global image)."""
    per_crop = side * side
    n = per_crop * len(starts)
    cell = np.arange(per_crop)
    global_source = np.stack([np.zeros(per_crop, np.int64), cell // side, cell % side], axis=1)
    sub = len(starts) - 1
    if sub == 0:
        return UnitLayout(n, grid=PatchGrid(patch_side=side, token_source=global_source))
    # Text between consecutive sub-images: the two markers within a row of crops, a newline
    # and the markers from one row to the next.
    gaps = np.diff(starts[:sub]) - per_crop
    new_row = np.r_[False, gaps > 2]
    rows = int(new_row.sum()) + 1
    cols = sub // rows
    if rows * cols != sub or np.any(np.bincount(np.cumsum(new_row)) != cols):
        return UnitLayout(n)   # not a rectangular grid of crops: no patch map
    sources = []
    for k in range(sub):
        i, j = divmod(k, cols)
        sources.append(np.stack([np.ones(per_crop, np.int64), i * side + cell // side,
                                 j * side + cell % side], axis=1))
    sources.append(global_source)
    return UnitLayout(n, grid=PatchGrid(
        patch_side=side, token_source=np.concatenate(sources), crop_grid=(rows, cols),
        canvas_pixels=(rows * image_size, cols * image_size)))


IDEFICS3 = register(ArchSpec(
    name="idefics3",
    top_classes=("Idefics3ForConditionalGeneration",),
    inner_classes=("Idefics3Model",),
    media=(Media("image", _image_token_id, idefics3_units),),
    decoder=attrgetter("text_model"),
    call_inputs=("input_ids", "pixel_values", "mm_encoder_outputs"),
    vision_tower=attrgetter("vision_model"),
))

# SmolVLM is a copy of Idefics3 under other class names (not subclasses) in transformers 5.x.
register(replace(IDEFICS3, name="smolvlm",
                 top_classes=("SmolVLMForConditionalGeneration",),
                 inner_classes=("SmolVLMModel",)))


# --- Qwen2-VL / Qwen2.5-VL / Qwen3-VL (issue 5) -------------------------------------------------


def _qwen_units(kind: str):
    """The ``units`` function of Qwen's images (``kind="image"``) or videos (``"video"``).

    The vision tower cuts an image or video into 14-px (Qwen3-VL: 16-px) patches on a
    ``(t, h, w)`` grid (``t`` counts pairs of frames, ``temporal_patch_size``; 1 for an image),
    and its merger turns each ``m × m`` block of patches (``spatial_merge_size``) into one
    token, so a unit has ``t·h·w / m²`` tokens, in raster order over ``(t, h/m, w/m)``
    (Qwen2.5-VL computes in window order and restores this order at the end of ``visual``).
    One image or one video is one unit: the budget applies to each. Qwen3-VL writes a video
    frame by frame, each run of placeholders after its timestamp text; the unit is still the
    whole video. No token is structural (``<|vision_start|>`` / ``<|vision_end|>`` and the
    timestamps are text tokens and never pruned).

    The grids come from the vision run's ``grid_thw`` (``generate()`` drops ``image_grid_thw``
    from the model's inputs once it has encoded the images), else from the call's
    ``image_grid_thw`` / ``video_grid_thw``; the token counts from the encoder's per-unit
    features. Without a grid the unit has no :class:`PatchGrid`.
    """
    def units(ctx: "UnitsContext") -> List[UnitLayout]:
        vision = ctx.inner.config.vision_config
        merge = int(vision.spatial_merge_size)
        grids = ctx.run.tower_kwargs.get("grid_thw") if ctx.run is not None else None
        if grids is None:
            grids = ctx.inputs.get(f"{kind}_grid_thw")
        grids = None if grids is None else [tuple(int(v) for v in g) for g in _tolist(grids)]
        features = _encoded_images(ctx)
        if features is not None:
            counts = [int(t.shape[0]) for t in features]
        elif grids is not None:
            counts = [t * h * w // (merge * merge) for t, h, w in grids]
        else:
            raise ValueError(f"Qwen-VL: could not see this call's {kind} features or "
                             f"{kind}_grid_thw; pass them to the model")
        if grids is not None and [t * h * w // (merge * merge) for t, h, w in grids] != counts:
            grids = None  # not this call's grids: leave the patch map out rather than guess
        layouts = []
        for i, n in enumerate(counts):
            grid = None
            if grids is not None:
                t, h, w = grids[i]
                grid = PatchGrid(patch_side=int(vision.patch_size),
                                 token_source=_qwen_token_source(t, h // merge, w // merge))
            layouts.append(UnitLayout(n, grid=grid))
        return layouts

    return units


def _qwen_token_source(t: int, rows: int, cols: int) -> np.ndarray:
    """(view, row, col) of each token of a ``t × rows × cols`` merged grid, raster order; the
    view is the temporal index (0 for an image)."""
    view, row, col = np.meshgrid(np.arange(t), np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([view.ravel(), row.ravel(), col.ravel()], axis=1).astype(np.int64)


def qwen_decode_position_ids(inner, inputs, position_ids, shift: int):
    """A decode step that passed the inner model neither position ids nor an attention mask
    (a hand-written decoding loop) is numbered there from the cache length plus the
    ``rope_deltas`` it cached at the prefill; the pruned cache is ``shift`` tokens shorter than
    the unpruned one, so move those positions (every M-RoPE axis) by ``shift``. With position
    ids (``generate()`` passes them) or a mask of the unpruned length, the model's numbering
    already is the unpruned one."""
    if (position_ids is None or inputs.get("position_ids") is not None
            or inputs.get("attention_mask") is not None):
        return position_ids
    return position_ids + shift


def qwen3_prune_deepstack(kwargs, new, keep) -> None:
    """Qwen3-VL adds features from intermediate vision layers (DeepStack) to the hidden states of
    the first decoder layers at the visual positions: ``deepstack_visual_embeds`` is a list of
    (visual tokens, D) tensors in row-major order of ``visual_pos_masks``. Keep the rows of the
    kept visual tokens (``visual_pos_masks`` itself is gathered as a per-token argument)."""
    embeds, visual = kwargs.get("deepstack_visual_embeds"), kwargs.get("visual_pos_masks")
    if embeds is None or visual is None:
        return
    kept = keep.to(visual.device)[visual.bool()]
    new["deepstack_visual_embeds"] = [e[kept.to(e.device)] for e in embeds]


def _qwen_video_token_id(config) -> int:
    return int(config.video_token_id)


_QWEN_MEDIA = (
    Media("image", _image_token_id, _qwen_units("image")),
    Media("video", _qwen_video_token_id, _qwen_units("video"), pixel_key="pixel_values_videos",
          encoder_key="video"),
)
_QWEN_INPUTS = ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw",
                "mm_encoder_outputs", "position_ids", "attention_mask")

for _name, _top, _inner in (
        ("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLModel"),
        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"),
        ("qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLModel")):
    register(ArchSpec(
        name=_name,
        top_classes=(_top,),
        inner_classes=(_inner,),
        media=_QWEN_MEDIA,
        call_inputs=_QWEN_INPUTS,
        # The whole tower, not its merger: Qwen2.5-VL restores the token order after it.
        vision_tower=attrgetter("visual"),
        cls_probe=None,  # no [CLS] token: saliency="cls" is refused at attach time
        seq_kwargs=("visual_pos_masks",) if _name == "qwen3_vl" else (),
        prune_kwargs=qwen3_prune_deepstack if _name == "qwen3_vl" else None,
        decode_position_ids=qwen_decode_position_ids,
    ))
del _name, _top, _inner


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
