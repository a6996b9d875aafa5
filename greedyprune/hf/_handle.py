"""The hook object behind ``greedyprune.hf.attach``: its lifecycle and what each hook does.

Hooks, all PyTorch handles (nothing in the model is replaced or edited):

- on the *inner* model (the module that merges visual features into the embeddings), a forward
  pre-hook notes the call (where the placeholder tokens are, the inputs the architecture's
  ``units`` read) and a forward hook clears the note when the call ends, however it ends;
- on the *decoder*, a forward pre-hook hands the call to :class:`~._pruner.Pruner`: at a
  prefill (empty cache) it plans the pruning and rewrites the decoder's keyword arguments; at a
  decode step on a cache it pruned, it replaces the mask and position ids by those of the
  pruned cache. A forward hook files the prefill's state under the cache object it filled;
- on the vision tower (and the projector, the [CLS] attention where used), hooks record what the
  prefill needs to know about the images, filed under the tower's output object, because
  ``generate()`` encodes images before the prefill and passes that object back in as
  ``mm_encoder_outputs``;
- on a top-level model, a pre-hook that notes ``labels`` (refused when images lose tokens).

Under ``torch.compile`` every hook is a small gate that the compiler traces. When the budget
cannot prune the call, as seen from the configuration and the call's shapes alone (a traced
hook cannot read the data: ``keep_ratio=1``, or ``keep`` at least the call's sequence length,
and no cache this handle pruned), the gate does nothing, so the compiled graph is the plain
model's, ``fullgraph=True`` included. Otherwise the gate calls the hook's work, which
:func:`torch.compiler.disable` keeps out of the graph: a graph break, run eagerly, so pruning
works as without the compiler, and ``fullgraph=True`` refuses it with :data:`OUTSIDE_GRAPH`.

The mechanics, per architecture, are described in docs/architectures.md.
"""
from __future__ import annotations

import contextlib
import time
import weakref
from typing import Any, Iterator, List, Optional

import torch

from ..config import PruneConfig
from . import _archs, _calls, _prune
from ._pruner import Pruner
from ._records import ImageRecord, PrefillRecord
from ._state import NO_PREFILL_YET, ByIdentity, Call, ThreadState, VisionRun

#: Attribute of the inner model holding its attached handles, the active one last.
ATTRIBUTE = "_greedyprune_handles"

#: Why torch.compile(..., fullgraph=True) refuses a call that can prune (its graph-break message).
OUTSIDE_GRAPH = (
    "greedyprune.hf prunes outside the compiled graph (a graph break), which fullgraph=True "
    "refuses: compile without fullgraph=True (torch.compile(model) or model.compile() with the "
    "default settings prune as without the compiler), or detach; a budget that cannot prune "
    "(keep_ratio=1, or keep at least the sequence length) compiles with fullgraph=True")

_outside_graph = torch.compiler.disable(reason=OUTSIDE_GRAPH)


