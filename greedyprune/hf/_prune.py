"""The pruning step of greedyprune.hf on tensors: which tokens a prefill keeps, and the shorter
inputs the decoder gets instead. No hooks and no model classes here (see ``_handle.py`` and
``_archs/``): plain functions from tensors to tensors, so each can be checked on its own.

One prefill, for a batch of B rows of L tokens whose placeholder runs were located by
:func:`locate_units`:

1. Candidates: each image's placeholder tokens except its structural ones (LLaVA-NeXT newlines)
   and those the attention mask hides.
2. Saliency per candidate (docs/spec.md §5): ``"text"`` is the cosine between its input embedding
   and the mean input embedding of its row's text tokens (not placeholders, not padding);
   ``"cls"`` reads the [CLS]-attention rows captured in the vision tower; ``"query"`` is the
   attention the first decoder layer's queries of the row's text tokens would pay each visual
   token (:func:`query_relevance`); ``"none"`` is None.
3. Budget ``k = min(keep, n)`` or ``ceil(keep_ratio · n)`` (at least 1) per image; images of
   equal ``(n, k)`` go to the selector in one batched call (the C core runs them in parallel).
4. Kept: every valid non-placeholder token, the selected candidates, and each structural token
   whose group still has a selected token. Padding is dropped. When no image loses a token
   (``plan.pruned`` is False) the caller leaves the inputs as they are.
5. Rows are re-left-padded to the longest kept row: ``gather_*`` build the decoder's inputs
   with the kept tokens in their original order, keeping their original position ids.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import tokens_kept
from ._archs import UnitLayout
from ._records import ImageRecord


def cache_length(cache) -> int:
    """Tokens already in a transformers cache (0 for None)."""
    return 0 if cache is None else int(cache.get_seq_length())


@dataclass
class LocatedUnit:
    """One image's placeholder run, found in the batch."""

    media: str
    index: int            # order of the image among this media's units in the request
    row: int
    positions: np.ndarray  # (n_tokens,) sequence positions in the row
    layout: UnitLayout
    vision_offset: int = 0  # where this unit's vision run starts in the flat [CLS] rows


def locate_units(media: str, mask: torch.Tensor, layouts: Sequence[UnitLayout]) -> List[LocatedUnit]:
    """Assign the placeholder tokens of ``mask`` (B, L) to consecutive units, in row-major order
    (the order in which the model's ``masked_scatter`` consumed the features)."""
    rows, cols = (t.cpu().numpy() for t in mask.nonzero(as_tuple=True))
    sizes = [layout.n_tokens for layout in layouts]
    if sum(sizes) != len(rows):
        raise ValueError(
            f"{len(rows)} {media} placeholder tokens in the batch, but its {len(layouts)} "
            f"{media}s account for {sum(sizes)}"
        )
    units, start = [], 0
    for index, (layout, size) in enumerate(zip(layouts, sizes)):
        stop = start + size
        if size and rows[start] != rows[stop - 1]:
            raise ValueError(f"the tokens of {media} {index} span more than one batch row")
        units.append(LocatedUnit(media, index, int(rows[start]) if size else 0,
                                 cols[start:stop], layout))
        start = stop
    return units


@dataclass
class PrefillPlan:
    """What :func:`plan_prefill` decided: the (B, L) keep mask and the per-image records."""

    keep: torch.Tensor
    records: List[ImageRecord]
    seconds: Dict[str, float] = field(default_factory=dict)
    pruned: bool = True    # whether any image loses a token


def text_anchor(embeds: torch.Tensor, valid: torch.Tensor, placeholders: torch.Tensor) -> torch.Tensor:
    """Mean input embedding of each row's text tokens, float32 (B, D); zero for a row without
    text (its saliency is then constant, i.e. ignored)."""
    text = (valid & ~placeholders).to(embeds.dtype)
    total = torch.bmm(text[:, None, :], embeds)[:, 0].float()
    return total / text.sum(1, keepdim=True).float().clamp(min=1.0)


