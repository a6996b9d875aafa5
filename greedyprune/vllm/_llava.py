"""vLLM's LLaVA-1.5 with greedyprune: fewer image tokens from the start of each request.

:class:`LlavaForConditionalGeneration` here is vLLM's own class with three changes, each a no-op
without a ``greedyprune`` entry in ``hf_overrides``:

- Placeholders. The processing info answers ``get_num_image_tokens`` with the kept count, so the
  prompt holds that many image placeholders and the scheduler, the KV cache, the encoder cache and
  memory profiling all see the pruned request.
- Embeddings. ``embed_multimodal`` runs the tower and projector as before, then keeps, for each
  image on its own, the rows that the configured selector picks on that image's projected
  features (saliency: the [CLS] attention of the tower's feature layer, or none), in their
  original order. The runner scatters them onto the placeholders.
- Checks at engine start (settings, tower) and, for each request, at the front end: an image
  whose pixels are not finite is refused with the package's usual error, before it reaches the
  engine (an error inside the engine would stop it for every request).

Weights: transformers 5 saves the CLIP / SigLIP tower of a LLaVA without its ``vision_model.``
level; vLLM's class expects it. The weight-name mapper adds it where it is missing, for every
checkpoint (with or without pruning), and leaves other names as vLLM maps them.

Precomputed ``image_embeds`` inputs are not pruned: their rows pass as vLLM passes them.
"""
from __future__ import annotations

import functools
import re
from typing import Any, List, Optional

import torch
from vllm.model_executor.models import llava as _vllm_llava
from vllm.model_executor.models.utils import WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY

from .. import methods
from .._validate import nonfinite_error
from ..config import PruneConfig
from . import _settings

# The top-level modules of transformers' CLIP / SigLIP vision models, found directly under
# ``vision_tower.`` in a transformers 5 checkpoint.
_TOWER_LEVEL = re.compile(
    r"^(model\.)?vision_tower\.(embeddings|pre_layrnorm|encoder|post_layernorm|head)\.")


def _tower_name(hf_config: Any) -> str:
    return type(hf_config.vision_config).__name__.replace("Config", "Model")


def _has_cls(hf_config: Any) -> bool:
    """CLIP towers put a [CLS] token before the patches; SigLIP and Pixtral do not."""
    return hf_config.vision_config.model_type == "clip_vision_model"


def settings_of(hf_config: Any) -> Optional[PruneConfig]:
    """The checked settings of a LLaVA config, or None without a ``greedyprune`` entry."""
    values = _settings.requested(hf_config)
    if values is None:
        return None
    if hf_config.vision_config.model_type == "pixtral":
        raise ValueError("greedyprune prunes LLaVA models with a CLIP or SigLIP vision tower; "
                         "this one has a Pixtral tower, whose images vary in size")
    config = _settings.parse(values, has_cls=_has_cls(hf_config), tower=_tower_name(hf_config))
    if config.saliency == "cls":
        layer, depth = hf_config.vision_feature_layer, hf_config.vision_config.num_hidden_layers
        if not isinstance(layer, int) or layer % (depth + 1) == 0:
            raise ValueError(
                f"greedyprune setting saliency='cls' needs the features of one encoder layer, "
                f"but vision_feature_layer is {layer!r}: use saliency='none'")
    return config


class LlavaProcessingInfo(_vllm_llava.LlavaProcessingInfo):
    """vLLM's, with the pruned count of image tokens."""

    @functools.cached_property
    def greedyprune(self) -> Optional[PruneConfig]:
        """The checked settings (None: no pruning). Read first when the processor is built, at
        engine start (not when the info is made: vLLM takes a ValueError there to mean "no
        processor" and would serve the model as text-only)."""
        return settings_of(self.get_hf_config())

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        tokens = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return tokens if self.greedyprune is None else self.greedyprune.kept(tokens)


class LlavaMultiModalProcessor(_vllm_llava.LlavaMultiModalProcessor):
    """vLLM's, refusing images whose pixels are not finite while pruning."""

    def _call_hf_processor(self, *args: Any, **kwargs: Any) -> Any:
        outputs = super()._call_hf_processor(*args, **kwargs)
        pixels = outputs.get("pixel_values")
        if (self.info.greedyprune is not None and isinstance(pixels, torch.Tensor)
                and not bool(torch.isfinite(pixels).all())):
            raise nonfinite_error("image")
        return outputs


def _build_info(ctx: Any) -> Any:
    info = _vllm_llava._build_llava_or_pixtral_hf_info(ctx)
    return LlavaProcessingInfo(ctx) if isinstance(info, _vllm_llava.LlavaProcessingInfo) else info


