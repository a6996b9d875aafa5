"""greedyprune as a vLLM plugin: pruned image tokens in a serving engine.

Installed with greedyprune, the plugin is registered under vLLM's ``vllm.general_plugins`` entry
point, so vLLM loads it itself in every process it starts (front end, engine core, each tensor-
or pipeline-parallel worker). Pruning is asked for per engine, with the fields of
:class:`greedyprune.PruneConfig` under the ``greedyprune`` key of ``hf_overrides``::

    from vllm import LLM
    llm = LLM(model="path/to/llava-1.5-7b-hf", hf_overrides={"greedyprune": {"keep": 64}})

    python -m vllm.entrypoints.openai.api_server --model path/to/llava-1.5-7b-hf \\
        --hf-overrides '{"greedyprune": {"keep": 64, "lam": 0.25, "saliency": "cls"}}'

Without that key nothing changes: vLLM's model runs as it would without the plugin. The
settings are checked at engine start (an unknown key or value, a saliency the engine cannot
compute, an architecture the plugin does not prune: ``ValueError`` naming it).

What is pruned: ``LlavaForConditionalGeneration`` (LLaVA-1.5 and other LLaVA checkpoints with a
CLIP or SigLIP tower); see :mod:`greedyprune.vllm._llava`. Each image keeps ``keep`` of its
tokens (or ``keep_ratio`` of them), picked by ``method`` on its projected features; the prompt
holds only the kept placeholders. Saliency: ``"cls"`` (the default on CLIP towers) or
``"none"``; the prompt-conditioned ``"text"`` and ``"query"`` need the prompt inside the vision
encoder, which vLLM does not give it. Positions: vLLM numbers the kept tokens consecutively (the
text after an image moves up by the tokens it lost), where greedyprune.hf keeps their original
positions; the README measures the difference.
"""
from __future__ import annotations

from ._refused import ARCHITECTURES as _REFUSED

__all__ = ["register"]


def register() -> None:
    """The entry point vLLM calls in each of its processes: put the plugin's model classes in
    vLLM's model registry (by name, imported when a model needs them)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model("LlavaForConditionalGeneration",
                                 "greedyprune.vllm._llava:LlavaForConditionalGeneration")
    for architecture in _REFUSED:
        ModelRegistry.register_model(architecture, f"greedyprune.vllm._refused:{architecture}")
