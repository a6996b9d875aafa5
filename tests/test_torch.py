"""PyTorch interop: CPU tensors go to the C core without a copy; the PyTorch port of the rule (used
for tensors on accelerators) is checked against the C core on CPU tensors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import greedyprune  # noqa: E402
from greedyprune import _api, _torch, methods  # noqa: E402

from util import assert_near_greedy, cases  # noqa: E402


def test_cpu_tensor_in_tensor_out():
    x = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(0))
    out = greedyprune.select(x, 5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64 and out.shape == (2, 5)
    np.testing.assert_array_equal(out.numpy(), greedyprune.select(x.numpy(), 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cpu_tensors_are_read_in_place(dtype):
    x = torch.randn(40, 64, 6, dtype=torch.float32).to(dtype)[:, ::2, 1:5]  # non-contiguous
    view = _api._tensor_as_array(x)
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
