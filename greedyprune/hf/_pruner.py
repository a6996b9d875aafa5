"""What the decoder pre-hook does with a call: plan and apply the pruning of a prefill, and
correct a decode step on the pruned cache (mask, position ids, per-token mask inputs)."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import torch

from ..config import PruneConfig
from . import _archs, _calls, _prune
from ._records import PrefillRecord
from ._state import ByIdentity, Call, ClsRows, Request, ThreadState, VisionRun


class Pruner:
    """The pruning of one handle's decoder calls, with its settings (``config``, ``selector``)
    and the tables it reads: the vision ``runs`` by tower output, the calling ``thread``'s
    state. Raises ValueError for what a prefill that really prunes cannot support."""

    def __init__(self, spec: _archs.ArchSpec, inner, config: PruneConfig, selector, ordered: bool,
                 runs: ByIdentity, thread: ThreadState):
        self.config = config
        self._spec = spec
        self._inner = inner
        self._decoder = spec.decoder(inner)
        self._selector = selector
        self._ordered = ordered
        self._runs = runs
        self._thread = thread

    def prefill(self, kwargs: Dict[str, Any], call: Call):
        """``(new, record, request)``: the decoder's new keyword arguments (None when no image
        loses a token: the call then runs exactly as without the hooks), the
        :class:`PrefillRecord` (None when the call's images are not looked at), and the
        :class:`Request` that decode steps on the pruned cache need (None when not pruned)."""
        embeds = kwargs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        try:
            valid = self._padding_mask(kwargs, call, batch, length, embeds.device)
        except ValueError:  # a mask the hooks cannot read: fine if nothing is to be pruned
            if self._keeps_everything(call):
                return None, None, None
            self._refuse_pruning(kwargs, call)
            raise
        plan, seconds = self._plan(kwargs, call, valid)
        if not plan.pruned:
            identity = torch.arange(length)[None].expand(batch, length)
            return None, PrefillRecord(
                images=tuple(plan.records), seq_len_before=length, seq_len_after=length,
                source_positions=identity.numpy().copy(), seconds=seconds), None
        self._refuse_pruning(kwargs, call)
        start = time.perf_counter()
        compaction = _prune.compact(plan.keep)
        new, request = self._pruned_kwargs(kwargs, call, plan.keep, compaction)
        seconds["gather"] += time.perf_counter() - start
        source = torch.where(compaction.padding, -1, compaction.source).detach()
        return new, PrefillRecord(
            images=tuple(plan.records), seq_len_before=length, seq_len_after=compaction.length,
            source_positions=source.cpu().numpy(), seconds=seconds,
        ), request

    def _plan(self, kwargs: Dict[str, Any], call: Call, valid: torch.Tensor):
        """Which tokens the prefill keeps (:class:`_prune.PrefillPlan`), and its timings."""
        embeds = kwargs["inputs_embeds"]
        units, placeholders, cls = self._locate_units(call, embeds)
        config = self.config
        # Choosing needs no gradient; the gathers keep it (pruning while fine-tuning).
        with torch.no_grad():
            plan = _prune.plan_prefill(
                embeds, valid, units, placeholders, saliency=config.saliency, cls_rows=cls.rows,
                first_layer=self._decoder.layers[0] if config.saliency == "query" else None,
                selector=self._selector, keep=config.keep, keep_ratio=config.keep_ratio,
                lam_for=config.lam_for, seed=config.seed,
                text_valid=self._text_valid(kwargs, call, valid),
                ordered=self._ordered,
            )
        seconds = dict(plan.seconds)
        if config.saliency == "cls" and plan.pruned:
            seconds["cls"] = cls.seconds
        return plan, seconds

    def _pruned_kwargs(self, kwargs: Dict[str, Any], call: Call, keep: torch.Tensor,
                       compaction: "_prune.Compaction"):
        """The decoder's keyword arguments for the kept tokens, and the :class:`Request` that
        decode steps on the pruned cache will need."""
        embeds = kwargs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        new = dict(kwargs)
        new["inputs_embeds"] = _prune.gather_tokens(embeds, compaction)
        positions = kwargs.get("position_ids")
        if positions is None:  # what the decoder would compute for an empty cache
            positions = torch.arange(length, device=embeds.device)[None]
        new["position_ids"] = _prune.gather_last(positions, compaction)
        for name in _calls.per_token_kwargs(kwargs, self._spec.seq_kwargs, batch, length):
            new[name] = _prune.gather_last(kwargs[name], compaction)
        if self._spec.prune_kwargs is not None:
            self._spec.prune_kwargs(kwargs, new, keep)
        incoming = kwargs.get("attention_mask")
        mask_dtype = incoming.dtype if _calls.is_2d_mask(incoming) else torch.long
        mask = (~compaction.padding).to(mask_dtype)
        per_token = {name: _prune.gather_last(call.inputs[name].to(embeds.device), compaction)
                     for name in self._spec.mask_inputs if call.inputs.get(name) is not None}
        packed = _calls.packed_sequences(kwargs, incoming)
        if packed is not None:
            new["attention_mask"] = _prune.packed_mask(packed, compaction, embeds.dtype)
        else:
            new["attention_mask"] = self._decoder_mask(mask, new, per_token)
        return new, Request(mask, length, compaction.length, per_token)

    def _refuse_pruning(self, kwargs: Dict[str, Any], call: Call) -> None:
        """What a prefill that really prunes cannot support (a budget that prunes nothing
        supports all of it)."""
        why = "with this budget images lose tokens, and "
        if call.labels:
            raise ValueError(
                f"labels are not supported while greedyprune.hf prunes: {why}the logits cover "
                "the pruned sequence (see handle.last_prefill.source_positions); detach to "
                "compute a loss on the full sequence")
        cache = _calls.cache_of(kwargs)
        if getattr(cache, "is_compileable", False):
            raise ValueError(
                f"greedyprune.hf does not support {type(cache).__name__} while it prunes: {why}"
                "a static or compilable cache writes at unpruned positions; use the default "
                "dynamic cache (no cache_implementation, no compile_config); to compile while "
                "pruning, compile the model itself: torch.compile(model) or model.compile()")
        head = call.head
        if head is not None and not any(cls.__name__ in self._spec.top_classes
                                        for cls in type(head).__mro__):
            raise ValueError(
                f"greedyprune.hf cannot prune {type(self._inner).__name__} inside "
                f"{type(head).__name__}: {why}that head reads the model's outputs at positions "
                f"of the unpruned sequence; supported: {' or '.join(self._spec.classes)}")
        if (self._spec.decoder_mask is not None
                and _calls.packed_sequences(kwargs, call.inputs.get("attention_mask")) is not None):
            raise ValueError(
                f"greedyprune.hf cannot prune packed sequences (position_ids restarting within "
                f"a row, no attention_mask) on {self._spec.name}: {why}its decoder builds its "
                "own masks; pass one sequence per row with an attention_mask")

    def _locate_units(self, call: Call, embeds: torch.Tensor):
        """Every image's placeholder run in the batch, the (B, L) placeholder mask, and the
        [CLS] rows of the vision runs (:class:`ClsRows`)."""
        batch, length = embeds.shape[:2]
        units, placeholders = [], torch.zeros(batch, length, dtype=torch.bool, device=embeds.device)
        runs_in_call = list(call.runs)
        cls = ClsRows(call.other_feature_layer)
        for media in self._spec.media:
            if media.name not in call.placeholder_masks:
                continue
            mask = call.placeholder_masks[media.name].to(embeds.device)
            placeholders |= mask
            total = int(mask.sum())
            if not total:
                continue
            output, run = self._encoder_output(call, media, runs_in_call)
            context = _archs.UnitsContext(self._inner, call.inputs, total, output, vision=run)
            media_units = _prune.locate_units(media.name, mask, media.units(context))
            if self.config.saliency == "cls":
                cls.add(media.name, media_units, run)
            units += media_units
        return units, placeholders, cls

    def _text_valid(self, kwargs: Dict[str, Any], call: Call, valid: torch.Tensor):
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

    def decode_step(self, args, kwargs, request: Optional[Request], past: int, call: Call):
        """``(args, kwargs)`` for a decode step on a cache of ``past`` tokens that the prefill of
        ``request`` pruned, or None to leave the call alone (a cache it never pruned)."""
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
        new = dict(kwargs)
        mask = self._decode_mask(kwargs, call, request, past - request.pruned_length + steps)
        request.extend_per_token(call.inputs, past, steps)
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

    def _decode_mask(self, kwargs, call: Call, request: Request, generated: int) -> torch.Tensor:
        """The stored pruned mask, extended by the ``generated`` tokens since the prefill (this
        step's included): the incoming mask's tail when it has the unpruned length, else ones."""
        incoming = self._incoming_mask(kwargs, call)
        if (_calls.is_2d_mask(incoming)
                and incoming.shape[1] == request.unpruned_length + generated):
            tail = incoming[:, request.unpruned_length:].to(request.mask)
        elif incoming is None or _calls.is_2d_mask(incoming) or self._spec.decoder_mask is not None:
            tail = request.mask.new_ones(request.mask.shape[0], generated)
        else:
            raise ValueError("greedyprune.hf needs a 2-D attention_mask during decoding, "
                             f"got shape {tuple(incoming.shape)}")
        return torch.cat([request.mask, tail], dim=1)

    # --- helpers --------------------------------------------------------------------------------

    def _keeps_everything(self, call: Call) -> bool:
        """Whether the budget keeps every token of the call's images, whatever their layout."""
        config = self.config
        if config.keep_ratio is not None:
            return config.keep_ratio >= 1
        assert config.keep is not None, "one of keep and keep_ratio"
        return config.keep >= sum(int(mask.sum()) for mask in call.placeholder_masks.values())

    def _would_prune(self, kwargs: Dict[str, Any], call: Call) -> bool:
        if self._keeps_everything(call):
            return False
        embeds = kwargs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        valid = self._padding_mask(kwargs, call, batch, length, embeds.device)
        units = self._locate_units(call, embeds)[0]
        candidates, ks = _prune.budgets(units, valid, self.config.keep, self.config.keep_ratio)
        return any(k < len(cand) for cand, k in zip(candidates, ks))

    def _encoder_output(self, call: Call, media, runs_in_call: List[VisionRun]):
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

    def _incoming_mask(self, kwargs, call: Call):
        """The decoder's mask argument, or, for decoders that take prepared masks, the 2-D mask
        the inner model was given."""
        incoming = kwargs.get("attention_mask")
        if self._spec.decoder_mask is not None and not _calls.is_2d_mask(incoming):
            incoming = call.inputs.get("attention_mask")
        return incoming

    def _padding_mask(self, kwargs, call: Call, batch: int, length: int, device) -> torch.Tensor:
        return _calls.padding_mask(self._incoming_mask(kwargs, call), batch, length, device)

    def _decoder_mask(self, mask: torch.Tensor, new_kwargs, per_token):
        build = self._spec.decoder_mask
        if build is None:
            return mask
        return build(self._inner, mask, new_kwargs, dict(per_token))
