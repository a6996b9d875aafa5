"""The plugin's settings: the ``greedyprune`` entry of a model's ``hf_overrides``, checked once,
at engine start, into a :class:`~greedyprune.PruneConfig`.

No vLLM here: the rules are plain Python, so that they can be read and tested without an engine.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from ..config import PruneConfig

#: The key of ``hf_overrides`` (and so the attribute of the model's config) that holds them.
KEY = "greedyprune"

#: Settings that the engine can honour: every field of PruneConfig.
FIELDS = tuple(field.name for field in dataclasses.fields(PruneConfig))

#: Why the prompt-conditioned saliencies cannot be had inside vLLM.
_NO_PROMPT = ("vLLM runs the vision encoder without the prompt, so saliency={!r}, which reads "
              "the prompt's tokens, cannot be computed there: use saliency='cls' (CLIP towers) "
              "or 'none'")


def requested(hf_config: Any) -> Optional[Mapping[str, Any]]:
    """The raw ``greedyprune`` settings of a model config, or None when pruning was not asked
    for. A value that is not a dict of settings raises ``TypeError``."""
    values = getattr(hf_config, KEY, None)
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise TypeError(f"hf_overrides[{KEY!r}] must be a dict of settings such as "
                        f'{{"keep": 64}}, got {type(values).__name__}: {values!r}')
    return values


def parse(values: Mapping[str, Any], *, has_cls: bool, tower: str) -> PruneConfig:
    """The :class:`PruneConfig` of a ``greedyprune`` settings dict, for a vision tower that has a
    [CLS] token (``has_cls``; ``tower`` names it in messages).

    Every PruneConfig field is accepted and checked as PruneConfig checks it. Where
    ``saliency`` is not given it is ``"cls"`` on a tower with a [CLS] token and ``"none"``
    otherwise; ``"text"`` and ``"query"`` are refused (the encoder does not see the prompt).
    Problems raise ``ValueError``/``TypeError`` naming the setting.
    """
    unknown = sorted(set(values) - set(FIELDS), key=str)
    if unknown:
        raise ValueError(f"unknown {KEY} setting{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; the settings are "
                         f"{', '.join(FIELDS)}")
    settings = dict(values)
    saliency = settings.setdefault("saliency", "cls" if has_cls else "none")
    if saliency in ("text", "query"):
        raise ValueError(f"{KEY} setting saliency: " + _NO_PROMPT.format(saliency))
    if saliency == "cls" and not has_cls:
        raise ValueError(f"{KEY} setting saliency='cls' needs a vision tower with a [CLS] token; "
                         f"{tower} has none: use saliency='none'")
    try:
        return PruneConfig(**settings)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{KEY} settings: {error}") from None
