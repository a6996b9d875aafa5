"""The selector registry (greedyprune.methods): the shared contract, then each selector's
defining property, checked against a brute-force statement of it."""
import json
import threading

import numpy as np
import pytest

import greedyprune
from greedyprune import PruneConfig, methods, reference

ALL = ["greedyprune", "topk", "divprune", "cdpruner", "random", "uniform"]


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


def cdpruner_quality(s):
    """CDPruner's relevance, spelled out: min-max normalized, plus 1e-6; constant -> 1."""
    if s is None or s.min() == s.max():
        return np.ones(len(s) if s is not None else 0)
    return (s - s.min()) / (s.max() - s.min()) + 1e-6


def brute_cdpruner(x, k, s=None):
    """Greedy MAP of the conditional DPP spelled out: the full kernel diag(q)·S·diag(q), and at
    each step the token whose addition gives the largest log det of the kernel submatrix (tiny
    N only). Returns the picks in order."""
    xhat = reference.unit_rows(x.astype(np.float64))
    q = cdpruner_quality(s) if s is not None else np.ones(len(x))
    similarity = xhat @ xhat.T
    np.fill_diagonal(similarity, (xhat != 0).any(axis=1))  # S_ii = 1 exactly, 0 for a zero row
    kernel = q[:, None] * similarity * q[None, :]
    picks = []
    for _ in range(k):
        best, best_logdet = None, -np.inf
        for i in range(len(x)):
            if i in picks:
                continue
            sign, logdet = np.linalg.slogdet(kernel[np.ix_(picks + [i], picks + [i])])
            if sign > 0 and logdet > best_logdet:  # strict: the lowest index wins a tie
                best, best_logdet = i, logdet
        picks.append(best)
    return picks


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
    monkeypatch.setattr(methods, "_NEEDS_SALIENCY", dict(methods._NEEDS_SALIENCY))

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
def test_an_empty_batch_gives_shape_0_k_like_select(name):
    x, s = make(b=0)
    want = greedyprune.select(x, 3, s)
    assert want.shape == (0, 3)
    kept = methods.get(name)(x, 3, s)
    assert kept.dtype == np.int64 and kept.shape == (0, 3)
    with pytest.raises(ValueError, match=r"k must be in \[1, N\] = \[1, 40\], got 41"):
        methods.get(name)(x, 41, s)  # still checked without an image to select from
    torch = pytest.importorskip("torch")
    kept = methods.get(name)(torch.from_numpy(x), 3, torch.from_numpy(s))
    assert isinstance(kept, torch.Tensor) and kept.dtype == torch.int64 and kept.shape == (0, 3)


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
    for features in (np.ones((4, 2)), np.ones((0, 4, 2))):
        with pytest.raises(ValueError, match="saliency is required by method 'topk'"):
            methods.get("topk")(features, 2)
    assert [name for name in ALL if methods.needs_saliency(name)] == ["topk"]
    with pytest.raises(ValueError, match="unknown method 'nope'; known methods: greedyprune"):
        methods.needs_saliency("nope")


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


@pytest.mark.parametrize("seed", range(6))
def test_cdpruner_is_the_greedy_map_of_the_conditional_dpp(seed):
    x, s = make(n=24, d=16, seed=seed)
    for saliency in (None, s):
        expected = brute_cdpruner(x, 9, saliency)
        q = methods.cdpruner_quality(saliency)
        assert methods.cdpruner_order(x, 9, q).tolist() == expected  # the same order
        np.testing.assert_array_equal(methods.get("cdpruner")(x, 9, saliency), np.sort(expected))


def test_cdpruner_float32_picks_are_within_rounding_of_the_best_log_det_gain():
    x, s = make(n=40, d=24, seed=7)
    q = cdpruner_quality(s)
    xhat = reference.unit_rows(x)
    kernel = q[:, None] * (xhat @ xhat.T) * q[None, :]
    order = methods.cdpruner_order(x.astype(np.float32), 12,
                                   methods.cdpruner_quality(s.astype(np.float32), np.float32))
    assert len(set(order.tolist())) == 12
    for t, j in enumerate(order.tolist()):
        before = order[:t].tolist()
        gains = {i: np.linalg.slogdet(kernel[np.ix_(before + [i], before + [i])])[1]
                 for i in range(40) if i not in before}
        assert gains[j] >= max(gains.values()) - 1e-3


