"""PyTorch interop: CPU tensors go to the C core without a copy; the PyTorch port of the rule (used
for tensors on accelerators) is checked against the C core on CPU tensors."""
from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import greedyprune  # noqa: E402
from greedyprune import _tensors, _torch, methods  # noqa: E402

from util import assert_near_greedy, cases  # noqa: E402


def test_cpu_tensor_in_tensor_out():
    x = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(0))
    out = greedyprune.select(x, 5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64 and out.shape == (2, 5)
    np.testing.assert_array_equal(out.numpy(), greedyprune.select(x.numpy(), 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cpu_tensors_are_read_in_place(dtype):
    x = torch.randn(40, 64, 6, dtype=torch.float32).to(dtype)[:, ::2, 1:5]  # non-contiguous
    view = _tensors.host_array(x)
    assert view.__array_interface__["data"][0] == x.data_ptr()
    assert view.strides == tuple(s * x.element_size() for s in x.stride())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tensors_match_float32_of_the_same_values(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 50, 16, generator=g).to(dtype)
    s = torch.rand(3, 50, generator=g).to(dtype)
    got = greedyprune.greedy(x, 10, s, 0.5)
    want = greedyprune.greedy(x.float().numpy(), 10, s.float().numpy(), 0.5)
    np.testing.assert_array_equal(got[0].numpy(), want[0])
    np.testing.assert_array_equal(got[1].numpy(), want[1])


def test_non_contiguous_and_grad_tensors():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(20, 48, generator=g, requires_grad=True)
    x = base.t()[::2]  # (24, 20), strided both ways, requires grad
    s = torch.rand(24, generator=g)
    got = greedyprune.select(x, 7, s, 0.3)
    want = greedyprune.select(x.detach().contiguous().numpy(), 7, s.numpy(), 0.3)
    np.testing.assert_array_equal(got.numpy(), want)


def test_mixed_containers():
    x = torch.randn(25, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s = np.linspace(0, 1, 25)
    a = greedyprune.select(x, 5, s, 0.5)
    b = greedyprune.select(x.numpy(), 5, torch.from_numpy(s), 0.5)
    c = greedyprune.select(x.numpy(), 5, torch.from_numpy(s).bfloat16(), 0.5)
    assert isinstance(a, torch.Tensor) and isinstance(b, np.ndarray)
    np.testing.assert_array_equal(a.numpy(), b)
    assert c.shape == (5,)


@pytest.mark.parametrize("bad,exc,words", [
    (torch.zeros(5, 3, dtype=torch.int32), TypeError, "features must have a floating dtype"),
    (torch.zeros(5, dtype=torch.float32), ValueError, "features must have 2 dimensions"),
    (torch.full((5, 3), float("nan")), ValueError, "features must be finite"),
])
def test_tensor_bad_input(bad, exc, words):
    with pytest.raises(exc, match=words):
        greedyprune.select(bad, 2)
    with pytest.raises(ValueError, match=r"saliency must have shape \(5,\)"):
        greedyprune.select(torch.randn(5, 3), 2, torch.rand(4))


def _misaligned(t):
    """A copy of ``t`` whose data starts one byte past an aligned address."""
    raw = bytearray(t.numel() * t.element_size() + 1)
    out = torch.frombuffer(raw, dtype=t.dtype, offset=1, count=t.numel()).view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_misaligned_cpu_tensors_are_copied_like_numpy_arrays(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 30, 6, generator=g).to(dtype)
    s = torch.rand(2, 30, generator=g).to(dtype)
    mx, ms = _misaligned(x), _misaligned(s)
    assert mx.data_ptr() % mx.element_size() and ms.data_ptr() % ms.element_size()
    want = greedyprune.greedy(x, 7, s, 0.4)
    for features, saliency in ((mx, ms), (mx, s), (x, ms)):
        got = greedyprune.greedy(features, 7, saliency, 0.4)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert torch.equal(methods.get("divprune")(mx, 7), methods.get("divprune")(x, 7))


def test_negated_views_and_zero_tensors_are_read_by_value():
    g = torch.Generator().manual_seed(6)
    x, s = torch.randn(2, 20, 5, generator=g), torch.rand(2, 20, generator=g)
    negated, negated_s = torch._neg_view(-x), torch._neg_view(-s)  # a lazy negation: same values
    assert negated.is_neg() and torch.equal(negated, x)
    for fn in (greedyprune.select, methods.get("greedyprune"), methods.get("divprune"),
               methods.get("cdpruner")):
        assert torch.equal(fn(negated, 6, negated_s), fn(x, 6, s)), fn
    zeros = torch._efficientzerotensor((2, 20, 5))
    assert zeros._is_zerotensor()
    for fn in (greedyprune.select, methods.get("divprune"), methods.get("uniform")):
        assert torch.equal(fn(zeros, 6), fn(torch.zeros(2, 20, 5), 6)), fn


def _nested(shape):
    with warnings.catch_warnings():  # "prototype stage"
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor([torch.randn(shape), torch.randn(shape)])


def _sparse_csr(shape):
    with warnings.catch_warnings():  # "beta state"
        warnings.simplefilter("ignore")
        return torch.randn(shape).to_sparse_csr()


UNREADABLE = [
    # (id, make(shape), exception, message with {} for the argument, also tried as saliency)
    ("meta", lambda shape: torch.empty(shape, device="meta"), ValueError,
     "{} is a tensor on the meta device, which holds no values", True),
    ("sparse", lambda shape: torch.randn(shape).to_sparse(), TypeError,
     r"{} must be a dense tensor, got layout torch.sparse_coo: call .to_dense\(\) first", True),
    ("sparse csr", _sparse_csr, TypeError,
     "{} must be a dense tensor, got layout torch.sparse_csr", False),  # 2-D only
    ("nested", _nested, TypeError, "{} must be a regular tensor, got a nested tensor", False),
]


@pytest.mark.parametrize("make,exc,words,as_saliency", [u[1:] for u in UNREADABLE],
                         ids=[u[0] for u in UNREADABLE])
@pytest.mark.parametrize("fn", [greedyprune.select, greedyprune.greedy, methods.get("greedyprune"),
                                methods.get("divprune"), methods.get("random")],
                         ids=["select", "greedy", "methods.greedyprune", "methods.divprune",
                              "methods.random"])
def test_tensors_without_readable_values_are_refused_by_name(fn, make, exc, words, as_saliency):
    with pytest.raises(exc, match=words.format("features")):
        fn(make((5, 3)), 2)
    if as_saliency:
        for features in (torch.randn(5, 3), np.random.default_rng(0).normal(size=(5, 3))):
            with pytest.raises(exc, match=words.format("saliency")):
                fn(features, 2, make((5,)))


@pytest.mark.parametrize("case", [c for c in cases(np.float64) if not c.exact_ties], ids=repr)
def test_torch_port_float64_equals_c_core(case):
    x = torch.from_numpy(np.ascontiguousarray(case.features))
    s = None if case.saliency is None else torch.from_numpy(np.ascontiguousarray(case.saliency))
    order, gains = _torch.greedy(x, case.k, s, case.lam)
    want_order, want_gains = greedyprune.greedy(*case.args())
    np.testing.assert_array_equal(order.numpy(), want_order)
    np.testing.assert_allclose(gains.numpy(), want_gains, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_port_reduced_precision_is_near_greedy(dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 200, 24, generator=g).to(dtype)
    s = torch.rand(2, 200, generator=g)
    order, _ = _torch.greedy(x, 30, s, 0.5)
    for b in range(2):
        assert_near_greedy(x[b].float().numpy(), s[b].numpy(), 0.5, order[b].numpy(), tol=1e-4)


def test_torch_port_chunks_agree_with_one_pass(monkeypatch):
    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    whole = _torch.greedy(x, 20, None, 0.0)
    monkeypatch.setattr(_torch, "CHUNK_ELEMENTS", 64)  # 6 rows a chunk
    chunked = _torch.greedy(x, 20, None, 0.0)
    assert torch.equal(whole[0], chunked[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_their_device():
    x = torch.randn(3, 500, 64, device="cuda")
    s = torch.rand(3, 500, device="cuda")
    out = greedyprune.select(x, 50, s)
    assert out.device == x.device
    np.testing.assert_array_equal(out.cpu().numpy(), greedyprune.select(x.cpu(), 50, s.cpu()).numpy())


# --- where a tensor's selection runs: backend="auto", "c" or "torch" ----------------------------


@pytest.fixture
def runs(monkeypatch):
    """The implementations that ran, in order: "c" (the C core) or "torch" (the PyTorch port)."""
    calls = []
    port, core = _torch.greedy, _tensors._core.greedy
    monkeypatch.setattr(_torch, "greedy", lambda *a: calls.append("torch") or port(*a))
    monkeypatch.setattr(_tensors, "_core",
                        types.SimpleNamespace(greedy=lambda *a: calls.append("c") or core(*a)))
    return calls


def _as_tensors(case):
    x = torch.from_numpy(np.ascontiguousarray(case.features))
    s = None if case.saliency is None else torch.from_numpy(np.ascontiguousarray(case.saliency))
    return x, s


@pytest.mark.parametrize("case", [c for c in cases(np.float64) if not c.exact_ties], ids=repr)
def test_both_backends_pick_alike_on_cpu_tensors(case, runs):
    x, s = _as_tensors(case)
    want_order, want_gains = greedyprune.greedy(*case.args())
    for backend in ("c", "torch"):
        order, gains = greedyprune.greedy(x, case.k, s, case.lam, backend=backend)
        kept = greedyprune.select(x, case.k, s, case.lam, backend=backend)
        assert order.dtype == kept.dtype == torch.int64 and order.device == kept.device == x.device
        np.testing.assert_array_equal(order.numpy(), want_order)
        np.testing.assert_array_equal(kept.numpy(), np.sort(want_order, axis=-1))
        np.testing.assert_allclose(gains.numpy(), want_gains, rtol=1e-12, atol=1e-12)
    assert runs == ["c", "c", "torch", "torch"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_torch_backend_on_reduced_precision_is_near_greedy(dtype, runs):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 120, 16, generator=g).to(dtype)
    s = torch.rand(2, 120, generator=g).to(dtype)
    order, _ = greedyprune.greedy(x, 20, s, 0.5, backend="torch")
    assert runs == ["torch"]
    for b in range(2):
        assert_near_greedy(x[b].float().numpy(), s[b].float().numpy(), 0.5, order[b].numpy())


def test_auto_runs_arrays_and_cpu_tensors_in_the_c_core(runs):
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(greedyprune.select(x, 4), greedyprune.select(x, 4, backend="auto"))
    assert runs == ["c", "c"]
    greedyprune.select(x.numpy(), 4, backend="c")  # arrays go to the C core directly
    assert runs == ["c", "c"]


def test_accelerator_path_simulated_on_the_cpu(runs, monkeypatch):
    """Tensors taken for accelerator tensors (``on_host`` patched to say no): "auto" runs the
    port; "c" copies each stored value to the host and runs the C core. On the CPU the copy
    (``.cpu()``) and the way back (``.to(device)``) are no-ops, so this checks the dispatch and
    what is copied, not a transfer between devices."""
    monkeypatch.setattr(_tensors, "on_host", lambda tensor: False)
    copied = []
    cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu",
                        lambda t, *a, **kw: copied.append(t.shape) or cpu(t, *a, **kw))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 40, 6, generator=g, dtype=torch.float64).expand(3, 40, 6)  # a broadcast
    s = torch.rand(40, generator=g, dtype=torch.float64).expand(3, 40)
    want = greedyprune.select(x.numpy(), 5, s.numpy(), 0.5)
    for backend, implementation in (("auto", "torch"), ("torch", "torch"), ("c", "c")):
        runs.clear()
        copied.clear()
        got = greedyprune.select(x, 5, s, 0.5, backend=backend)
        assert runs == [implementation] and got.device == x.device
        np.testing.assert_array_equal(got.numpy(), want)
    # Only the stored values went to the host: one row of the broadcast batch, each.
    assert copied == [(1, 40, 6), (1, 40)]
    bits = torch.randn(4, 3, generator=g).bfloat16()
    assert np.array_equal(_tensors.host_array(bits), bits.view(torch.int16).numpy().view(np.uint16))


@pytest.mark.parametrize("fn", [greedyprune.select, greedyprune.greedy])
def test_bad_backends_are_refused_by_name_for_tensors_too(fn):
    x = torch.randn(6, 3)
    for backend in ("cuda", "C", None):
        with pytest.raises(ValueError, match="backend must be one of 'auto', 'c', 'torch', got"):
            fn(x, 2, backend=backend)
    with pytest.raises(ValueError, match="backend='torch' runs the PyTorch port on a tensor's"):
        fn(x.numpy(), 2, torch.rand(6), backend="torch")  # the features decide, not saliency


def test_the_greedyprune_selector_passes_backend_through(runs):
    x = torch.randn(2, 30, 5, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    selector = methods.get("greedyprune")
    assert torch.equal(selector(x, 6, backend="torch"), selector(x, 6, backend="c"))
    in_order = methods.ordered("greedyprune", backend="torch")
    assert torch.equal(in_order(x, 6), greedyprune.greedy(x, 6)[0])
    assert runs == ["torch", "c", "torch", "c"]
    with pytest.raises(ValueError, match="backend must be one of"):
        methods.ordered("greedyprune", backend="gpu")


# --- the port's arithmetic: the plain loop, bit for bit ---------------------------------------


def _plain_loop(x, k, s, lam):
    """The port's arithmetic written plainly: ``m`` kept, every gain recomputed from it at each
    step, picks masked out. The port (which keeps the gains themselves, in place) must give the
    same picks and gains bit for bit."""
    x = x if x.dim() == 3 else x[None]
    b, n, d = x.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    snap = _torch.COSINE_SNAP if compute == torch.float64 else _torch.COSINE_SNAP_F32
    norms = _torch._row_norms(x)
    inv_norm = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    shat = torch.zeros(b, n, dtype=torch.float64) if s is None else \
        _torch._normalized_saliency(s.reshape(b, n))
    rows = torch.arange(b)
    m = torch.ones(b, n, dtype=torch.float64)
    taken = torch.zeros(b, n, dtype=torch.bool)
    order, gains = [], []
    for _ in range(k):
        gain = (lam * shat + (1.0 - lam) * m).masked_fill(taken, float("-inf"))
        pick = gain.argmax(dim=1)
        order.append(pick)
        gains.append(gain[rows, pick])
        taken[rows, pick] = True
        unit = (x[rows, pick].double() * inv_norm[rows, pick, None]).to(compute)[:, :, None]
        dots = torch.cat([torch.bmm(x[:, lo:hi].to(compute), unit)[:, :, 0]
                          for lo, hi in _torch._chunks(n, b, d)], 1)
        cosine = dots.double() * inv_norm
        cosine = torch.where(cosine >= 1.0 - snap, 1.0,
                             torch.where(cosine <= snap - 1.0, -1.0, cosine))
        m = torch.minimum(m, (1.0 - cosine) / 2.0)
    return torch.stack(order, 1), torch.stack(gains, 1)


def _random_input(seed):
    """Features of one of four dtypes and one of six kinds (gaussian; a few rows repeated,
    scaled, negated or zeroed; small integers; huge, tiny and subnormal magnitudes; nearly
    parallel rows; positive rows), saliency absent, constant, tied or random, λ among 0, 1/2, 1
    and others."""
    rng = np.random.default_rng(seed)
    dtype = [torch.float16, torch.bfloat16, torch.float32, torch.float64][seed % 4]
    b, n, d = int(rng.integers(1, 4)), int(rng.integers(1, 50)), int(rng.integers(1, 12))
    kind = seed // 4 % 6
    if kind == 1:
        rows = rng.standard_normal((b, 3, d))[np.arange(b)[:, None], rng.integers(0, 3, (b, n))]
        x = rows * rng.choice([1.0, 2.0, -1.0, 0.0, 0.5], size=(b, n, 1))
    elif kind == 2:
        x = rng.integers(-2, 3, size=(b, n, d)).astype(float)
    elif kind == 3:
        # float64 rows of 1e-310 are subnormal: 1/‖x‖ overflows and their distances are NaN.
        big = {torch.float16: 4, torch.bfloat16: 30, torch.float32: 30, torch.float64: 310}[dtype]
        x = rng.standard_normal((b, n, d)) * 10.0 ** rng.choice([-big, big - 10, 0], size=(b, n, 1))
    elif kind == 4:
        spread = 1e-4 * rng.choice([0, 1], (b, n, 1))
        x = rng.standard_normal(d) + spread * rng.standard_normal((b, n, d))
    else:
        x = rng.standard_normal((b, n, d)) + (5.0 if kind == 5 else 0.0)
    saliency = [None, np.full((b, n), 0.7), rng.integers(0, 3, (b, n)).astype(float),
                rng.random((b, n))][seed % 7 % 4]
    lam = [0.0, 0.5, 1.0, 0.25, float(rng.random())][seed % 5]
    x = torch.from_numpy(x).to(dtype)
    s = None if saliency is None else torch.from_numpy(saliency).to(dtype)
    if rng.random() < 0.3:
        x, s = x[0], None if s is None else s[0]
    return x, int(rng.integers(1, n + 1)), s, lam


@pytest.mark.parametrize("chunk_elements", [_torch.CHUNK_ELEMENTS, 40], ids=["one chunk", "chunks"])
@pytest.mark.parametrize("seed", range(120))
def test_port_equals_the_plain_loop_bit_for_bit(seed, chunk_elements, monkeypatch):
    monkeypatch.setattr(_torch, "CHUNK_ELEMENTS", chunk_elements)
    x, k, s, lam = _random_input(seed)
    order, gains = _torch.greedy(x, k, s, lam)
    want_order, want_gains = _plain_loop(x, k, s, lam)
    if x.dim() == 2:
        want_order, want_gains = want_order[0], want_gains[0]
    assert torch.equal(order, want_order)
    assert torch.equal(gains.view(torch.int64), want_gains.view(torch.int64))  # bits, NaN too


@pytest.mark.parametrize("chunk_elements", [_torch.CHUNK_ELEMENTS, 40], ids=["one chunk", "chunks"])
def test_the_selection_loop_reads_no_value_on_the_host(chunk_elements, monkeypatch):
    """On meta tensors (shapes, no values) any read of a value on the host fails: the loop after
    the finiteness check has none, so a CUDA graph can capture it (benchmarks/bench_gpu.py)."""
    monkeypatch.setattr(_torch, "CHUNK_ELEMENTS", chunk_elements)
    for dtype, saliency in ((torch.bfloat16, torch.empty(2, 30, device="meta")),
                            (torch.float64, None)):
        x = torch.empty(2, 30, 8, dtype=dtype, device="meta")
        inv_norm = torch.empty(2, 30, dtype=torch.float64, device="meta")
        order, gains = _torch.greedy_with_norms(x, inv_norm, 6, saliency, 0.5)
        assert order.shape == gains.shape == (2, 6) and order.is_meta
    with pytest.raises(RuntimeError, match="meta"):  # the check before it does read values
        _torch.inverse_norms(torch.empty(2, 30, 8, device="meta"))
