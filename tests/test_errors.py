"""docs/spec.md §4: every misuse raises ValueError or TypeError naming the argument, the same from the
C core's dispatcher and from the reference; and the C core never leaks or crashes."""
from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import greedyprune
from greedyprune import reference

X = np.random.default_rng(0).normal(size=(10, 4))
S = np.random.default_rng(1).random(10)
NAN_X = X.copy()
NAN_X[3, 2] = np.nan
INF_X = X.copy()
INF_X[9, 0] = -np.inf

BAD_CALLS = [
    # (description, args, kwargs, exception, the words the message must contain)
    ("1-D features", (X[0], 2), {}, ValueError, "features must have 2 dimensions"),
    ("4-D features", (X[None, None], 2), {}, ValueError, "features must have 2 dimensions"),
    ("scalar features", (3.0, 1), {}, ValueError, "features must have 2 dimensions"),
    ("no tokens", (np.zeros((0, 4)), 1), {}, ValueError, "features must have at least one token"),
    ("no feature dims", (np.zeros((5, 0)), 1), {}, ValueError, "features must have at least one"),
    ("integer features", (X.astype(np.int64), 2), {}, TypeError, "features must have a floating dtype"),
    ("bool features", (X > 0, 2), {}, TypeError, "features must have a floating dtype"),
    ("complex features", (X.astype(complex), 2), {}, TypeError, "features must have a floating dtype"),
    ("object features", (X.astype(object), 2), {}, TypeError, "features must have a floating dtype"),
    ("ragged features", ([[1.0, 2.0], [3.0]], 1), {}, TypeError, "features must be an array-like"),
    ("string features", ([["a", "b"]], 1), {}, TypeError, "features must have a floating dtype"),
    ("NaN features", (NAN_X, 2), {}, ValueError, "features must be finite"),
    ("infinite features", (INF_X, 2), {}, ValueError, "features must be finite"),
    ("k = 0", (X, 0), {}, ValueError, "k must be in [1, N] = [1, 10], got 0"),
    ("k > N", (X, 11), {}, ValueError, "k must be in [1, N] = [1, 10], got 11"),
    ("negative k", (X, -1), {}, ValueError, "k must be in [1, N]"),
    ("float k", (X, 2.0), {}, TypeError, "k must be an integer, got float"),
    ("bool k", (X, True), {}, TypeError, "k must be an integer, got bool"),
    ("string k", (X, "2"), {}, TypeError, "k must be an integer, got str"),
    ("None k", (X, None), {}, TypeError, "k must be an integer, got NoneType"),
    ("lam < 0", (X, 2, None, -0.1), {}, ValueError, "lam must be in [0, 1], got -0.1"),
    ("lam > 1", (X, 2, None, 1.5), {}, ValueError, "lam must be in [0, 1], got 1.5"),
    ("lam NaN", (X, 2, None, float("nan")), {}, ValueError, "lam must be in [0, 1], got nan"),
    ("lam beyond float", (X, 2, None, 10**400), {}, ValueError, "lam must be in [0, 1], got 10000"),
    ("lam below float", (X, 2, None, -10**400), {}, ValueError, "lam must be in [0, 1], got -1000"),
    ("lam string", (X, 2, None, "0.5"), {}, TypeError, "lam must be a real number"),
    ("lam None", (X, 2, None, None), {}, TypeError, "lam must be a real number"),
    ("saliency too short", (X, 2, S[:9]), {}, ValueError, "saliency must have shape (10,)"),
    ("saliency 2-D for 2-D features", (X, 2, S[None]), {}, ValueError, "saliency must have shape (10,)"),
    ("saliency per batch wrong", (np.stack([X, X]), 2, S), {}, ValueError, "saliency must have shape (2, 10)"),
    ("integer saliency", (X, 2, np.arange(10)), {}, TypeError, "saliency must have a floating dtype"),
    ("NaN saliency", (X, 2, np.where(np.arange(10) == 4, np.nan, S)), {}, ValueError, "saliency must be finite"),
    ("infinite saliency", (X, 2, np.where(np.arange(10) == 0, np.inf, S)), {}, ValueError, "saliency must be finite"),
    ("num_threads 0", (X, 2), {"num_threads": 0}, ValueError, "num_threads must be >= 1"),
    ("num_threads float", (X, 2), {"num_threads": 2.5}, TypeError, "num_threads must be a positive integer"),
]


