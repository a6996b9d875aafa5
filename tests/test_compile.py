"""greedyprune.hf under torch.compile, on tiny LLaVA and Qwen2-VL models:

- while pruning, a model compiled with the default settings (``torch.compile(model)``, or its
  ``forward`` compiled for ``generate()``) prunes exactly as the eager model does: the hooks run
  outside the graph;
- a budget that cannot prune compiles with ``fullgraph=True``, also through ``generate()``'s own
  ``compile_config`` on a static cache, and changes nothing;
- ``fullgraph=True`` while pruning, and a static cache while pruning, are refused with messages
  that say what to do instead.

Compiling on a CPU is slow, so these tests use the "eager" backend (Dynamo's tracing, graph
breaks and guards, without code generation), except one soak test with the default, inductor.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from greedyprune.hf import attach  # noqa: E402

from hf_models import BUILDERS, batch  # noqa: E402
from hf_models import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread here)

ARCHS = ["llava", "qwen2_vl"]
#: Two rows, one image each, padded on the left: small enough to compile quickly.
PROMPTS = [[3, "img", 2], [1, "img", 4]]
GENERATE = dict(max_new_tokens=3, do_sample=False, output_logits=True,
                return_dict_in_generate=True)


@pytest.fixture
def fresh():
    """A model of its own per test (compiling replaces its ``forward`` or its call) and its
    batch; Dynamo's caches emptied before and after."""
    torch._dynamo.reset()

    def make(arch):
        model = BUILDERS[arch]().model
        inputs, _ = batch(arch, PROMPTS)
        return model, inputs

    yield make
    torch._dynamo.reset()


def _kept(handle):
    return [(r.row, r.index, r.kept.tolist()) for r in handle.last]


def _assert_same_generation(got, expected):
    assert torch.equal(got.sequences, expected.sequences)
    for step, (a, b) in enumerate(zip(got.logits, expected.logits)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")


@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_with_default_settings_prunes_as_the_eager_model(arch, fresh):
    model, inputs = fresh(arch)
    with attach(model, keep=3) as handle, torch.no_grad():
        expected_logits = model(**inputs).logits
        expected_kept = _kept(handle)
        expected = model.generate(**inputs, **GENERATE)
        generated_kept = _kept(handle)

        compiled = torch.compile(model, backend="eager")
        torch.testing.assert_close(compiled(**inputs).logits, expected_logits,
                                   rtol=1e-5, atol=1e-5)
        assert _kept(handle) == expected_kept and handle.last[0].tokens_after == 3

        model.compile(backend="eager")   # in place: generate() calls the compiled model
        _assert_same_generation(model.generate(**inputs, **GENERATE), expected)
        assert _kept(handle) == generated_kept


@pytest.mark.soak   # about a minute of C++ compilation on two cores
def test_the_default_backend_compiles_a_pruned_forward(fresh):
    model, inputs = fresh("llava")
    with attach(model, keep=3) as handle, torch.no_grad():
        expected = model(**inputs).logits
        got = torch.compile(model)(**inputs).logits     # inductor: C++ code for the CPU
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert [r.tokens_after for r in handle.last] == [3, 3]


@pytest.mark.parametrize("arch, budget, calls", [
    ("llava", dict(keep_ratio=1.0), ("forward", "generate")),
    ("llava", dict(keep=10 ** 9), ("forward", "generate")),
    # Qwen2-VL's own forward with images is not one graph (its M-RoPE positions depend on the
    # data); generate() computes them before the compiled forward.
    ("qwen2_vl", dict(keep=10 ** 9), ("generate",)),
], ids=["llava-keep_ratio=1", "llava-keep=all", "qwen2_vl-keep=all"])
def test_a_budget_that_cannot_prune_compiles_with_fullgraph(arch, budget, calls, fresh):
    model, inputs = fresh(arch)
    with torch.no_grad():
        expected_logits = model(**inputs).logits
        expected = model.generate(**inputs, **GENERATE)
    with attach(model, **budget), torch.no_grad():
        if "forward" in calls:
            compiled = torch.compile(model, backend="eager", fullgraph=True)
            assert torch.equal(compiled(**inputs).logits, expected_logits)
        model.forward = torch.compile(model.forward, backend="eager", fullgraph=True)
        _assert_same_generation(model.generate(**inputs, **GENERATE), expected)


def test_generate_compiles_its_own_forward_on_a_static_cache_when_nothing_is_pruned(fresh):
    # transformers' own route: a static cache and compile_config, the decode steps compiled
    # with fullgraph=True (on a CPU only when asked to compile on every device).
    from transformers import CompileConfig

    model, inputs = fresh("llava")
    config = CompileConfig(fullgraph=True, dynamic=False, backend="eager")
    config._compile_all_devices = True
    settings = dict(GENERATE, cache_implementation="static", compile_config=config)
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        expected = model.generate(**inputs, **settings)
    with attach(model, keep_ratio=1.0), torch.no_grad():
        got = model.generate(**inputs, **settings)
    assert hasattr(model, "_compiled_call")   # the decode steps did run compiled
    _assert_same_generation(got, expected)


def test_fullgraph_while_pruning_is_refused_with_what_to_do_instead(fresh):
    model, inputs = fresh("qwen2_vl")
    with attach(model, keep=3), torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        with pytest.raises(torch._dynamo.exc.Unsupported) as refused:
            compiled(**inputs)
    message = str(refused.value)
    assert "greedyprune.hf prunes outside the compiled graph (a graph break), which " \
           "fullgraph=True refuses: compile without fullgraph=True" in message
    assert "keep_ratio=1" in message


def test_a_static_cache_while_pruning_is_refused_with_what_to_do_instead(fresh):
    model, inputs = fresh("llava")
    with attach(model, keep=3), pytest.raises(ValueError) as refused:
        model.generate(**inputs, max_new_tokens=2, do_sample=False,
                       cache_implementation="static")
    message = str(refused.value)
    assert message.startswith("greedyprune.hf does not support StaticCache while it prunes")
    assert "torch.compile(model)" in message and "compile_config" in message
