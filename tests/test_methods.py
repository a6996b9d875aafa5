"""The selector registry (greedyprune.methods): the shared contract, then each selector's
defining property, checked against a brute-force statement of it."""
import numpy as np
import pytest

import greedyprune
from greedyprune import methods, reference

ALL = ["greedyprune", "topk", "divprune", "random", "uniform"]


def make(n=40, d=6, b=None, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shape = (n, d) if b is None else (b, n, d)
    x = rng.normal(size=shape).astype(dtype)
    s = rng.normal(size=shape[:-1]).astype(dtype)
    return x, s


def brute_divprune(x, k):
    """DivPrune spelled out with the full distance matrix (fine for tiny N)."""
    xhat = reference.unit_rows(x.astype(np.float64))
    dist = (1.0 - xhat @ xhat.T) / 2.0
    off_diagonal = dist + np.diag(np.full(len(x), np.inf))
    picks = [int(np.argmax(off_diagonal.min(axis=1)))]
    while len(picks) < k:
        m = dist[:, picks].min(axis=1)
        m[picks] = -np.inf
        picks.append(int(np.argmax(m)))
    return np.sort(picks)


# --- the registry -----------------------------------------------------------------------------


def test_names_lists_every_method_default_first():
    assert set(ALL) <= set(methods.names())
    assert methods.names()[0] == "greedyprune"


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown method 'fastv'.*greedyprune.*topk"):
        methods.get("fastv")
    with pytest.raises(TypeError, match="method"):
        methods.get(3)


def test_register_adds_a_selector_with_the_full_contract(monkeypatch):
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))

    @methods.register("last")
    def last(x, k, s, *, lam, seed):
        return np.broadcast_to(np.arange(x.shape[1] - k, x.shape[1])[::-1], (len(x), k))

    assert "last" in methods.names()
    out = methods.get("last")(np.ones((5, 2)), 2)
    assert out.tolist() == [3, 4] and out.dtype == np.int64


# --- the contract, for every selector ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_output_is_sorted_unique_int64_in_range(name):
    x, s = make(b=3)
    kept = methods.get(name)(x, 7, s)
    assert kept.dtype == np.int64 and kept.shape == (3, 7)
    for row in kept:
        assert (np.diff(row) > 0).all() and 0 <= row.min() and row.max() < 40


@pytest.mark.parametrize("name", ALL)
def test_batch_rows_equal_single_calls(name):
    x, s = make(b=3)
    batch = methods.get(name)(x, 5, s, lam=0.3, seed=4)
    for b in range(3):
        single = methods.get(name)(x[b], 5, s[b], lam=0.3, seed=4)
        assert single.shape == (5,)
        np.testing.assert_array_equal(batch[b], single)


@pytest.mark.parametrize("name", ALL)
def test_k_equal_n_keeps_everything(name):
    x, s = make(n=9)
    np.testing.assert_array_equal(methods.get(name)(x, 9, s), np.arange(9))


@pytest.mark.parametrize("name", ALL)
def test_inputs_are_not_modified_and_lists_work(name):
    x, s = make(n=12)
    x0, s0 = x.copy(), s.copy()
    out = methods.get(name)(x, 4, s)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_array_equal(methods.get(name)(x.tolist(), 4, s.tolist()), out)


@pytest.mark.parametrize("name", ALL)
def test_strided_and_float16_inputs(name):
    x, s = make(n=30, d=8)
    wide = np.zeros((30, 16))
    wide[:, ::2] = x
    strided = wide[:, ::2]
    np.testing.assert_array_equal(methods.get(name)(strided, 6, s), methods.get(name)(x, 6, s))
    kept = methods.get(name)(x.astype(np.float16), 6, s.astype(np.float16))
    assert kept.shape == (6,) and kept.dtype == np.int64


@pytest.mark.parametrize("name", ALL)
def test_torch_in_torch_out(name):
    torch = pytest.importorskip("torch")
    x, s = make(b=2)
    expected = methods.get(name)(x, 6, s)
    got = methods.get(name)(torch.from_numpy(x), 6, torch.from_numpy(s))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
    assert got.device == torch.device("cpu")
    np.testing.assert_array_equal(got.numpy(), expected)
    # bfloat16 (no NumPy twin) and non-contiguous tensors work too.
    bf16 = methods.get(name)(torch.from_numpy(x).bfloat16(), 6, torch.from_numpy(s).bfloat16())
    assert bf16.shape == (2, 6) and bf16.dtype == torch.int64
    transposed = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1))).transpose(1, 2)
    np.testing.assert_array_equal(methods.get(name)(transposed, 6, torch.from_numpy(s)).numpy(),
                                  expected)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kwargs, error, words", [
    (dict(k=0), ValueError, "k must be in"),
    (dict(k=41), ValueError, "k must be in"),
    (dict(k=2.0), TypeError, "k must be an integer"),
    (dict(lam=1.5), ValueError, "lam must be in"),
    (dict(lam=float("nan")), ValueError, "lam must be in"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed="a"), TypeError, "seed"),
    (dict(saliency=np.zeros(39)), ValueError, "saliency must have shape"),
    (dict(saliency=np.array([np.nan] * 40)), ValueError, "saliency must be finite"),
    (dict(features=np.ones((40, 3), dtype=np.int32)), TypeError, "features must have a floating"),
    (dict(features=np.ones(40)), ValueError, "features must have 2 dimensions"),
    (dict(features=np.full((40, 3), np.inf)), ValueError, "features must be finite"),
])
def test_bad_arguments_are_named(name, kwargs, error, words):
    x, s = make()
    args = dict(features=x, k=5, saliency=s, lam=0.5, seed=0)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        methods.get(name)(args.pop("features"), args.pop("k"), args.pop("saliency"), **args)


