"""The C core against its NumPy twin (docs/spec.md §1–§2), on every case of tests/util.py and on
random shapes drawn by hypothesis; plus the special cases the spec pins and the invariants of the
API."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import greedyprune
from greedyprune import reference

from util import assert_near_greedy, cases


def images(case):
    """(features, saliency) per image of a case, as (N, D) / (N,) arrays."""
    x = case.features.reshape((-1,) + case.features.shape[-2:])
    s = None if case.saliency is None else case.saliency.reshape(x.shape[:2])
    return [(x[b], None if s is None else s[b]) for b in range(len(x))]


@pytest.mark.parametrize("case", cases(np.float64), ids=repr)
def test_float64_picks_what_the_reference_picks(case):
    order, gains = greedyprune.greedy(*case.args())
    ref_order, ref_gains = reference.greedy(*case.args())
    if case.exact_ties:  # either tied candidate may win; each pick must still be a best one
        for (x, s), o in zip(images(case), order.reshape(len(images(case)), -1)):
            assert_near_greedy(x, s, case.lam, o, tol=1e-12)
    else:
        np.testing.assert_array_equal(order, ref_order)
        np.testing.assert_array_equal(
            greedyprune.select(*case.args()), reference.select(*case.args())
        )
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", cases(np.float32), ids=repr)
def test_reduced_precision_picks_are_within_tolerance(case, dtype):
    case_in_dtype = [c for c in cases(dtype) if c.name == case.name][0]
    order, _ = greedyprune.greedy(*case_in_dtype.args())
    for (x, s), o in zip(images(case_in_dtype), order.reshape(-1, case.k)):
        assert_near_greedy(x, s, case.lam, o, tol=1e-4)


def test_lam_one_is_top_k_by_saliency():
    rng = np.random.default_rng(0)
    x, s = rng.normal(size=(100, 9)), rng.permutation(100).astype(float)
    np.testing.assert_array_equal(greedyprune.select(x, 10, s, 1.0), np.sort(np.argsort(-s)[:10]))
    order, gains = greedyprune.greedy(x, 10, s, 1.0)
    np.testing.assert_array_equal(order, np.argsort(-s)[:10])  # picked by falling saliency


def test_lam_zero_is_farthest_point_sampling_from_token_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5))
    xhat = x / np.linalg.norm(x, axis=1, keepdims=True)
    picks = [0]
    m = (1 - xhat @ xhat[0]) / 2
    for _ in range(11):
        m[picks] = -np.inf
        picks.append(int(np.argmax(m)))
        m = np.minimum(m, (1 - xhat @ xhat[picks[-1]]) / 2)
    order, _ = greedyprune.greedy(x, 12, rng.random(80), 0.0)  # saliency has weight 0
    np.testing.assert_array_equal(order, picks)


def test_k_equal_n_returns_every_index():
    x = np.random.default_rng(2).normal(size=(3, 17, 4))
    np.testing.assert_array_equal(greedyprune.select(x, 17), np.tile(np.arange(17), (3, 1)))


def test_first_gain_and_objective():
    rng = np.random.default_rng(3)
    x, s = rng.normal(size=(30, 4)), rng.random(30)
    order, gains = greedyprune.greedy(x, 5, s, 0.3)
    assert order[0] == np.argmax(s) and gains[0] == pytest.approx(0.3 + 0.7)
    assert gains.dtype == np.float64 and gains.shape == (5,)


def test_output_shapes_and_dtypes():
    x = np.random.default_rng(4).normal(size=(2, 12, 3)).astype(np.float32)
    out = greedyprune.select(x, 4)
    assert out.shape == (2, 4) and out.dtype == np.int64
    assert greedyprune.select(x[0], 4).shape == (4,)
    assert np.all(np.diff(out, axis=1) > 0)
    assert greedyprune.select(np.zeros((0, 5, 3), np.float32), 2).shape == (0, 2)


def test_array_likes_work_where_arrays_do():
    rows = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.0]]
    np.testing.assert_array_equal(greedyprune.select(rows, 2, [0.0, 1.0, 0.5, 0.2]),
                                  greedyprune.select(np.array(rows), 2, np.array([0.0, 1.0, 0.5, 0.2])))
    assert greedyprune.select(rows, np.int64(2), lam=np.float32(0.25)).tolist() == \
        greedyprune.select(rows, 2, lam=0.25).tolist()


@pytest.mark.parametrize("case", [c for c in cases(np.float32) if c.features.ndim == 2], ids=repr)
def test_layout_never_changes_the_answer(case):
    x = np.ascontiguousarray(case.features)
    s = None if case.saliency is None else np.ascontiguousarray(case.saliency)
    expected = greedyprune.greedy(x, case.k, s, case.lam)
    fortran = np.asfortranarray(x)
    padded = np.zeros((x.shape[0] * 2, x.shape[1] * 3), x.dtype)[::2, ::3]
    padded[...] = x
    swapped = x.astype(x.dtype.newbyteorder(">"))
    for view in (fortran, padded, swapped):
        got = greedyprune.greedy(view, case.k, s, case.lam)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_batch_composition_never_changes_the_answer():
    rng = np.random.default_rng(5)
    x, s = rng.normal(size=(6, 50, 7)).astype(np.float32), rng.random((6, 50))
    batched = greedyprune.greedy(x, 9, s, 0.4)
    for b in range(6):
        single = greedyprune.greedy(x[b], 9, s[b], 0.4)
        np.testing.assert_array_equal(batched[0][b], single[0])
        np.testing.assert_array_equal(batched[1][b], single[1])


@pytest.mark.parametrize("shape", [(1, 3000, 40), (5, 400, 30)])
def test_thread_count_never_changes_the_answer(shape):
    rng = np.random.default_rng(6)
    x, s = rng.normal(size=shape).astype(np.float32), rng.random(shape[:2]).astype(np.float32)
    one = greedyprune.greedy(x, 200, s, 0.5, num_threads=1)
    for threads in (2, 3):
        other = greedyprune.greedy(x, 200, s, 0.5, num_threads=threads)
        np.testing.assert_array_equal(one[0], other[0])
        np.testing.assert_array_equal(one[1], other[1])


def test_input_is_never_modified():
    rng = np.random.default_rng(7)
    x, s = rng.normal(size=(2, 40, 5)), rng.random((2, 40))
    x0, s0 = x.copy(), s.copy()
    for fn in (greedyprune.select, greedyprune.greedy, reference.select):
        fn(x, 10, s, 0.5)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(s, s0)


@pytest.fixture
def automatic_threads(monkeypatch):
    """No set_num_threads() override and no GREEDYPRUNE_NUM_THREADS for the test; the process's
    setting comes back afterwards."""
    from greedyprune import _api

    monkeypatch.setattr(_api, "_override", None)
    monkeypatch.setattr(_api, "_warned_env_values", set())
    monkeypatch.delenv(greedyprune.NUM_THREADS_ENV, raising=False)
    return _api


def test_set_num_threads_returns_previous_value(automatic_threads):
    before = greedyprune.get_num_threads()
    assert greedyprune.set_num_threads(3) == before
    assert greedyprune.get_num_threads() == 3
    assert greedyprune.set_num_threads(1) == 3
    assert greedyprune.set_num_threads(None) == 1  # back to the automatic default
    assert greedyprune.get_num_threads() == before
    for bad, exc in ((0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError)):
        with pytest.raises(exc, match="num_threads"):
            greedyprune.set_num_threads(bad)


def test_default_thread_count_is_decided_at_each_call(automatic_threads, monkeypatch):
    openmp = greedyprune.get_num_threads()
    assert automatic_threads.default_num_threads_and_source() == (
        (openmp, "OpenMP's current setting, omp_get_max_threads()") if greedyprune.has_openmp
        else (1, "built without OpenMP"))
    monkeypatch.setenv(greedyprune.NUM_THREADS_ENV, "3")  # set after import: it counts
    assert automatic_threads.default_num_threads_and_source() == (
        3, "from GREEDYPRUNE_NUM_THREADS")
    greedyprune.set_num_threads(5)  # set_num_threads > GREEDYPRUNE_NUM_THREADS
    assert automatic_threads.default_num_threads_and_source() == (
        5, "set by greedyprune.set_num_threads()")
    greedyprune.set_num_threads(None)
    assert greedyprune.get_num_threads() == 3
    monkeypatch.delenv(greedyprune.NUM_THREADS_ENV)
    assert greedyprune.get_num_threads() == openmp


def test_threadpoolctl_limits_the_default_through_our_openmp_runtime(automatic_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not greedyprune.has_openmp:
        pytest.skip("built without OpenMP")
    from greedyprune import _core

    ours = os.path.realpath(_core.build_info()["openmp_library"])
    seen = [os.path.realpath(i["filepath"]) for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "openmp"]
    assert ours in seen, (ours, seen)
    x = np.random.default_rng(3).normal(size=(2, 50, 4))
    want = reference.select(x, 7)
    with threadpoolctl.threadpool_limits(1, "openmp"):
        assert greedyprune.get_num_threads() == 1
        np.testing.assert_array_equal(greedyprune.select(x, 7), want)
    with threadpoolctl.threadpool_limits(3, "openmp"):
        assert greedyprune.get_num_threads() == 3


def test_a_bad_environment_value_warns_once_per_value(automatic_threads, monkeypatch):
    fallback = greedyprune.get_num_threads()
    for value in ("lots", "0", "-3", "2.5"):
        monkeypatch.setenv(greedyprune.NUM_THREADS_ENV, value)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            counts = [greedyprune.get_num_threads() for _ in range(3)]
            greedyprune.select(np.eye(3), 2)
        assert counts == [fallback] * 3
        assert [str(w.message) for w in caught] == [
            f"ignoring GREEDYPRUNE_NUM_THREADS={value!r}: expected a positive integer"]
        assert caught[0].filename == __file__  # attributed to the caller, not to greedyprune


# Hypothesis: random shapes, float64 equality with the reference. D >= 2: with D = 1 every token
# points one of two ways, so exact ties abound (they are covered by the near-greedy test below).
@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 40), d=st.integers(2, 9), batch=st.sampled_from([None, 1, 3]),
    lam=st.floats(0, 1), with_saliency=st.booleans(), seed=st.integers(0, 2**32 - 1),
    k_fraction=st.floats(0, 1), threads=st.sampled_from([1, 2]),
)
def test_random_shapes_match_reference(n, d, batch, lam, with_saliency, seed, k_fraction, threads):
    rng = np.random.default_rng(seed)
    shape = (n, d) if batch is None else (batch, n, d)
    x = rng.normal(size=shape)
    s = rng.normal(size=shape[:-1]) if with_saliency else None
    k = 1 + int(k_fraction * (n - 1))
    order, gains = greedyprune.greedy(x, k, s, lam, num_threads=threads)
    ref_order, ref_gains = reference.greedy(x, k, s, lam)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 12), lam=st.floats(0, 1), seed=st.integers(0, 2**32 - 1),
       duplicates=st.integers(0, 5), dtype=st.sampled_from([np.float32, np.float64]))
def test_random_inputs_with_duplicates_are_near_greedy(n, d, lam, seed, duplicates, dtype):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(dtype)
    x[rng.integers(0, n, duplicates)] = x[0]
    s = rng.random(n).astype(np.float32)
    k = max(1, n // 2)
    order, _ = greedyprune.greedy(x, k, s, lam)
    assert_near_greedy(x, s, lam, order, tol=1e-4 if dtype == np.float32 else 1e-12)
    assert len(set(order.tolist())) == k
