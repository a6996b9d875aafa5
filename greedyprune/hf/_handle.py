"""The hook object behind ``greedyprune.hf.attach``: its lifecycle and the per-request state.

Hooks, all PyTorch handles (nothing in the model is replaced or edited):

- a forward pre-hook on the *inner* model (the module that merges visual features into the
  embeddings) notes the call: its ``input_ids`` (where the placeholder tokens are), and the
  inputs the architecture's ``units`` need (``pixel_values``, ``image_sizes``, ...); a forward
  hook clears the note when the call ends, however it ends;
- a forward pre-hook on the *decoder* (the language model) does the work. At a prefill (empty
  cache) it plans the pruning and rewrites the decoder's keyword arguments: shorter
  ``inputs_embeds``, gathered ``position_ids`` (kept tokens keep their original positions), a
  2-D ``attention_mask`` for the re-left-padded rows. At a decode step on a cache it filled, it
  replaces the incoming mask (which generate() keeps at the unpruned length) by the stored
  pruned mask plus ones for the tokens generated since; a forward hook on the decoder files
  the stored mask under the cache object the prefill filled;
- hooks on the vision tower (and, where the table names one, the projector) record what the
  prefill needs to know about the images: with ``saliency="cls"``, a pre-hook on the tower's
  attention at the feature layer computes the [CLS] row (see
  :func:`greedyprune.hf._prune.cls_attention`); the projector hook keeps a few feature
  dimensions of every crop token, to confirm layouts. Records are filed under the tower's
  output object, because ``generate()`` encodes images before the prefill and passes that
  object back in as ``mm_encoder_outputs``;
- on a top-level model, a pre-hook that refuses ``labels`` (the logits come out pruned).
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import torch

from ..config import PruneConfig
from . import _archs, _prune
from ._records import ImageRecord, PrefillRecord

#: Attribute of the inner model holding its attached handles, the active one last.
ATTRIBUTE = "_greedyprune_handles"


def _stack(inner) -> List["PruneHandle"]:
    """The inner model's attached handles (created empty on first use)."""
    stack = vars(inner).get(ATTRIBUTE)
    if stack is None:
        stack = []
        object.__setattr__(inner, ATTRIBUTE, stack)
    return stack


def handles(inner) -> List["PruneHandle"]:
    """The handles attached to ``inner``, oldest first (the last one is active)."""
    return list(vars(inner).get(ATTRIBUTE) or [])


#: Feature dimensions of the projector output recorded per token (see ``_VisionRun``).
FINGERPRINT_DIMS = 4


@dataclass
class _VisionRun:
    """What the vision hooks recorded during one run of the vision tower.

    Tied to the tower's output object, which ``get_image_features`` returns (with the projected
    features as its ``pooler_output``): that object reaches the prefill either inside the same
    forward or, under ``generate()``, as ``mm_encoder_outputs``.
    """

    output: Any = None                         # weakref to the tower's output object
    tower_kwargs: Dict[str, Any] = field(default_factory=dict)  # small arguments of the call
    cls_rows: List[torch.Tensor] = field(default_factory=list)
    cls_seconds: float = 0.0
    fingerprint: Optional[torch.Tensor] = None  # (crops, tokens, FINGERPRINT_DIMS) on the CPU
    fingerprint_dims: Optional[torch.Tensor] = None


@dataclass
class _Call:
    """One call of the inner model, noted by its pre-hook for the decoder pre-hook."""

    inputs: Dict[str, Any]
    placeholder_masks: Dict[str, torch.Tensor]
    has_media: bool
    input_ids: Optional[torch.Tensor] = None
    labels: bool = False      # the top-level model was given labels
    other_feature_layer: Any = None  # a vision_feature_layer other than the configured one
    head: Any = None          # attached to the inner model: the module calling it, if any
    runs: List[_VisionRun] = field(default_factory=list)  # vision runs inside this call


