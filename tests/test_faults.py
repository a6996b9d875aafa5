"""Faults inside a pruned call leave nothing behind. An exception is raised in the selector, in
the vision tower or in the decoder (at the prefill, or at a decode step of ``generate()``); after
each, the handle's per-call state is empty, the next pruned call equals the one before the
fault, the unpruned model (``disabled()``) and the detached one give the logits of the model as
built, bit for bit, and every module's hooks are back to what they were before ``attach``."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from greedyprune import methods  # noqa: E402
from greedyprune.hf import attach, get_handle  # noqa: E402

from hf_models import batch, decoder_of, logits, tiny  # noqa: E402
from hf_models import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread here)

ARCHS = ["llava", "qwen2_vl"]
KEEP = 2


class Injected(RuntimeError):
    pass


def hook_counts(model):
    """Forward hooks and pre-hooks of every submodule, by module name (transformers' own too)."""
    return {name: (len(m._forward_pre_hooks), len(m._forward_hooks))
            for name, m in model.named_modules()}


def vision_tower(model):
    inner = model.model
    return getattr(inner, "vision_tower", None) or inner.visual


def raise_on_call(module, n):
    """A forward pre-hook on `module` that raises Injected at its n-th call (1-based)."""
    calls = [0]

    def hook(mod, args, kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise Injected(f"injected at call {n}")

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def failing_selector(features, k, saliency=None, *, lam=0.5, seed=0):
    raise Injected("injected in the selector")


def run(model, inputs, mode):
    with torch.no_grad():
        if mode == "forward":
            return model(**inputs).logits
        return model.generate(**inputs, max_new_tokens=3, do_sample=False)


def assert_no_call_state(handle):
    """No call in flight; the latest vision run (kept for the projector) holds no output."""
    state = handle._thread
    assert state.call is None and state.pending_request is None
    assert state.run is None or state.run.output() is None


@pytest.mark.parametrize("mode", ["forward", "generate"])
@pytest.mark.parametrize("site", ["selector", "vision", "decoder-prefill", "decoder-decode"])
@pytest.mark.parametrize("arch", ARCHS)
def test_a_fault_inside_a_pruned_call_leaves_nothing_behind(arch, site, mode):
    if site == "decoder-decode" and mode == "forward":
        pytest.skip("a forward has no decode step")
    model = tiny(arch).model
    inputs, _ = batch(arch)
    hooks_before = hook_counts(model)
    plain = logits(model, inputs)
    with methods.registered("failing", failing_selector):
        with attach(model, keep=KEEP) as handle:
            pruned = run(model, inputs, mode)
            records = [(r.tokens_before, r.tokens_after) for r in handle.last]
            assert {after for _, after in records} == {KEEP}
            if site == "selector":
                faulty = attach(model, keep=KEEP, method="failing")
                fault = None
            else:
                faulty = handle
                module = vision_tower(model) if site == "vision" else decoder_of(model)
                fault = raise_on_call(module, 2 if site == "decoder-decode" else 1)
            try:
                with pytest.raises(Injected):
                    run(model, inputs, mode)
            finally:
                if fault is not None:
                    fault.remove()
            assert_no_call_state(faulty)
            assert faulty.attached and faulty.active
            if faulty is not handle:
                faulty.detach()
                assert get_handle(model) is handle and handle.active
            assert_no_call_state(handle)
            # The next pruned call is the one before the fault; the records are its own.
            again = run(model, inputs, mode)
            assert torch.equal(again, pruned)
            assert [(r.tokens_before, r.tokens_after) for r in handle.last] == records
            with handle.disabled():
                assert torch.equal(logits(model, inputs), plain)
    assert get_handle(model) is None
    assert hook_counts(model) == hooks_before
    assert torch.equal(logits(model, inputs), plain)


@pytest.mark.parametrize("arch", ARCHS)
def test_faults_repeated_leak_nothing(arch):
    """A hundred failing calls, alternating sites: the handle's tables stay bounded and the
    objects of the process do not grow."""
    import gc

    model = tiny(arch).model
    inputs, _ = batch(arch)
    with attach(model, keep=KEEP) as handle:
        run(model, inputs, "forward")
        gc.collect()
        before = len(gc.get_objects())
        for i in range(100):
            module = vision_tower(model) if i % 2 else decoder_of(model)
            fault = raise_on_call(module, 1)
            try:
                with pytest.raises(Injected):
                    run(model, inputs, "forward")
            finally:
                fault.remove()
            assert_no_call_state(handle)
        gc.collect()
        grown = len(gc.get_objects()) - before
        assert grown < 200, grown
        # Tables keyed by dead objects are pruned as new entries come: bounded, not growing.
        assert len(handle._requests._entries) <= 2 and len(handle._runs._entries) <= 2
    np.testing.assert_equal(get_handle(model), None)
