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

Conventions the generic code relies on (true of LLaVA, LLaVA-NeXT, Qwen2-VL, Gemma 3 in
transformers 5.24): the inner model fills placeholder tokens with features in row-major order
over (batch, sequence) (``masked_scatter``), one image's tokens lie in one row, and the decoder
is called with keyword arguments only.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

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
                                grid=PatchGrid(patch_side=side, token_source=source)))
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


def _next_sources(first_crop, grid, rows, width, side, first_column):
    """(crop, column) of the base tokens and of an unpadded ``rows`` × ``width`` canvas cut
    from a ``grid`` of crops, in sequence order (newlines excluded); None when that grid cannot
    unpad to that shape."""
    height, full_width = grid[0] * side, grid[1] * side
    if rows == height and width <= full_width and (full_width - width) % 2 == 0:
        top, left = 0, (full_width - width) // 2
    elif width == full_width and rows <= height and (height - rows) % 2 == 0:
        top, left = (height - rows) // 2, 0
    else:
        return None
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
    raise TypeError(
        f"greedyprune.hf.attach does not support {type(model).__name__}; supported models: "
        f"{', '.join(supported_classes())}"
    )