@dataclass
class _Request:
    """What decode steps on a pruned cache need from its prefill."""

    mask: torch.Tensor       # (B, L') pruned 2-D mask, as given to the decoder at the prefill
    unpruned_length: int     # L: the prefill's sequence length before pruning
    pruned_length: int       # L'
    per_token: Dict[str, torch.Tensor] = field(default_factory=dict)  # ArchSpec.mask_inputs


#: ``_ThreadState.last_prefill`` of a thread that has run no prefill on the handle yet.
_NO_PREFILL_YET = object()


class _ThreadState(threading.local):
    """What one thread's forward in flight has noted; every thread that calls the model has its
    own, so that concurrent ``generate()`` calls on one handle do not see each other's."""

    def __init__(self):
        self.call: Optional[_Call] = None
        self.run: Optional[_VisionRun] = None     # the latest vision run (the projector follows it)
        self.pending_request: Optional[_Request] = None   # from the prefill to the decoder's end
        self.last_prefill: Any = _NO_PREFILL_YET
        self.labels = False   # the top-level call in flight was given labels
        self.prompt: Optional[torch.Tensor] = None  # input_ids of the last use_cache=False prefill


class _ByIdentity:
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


class PruneHandle:
    """Visual-token pruning attached to one model; see :func:`greedyprune.hf.attach`.

    ``last`` lists what the last pruned prefill did per image (:class:`ImageRecord`);
    ``last_prefill`` holds the same plus sequence-level bookkeeping and timings
    (:class:`PrefillRecord`); ``config`` is the :class:`~greedyprune.config.PruneConfig` it
    prunes with. ``detach()`` (or leaving a ``with`` block) restores the model.

    Handles on one model stack: attaching another suspends this one until the other is
    detached, so nested ``with attach(...)`` blocks each prune with their own settings and
    the outer one resumes when the inner one ends. ``disabled()`` pauses pruning for a block.

    Threads: several threads may call ``generate()`` (or forward) on the model at once; each
    call is pruned exactly as it would be alone. ``last`` and ``last_prefill`` are those of the
    calling thread's last prefill (in a thread that has run none: the last prefill of any
    thread). Attach, detach and disable while no call is running.
    """

    def __init__(self, model, spec: _archs.ArchSpec, is_top: bool, config: PruneConfig,
                 selector, ordered: bool):
        self.model = model
        self.arch = spec.name
        self.config = config
        self._spec = spec
        self._selector = selector
        self._ordered = ordered
        self._inner = spec.inner(model) if is_top else model
        self._is_top = is_top
        self._decoder = spec.decoder(self._inner)
        self._thread = _ThreadState()
        self._latest_prefill: Optional[PrefillRecord] = None  # of any thread
        self._runs = _ByIdentity()       # tower output -> _VisionRun
        self._requests = _ByIdentity()   # cache object -> _Request of the prefill that filled it
        self._handles: List[Any] = []
        self._attached = False
        self._cls_module = (spec.cls_probe(self._inner, {}) if config.saliency == "cls"
                            else None)
        stack = _stack(self._inner)
        if stack:
            stack[-1]._remove_hooks()   # suspended until this handle is detached
        stack.append(self)
        self._attached = True
        self._install_hooks()

    # The settings, read from ``config``.
    keep = property(lambda self: self.config.keep)
    keep_ratio = property(lambda self: self.config.keep_ratio)
    lam = property(lambda self: self.config.lam)
    saliency = property(lambda self: self.config.saliency)
    method = property(lambda self: self.config.method)
    seed = property(lambda self: self.config.seed)

    # --- lifecycle ------------------------------------------------------------------------------

    def _install_hooks(self) -> None:
        inner, decoder = self._inner, self._decoder
        self._handles = [
            inner.register_forward_pre_hook(self._before_model, with_kwargs=True),
            inner.register_forward_hook(self._after_model, with_kwargs=True, always_call=True),
            decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True),
            decoder.register_forward_hook(self._after_decoder, with_kwargs=True, always_call=True),
        ]
        spec = self._spec
        if spec.vision_tower is not None:
            tower = spec.vision_tower(inner)
            self._handles += [
                tower.register_forward_pre_hook(self._before_vision, with_kwargs=True),
                tower.register_forward_hook(self._after_vision),
            ]
        if spec.projector is not None:
            self._handles.append(spec.projector(inner).register_forward_hook(self._after_projector))
        if self._cls_module is not None:
            self._handles.append(
                self._cls_module.register_forward_pre_hook(self._before_cls_attention,
                                                           with_kwargs=True))
        if self._is_top:
            self._handles += [
                self.model.register_forward_pre_hook(self._before_top, with_kwargs=True),
                self.model.register_forward_hook(self._after_top, always_call=True),
            ]

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        state = self._thread   # other threads' state goes with them (or with the handle)
        state.call = state.run = state.pending_request = None
        self._runs.clear()
        self._requests.clear()

    def detach(self) -> None:
        """Remove this handle's hooks. With no other handle on the model, the model is exactly
        as before ``attach``; a handle this one suspended resumes. Detaching twice is a no-op."""
        if not self._attached:
            return
        stack = _stack(self._inner)
        active = bool(stack) and stack[-1] is self
        if self in stack:
            stack.remove(self)
        self._remove_hooks()
        self._attached = False
        if active and stack:
            stack[-1]._install_hooks()
        if not stack and ATTRIBUTE in vars(self._inner):
            delattr(self._inner, ATTRIBUTE)

    @property
    def attached(self) -> bool:
        """Whether the handle is on the model (pruning, or suspended by a later handle)."""
        return self._attached

    @property
    def active(self) -> bool:
        """Whether this handle's hooks are the ones pruning the model's calls now."""
        return bool(self._handles)

    @contextlib.contextmanager
    def disabled(self) -> Iterator["PruneHandle"]:
        """Pause pruning inside the ``with`` block: the model runs as if detached, and this
        handle resumes afterwards (unless it was detached meanwhile)."""
        if not self.active:
            yield self
            return
        self._remove_hooks()
        try:
            yield self
        finally:
            stack = _stack(self._inner) if self._attached else []
            if stack and stack[-1] is self and not self.active:
                self._install_hooks()

    def __enter__(self) -> "PruneHandle":
        if not self._attached:
            raise RuntimeError("this handle was detached; attach again to prune "
                               "(greedyprune.hf.attach(model, handle.config))")
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def last_prefill(self) -> Optional[PrefillRecord]:
        """The calling thread's last prefill (in a thread that has run none: the last prefill
        of any thread); None before the first, or when the last one pruned nothing."""
        mine = self._thread.last_prefill
        return self._latest_prefill if mine is _NO_PREFILL_YET else mine

    def _record_prefill(self, record: Optional[PrefillRecord]) -> None:
        self._thread.last_prefill = self._latest_prefill = record

    @property
    def last(self) -> List[ImageRecord]:
        """Per image, what the last pruned prefill did (empty before the first one)."""
        return list(self.last_prefill.images) if self.last_prefill is not None else []

    def __repr__(self) -> str:
        state = "active" if self.active else "suspended" if self._attached else "detached"
        config = self.config
        return (f"PruneHandle(model={type(self.model).__name__}, arch={self.arch!r}, "
                f"{config.budget}, lam={config.lam}, saliency={config.saliency!r}, "
                f"method={config.method!r}, seed={config.seed}, {state})")

    # --- hooks ----------------------------------------------------------------------------------

    def _before_top(self, module, args, kwargs):
        self._thread.labels = kwargs.get("labels") is not None  # refused if pruning happens
        return None

    def _after_top(self, module, args, output):
        self._thread.labels = False
        return None

    def _before_model(self, module, args, kwargs):
        if torch.compiler.is_compiling():
            raise RuntimeError("greedyprune.hf hooks cannot run inside torch.compile; "
                               "compile the model without attaching, or attach without compiling")
        layer = kwargs.get("vision_feature_layer")
        if layer is not None and layer == getattr(module.config, "vision_feature_layer", layer):
            layer = None  # the configured layer, the one the [CLS] hook reads
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        encoded = kwargs.get("mm_encoder_outputs") or {}
        masks = {}
        for media in self._spec.media:
            if kwargs.get(media.pixel_key) is None and encoded.get(media.encoder_key) is None:
                continue
            token_id = media.token_id(module.config)
            if input_ids is not None:
                masks[media.name] = input_ids == token_id
            elif embeds is not None:
                # Without input_ids the model itself finds placeholders by their embedding.
                # Through the embedding's forward: Gemma 3 scales its embeddings there.
                embed = module.get_input_embeddings()
                target = embed(torch.tensor(token_id, device=embed.weight.device)).to(embeds)
                masks[media.name] = (embeds == target).all(-1)
        has_media = any(bool(mask.any()) for mask in masks.values())
        self._thread.call = _Call(
            inputs={name: kwargs.get(name)
                    for name in (*self._spec.call_inputs, *self._spec.mask_inputs,
                                 *(("attention_mask",) if self._spec.decoder_mask else ()))},
            placeholder_masks=masks, has_media=has_media, input_ids=input_ids,
            labels=self._thread.labels, other_feature_layer=layer,
            head=_caller(module) if has_media and not self._is_top else None,
        )
        return None

    def _after_model(self, module, args, kwargs, output):
        self._thread.call = None
        return None

    def _before_vision(self, module, args, kwargs):
        # Small keyword arguments only (Qwen2-VL's grid_thw, say): generate() drops them from
        # the model's inputs once it has encoded the images, yet layouts may need them.
        small = {name: value for name, value in kwargs.items()
                 if not isinstance(value, torch.Tensor) or value.numel() <= 4096}
        self._thread.run = _VisionRun(tower_kwargs=small)
        return None

    def _after_vision(self, module, args, output):
        state = self._thread
        run = state.run
        if run is None:
            return None
        try:
            run.output = weakref.ref(output)
        except TypeError:  # a tuple (return_dict=False): nothing to file the records under
            return None
        self._runs.put(output, run)
        if state.call is not None:
            state.call.runs.append(run)
        return None

    def _after_projector(self, module, args, output):
        run = self._thread.run
        if run is None or run.fingerprint is not None or not isinstance(output, torch.Tensor):
            return None
        # A few fixed feature dimensions of every crop token: enough to confirm, exactly, which
        # crop and patch each packed token came from (see llava_next_units).
        dims = torch.linspace(0, output.shape[-1] - 1, FINGERPRINT_DIMS).round().long()
        run.fingerprint_dims = dims
        run.fingerprint = output.detach()[..., dims.to(output.device)].cpu()
        return None

    def _before_cls_attention(self, module, args, kwargs):
        run = self._thread.run
        if run is None:
            return None
        start = time.perf_counter()
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        with torch.no_grad():
            run.cls_rows.append(_prune.cls_attention(module, hidden))
        run.cls_seconds += time.perf_counter() - start
        return None

    def _before_decoder(self, module, args, kwargs):
        call = self._thread.call
        embeds = kwargs.get("inputs_embeds")
        if call is None or embeds is None:
            return None  # not reached through the model's own forward: leave it alone
        cache = _cache_of(kwargs)
        past = _prune.cache_length(cache)
        if past > 0:
            return self._decode_step(args, kwargs, cache, past, call)
        if not call.has_media:
            self._record_prefill(None)  # this prefill pruned nothing
            return None
        new = self._prefill(kwargs, call)
        return None if new is None else (args, new)

    def _after_decoder(self, module, args, kwargs, output):
        state = self._thread
        request, state.pending_request = state.pending_request, None
        if request is None:
            return None
        cache = _cache_of(kwargs)
        if cache is None:
            cache = getattr(output, "cache", None)
        if cache is None:
            cache = getattr(output, "past_key_values", None)
        if cache is not None:
            self._requests.put(cache, request)
        return None

    # --- the two kinds of decoder call ----------------------------------------------------------

    def _prefill(self, kwargs: Dict[str, Any], call: _Call) -> Optional[Dict[str, Any]]:
        """The decoder's new keyword arguments, or None when no image loses a token (the
        call then runs exactly as without the hooks)."""
        embeds = kwargs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        try:
            valid = self._padding_mask(kwargs, call, batch, length, embeds.device)
        except ValueError:  # a mask the hooks cannot read: fine if nothing is to be pruned
            if self._keeps_everything(call):
                self._record_prefill(None)
                return None
            self._refuse_pruning(kwargs, call)
            raise
        units, placeholders, cls = self._locate_units(call, embeds)
        # Choosing needs no gradient; the gathers below keep it (pruning while fine-tuning).
        with torch.no_grad():
            plan = _prune.plan_prefill(
                embeds, valid, units, placeholders, saliency=self.saliency, cls_rows=cls.rows,
                first_layer=self._decoder.layers[0] if self.saliency == "query" else None,
                selector=self._selector, keep=self.keep, keep_ratio=self.keep_ratio,
                lam=self.lam, seed=self.seed, text_valid=self._text_valid(kwargs, call, valid),
                ordered=self._ordered,
            )
        seconds = dict(plan.seconds)
        if self.saliency == "cls" and plan.pruned:
            seconds["cls"] = cls.seconds
        if not plan.pruned:
            identity = torch.arange(length)[None].expand(batch, length)
            self._record_prefill(PrefillRecord(
                images=tuple(plan.records), seq_len_before=length, seq_len_after=length,
                source_positions=identity.numpy().copy(), seconds=seconds))
            return None
        self._refuse_pruning(kwargs, call)

        start = time.perf_counter()
        compaction = _prune.compact(plan.keep)
        new = dict(kwargs)
        new["inputs_embeds"] = _prune.gather_tokens(embeds, compaction)
        positions = kwargs.get("position_ids")
        if positions is None:  # what the decoder would compute for an empty cache
            positions = torch.arange(length, device=embeds.device)[None]
        new["position_ids"] = _prune.gather_last(positions, compaction)
        for name in self._per_token_kwargs(kwargs, batch, length):
            new[name] = _prune.gather_last(kwargs[name], compaction)
        if self._spec.prune_kwargs is not None:
            self._spec.prune_kwargs(kwargs, new, plan.keep)
        incoming = kwargs.get("attention_mask")
        mask_dtype = incoming.dtype if _is_2d_mask(incoming) else torch.long
        mask = (~compaction.padding).to(mask_dtype)
        per_token = {name: _prune.gather_last(call.inputs[name].to(embeds.device), compaction)
                     for name in self._spec.mask_inputs if call.inputs.get(name) is not None}
        packed = _packed_sequences(kwargs, kwargs.get("attention_mask"))
        if packed is not None:
            new["attention_mask"] = _prune.packed_mask(packed, compaction, embeds.dtype)
        else:
            new["attention_mask"] = self._decoder_mask(mask, new, per_token)
        seconds["gather"] += time.perf_counter() - start

        source = torch.where(compaction.padding, -1, compaction.source).detach()
        self._record_prefill(PrefillRecord(
            images=tuple(plan.records), seq_len_before=length, seq_len_after=compaction.length,
            source_positions=source.cpu().numpy(), seconds=seconds,
        ))
        self._thread.pending_request = _Request(mask, length, compaction.length, per_token)
        return new

    def _refuse_pruning(self, kwargs: Dict[str, Any], call: _Call) -> None:
        """What a prefill that really prunes cannot support (a budget that prunes nothing
        supports all of it)."""
        why = "with this budget images lose tokens, and "
        if call.labels:
            raise ValueError(
                f"labels are not supported while greedyprune.hf prunes: {why}the logits cover "
                "the pruned sequence (see handle.last_prefill.source_positions); detach to "
                "compute a loss on the full sequence")
        cache = _cache_of(kwargs)
        if getattr(cache, "is_compileable", False):
            raise ValueError(
                f"greedyprune.hf does not support {type(cache).__name__} while it prunes: {why}"
                "a static or compilable cache writes at unpruned positions; use the default "
                "dynamic cache")
        head = call.head
        if head is not None and not any(cls.__name__ in self._spec.top_classes
                                        for cls in type(head).__mro__):
            raise ValueError(
                f"greedyprune.hf cannot prune {type(self._inner).__name__} inside "
                f"{type(head).__name__}: {why}that head reads the model's outputs at positions "
                f"of the unpruned sequence; supported: {' or '.join(self._spec.classes)}")
        if (self._spec.decoder_mask is not None
                and _packed_sequences(kwargs, call.inputs.get("attention_mask")) is not None):
            raise ValueError(
                f"greedyprune.hf cannot prune packed sequences (position_ids restarting within "
                f"a row, no attention_mask) on {self.arch}: {why}its decoder builds its own "
                "masks; pass one sequence per row with an attention_mask")

    def _locate_units(self, call: _Call, embeds: torch.Tensor):
        """Every image's placeholder run in the batch, the (B, L) placeholder mask, and the
        [CLS] rows of the vision runs (:class:`_ClsRows`)."""
        batch, length = embeds.shape[:2]
        units, placeholders = [], torch.zeros(batch, length, dtype=torch.bool, device=embeds.device)
        runs_in_call = list(call.runs)
        cls = _ClsRows(call.other_feature_layer)
        for media in self._spec.media:
            if media.name not in call.placeholder_masks:
                continue
            mask = call.placeholder_masks[media.name].to(embeds.device)
            placeholders |= mask
            total = int(mask.sum())
            if not total:
                continue
            output, run = self._encoder_output(call, media, runs_in_call)
            context = _archs.UnitsContext(self._inner, call.inputs, total, output, run)
            media_units = _prune.locate_units(media.name, mask, media.units(context))
            if self.saliency == "cls":
                cls.add(media.name, media_units, run)
            units += media_units
        return units, placeholders, cls

    def _text_valid(self, kwargs: Dict[str, Any], call: _Call, valid: torch.Tensor):
        """The tokens text saliency reads. ``generate(use_cache=False)`` runs a full forward
        for each new token, on the prompt plus the tokens generated so far: when a
        ``use_cache=False`` call extends the previous one's ``input_ids``, saliency reads the
        previous call's tokens only, so that the generated tokens do not move the kept set and
        the answer is the one ``use_cache=True`` gives."""
        state, ids = self._thread, call.input_ids
        if kwargs.get("use_cache") is not False or ids is None:
            state.prompt = None
            return valid
        prompt = state.prompt
        if (prompt is not None and prompt.shape[0] == ids.shape[0]
                and prompt.shape[1] < ids.shape[1]
                and torch.equal(ids[:, :prompt.shape[1]], prompt.to(ids.device))):
            text_valid = valid.clone()
            text_valid[:, prompt.shape[1]:] = False
            return text_valid
        state.prompt = ids.detach()
        return valid

    def _decode_step(self, args, kwargs, cache, past: int, call: _Call):
        request = self._requests.get(cache)
        if request is None:
            if call.has_media and self._would_prune(kwargs, call):
                raise ValueError(
                    "greedyprune.hf cannot prune images in a call that continues from "
                    "past_key_values (with this budget they would lose tokens); start from an "
                    "empty cache, or detach"
                )
            return None  # a cache this handle never pruned: nothing to correct
        embeds = kwargs["inputs_embeds"]
        batch, steps = embeds.shape[:2]
        if call.has_media or steps != 1:
            raise ValueError(
                "greedyprune.hf decodes one new token per step on a pruned cache; got "
                f"{steps} new tokens{' with images' if call.has_media else ''} (assisted "
                "decoding, prompt lookup, chunked prefill and continuing a conversation from a "
                "pruned past_key_values are not supported on a pruned cache)"
            )
        if past < request.pruned_length or batch != request.mask.shape[0]:
            raise ValueError(
                f"the pruned cache was cropped or reordered (it holds {past} tokens of batch "
                f"{batch}; the pruned prefill left {request.pruned_length} of batch "
                f"{request.mask.shape[0]}): assisted decoding and prompt lookup are not "
                "supported on a pruned cache"
            )
        generated = past - request.pruned_length + steps   # tokens after the prefill, this one included
        incoming = kwargs.get("attention_mask")
        if self._spec.decoder_mask is not None and not _is_2d_mask(incoming):
            incoming = call.inputs.get("attention_mask")   # the 2-D mask the model was given
        if _is_2d_mask(incoming) and incoming.shape[1] == request.unpruned_length + generated:
            tail = incoming[:, request.unpruned_length:].to(request.mask)
        elif incoming is None or _is_2d_mask(incoming) or self._spec.decoder_mask is not None:
            tail = request.mask.new_ones(batch, generated)
        else:
            raise ValueError("greedyprune.hf needs a 2-D attention_mask during decoding, "
                             f"got shape {tuple(incoming.shape)}")
        new = dict(kwargs)
        mask = torch.cat([request.mask, tail], dim=1)
        for name, stored in request.per_token.items():
            value = call.inputs.get(name)
            step = (value[..., -steps:].to(stored) if isinstance(value, torch.Tensor)
                    else stored.new_zeros(*stored.shape[:-1], steps))
            missing = past - stored.shape[-1]  # steps that passed no value: zeros
            if missing > 0:
                stored = torch.cat([stored, stored.new_zeros(*stored.shape[:-1], missing)], -1)
            request.per_token[name] = torch.cat([stored[..., :past], step], -1)
        new["attention_mask"] = self._decoder_mask(mask, new, request.per_token)
        offset = request.unpruned_length - request.pruned_length
        if self._spec.decode_position_ids is not None:
            # The inner model may have numbered this step from the (pruned) cache length.
            new["position_ids"] = self._spec.decode_position_ids(
                self._inner, call.inputs, kwargs.get("position_ids"), offset)
        if new.get("position_ids") is None:
            # The unpruned model would number this token after its full-length cache.
            new["position_ids"] = torch.arange(past + offset, past + offset + steps,
                                               device=embeds.device)[None]
        return args, new

    # --- helpers --------------------------------------------------------------------------------

    def _keeps_everything(self, call: _Call) -> bool:
        """Whether the budget keeps every token of the call's images, whatever their layout."""
        if self.keep_ratio is not None:
            return self.keep_ratio >= 1
        return self.keep >= sum(int(mask.sum()) for mask in call.placeholder_masks.values())

    def _would_prune(self, kwargs: Dict[str, Any], call: _Call) -> bool:
        if self._keeps_everything(call):
            return False
        embeds = kwargs["inputs_embeds"]
        valid = self._padding_mask(kwargs, call, *embeds.shape[:2], embeds.device)
        units = self._locate_units(call, embeds)[0]
        candidates, ks = _prune.budgets(units, valid, self.keep, self.keep_ratio)
        return any(k < len(cand) for cand, k in zip(candidates, ks))

    def _encoder_output(self, call: _Call, media, runs_in_call: List[_VisionRun]):
        """The vision encoder's output object for ``media`` in this call, and its run."""
        encoded = (call.inputs.get("mm_encoder_outputs") or {}).get(media.encoder_key)
        if encoded is not None:
            return encoded, self._runs.get(encoded)
        if runs_in_call:
            # The encoder ran inside this forward: media consume the runs in table order (the
            # order in which the inner forwards encode them).
            run = runs_in_call.pop(0)
            return run.output(), run
        return None, None

    def _padding_mask(self, kwargs, call: _Call, batch: int, length: int, device) -> torch.Tensor:
        incoming = kwargs.get("attention_mask")
        if self._spec.decoder_mask is not None and not _is_2d_mask(incoming):
            incoming = call.inputs.get("attention_mask")
        if incoming is None:
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        if not _is_2d_mask(incoming):
            raise ValueError(
                "greedyprune.hf needs a 2-D attention_mask (batch, sequence) to prune; got "
                f"{type(incoming).__name__} of shape {tuple(getattr(incoming, 'shape', ()))}"
            )
        if incoming.shape != (batch, length):
            raise ValueError(f"attention_mask has shape {tuple(incoming.shape)}, expected "
                             f"{(batch, length)}")
        return incoming.to(device=device, dtype=torch.bool)

    def _decoder_mask(self, mask: torch.Tensor, new_kwargs, per_token):
        build = self._spec.decoder_mask
        if build is None:
            return mask
        return build(self._inner, mask, new_kwargs, dict(per_token))

    def _per_token_kwargs(self, kwargs, batch: int, length: int) -> List[str]:
        """Decoder arguments to gather along with the tokens: the table's ``seq_kwargs``, and
        any other tensor whose last axis is the sequence (``(..., B or 1, L)``, such as
        ``mm_token_type_ids`` a user passes through to a decoder that ignores it): a per-token
        value can only stay meaningful next to the shorter sequence if it is gathered too."""
        names = [name for name in self._spec.seq_kwargs if kwargs.get(name) is not None]
        for name, value in kwargs.items():
            if (name not in names and name not in ("inputs_embeds", "position_ids",
                                                   "attention_mask")
                    and isinstance(value, torch.Tensor) and value.dim() >= 2
                    and value.shape[-1] == length and value.shape[-2] in (1, batch)):
                names.append(name)
        return names