def _build_processor(info: Any, dummy_inputs: Any) -> Any:
    """The front end builds its processor before the engine starts: the settings are checked
    here first, so that a mistake stops ``LLM(...)`` or the server at once, in its own process."""
    if isinstance(info, LlavaProcessingInfo):
        info.greedyprune  # noqa: B018 (checks the settings)
        return LlavaMultiModalProcessor(info, dummy_inputs)
    settings_of(info.get_hf_config())  # Pixtral: refused while pruning
    return _vllm_llava._build_llava_or_pixtral_hf_processor(info, dummy_inputs)


def cls_attention(attention: Any, hidden: torch.Tensor) -> torch.Tensor:
    """[CLS]-to-every-token attention of vLLM's CLIP attention module at input ``hidden``
    (B, T, D), averaged over heads: (B, T), float32.

    The same scores as :func:`greedyprune.hf._prune.cls_attention`, from the module's own fused
    ``qkv_proj`` run once more on the layer's input (whatever form vLLM gave its weights: packed
    for the CPU, quantized). Under tensor parallelism each rank holds some of the heads; their
    sums are added across ranks.
    """
    heads, head_dim = int(attention.num_heads_per_partition), int(attention.head_dim)
    width = heads * head_dim
    qkv = attention.qkv_proj(hidden)[0].float()
    query = qkv[:, 0, :width].reshape(-1, heads, head_dim)                        # (B, H, d)
    keys = qkv[:, :, width:2 * width].reshape(qkv.shape[0], -1, heads, head_dim)  # (B, T, H, d)
    scores = torch.einsum("bhd,bthd->bht", query, keys) * float(attention.scale)
    total = scores.softmax(dim=-1).sum(dim=1)
    if int(attention.tp_size) > 1:
        from vllm.distributed import tensor_model_parallel_all_reduce

        total = tensor_model_parallel_all_reduce(total)
    return total / float(attention.num_heads)


@MULTIMODAL_REGISTRY.register_processor(
    _build_processor,
    info=_build_info,
    dummy_inputs=_vllm_llava.LlavaDummyInputsBuilder,
)
class LlavaForConditionalGeneration(_vllm_llava.LlavaForConditionalGeneration):
    """vLLM's LLaVA-1.5, pruned per image when the config has ``greedyprune`` settings."""

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_regex={_TOWER_LEVEL: r"\1vision_tower.vision_model.\2."}
    ) | _vllm_llava.LlavaForConditionalGeneration.hf_to_vllm_mapper

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.greedyprune = settings_of(self.config)
        self._cls_rows: Optional[List[torch.Tensor]] = None
        if self.greedyprune is not None and self.greedyprune.saliency == "cls":
            # The tower is built up to the feature layer: its last layer makes the features.
            attention = self.vision_tower.vision_model.encoder.layers[-1].self_attn
            attention.register_forward_pre_hook(self._record_cls, with_kwargs=True)

    def _record_cls(self, module: Any, args: Any, kwargs: Any) -> None:
        if self._cls_rows is not None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            self._cls_rows.append(cls_attention(module, hidden))

    def embed_multimodal(self, **kwargs: object) -> Any:
        config = self.greedyprune
        if config is None:
            return super().embed_multimodal(**kwargs)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        if image_input["type"] != "pixel_values":
            return self._process_image_input(image_input)
        self._cls_rows = [] if config.saliency == "cls" else None
        try:
            features = self._process_image_input(image_input)
            saliency = None
            if self._cls_rows is not None:
                rows = torch.cat(self._cls_rows)
                dropped = rows.shape[1] - features.shape[1]  # [CLS], unless a feature
                saliency = rows[:, dropped:]
        finally:
            self._cls_rows = None
        return prune(features, saliency, config)


def prune(features: torch.Tensor, saliency: Optional[torch.Tensor],
          config: PruneConfig) -> torch.Tensor:
    """The rows of (B, N, D) ``features`` that ``config`` keeps, per image, in their original
    order: (B, k, D)."""
    k = config.kept(features.shape[1])
    if k == features.shape[1]:
        return features
    select = methods.get(config.method)
    where = {} if config.backend == "auto" else {"backend": config.backend}  # greedyprune only
    kept = select(features, k, saliency, lam=config.lam_for(k, features.shape[1]),
                  seed=config.seed, **where)
    return torch.gather(features, 1, kept[:, :, None].expand(-1, -1, features.shape[2]))