def cls_attention(attention, hidden: torch.Tensor) -> torch.Tensor:
    """Each sequence's [CLS]-to-all attention, averaged over heads: (batch, tokens), float32.

    ``hidden`` is the attention module's input (the layer's first layer-norm output). Computes
    ``softmax(q_cls · k_j / sqrt(d_head))`` without the keys: ``q_h · (W_h x_j + b_h)`` equals
    ``(W_hᵀ q_h) · x_j`` plus a term constant in ``j``, which the softmax cancels. That is
    O(T·D·H) per sequence instead of the O(T·D²) of the key projection, and works under any
    attention backend (no eager attention, no attention maps).
    """
    heads, head_dim = int(attention.num_heads), int(attention.head_dim)
    scale = float(getattr(attention, "scale", head_dim ** -0.5))
    x = hidden.float()
    query = attention.q_proj(hidden[:, 0]).float().view(-1, heads, head_dim)       # (S, H, d)
    key_weight = attention.k_proj.weight.float().view(heads, head_dim, -1)         # (H, d, D)
    probe = torch.einsum("shd,hdc->shc", query, key_weight)                        # (S, H, D)
    scores = torch.einsum("stc,shc->sht", x, probe) * scale                        # (S, H, T)
    return scores.softmax(dim=-1).mean(dim=1)