class _ClsRows:
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

    def add(self, media: str, units, run: Optional[_VisionRun]) -> None:
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


def _packed_sequences(kwargs: Dict[str, Any], mask) -> Optional[torch.Tensor]:
    """(B, L) sequence ids when the decoder's rows are packed (several sequences per row), as
    transformers decides: no attention ``mask``, no cache, and text position ids that restart
    within a row; None otherwise."""
    positions = kwargs.get("position_ids")
    if (mask is not None or _cache_of(kwargs) is not None
            or kwargs.get("use_cache") or not isinstance(positions, torch.Tensor)):
        return None
    if positions.dim() == 3:   # Qwen: [text, t, h, w] rows carry text positions, [t, h, w] none
        if positions.shape[0] != 4:
            return None
        positions = positions[0]
    positions = positions.expand(kwargs["inputs_embeds"].shape[0], -1)
    steps = torch.diff(positions, prepend=positions[:, :1] - 1, dim=-1)
    sequence = (steps != 1).cumsum(-1)
    return sequence if bool(sequence[:, -1].any()) else None


def _caller(module) -> Optional[torch.nn.Module]:
    """The module whose forward is calling ``module`` (a ``self`` up the stack that holds it as
    a direct child), if any within a few frames."""
    frame = sys._getframe(1)
    for _ in range(16):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if (isinstance(owner, torch.nn.Module) and owner is not module
                and any(child is module for child in owner._modules.values())):
            return owner
        frame = frame.f_back
    return None


def _cache_of(kwargs):
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def _is_2d_mask(mask) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dim() == 2
