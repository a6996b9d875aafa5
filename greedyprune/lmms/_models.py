"""greedyprune's lmms-eval models: each is lmms-eval's own wrapper with :class:`Pruning` in front.

The classes are made on first use (lmms-eval imports them by the paths that
:func:`greedyprune.lmms.manifests` gives, through this module's ``__getattr__``), so that asking
for one model imports only its own wrapper.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import warnings
from typing import Dict

import torch
from loguru import logger

from ..config import PruneConfig
from ..hf import attach
from ._families import FAMILIES, Family

#: What :attr:`Pruning.pruning_counts` adds up over the pruned prefills of a run.
COUNTS = ("prefills", "images", "visual_tokens_before", "visual_tokens_after")


class Pruning:
    """Put in front of an lmms-eval wrapper: takes :func:`greedyprune.hf.attach`'s arguments
    (``keep``, ``keep_ratio``, ``lam``, ``saliency``, ``method``, ``seed``) besides the
    wrapper's, checks them before the wrapper loads the weights, and attaches pruning to the
    loaded model. ``pruning`` is the :class:`~greedyprune.hf.PruneHandle`; ``pruning_counts``
    adds up what the pruned prefills did."""

    def __init__(self, *, keep=None, keep_ratio=None, lam=None, saliency=None,
                 method="greedyprune", seed=0, **wrapper_args):
        given = {k: v for k, v in (("lam", lam), ("saliency", saliency)) if v is not None}
        config = PruneConfig(keep=keep, keep_ratio=keep_ratio, method=method, seed=seed,
                             **given)   # the values checked, the defaults where None
        defaults = inspect.signature(super().__init__).parameters
        check_settings(wrapper_args.get("pretrained", defaults["pretrained"].default), config)
        super().__init__(**_with_device_map(wrapper_args, defaults))
        self.pruning = attach(self.model, config)
        self._counts = dict.fromkeys(COUNTS, 0)
        self._counted = None
        self.model.register_forward_hook(self._count_prefill)

    @property
    def pruning_counts(self) -> Dict[str, int]:
        """Prefills pruned, images (and videos) in them, and their visual tokens before and
        after pruning, since the wrapper was built."""
        return dict(self._counts)

    def _count_prefill(self, module, args, output) -> None:
        record = self.pruning.last_prefill   # a new record after each pruned prefill only
        if record is None or record is self._counted:
            return
        self._counted = record
        self._counts["prefills"] += 1
        self._counts["images"] += len(record.images)
        self._counts["visual_tokens_before"] += sum(image.tokens_before for image in record.images)
        self._counts["visual_tokens_after"] += sum(image.tokens_after for image in record.images)

    def generate_until(self, requests):
        answers = super().generate_until(requests)
        counts = self._counts
        logger.info(f"greedyprune: {counts['images']} images in {counts['prefills']} prefills "
                    f"so far, {counts['visual_tokens_before']} -> "
                    f"{counts['visual_tokens_after']} visual tokens; {self.pruning!r}")
        return answers


def check_settings(pretrained, prune: PruneConfig) -> None:
    """Attach to the model built from ``pretrained``'s config on the meta device (no weights,
    no memory): settings the architecture refuses (``saliency="cls"`` without a [CLS] token)
    fail with attach's own message before anything loads."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(pretrained)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # attach warns again on the real model
        attach(model, prune).detach()


def _with_device_map(wrapper_args, defaults):
    """lmms-eval's llava_hf passes its default ``device_map=""`` to ``from_pretrained`` when one
    process runs, which transformers 5 refuses: load onto ``device`` then, as the wrapper
    means to (with several processes the wrapper picks each one's GPU itself)."""
    from accelerate import PartialState

    if ("device_map" in wrapper_args or "device_map" not in defaults
            or defaults["device_map"].default != "" or PartialState().num_processes > 1):
        return wrapper_args
    device = wrapper_args.get("device", defaults["device"].default)
    return {**wrapper_args, "device_map": str(device)}


_CLASSES: Dict[str, type] = {}


def model_class(family: Family, chat: bool) -> type:
    """greedyprune's subclass of ``family``'s chat or plain lmms-eval wrapper."""
    name = family.chat_name if chat else family.simple_name
    path = family.chat if chat else family.simple
    if path is None:
        raise ValueError(f"lmms-eval has no chat wrapper for {family.simple}")
    if name not in _CLASSES:
        module, base_name = path.split(":")
        base = getattr(importlib.import_module(module), base_name)
        _CLASSES[name] = type(name, (Pruning, base), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": f"lmms-eval's {module}.{base_name} with greedyprune's pruning."})
    return _CLASSES[name]


def __getattr__(name):
    for family in FAMILIES.values():
        if name == family.simple_name:
            return model_class(family, chat=False)
        if family.chat is not None and name == family.chat_name:
            return model_class(family, chat=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wrap(model, processor, *, force_simple, wrapper_args, settings):
    """See :func:`greedyprune.lmms.wrap`."""
    family = next((family for family in FAMILIES.values()
                   if type(model).__name__ in family.classes), None)
    if family is None:
        supported = sorted(name for family in FAMILIES.values() for name in family.classes)
        raise TypeError(f"model must be one of {', '.join(supported)} (lmms-eval has a wrapper "
                        f"for these), got {type(model).__name__}")
    cls = model_class(family, chat=family.chat is not None and not force_simple)
    with _handing_back(model, processor):
        return cls(**settings, **{"pretrained": model.name_or_path,
                                  "device": str(model.device), **wrapper_args})


@contextlib.contextmanager
def _handing_back(model, processor):
    """lmms-eval's wrappers load with ``from_pretrained``: hand back the objects given."""
    import transformers
    from unittest import mock

    given = {transformers.AutoConfig: model.config, transformers.AutoProcessor: processor,
             transformers.AutoTokenizer: getattr(processor, "tokenizer", processor),
             type(model): model}
    with contextlib.ExitStack() as stack:
        for cls, obj in given.items():
            stack.enter_context(mock.patch.object(
                cls, "from_pretrained", lambda *args, _obj=obj, **kwargs: _obj))
        yield
