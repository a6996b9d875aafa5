"""What a :class:`~greedyprune.hf._handle.PruneHandle` keeps between its hooks: per vision run,
per call of the inner model, per pruned request, per thread, and the [CLS] rows a prefill reads.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from ._archs import VisionRecord

#: Feature dimensions of the projector output recorded per token (see ``VisionRun``).
FINGERPRINT_DIMS = 4


@dataclass
class VisionRun(VisionRecord):
    """What the vision hooks recorded during one run of the vision tower: the
    :class:`VisionRecord` the table's ``units`` read, and the [CLS] rows.

    Tied to the tower's output object, which ``get_image_features`` returns (with the projected
    features as its ``pooler_output``): that object reaches the prefill either inside the same
    forward or, under ``generate()``, as ``mm_encoder_outputs``.
    """

    output: Any = None                         # weakref to the tower's output object
    cls_rows: List[torch.Tensor] = field(default_factory=list)
    cls_seconds: float = 0.0

    def record_fingerprint(self, projected: torch.Tensor) -> None:
        """Keep a few fixed feature dimensions of every token the projector emitted: enough to
        confirm, exactly, which crop and patch each packed token came from."""
        dims = torch.linspace(0, projected.shape[-1] - 1, FINGERPRINT_DIMS).round().long()
        self.fingerprint_dims = dims
        self.fingerprint = projected.detach()[..., dims.to(projected.device)].cpu()


@dataclass
class Call:
    """One call of the inner model, noted by its pre-hook for the decoder pre-hook."""

    inputs: Dict[str, Any]
    placeholder_masks: Dict[str, torch.Tensor]
    has_media: bool
    input_ids: Optional[torch.Tensor] = None
    labels: bool = False      # the top-level model was given labels
    other_feature_layer: Any = None  # a vision_feature_layer other than the configured one
    head: Any = None          # attached to the inner model: the module calling it, if any
    runs: List[VisionRun] = field(default_factory=list)  # vision runs inside this call


@dataclass
class Request:
    """What decode steps on a pruned cache need from its prefill."""

    mask: torch.Tensor       # (B, L') pruned 2-D mask, as given to the decoder at the prefill
    unpruned_length: int     # L: the prefill's sequence length before pruning
    pruned_length: int       # L'
    per_token: Dict[str, torch.Tensor] = field(default_factory=dict)  # ArchSpec.mask_inputs

    def extend_per_token(self, inputs: Dict[str, Any], past: int, steps: int) -> None:
        """Extend each ``per_token`` value to ``past + steps`` tokens: the decode step's own
        values (``inputs``), zeros for steps that passed none."""
        for name, stored in self.per_token.items():
            value = inputs.get(name)
            step = (value[..., -steps:].to(stored) if isinstance(value, torch.Tensor)
                    else stored.new_zeros(*stored.shape[:-1], steps))
            missing = past - stored.shape[-1]
            if missing > 0:
                stored = torch.cat([stored, stored.new_zeros(*stored.shape[:-1], missing)], -1)
            self.per_token[name] = torch.cat([stored[..., :past], step], -1)


#: ``ThreadState.last_prefill`` of a thread that has run no prefill on the handle yet.
NO_PREFILL_YET = object()


class ThreadState(threading.local):
    """What one thread's forward in flight has noted; every thread that calls the model has its
    own, so that concurrent ``generate()`` calls on one handle do not see each other's."""

    def __init__(self):
        self.call: Optional[Call] = None
        self.run: Optional[VisionRun] = None     # the latest vision run (the projector follows it)
        self.pending_request: Optional[Request] = None   # from the prefill to the decoder's end
        self.last_prefill: Any = NO_PREFILL_YET
        self.labels = False   # the top-level call in flight was given labels
        self.prompt: Optional[torch.Tensor] = None  # input_ids of the last use_cache=False prefill


class ByIdentity:
    """Values filed under live objects (model outputs, caches: not necessarily hashable) and
    looked up by identity; entries whose object is gone are dropped as new ones come. Shared by
    every thread that calls the model, hence the lock."""

    def __init__(self):
        self._entries: Dict[int, tuple] = {}   # id(object) -> (weakref to it, value)
        self._lock = threading.Lock()

    def put(self, obj, value) -> None:
        reference = weakref.ref(obj)
        with self._lock:
            for key in [k for k, (ref, _) in self._entries.items() if ref() is None]:
                del self._entries[key]
            self._entries[id(obj)] = (reference, value)

    def get(self, obj):
        with self._lock:
            entry = self._entries.get(id(obj))
        return entry[1] if entry is not None and entry[0]() is obj else None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class ClsRows:
    """The [CLS]-attention rows of the vision runs behind a prefill's units, for
    ``saliency="cls"``; what is wrong with them is raised only if a selection reads them."""

    def __init__(self, other_feature_layer):
        self._rows: List[torch.Tensor] = []
        self.seconds = 0.0
        self._problem = None
        if other_feature_layer is not None:
            self._problem = (
                f"saliency='cls' reads the [CLS] attention at the configured "
                f"vision_feature_layer; this call asks for {other_feature_layer!r}: attach "
                "again after changing config.vision_feature_layer, or use saliency='text'")

    def add(self, media: str, units, run: Optional[VisionRun]) -> None:
        if run is None or not run.cls_rows:
            self._problem = self._problem or (
                "saliency='cls' needs the [CLS] attention recorded while the vision tower "
                "encoded these images; this call's image features came from elsewhere "
                "(mm_encoder_outputs computed with the hooks detached?)")
            return
        # Each unit's vision_index counts crops from the start of its own run.
        offset = sum(int(rows.numel()) for rows in self._rows)
        for unit in units:
            if unit.layout.vision_index is None:
                self._problem = self._problem or (
                    f"saliency='cls': could not map the tokens of {media} {unit.index} to "
                    "vision-tower positions; use 'text' or 'none'")
            unit.vision_offset = offset
        self._rows += [rows.reshape(-1) for rows in run.cls_rows]
        self.seconds += run.cls_seconds

    def rows(self) -> torch.Tensor:
        if self._problem is not None:
            raise ValueError(self._problem)
        return torch.cat(self._rows)