def test_cdpruner_relevance_and_what_it_ignores():
    x, s = make(n=30, d=10, seed=3)
    cd = methods.get("cdpruner")
    # lam (and seed) are ignored; a constant saliency is no saliency.
    plain = cd(x, 6)
    for lam in (0.0, 1.0):
        np.testing.assert_array_equal(cd(x, 6, s, lam=lam, seed=5), cd(x, 6, s))
    np.testing.assert_array_equal(cd(x, 6, np.full(30, 2.5)), plain)
    # Relevance changes the picks; the scale and offset of the saliency do not.
    assert not np.array_equal(cd(x, 6, s), plain)
    np.testing.assert_array_equal(cd(x, 6, 1e3 * s - 7), cd(x, 6, s))
    # The first pick has the largest d² = q² (every unit row has S_ii = 1): the most relevant
    # token is always kept; without saliency, token 0.
    for seed in range(5):
        x, s = make(n=30, d=10, seed=seed)
        assert int(np.argmax(s)) in cd(x, 3, s).tolist()
        assert methods.cdpruner_order(x, 3)[0] == 0


def test_cdpruner_keeps_exactly_k_on_duplicates_zero_rows_and_low_rank():
    rng = np.random.default_rng(0)
    cd = methods.get("cdpruner")
    base = rng.normal(size=(4, 6))
    dup = np.repeat(base, 5, axis=0)  # tokens 5g .. 5g + 4 are equal
    # One pick per distinct token (the lowest index of each), then the lowest remaining
    # indices: the kernel is singular from the fifth pick on.
    assert cd(dup, 6).tolist() == [0, 1, 2, 5, 10, 15]
    for k in range(1, 21):
        kept = cd(dup, k)
        assert kept.shape == (k,) and (np.diff(kept) > 0).all()
    # With saliency, the most relevant copy of each token stands for it, and the fill after
    # the singular point goes to the most relevant remaining tokens.
    s = np.arange(20.0)
    assert cd(dup, 6, s).tolist() == [4, 9, 14, 17, 18, 19]
    assert methods.cdpruner_order(dup, 6, methods.cdpruner_quality(s)).tolist()[:4] == \
        [19, 14, 9, 4]
    # Zero rows have no volume: kept last.
    x = rng.normal(size=(8, 8))
    x[[1, 4]] = 0.0
    assert sorted(cd(x, 6).tolist()) == [0, 2, 3, 5, 6, 7]
    assert cd(x, 7).tolist() == [0, 1, 2, 3, 5, 6, 7]
    # k above the rank (3): the first three picks are the brute-force ones, the rest fills.
    low = rng.normal(size=(12, 3)) @ rng.normal(size=(3, 8))
    order = methods.cdpruner_order(low, 7)
    assert order[:3].tolist() == brute_cdpruner(low, 3)
    assert order[3:].tolist() == [i for i in range(12) if i not in order[:3]][:4]
    for dtype in (np.float32, np.float16):
        kept = cd(low.astype(dtype), 7)
        assert len(set(kept.tolist())) == 7


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cdpruner_lowest_index_of_equal_tokens_wins_whatever_their_position(dtype):
    # Each token appears twice, 21 rows apart: a matrix product may round the two copies'
    # similarities differently, yet the copy with the lower index must be the one kept.
    rng = np.random.default_rng(5)
    for d in (24, 64, 300):
        base = rng.normal(size=(21, d)).astype(dtype)
        x = np.concatenate([base, base])
        assert methods.get("cdpruner")(x, 21).tolist() == list(range(21))
        s = rng.normal(size=21).astype(dtype)
        assert methods.get("cdpruner")(x, 21, np.concatenate([s, s])).tolist() == \
            list(range(21))


def test_cdpruner_float32_matches_float64_on_well_separated_input():
    x, s = make(n=50, d=32, seed=11)
    np.testing.assert_array_equal(methods.get("cdpruner")(x.astype(np.float32), 10,
                                                          s.astype(np.float32)),
                                  methods.get("cdpruner")(x, 10, s))


# --- BLAS threads ------------------------------------------------------------------------------


def blas_thread_counts():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas"]