def _sequence_length(args, kwargs) -> Optional[int]:
    """The sequence length of a model or decoder call, from its shapes (None if not found)."""
    for name in ("inputs_embeds", "input_ids"):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return value.shape[1]
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
        return args[0].shape[1]
    return None


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
        self._inner = spec.inner(model) if is_top else model
        self._is_top = is_top
        self._decoder = spec.decoder(self._inner)
        self._thread = ThreadState()
        self._latest_prefill: Optional[PrefillRecord] = None  # of any thread
        self._runs = ByIdentity()       # tower output -> VisionRun
        self._requests = ByIdentity()   # cache object -> Request of the prefill that filled it
        self._handles: List[Any] = []
        self._attached = False
        self._pruned_a_cache = False    # a prefill filed a Request: decode steps need the hooks
        self._traced_call_skips = False  # under torch.compile: the inner model's call skipped
        self._pruner = Pruner(spec, self._inner, config, selector, ordered, self._runs,
                              self._thread)
        self._cls_module = (spec.cls_probe(self._inner, {})
                            if config.saliency == "cls" and spec.cls_probe is not None else None)
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
        inner, decoder, gate = self._inner, self._decoder, self._gate
        self._handles = [
            inner.register_forward_pre_hook(gate(self._before_model, opens=True),
                                            with_kwargs=True),
            inner.register_forward_hook(gate(self._after_model, opens=False), with_kwargs=True,
                                        always_call=True),
            decoder.register_forward_pre_hook(gate(self._before_decoder), with_kwargs=True),
            decoder.register_forward_hook(gate(self._after_decoder), with_kwargs=True,
                                          always_call=True),
        ]
        spec = self._spec
        if spec.vision_tower is not None:
            tower = spec.vision_tower(inner)
            self._handles += [
                tower.register_forward_pre_hook(gate(self._before_vision, vision=True),
                                                with_kwargs=True),
                tower.register_forward_hook(gate(self._after_vision, vision=True),
                                            always_call=True),
            ]
        if spec.projector is not None:
            self._handles.append(spec.projector(inner).register_forward_hook(
                gate(self._after_projector, vision=True)))
        if self._cls_module is not None:
            self._handles.append(self._cls_module.register_forward_pre_hook(
                gate(self._before_cls_attention, vision=True), with_kwargs=True))
        if self._is_top:
            self._handles += [
                self.model.register_forward_pre_hook(gate(self._before_top), with_kwargs=True),
                self.model.register_forward_hook(gate(self._after_top), with_kwargs=True,
                                                 always_call=True),
            ]

    def _gate(self, work, vision: bool = False, opens: Optional[bool] = None):
        """The hook registered for ``work`` (see the module docstring): ``work`` itself, except
        under torch.compile, where nothing happens when the call cannot prune. Hooks on model
        and decoder calls read the call's sequence length; ``vision`` hooks, which cannot, skip
        when the inner model's call they run in (``opens`` marks its start and end) skipped."""
        def hook(module, args, *rest):
            if torch.compiler.is_compiling():
                if vision:
                    skip = self._traced_call_skips or self._cannot_prune(None)
                else:
                    skip = self._cannot_prune(_sequence_length(args, rest[0]))
                    if opens is not None:
                        self._traced_call_skips = skip and opens
                if skip:
                    return None
            return work(module, args, *rest)

        hook.handle = self  # type: ignore[attr-defined]  # which handle installed the hook
        return hook

    def _cannot_prune(self, length: Optional[int]) -> bool:
        """Whether a call of ``length`` tokens certainly leaves every image whole, from the
        configuration and shapes alone: ``keep_ratio=1``, or ``keep`` at least the length (no
        image has more tokens than the sequence), and no cache this handle pruned to continue."""
        if self._pruned_a_cache:
            return False
        config = self.config
        if config.keep_ratio is not None:
            return config.keep_ratio >= 1
        return length is not None and config.keep is not None and config.keep >= length

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
        return self._latest_prefill if mine is NO_PREFILL_YET else mine

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

    @_outside_graph
    def _before_top(self, module, args, kwargs):
        self._thread.labels = kwargs.get("labels") is not None  # refused if pruning happens
        return None

    @_outside_graph
    def _after_top(self, module, args, kwargs, output):
        self._thread.labels = False
        return None

    @_outside_graph
    def _before_model(self, module, args, kwargs):
        layer = kwargs.get("vision_feature_layer")
        if layer is not None and layer == getattr(module.config, "vision_feature_layer", layer):
            layer = None  # the configured layer, the one the [CLS] hook reads
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        masks = _calls.placeholder_masks(self._spec, module, input_ids, kwargs)
        has_media = any(bool(mask.any()) for mask in masks.values())
        self._thread.call = Call(
            inputs={name: kwargs.get(name)
                    for name in (*self._spec.call_inputs, *self._spec.mask_inputs,
                                 *(("attention_mask",) if self._spec.decoder_mask else ()))},
            placeholder_masks=masks, has_media=has_media, input_ids=input_ids,
            labels=self._thread.labels, other_feature_layer=layer,
            head=_calls.caller(module) if has_media and not self._is_top else None,
        )
        return None

    @_outside_graph
    def _after_model(self, module, args, kwargs, output):
        self._thread.call = None
        return None

    @_outside_graph
    def _before_vision(self, module, args, kwargs):
        # Small keyword arguments only (Qwen2-VL's grid_thw, say): generate() drops them from
        # the model's inputs once it has encoded the images, yet layouts may need them.
        small = {name: value for name, value in kwargs.items()
                 if not isinstance(value, torch.Tensor) or value.numel() <= 4096}
        self._thread.run = VisionRun(tower_kwargs=small)
        return None

    @_outside_graph
    def _after_vision(self, module, args, output):
        state = self._thread
        run = state.run
        if output is None:  # the tower raised: forget its run
            state.run = None
            return None
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

    @_outside_graph
    def _after_projector(self, module, args, output):
        run = self._thread.run
        if run is None or run.fingerprint is not None or not isinstance(output, torch.Tensor):
            return None
        run.record_fingerprint(output)
        return None

    @_outside_graph
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

    @_outside_graph
    def _before_decoder(self, module, args, kwargs):
        call = self._thread.call
        embeds = kwargs.get("inputs_embeds")
        if call is None or embeds is None:
            return None  # not reached through the model's own forward: leave it alone
        cache = _calls.cache_of(kwargs)
        past = _prune.cache_length(cache)
        if past > 0:
            return self._pruner.decode_step(args, kwargs, self._requests.get(cache), past, call)
        if not call.has_media:
            self._record_prefill(None)  # this prefill pruned nothing
            return None
        new, record, request = self._pruner.prefill(kwargs, call)
        self._record_prefill(record)
        self._thread.pending_request = request
        return None if new is None else (args, new)

    @_outside_graph
    def _after_decoder(self, module, args, kwargs, output):
        state = self._thread
        request, state.pending_request = state.pending_request, None
        if request is None:
            return None
        cache = _calls.cache_of(kwargs)
        if cache is None:
            cache = getattr(output, "cache", None)
        if cache is None:
            cache = getattr(output, "past_key_values", None)
        if cache is not None:
            self._requests.put(cache, request)
            self._pruned_a_cache = True
        return None