# --- each selector's defining property ---------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_greedyprune_is_the_core(lam):
    x, s = make(n=60, b=2)
    got = methods.get("greedyprune")(x, 10, s, lam=lam)
    np.testing.assert_array_equal(got, greedyprune.select(x, 10, s, lam))
    np.testing.assert_array_equal(got, reference.select(x, 10, s, lam))


def test_topk_keeps_the_most_salient_lowest_index_among_ties():
    s = np.array([0.1, 0.9, 0.5, 0.9, 0.2, 0.5, 0.5])
    x = np.ones((7, 2))
    assert methods.get("topk")(x, 3, s).tolist() == [1, 2, 3]  # 0.5 tie: index 2 first
    x, s = make(n=50)
    expected = np.sort(np.argsort(-s)[:8])
    np.testing.assert_array_equal(methods.get("topk")(x, 8, s), expected)
    np.testing.assert_array_equal(methods.get("topk")(x, 8, s), reference.select(x, 8, s, 1.0))


def test_topk_needs_saliency():
    with pytest.raises(ValueError, match="saliency is required"):
        methods.get("topk")(np.ones((4, 2)), 2)


@pytest.mark.parametrize("seed", range(5))
def test_divprune_matches_the_brute_force_rule(seed):
    x, _ = make(n=35, d=5, seed=seed)
    np.testing.assert_array_equal(methods.get("divprune")(x, 9), brute_divprune(x, 9))


def test_divprune_first_pick_is_farthest_from_its_nearest_neighbour():
    # Three tight pairs and one lone token: the lone one is kept first, even at k = 1.
    x = np.array([[1, 0, 0], [1, 0.01, 0], [0, 1, 0], [0.01, 1, 0], [0, 0, 1], [0, 0.5, 1],
                  [-1, -1, 0]], dtype=np.float64)
    assert methods.get("divprune")(x, 1).tolist() == [6]
    # ... whereas plain farthest-point sampling (the rule at λ = 0) starts from token 0.
    assert reference.select(x, 1, None, 0.0).tolist() == [0]


def test_divprune_ignores_saliency_and_duplicates_do_not_break_it():
    x, s = make(n=20)
    np.testing.assert_array_equal(methods.get("divprune")(x, 5, s), methods.get("divprune")(x, 5))
    dup = np.repeat(x[:4], 5, axis=0)  # every token has an exact twin
    kept = methods.get("divprune")(dup, 6)
    assert len(set(kept.tolist())) == 6


def test_nearest_neighbour_distance_in_small_blocks(monkeypatch):
    x, _ = make(n=23, d=4)
    whole = methods.nearest_neighbour_distance(x)
    monkeypatch.setattr(methods, "_BLOCK_ENTRIES", 50)  # blocks of 2 rows
    np.testing.assert_allclose(methods.nearest_neighbour_distance(x), whole, rtol=0, atol=1e-15)
    xhat = reference.unit_rows(x)
    dist = (1 - xhat @ xhat.T) / 2 + np.diag(np.full(23, np.inf))
    np.testing.assert_allclose(whole, dist.min(axis=1), atol=1e-15)
    assert methods.nearest_neighbour_distance(x[:1]).tolist() == [np.inf]


def test_random_is_reproducible_and_seed_dependent():
    x, _ = make(n=100)
    a = methods.get("random")(x, 10, seed=1)
    np.testing.assert_array_equal(a, methods.get("random")(x, 10, seed=1))
    assert not np.array_equal(a, methods.get("random")(x, 10, seed=2))
    # Uniform over tokens: over many seeds each token is kept about k/N of the time.
    counts = np.zeros(100)
    for seed in range(400):
        counts[methods.get("random")(x, 10, seed=seed)] += 1
    assert counts.min() > 15 and counts.max() < 70  # mean 40


def test_uniform_is_evenly_strided():
    x = np.ones((576, 2))
    kept = methods.get("uniform")(x, 64)
    assert kept[0] == 4 and set(np.diff(kept).tolist()) == {9}
    kept = methods.get("uniform")(np.ones((100, 2)), 7)
    assert set(np.diff(kept).tolist()) <= {14, 15}
    assert kept[0] + (99 - kept[-1]) in (14, 15, 13)  # the slack is split at both ends
