"""greedyprune.hf handles behave like PEFT adapters and accelerate hooks: they stack, pause,
are found from the model, refuse reuse after detach, and carry their PruneConfig; records say
which rows are beams of one input and in which order the greedy rule picked."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import greedyprune  # noqa: E402
from greedyprune import PruneConfig  # noqa: E402
from greedyprune.hf import attach, detach, get_handle  # noqa: E402

from hf_models import batch, hook_count, logits, tiny  # noqa: E402
from hf_models import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread here)


def _kept(handle):
    return [r.tokens_after for r in handle.last]


def test_nested_blocks_stack_and_the_outer_one_resumes():
    model = tiny("llava").model
    inputs, _ = batch("llava")
    plain = logits(model, inputs)
    with attach(model, keep=8) as outer:
        outer_logits = logits(model, inputs)
        with attach(model.model, keep=3) as inner:   # top-level or inner: one stack
            assert get_handle(model) is inner and not outer.active and outer.attached
            assert "suspended" in repr(outer)
            logits(model, inputs)
            assert set(_kept(inner)) == {3}
        assert outer.active and not inner.attached and get_handle(model) is outer
        assert torch.equal(logits(model, inputs), outer_logits)
        assert set(_kept(outer)) == {8}
    assert get_handle(model) is None and hook_count(model) == 0
    assert torch.equal(logits(model, inputs), plain)


def test_detaching_a_suspended_handle_leaves_the_active_one():
    model = tiny("llava").model
    first = attach(model, keep=8)
    second = attach(model, keep=3)
    first.detach()
    assert second.active and get_handle(model) is second
    second.detach()
    assert get_handle(model) is None and hook_count(model) == 0


def test_a_detached_handle_cannot_be_reentered():
    model = tiny("llava").model
    handle = attach(model, keep=3)
    handle.detach()
    handle.detach()   # twice: a no-op
    with pytest.raises(RuntimeError, match="this handle was detached; attach again"):
        with handle:
            pass
    assert hook_count(model) == 0


def test_disabled_pauses_pruning_for_a_block():
    model = tiny("llava").model
    inputs, _ = batch("llava")
    plain = logits(model, inputs)
    with attach(model, keep=3) as handle:
        pruned = logits(model, inputs)
        with handle.disabled():
            assert not handle.active and hook_count(model) == 0
            assert torch.equal(logits(model, inputs), plain)
        assert handle.active and torch.equal(logits(model, inputs), pruned)
    assert hook_count(model) == 0


def test_detach_by_model_for_handles_no_longer_held():
    model = tiny("llava").model
    attach(model, keep=8)
    attach(model.model, keep=3)
    assert len(detach(model)) == 2
    assert get_handle(model) is None and hook_count(model) == 0
    assert detach(model) == []


def test_prune_config_is_accepted_validated_and_round_trips():
    model = tiny("llava").model
    inputs, _ = batch("llava")
    config = PruneConfig(keep=3, saliency="cls", lam=0.25)
    assert PruneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with attach(model, config) as handle:
        by_config = logits(model, inputs)
    assert handle.config == config
    with attach(model, keep=3, saliency="cls", lam=0.25) as handle:
        assert torch.equal(logits(model, inputs), by_config) and handle.config == config
    with attach(model, config, keep_ratio=0.5) as handle:   # keywords override the config
        assert handle.config == PruneConfig(keep_ratio=0.5, saliency="cls", lam=0.25)
    assert repr(handle) == ("PruneHandle(model=LlavaForConditionalGeneration, arch='llava', "
                            "keep_ratio=0.5, lam=0.25, saliency='cls', method='greedyprune', "
                            "seed=0, detached)")
    for bad, error, message in [
            (dict(keep=0), ValueError, "keep must be >= 1"),
            (dict(keep=3, keep_ratio=0.5), ValueError, "exactly one of keep"),
            (dict(keep=3, lam=2), ValueError, "lam must be in"),
            (dict(keep=3, lam="AUTO"), ValueError, "lam must be a number in \\[0, 1\\] or 'auto', "
                                                   "got 'AUTO'"),
            (dict(keep=3, lam=[0.5]), TypeError, "lam must be a real number"),
            (dict(keep=3, saliency="CLS"), ValueError, "saliency must be one of"),
            (dict(keep=3, method="nope"), ValueError, "unknown method 'nope'"),
            (dict(keep=3, seed=-1), ValueError, "seed must be a non-negative integer"),
            (dict(keep=3, method="topk", saliency="none"), ValueError, "needs saliency")]:
        with pytest.raises(error, match=message):
            PruneConfig(**bad)
    auto = PruneConfig(keep=3, lam="auto", saliency="cls")
    assert PruneConfig.from_dict(json.loads(json.dumps(auto.to_dict()))) == auto
    for saliency, steps in greedyprune.config.AUTO_LAM.items():
        config = auto.replace(saliency=saliency)
        for largest, lam in steps:   # at and just above each step of the table
            kept = int(largest * 10000)
            assert config.lam_for(kept, 10000) == lam
            assert config.lam_for(kept + 1, 10000) != lam or lam == 0.0
        assert config.lam_for(9999, 10000) == 0.0    # above the table: diversity only
    for saliency in ("text", "none"):   # not in the table: diversity only
        assert auto.replace(saliency=saliency).lam_for(1, 10000) == 0.0
    assert PruneConfig(keep=3, lam=0.4).lam_for(1, 100) == 0.4
    with pytest.raises(TypeError, match="unknown PruneConfig fields: budget"):
        PruneConfig.from_dict({"keep": 3, "budget": 3})
    assert greedyprune.PruneConfig is PruneConfig


def test_backend_reaches_the_selector(monkeypatch):
    from greedyprune import _torch

    model = tiny("llava").model
    inputs, _ = batch("llava")
    with attach(model, keep=3) as handle:
        auto = logits(model, inputs)
    runs = []
    port = _torch.greedy
    monkeypatch.setattr(_torch, "greedy", lambda *a: runs.append(a[0].device) or port(*a))
    with attach(model, keep=3, backend="torch") as handle:
        by_port = logits(model, inputs)
    assert handle.config.backend == "torch" and runs and all(d == torch.device("cpu") for d in runs)
    assert by_port.shape == auto.shape and all(r.tokens_after == 3 for r in handle.last)
    with pytest.raises(ValueError, match="backend='c' applies to method 'greedyprune' only"):
        attach(model, keep=3, method="divprune", backend="c")


def test_records_carry_the_greedy_pick_order():
    model = tiny("llava").model
    inputs, _ = batch("llava")
    with attach(model, keep=5, lam=0.5) as handle:
        logits(model, inputs)
    for record in handle.last:
        assert sorted(record.order.tolist()) == record.kept.tolist()
        # The order is greedyprune.greedy's on the same features and saliency.
        assert len(record.order) == 5
    with attach(model, keep=5, method="divprune") as handle:
        logits(model, inputs)
    assert all(record.order is None for record in handle.last)


def test_beam_search_records_say_which_rows_are_beams_of_one_input():
    model = tiny("llava").model
    inputs, _ = batch("llava")
    with attach(model, keep=3) as handle:
        model.generate(**inputs, max_new_tokens=2, num_beams=3, do_sample=False)
    records = handle.last
    assert len(records) == 3 * len(inputs["pixel_values"])
    firsts = [r for r in records if r.copy_of is None]
    assert {r.row for r in firsts} == {0, 3, 6}  # the first beam of each of the 3 inputs
    for r in records:
        if r.copy_of is not None:
            (first,) = [f for f in firsts if f.row == r.copy_of and f.index_in_row == r.index_in_row]
            assert np.array_equal(first.kept, r.kept)
    with attach(model, keep=3) as handle:
        logits(model, inputs)
    assert all(r.copy_of is None for r in handle.last)