@pytest.mark.parametrize("fn", [greedyprune.select, greedyprune.greedy, reference.select], ids=lambda f: f.__module__ + "." + f.__name__)
@pytest.mark.parametrize("description,args,kwargs,exc,words", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_naming_the_argument(fn, description, args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize("fn", [greedyprune.select, greedyprune.greedy])
def test_backend_is_checked_first_and_named(fn):
    for backend in ("cuda", "C", None, 1):
        with pytest.raises(ValueError, match="backend must be one of 'auto', 'c', 'torch', got"):
            fn(np.zeros((0, 4)), 0, backend=backend)  # features and k are bad too
    with pytest.raises(ValueError, match="backend='torch' runs the PyTorch port on a tensor's "
                                         "device, but features is not a tensor: pass "
                                         r"torch.from_numpy\(features\)"):
        fn(X, 2, backend="torch")
    picked = fn(X, 2, backend="c")
    assert (picked if fn is greedyprune.select else picked[0]).shape == (2,)


def test_reference_and_core_raise_identical_messages():
    for description, args, kwargs, exc, _ in BAD_CALLS:
        messages = []
        for fn in (greedyprune.select, reference.select):
            with pytest.raises(exc) as info:
                fn(*args, **kwargs)
            messages.append(str(info.value))
        assert messages[0] == messages[1], description


@pytest.mark.parametrize("num_threads", [2**31 - 1, 2**31, 2**63, 10**30])
def test_thread_counts_beyond_the_cpus_are_accepted_and_change_nothing(num_threads):
    x = np.random.default_rng(5).normal(size=(3, 40, 6))
    want_order, want_gains = reference.greedy(x, 9, None, 0.3, num_threads=num_threads)
    order, gains = greedyprune.greedy(x, 9, None, 0.3, num_threads=num_threads)
    np.testing.assert_array_equal(order, want_order)
    np.testing.assert_allclose(gains, want_gains, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(greedyprune.select(x, 9, num_threads=num_threads),
                                  reference.select(x, 9))


@pytest.mark.parametrize("num_threads", [2**40, 10**30])
def test_a_huge_package_thread_count_is_kept_and_every_call_still_works(num_threads):
    from greedyprune import methods

    rng = np.random.default_rng(6)
    x, s = rng.normal(size=(2, 40, 6)), rng.random((2, 40))
    want = {name: methods.get(name)(x, 5, s) for name in methods.names()}
    previous = greedyprune.set_num_threads(num_threads)
    try:
        assert greedyprune.get_num_threads() == num_threads
        np.testing.assert_array_equal(greedyprune.select(x, 5, s), reference.select(x, 5, s))
        for name, expected in want.items():  # divprune and cdpruner run NumPy's BLAS too
            np.testing.assert_array_equal(methods.get(name)(x, 5, s), expected, err_msg=name)
    finally:
        assert greedyprune.set_num_threads(previous) == num_threads


def test_nan_in_one_image_of_a_batch_is_reported():
    x = np.random.default_rng(2).normal(size=(4, 20, 3)).astype(np.float32)
    x[2, 5, 1] = np.nan
    for threads in (1, 2):
        with pytest.raises(ValueError, match="features must be finite"):
            greedyprune.select(x, 3, num_threads=threads)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_no_memory_or_reference_growth_over_many_calls():
    rng = np.random.default_rng(3)
    x, s = rng.normal(size=(2, 300, 32)).astype(np.float32), rng.random((2, 300))
    refs = (sys.getrefcount(x), sys.getrefcount(s))

    def many(n):
        for _ in range(n):
            greedyprune.select(x, 30, s, 0.5)
            greedyprune.greedy(x[0], 30, s[0], 0.2, num_threads=2)
            for bad in ((x, 0), (np.where(x > 3, np.nan, x), 5)):  # error paths too
                with pytest.raises(ValueError):
                    greedyprune.select(*bad)

    many(300)  # warm up allocator pools
    gc.collect()
    before = _rss_bytes()
    many(3000)
    gc.collect()
    grown = _rss_bytes() - before
    assert grown < 2 * 2**20, f"RSS grew by {grown} bytes over 3000 iterations"
    assert (sys.getrefcount(x), sys.getrefcount(s)) == refs


def _run_python(code, env=None, timeout=120):
    import os

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def test_concurrent_calls_from_python_threads_are_safe():
    result = _run_python("""
        import threading, numpy as np, greedyprune
        rng = np.random.default_rng(0)
        inputs = [(rng.normal(size=(3, 400, 24)).astype(np.float32), rng.random((3, 400)))
                  for _ in range(4)]
        expected = [greedyprune.select(x, 40, s, num_threads=1) for x, s in inputs]
        failures = []
        def work(t):
            for r in range(25):
                x, s = inputs[(t + r) % 4]
                got = greedyprune.select(x, 40, s, num_threads=1 + r % 2)
                if not np.array_equal(got, expected[(t + r) % 4]):
                    failures.append((t, r))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print("failures", len(failures))
    """)
    assert result.returncode == 0, result.stderr
    assert "failures 0" in result.stdout


def test_package_environment_variable_wins_over_omp_num_threads():
    code = "import greedyprune; print(greedyprune.get_num_threads())"
    assert _run_python(code, {"GREEDYPRUNE_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}).stdout.strip() == "3"
    if greedyprune.has_openmp:
        assert _run_python(code, {"OMP_NUM_THREADS": "5", "GREEDYPRUNE_NUM_THREADS": ""}).stdout.strip() == "5"
    bad = _run_python(code, {"GREEDYPRUNE_NUM_THREADS": "lots", "OMP_NUM_THREADS": "2"})
    assert "GREEDYPRUNE_NUM_THREADS" in bad.stderr and bad.stdout.strip() == ("2" if greedyprune.has_openmp else "1")
    for value in ("0", "-3", "2.5"):
        bad = _run_python(code, {"GREEDYPRUNE_NUM_THREADS": value, "OMP_NUM_THREADS": "2"})
        warning = f"ignoring GREEDYPRUNE_NUM_THREADS={value!r}: expected a positive integer"
        assert warning in bad.stderr


def test_a_huge_environment_thread_count_is_kept_and_calls_still_work():
    result = _run_python("""
        import numpy as np, greedyprune
        from greedyprune import methods, reference
        x = np.random.default_rng(0).normal(size=(2, 30, 5))
        print(greedyprune.get_num_threads())
        print(np.array_equal(greedyprune.select(x, 4), reference.select(x, 4)))
        print(methods.get("divprune")(x, 4).shape, methods.get("cdpruner")(x, 4).shape)
    """, {"GREEDYPRUNE_NUM_THREADS": "99999999999"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["99999999999", "True", "(2, 4) (2, 4)"]


def test_gil_is_released_while_the_c_core_runs():
    import threading
    import time

    rng = np.random.default_rng(4)
    x = rng.normal(size=(6000, 256)).astype(np.float32)
    t0 = time.perf_counter()
    greedyprune.select(x, 600, None, 0.0, num_threads=1)
    duration = time.perf_counter() - t0
    worker = threading.Thread(target=greedyprune.select, args=(x, 600, None, 0.0),
                              kwargs={"num_threads": 1})
    stamps = []
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    gaps = np.diff(stamps) if len(stamps) > 1 else np.array([duration])
    # Holding the GIL would freeze this loop for the whole call.
    assert gaps.max() < 0.5 * duration, (gaps.max(), duration)
