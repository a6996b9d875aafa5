"""Evaluate pruned models with lmms-eval (``pip install "greedyprune[lmms]"``).

Installing greedyprune registers these lmms-eval models through lmms-eval's ``lmms_eval.models``
entry points; each is lmms-eval's own wrapper for its family with pruning attached after the
model loads:

=============================  ========================================================
``greedyprune_llava_hf``       LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision checkpoints in
                               HuggingFace format (``llava-hf/...``); lmms-eval's
                               ``llava_hf``. Also named ``greedyprune_llava_onevision``.
``greedyprune_qwen2_vl``       Qwen2-VL; lmms-eval's ``qwen2_vl``
``greedyprune_qwen2_5_vl``     Qwen2.5-VL; lmms-eval's ``qwen2_5_vl``
``greedyprune_qwen3_vl``       Qwen3-VL; lmms-eval's ``qwen3_vl``
=============================  ========================================================

::

    lmms-eval --model greedyprune_llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,keep=64,method=greedyprune \\
        --tasks gqa,pope --batch_size 1

``--model_args`` takes the wrapper's own arguments plus :func:`greedyprune.hf.attach`'s:
``keep`` or ``keep_ratio`` (exactly one), ``lam``, ``saliency``, ``method`` and ``seed``. They
are checked before the weights load, with attach's own messages, and lmms-eval writes them into
its results (``config.model_args``). Where lmms-eval has a chat and a plain wrapper for a
family it runs the chat one, as for its own models (``--force_simple`` picks the plain one).

From Python, for a model that is already loaded (a notebook)::

    from lmms_eval.evaluator import simple_evaluate
    from greedyprune.lmms import wrap

    lm = wrap(model, processor, keep=64)
    results = simple_evaluate(model=lm, tasks=["pope"], batch_size=1)
    lm.pruning_counts     # images pruned, visual tokens before and after, over the run

Nothing here imports lmms-eval, torch or transformers until :func:`wrap` runs or lmms-eval asks
for one of these models.
"""
from __future__ import annotations

from typing import Optional, Union

from ._families import FAMILIES

__all__ = ["FAMILIES", "manifests", "wrap"]


def manifests():
    """The ``ModelManifest`` of every model above: what lmms-eval's ``lmms_eval.models``
    entry point of this package returns."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, aliases=family.aliases,
                          simple_class_path=f"{__name__}._models.{family.simple_name}",
                          chat_class_path=(f"{__name__}._models.{family.chat_name}"
                                           if family.chat else None))
            for name, family in FAMILIES.items()]


def wrap(model, processor, keep: Optional[int] = None, *, keep_ratio: Optional[float] = None,
         lam: Optional[Union[float, str]] = None, saliency: Optional[str] = None,
         method: str = "greedyprune",
         seed: int = 0, force_simple: bool = False, **wrapper_args):
    """An lmms-eval model (``lmms`` instance) that evaluates ``model``, pruned.

    ``model`` is a loaded top-level model of a family above (``LlavaForConditionalGeneration``,
    ``LlavaNextForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``,
    ``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
    ``Qwen3VLForConditionalGeneration``) and ``processor`` its processor. The pruning settings are
    :func:`greedyprune.hf.attach`'s; ``wrapper_args`` go to lmms-eval's wrapper (e.g.
    ``batch_size``, ``max_pixels``); ``force_simple`` picks lmms-eval's plain wrapper where the
    family also has a chat one. The wrapper is built around ``model`` and ``processor`` as they
    are (no loading, no copy) on ``model``'s device; it sets the tokenizer's padding side to
    left, as lmms-eval's wrappers do. Pass the result as ``simple_evaluate(model=...)``.
    Build one wrapper at a time: while it is built, ``from_pretrained`` of transformers' Auto
    classes and of ``model``'s class hand back ``model``, its config and ``processor``.
    """
    from ._models import wrap as build

    return build(model, processor, force_simple=force_simple, wrapper_args=wrapper_args,
                 settings=dict(keep=keep, keep_ratio=keep_ratio, lam=lam, saliency=saliency,
                               method=method, seed=seed))