def query_relevance(layer, embeds: torch.Tensor, valid: torch.Tensor,
                    placeholders: torch.Tensor) -> torch.Tensor:
    """``saliency="query"``: for each row, the attention that the first decoder layer's queries
    at the row's text tokens would pay each of its placeholder tokens, float32 (B, L) (zero off
    the placeholders).

    ``layer`` is the decoder's first layer (its ``input_layernorm`` and ``self_attn`` with
    ``q_proj``/``k_proj``, and ``q_norm``/``k_norm`` where the model has them). For text token
    t, head h and placeholder j: ``softmax_j(q_th · k_jh · scale)``, the softmax over the row's
    placeholders, averaged over heads and text tokens. Content only: rotary position terms and
    the causal order are left out, so the relevance does not depend on where the tokens sit
    (text before or after the image alike). Computed from the two projections of the tokens
    involved: no attention maps, any attention backend.
    """
    attention = layer.self_attn
    config = attention.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(attention, "head_dim", config.hidden_size // heads))
    groups = heads // int(getattr(config, "num_key_value_heads", None) or heads)
    scale = float(getattr(attention, "scaling", head_dim ** -0.5))
    out = torch.zeros(valid.shape, dtype=torch.float32, device=embeds.device)
    text = valid & ~placeholders
    visual = valid & placeholders
    for row in range(embeds.shape[0]):
        if not text[row].any() or not visual[row].any():
            continue
        x_text = layer.input_layernorm(embeds[row, text[row]])
        x_vis = layer.input_layernorm(embeds[row, visual[row]])
        q = attention.q_proj(x_text).view(len(x_text), -1, head_dim)
        k = attention.k_proj(x_vis).view(len(x_vis), -1, head_dim)
        if hasattr(attention, "q_norm"):
            q, k = attention.q_norm(q), attention.k_norm(k)
        k = k.repeat_interleave(groups, dim=1)                       # (N, H, d)
        scores = torch.einsum("thd,nhd->htn", q.float(), k.float()) * scale
        out[row, visual[row]] = scores.softmax(dim=-1).mean(dim=(0, 1))
    return out


def cosine_to_anchor(features: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Cosine of each token (G, n, D) with its image's anchor (G, D), float32 (G, n). A matrix
    product and two norms: no broadcast copy of the features, no float copy of half-precision
    ones."""
    dots = torch.bmm(features, anchor.to(features.dtype)[:, :, None])[..., 0].float()
    norms = torch.linalg.vector_norm(features, dim=-1, dtype=torch.float32)
    return dots / (norms * torch.linalg.vector_norm(anchor, dim=-1)[:, None]).clamp_min(1e-12)


def _gather_features(embeds, units, candidates) -> torch.Tensor:
    """The candidates' input embeddings, (G, n, D): a view when there is one image whose
    candidates are contiguous (plain LLaVA), one index_select otherwise."""
    if len(units) == 1:
        positions = units[0].positions[candidates[0]]
        first = int(positions[0])
        if int(positions[-1]) - first + 1 == len(positions):
            return embeds[units[0].row, first:first + len(positions)][None]
    length = embeds.shape[1]
    flat = np.stack([unit.row * length + unit.positions[cand] for unit, cand in zip(units, candidates)])
    index = torch.from_numpy(flat.reshape(-1)).to(embeds.device)
    flat_embeds = embeds.reshape(-1, embeds.shape[-1])
    return flat_embeds.index_select(0, index).view(len(units), -1, embeds.shape[-1])


def candidates_of(unit: LocatedUnit, valid: np.ndarray) -> np.ndarray:
    """The unit's candidate tokens (indices into its run): every token except the structural
    ones and those the attention mask hides (``valid``: the (B, L) padding mask)."""
    structural = unit.layout.structural
    cand = np.arange(unit.layout.n_tokens) if structural is None else np.flatnonzero(~structural)
    return cand[valid[unit.row, unit.positions[cand]]]


def budgets(units: Sequence[LocatedUnit], valid: torch.Tensor, keep: Optional[int],
            keep_ratio: Optional[float]) -> Tuple[List[np.ndarray], List[int]]:
    """Each unit's candidates (:func:`candidates_of`) and how many of them it keeps."""
    valid_np = valid.cpu().numpy()
    candidates = [candidates_of(unit, valid_np) for unit in units]
    return candidates, [tokens_kept(len(cand), keep, keep_ratio) if len(cand) else 0
                        for cand in candidates]


def _vision_index(unit: LocatedUnit) -> np.ndarray:
    index = unit.layout.vision_index
    assert index is not None, "checked when the [CLS] rows were recorded"
    return index


class _Saliency:
    """Saliency of a group of candidates (step 2), computed on first use: a prefill in which no
    image loses a token needs none."""

    def __init__(self, saliency: str, embeds, text_valid, placeholders, cls_rows, first_layer):
        self.kind, self.embeds, self.text_valid = saliency, embeds, text_valid
        self.placeholders, self.cls_rows, self.first_layer = placeholders, cls_rows, first_layer
        self.anchor: Optional[torch.Tensor] = None
        self.relevance: Optional[torch.Tensor] = None
        self.seconds = 0.0

    def __call__(self, units: Sequence[LocatedUnit], candidates, features) -> Optional[torch.Tensor]:
        start = time.perf_counter()
        device = self.embeds.device
        scores = None
        if self.kind == "text":
            if self.anchor is None:
                self.anchor = text_anchor(self.embeds, self.text_valid, self.placeholders)
            rows = torch.tensor([unit.row for unit in units], device=device)
            scores = cosine_to_anchor(features, self.anchor[rows])
        elif self.kind == "cls":
            cls_rows = self.cls_rows()
            sources = np.stack([_vision_index(unit)[cand] + unit.vision_offset
                                for unit, cand in zip(units, candidates)])
            scores = cls_rows[torch.from_numpy(sources).to(cls_rows.device)].to(device)
        elif self.kind == "query":
            if self.relevance is None:
                self.relevance = query_relevance(self.first_layer, self.embeds, self.text_valid,
                                                 self.placeholders)
            rows = torch.tensor([unit.row for unit in units], device=device)
            columns = torch.from_numpy(np.stack([unit.positions[cand]
                                                 for unit, cand in zip(units, candidates)]))
            scores = self.relevance[rows[:, None], columns.to(device)]
        self.seconds += time.perf_counter() - start
        return scores


def plan_prefill(
    embeds: torch.Tensor,
    valid: torch.Tensor,
    units: Sequence[LocatedUnit],
    placeholders: torch.Tensor,
    *,
    saliency: str,
    cls_rows: Optional[Callable[[], torch.Tensor]],
    first_layer: Optional[torch.nn.Module] = None,
    selector: Callable,
    keep: Optional[int],
    keep_ratio: Optional[float],
    lam_for: Callable[[int, int], float],
    seed: int,
    text_valid: Optional[torch.Tensor] = None,
    ordered: bool = False,
) -> PrefillPlan:
    """Decide which tokens of a prefill survive (steps 1–4 of the module docstring).

    ``embeds`` (B, L, D) are the merged input embeddings, ``valid`` (B, L) the padding mask,
    ``placeholders`` (B, L) every media placeholder token, ``cls_rows`` returns the
    [CLS]-attention rows captured in the vision tower, flattened (``saliency="cls"`` only),
    ``first_layer`` the decoder's first layer (``saliency="query"`` only), ``lam_for(k, n)`` the
    λ of an image that keeps ``k`` of its ``n`` tokens, ``text_valid`` the
    tokens text saliency reads (default ``valid``). ``ordered``: the selector returns its
    picks in selection order (recorded as ``ImageRecord.order``) rather than sorted.
    ``plan.pruned`` is False when no image loses a token; the keep mask is then ``valid``.
    """
    candidates, ks = budgets(units, valid, keep, keep_ratio)
    selected = [np.arange(len(cand)) for cand in candidates]
    orders: List[Optional[np.ndarray]] = [None] * len(units)
    shares = [0.0] * len(units)
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, (cand, k) in enumerate(zip(candidates, ks)):
        if k < len(cand):
            groups.setdefault((len(cand), k), []).append(i)
    score = _Saliency(saliency, embeds, valid if text_valid is None else text_valid,
                      placeholders, cls_rows, first_layer)
    select_seconds = 0.0
    # One batched selector call per (n, k): the C core runs the images in parallel.
    for (n, k), members in groups.items():
        members_units = [units[i] for i in members]
        members_cand = [candidates[i] for i in members]
        features = _gather_features(embeds, members_units, members_cand)         # (G, n, D)
        scores = score(members_units, members_cand, features)
        start = time.perf_counter()
        kept = selector(features, k, scores, lam=lam_for(k, n), seed=seed)
        kept = kept.cpu().numpy() if isinstance(kept, torch.Tensor) else np.asarray(kept)
        elapsed = time.perf_counter() - start
        select_seconds += elapsed
        for row_in_call, i in enumerate(members):
            selected[i] = np.sort(kept[row_in_call]) if ordered else kept[row_in_call]
            orders[i] = candidates[i][kept[row_in_call]] if ordered else None
            shares[i] = elapsed / len(members)

    start = time.perf_counter()
    keep_mask, records = _keep_mask(valid, placeholders, units, candidates, selected, shares,
                                    orders, _copies(embeds, valid))
    seconds = {"saliency": score.seconds, "select": select_seconds,
               "gather": time.perf_counter() - start}
    return PrefillPlan(keep_mask, records, seconds, pruned=bool(groups))


def _copies(embeds: torch.Tensor, valid: torch.Tensor) -> List[Optional[int]]:
    """For each row, the first row of the run of identical rows before it (same embeddings
    and mask; beam search repeats each input that way), or None for a row that is no copy."""
    copy_of: List[Optional[int]] = [None] * embeds.shape[0]
    for row in range(1, embeds.shape[0]):
        if torch.equal(valid[row], valid[row - 1]) and torch.equal(embeds[row], embeds[row - 1]):
            copy_of[row] = copy_of[row - 1] if copy_of[row - 1] is not None else row - 1
    return copy_of


def _keep_mask(valid, placeholders, units, candidates, selected, shares, orders, copy_of):
    """Step 4: the (B, L) keep mask (valid text, kept candidates, the structural tokens of
    groups that keep one) and one :class:`ImageRecord` per unit."""
    keep_mask = valid & ~placeholders
    records, rows_all, cols_all = [], [], []
    per_row: Dict[Tuple[int, str], int] = {}
    for unit, cand, pick, share, order in zip(units, candidates, selected, shares, orders):
        kept_tokens = cand[pick]
        layout = unit.layout
        if layout.structural is not None and layout.structural.any():
            structural = np.flatnonzero(layout.structural)
            live_groups = layout.group[kept_tokens]
            structural = structural[np.isin(layout.group[structural], live_groups[live_groups >= 0])]
            kept_tokens = np.sort(np.concatenate([kept_tokens, structural]))
        positions = unit.positions[kept_tokens]
        rows_all.append(np.full(len(positions), unit.row))
        cols_all.append(positions)
        index_in_row = per_row.get((unit.row, unit.media), 0)
        per_row[unit.row, unit.media] = index_in_row + 1
        records.append(ImageRecord(
            row=unit.row, index=unit.index, index_in_row=index_in_row, modality=unit.media,
            n_tokens=layout.n_tokens, tokens_before=len(cand), tokens_after=len(pick),
            kept=kept_tokens.astype(np.int64), kept_positions=positions.astype(np.int64),
            select_seconds=share, grid=layout.grid,
            order=None if order is None else order.astype(np.int64), copy_of=copy_of[unit.row],
        ))
    if rows_all:
        device = keep_mask.device
        rows_t = torch.from_numpy(np.concatenate(rows_all)).to(device)
        cols_t = torch.from_numpy(np.concatenate(cols_all)).to(device)
        keep_mask[rows_t, cols_t] = True
    return keep_mask & valid, records


@dataclass
class Compaction:
    """How the kept tokens are laid out in the shorter, re-left-padded batch."""

    source: torch.Tensor   # (B, L') long: the unpruned position of each new slot (0 in padding)
    padding: torch.Tensor  # (B, L') bool: True for the new left padding

    @property
    def length(self) -> int:
        return self.source.shape[1]


def compact(keep: torch.Tensor) -> Compaction:
    """Left-pad every row's kept tokens (in order) to the longest row."""
    batch, _ = keep.shape
    lengths = keep.sum(1)
    new_length = int(lengths.max()) if batch else 0
    pad = new_length - lengths                                                     # (B,)
    rows, cols = keep.nonzero(as_tuple=True)
    slots = (keep.cumsum(1) - 1 + pad[:, None])[rows, cols]
    source = torch.zeros(batch, new_length, dtype=torch.long, device=keep.device)
    source[rows, slots] = cols
    padding = torch.arange(new_length, device=keep.device)[None, :] < pad[:, None]
    return Compaction(source, padding)


def gather_tokens(embeds: torch.Tensor, plan: Compaction) -> torch.Tensor:
    """(B, L, D) -> (B, L', D); zeros in the new padding (masked out anyway)."""
    index = plan.source[..., None].expand(-1, -1, embeds.shape[-1])
    return embeds.gather(1, index).masked_fill(plan.padding[..., None], 0)


def gather_last(values: torch.Tensor, plan: Compaction, fill=0) -> torch.Tensor:
    """(..., B or 1, L) -> (..., B, L') along the last axis: position ids (2-D, or 3-D for
    multi-axis rotary positions such as Qwen2-VL's [3 or 4, B, L]) and per-token ids."""
    batch, new_length = plan.source.shape
    values = values.expand(*values.shape[:-2], batch, values.shape[-1])
    index = plan.source.expand(*values.shape[:-2], batch, new_length)
    return values.gather(-1, index).masked_fill(plan.padding, fill)


def packed_mask(sequence: torch.Tensor, plan: Compaction, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D additive mask (B, 1, L', L') of packed rows (several sequences per row, told
    apart by ``sequence`` (B, L), as transformers finds them from restarting position ids):
    each kept token attends to the kept tokens of its own sequence up to itself. transformers
    infers this itself only from unbroken position ids, which pruning leaves with gaps."""
    sequence = gather_last(sequence, plan, fill=-1)
    length = plan.length
    causal = torch.ones(length, length, dtype=torch.bool, device=sequence.device).tril()
    allowed = (sequence[:, :, None] == sequence[:, None, :]) & causal & ~plan.padding[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=sequence.device)  # padding: itself
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sequence.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
