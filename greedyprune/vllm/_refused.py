"""Architectures that greedyprune.hf prunes but this plugin does not: vLLM's own classes,
unchanged, except that asking for pruning stops the engine at start with the reason, rather than
serving unpruned requests in silence.

``ModelRegistry`` loads each by name from this module (``greedyprune.vllm._refused:<name>``);
the class is made on first use, a subclass of vLLM's with the same name.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple

from . import _settings

#: What the plugin prunes, for the messages.
SUPPORTED = "LlavaForConditionalGeneration (LLaVA-1.5, CLIP or SigLIP vision tower)"

_ANYRES = ("its images are cut into crops whose token counts (row separators included) vLLM's "
           "processor and model each compute on their own")
_MROPE = ("the kept tokens must keep their M-RoPE positions, which needs vLLM's "
          "multimodal-pruning position path (today used for its own video pruning) for images")
_SPLIT = ("its images are split into sub-images, each with its own placeholder run and "
          "separators")

#: Architecture → (vLLM module, why the plugin does not prune it yet).
ARCHITECTURES: Dict[str, Tuple[str, str]] = {
    "LlavaNextForConditionalGeneration": ("llava_next", _ANYRES),
    "LlavaOnevisionForConditionalGeneration": ("llava_onevision", _ANYRES),
    "Qwen2VLForConditionalGeneration": ("qwen2_vl", _MROPE),
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_5_vl", _MROPE),
    "Qwen3VLForConditionalGeneration": ("qwen3_vl", _MROPE),
    "Gemma3ForConditionalGeneration": (
        "gemma3_mm", "its image tokens attend to each other in blocks laid out from the "
                     "unpruned placeholder count"),
    "Idefics3ForConditionalGeneration": ("idefics3", _SPLIT),
    "SmolVLMForConditionalGeneration": ("smolvlm", _SPLIT),
}


def refusal(architecture: str) -> str:
    """The message for pruning requested on ``architecture``."""
    _, why = ARCHITECTURES[architecture]
    return (f"greedyprune's vLLM plugin prunes {SUPPORTED}, not {architecture}: {why}. Remove "
            f"the {_settings.KEY!r} entry of hf_overrides to serve it unpruned, or prune it with "
            "greedyprune.hf in transformers")


def _check(architecture: str, hf_config: Any) -> None:
    if _settings.requested(hf_config) is not None:
        raise ValueError(refusal(architecture))


def _refusing(architecture: str) -> type:
    """vLLM's class, checked where the front end builds its processor (before the engine
    starts) and again where a worker builds the model."""
    from vllm.multimodal import MULTIMODAL_REGISTRY

    module, _ = ARCHITECTURES[architecture]
    base = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), architecture)
    factories = base._processor_factory

    def __init__(self: Any, *, vllm_config: Any, prefix: str = "") -> None:
        _check(architecture, vllm_config.model_config.hf_config)
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)

    def processor(info: Any, dummy_inputs: Any) -> Any:
        _check(architecture, info.ctx.model_config.hf_config)
        return factories.processor(info, dummy_inputs)

    cls = type(architecture, (base,), {"__init__": __init__, "__module__": __name__,
                                       "__doc__": base.__doc__})
    return MULTIMODAL_REGISTRY.register_processor(
        processor, info=factories.info, dummy_inputs=factories.dummy_inputs)(cls)


def __getattr__(name: str) -> type:
    if name not in ARCHITECTURES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = _refusing(name)
    globals()[name] = cls
    return cls