@pytest.fixture
def package_threads_differ_from_blas(monkeypatch):
    """greedyprune.get_num_threads() set to a count the BLAS does not have now, and every
    block large enough to use it."""
    before = blas_thread_counts()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS library")
    target = 1 if before[0] > 1 else 2
    monkeypatch.setattr(methods, "_BLAS_PARALLEL_MIN_WORK", 0)
    previous = greedyprune.set_num_threads(target)
    yield before, target
    greedyprune.set_num_threads(previous)


def test_small_blocks_keep_the_blas_on_one_thread(monkeypatch):
    before = blas_thread_counts()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS library")
    previous = greedyprune.set_num_threads(2)
    try:
        with methods.blas_threads(methods._BLAS_PARALLEL_MIN_WORK - 1):
            small = blas_thread_counts()
        with methods.blas_threads(methods._BLAS_PARALLEL_MIN_WORK):
            large = blas_thread_counts()
    finally:
        greedyprune.set_num_threads(previous)
    assert small == [1] * len(before)
    assert large == [min(2, methods._cpus_available())] * len(before)
    assert blas_thread_counts() == before


@pytest.mark.parametrize("name", ["divprune", "cdpruner"])
def test_numpy_blas_runs_on_the_package_thread_count(name, monkeypatch,
                                                     package_threads_differ_from_blas):
    before, target = package_threads_differ_from_blas
    x, s = make(n=60, d=8, b=2)
    expected = methods.get(name)(x, 7, s)
    seen = []
    unit_rows = reference.unit_rows

    def spying_unit_rows(a):  # runs next to the selector's matrix products
        seen.append(blas_thread_counts())
        return unit_rows(a)

    monkeypatch.setattr(reference, "unit_rows", spying_unit_rows)
    np.testing.assert_array_equal(methods.get(name)(x, 7, s), expected)
    assert seen and all(counts == [target] * len(before) for counts in seen)
    assert blas_thread_counts() == before  # restored afterwards
    # Without threadpoolctl the selectors run unchanged, the BLAS untouched.
    monkeypatch.setattr(methods, "_blas_controller", False)
    seen.clear()
    np.testing.assert_array_equal(methods.get(name)(x, 7, s), expected)
    assert seen and all(counts == before for counts in seen)


def test_blas_limit_is_reentrant_and_safe_across_threads(package_threads_differ_from_blas):
    before, target = package_threads_differ_from_blas
    inside = []
    with methods.blas_threads(1):
        with methods.blas_threads(1):
            inside.append(blas_thread_counts())
        inside.append(blas_thread_counts())
    assert inside == [[target] * len(before)] * 2
    assert blas_thread_counts() == before
    x, s = make(n=80, d=8, b=2)
    expected = methods.get("cdpruner")(x, 9, s)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(methods.get("cdpruner")(x, 9, s))
                inside.append(methods.nearest_neighbour_distance(x[0]).shape)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 15
    for result in results:
        np.testing.assert_array_equal(result, expected)
    assert blas_thread_counts() == before  # no limit leaked out of a thread


def test_registered_lasts_for_the_with_block_and_restores_what_was_there():
    def first(features, k, saliency=None, *, lam=0.5, seed=0):
        return np.arange(k)

    def last(features, k, saliency=None, *, lam=0.5, seed=0):
        return np.arange(k)[::-1]

    with methods.registered("_test_block", first) as name:
        assert name == "_test_block" and methods.get(name) is first
        with methods.registered(name, last, needs_saliency=True):
            assert methods.get(name) is last and methods.needs_saliency(name)
        assert methods.get(name) is first and not methods.needs_saliency(name)
    assert "_test_block" not in methods.names()
    with pytest.raises(RuntimeError), methods.registered("_test_block", first):
        raise RuntimeError("the block fails")
    assert "_test_block" not in methods.names()


def test_prune_config_backend_is_validated_and_round_trips():
    config = PruneConfig(keep=8, backend="torch")
    assert PruneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PruneConfig(keep=8).backend == PruneConfig.from_dict({"keep": 8}).backend == "auto"
    assert config.replace(keep=4).backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'c', 'torch', got 'gpu'"):
        PruneConfig(keep=8, backend="gpu")
    with pytest.raises(ValueError, match="backend='c' applies to method 'greedyprune' only"):
        PruneConfig(keep=8, method="divprune", backend="c")
    with pytest.raises(ValueError, match="backend='torch' applies to method 'greedyprune' only"):
        config.replace(method="topk")
