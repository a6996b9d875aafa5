"""The C core under hostile use, seen from Python: views larger than memory, a forked child, Ctrl-C
during a long call, more threads than the process may create, the caller's flush-to-zero mode, and
exact ties between rows that point the same way. tests/c/test_core.c covers the C side."""
from __future__ import annotations

import _thread
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import greedyprune
from greedyprune import _core, reference
from util import python_sigint_handler

#: Rows of a broadcast view whose work buffers (56 bytes a row) would wrap around size_t.
HUGE_ROWS = (3 * 2**61 + 1) // 7


def run_python(code: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout; fail with its stderr."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_broadcast_views_larger_than_memory_raise_memory_error():
    rows = np.broadcast_to(np.zeros((1, 1)), (HUGE_ROWS, 1))
    with pytest.raises(MemoryError, match="^out of memory$"):
        _core.greedy(rows, None, 1, 0.5, 1, True)
    batch = np.broadcast_to(np.zeros((1, 1, 1)), (1, HUGE_ROWS, 1))
    with pytest.raises(MemoryError, match="^out of memory$"):
        _core.greedy(batch, None, 1, 0.5, 2, False)
    for features in (rows, batch):
        with pytest.raises((MemoryError, ValueError)):
            greedyprune.select(features, 1)


def test_expanded_tensor_larger_than_memory_raises_memory_error():
    torch = pytest.importorskip("torch")
    with pytest.raises((MemoryError, ValueError)):
        greedyprune.select(torch.zeros(1, 1).expand(HUGE_ROWS, 1), 1)


@pytest.mark.filterwarnings("error")
def test_broadcast_saliency_is_checked_without_materializing_it():
    """The finiteness check reads each stored saliency value once: a broadcast saliency of
    2**40 rows costs nothing there, and the call ends in the C core's MemoryError, not in an
    allocator's error (or a warning about a read-only array)."""
    torch = pytest.importorskip("torch")
    features = torch.ones(1, 2).expand(2**40, 2)
    for saliency in (np.broadcast_to(np.float32(1), (2**40,)), torch.ones(1).expand(2**40)):
        with pytest.raises(MemoryError, match="^out of memory$"):
            greedyprune.greedy(features, 1, saliency, 1.0)
        with pytest.raises(MemoryError, match="^out of memory$"):
            greedyprune.greedy(np.broadcast_to(np.float32(1), (2**40, 2)), 1, saliency, 1.0)
    for features in (np.ones((3, 2)), torch.ones(3, 2)):      # and still refuses a NaN
        nan = np.broadcast_to(np.float64(np.nan), (3,))
        with pytest.raises(ValueError, match="saliency must be finite"):
            greedyprune.select(features, 1, nan if isinstance(features, np.ndarray)
                               else torch.tensor([np.nan]).expand(3))


def test_the_binding_takes_any_thread_count():
    x = np.random.default_rng(2).normal(size=(3, 30, 5))
    want = _core.greedy(x, None, 4, 0.5, 1, True)[0]
    for threads in (2**31, 2**40, 2**70, -(2**70)):
        np.testing.assert_array_equal(_core.greedy(x, None, 4, 0.5, threads, True)[0], want)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, /proc and RLIMIT_AS")
def test_forked_child_finishes_after_the_parent_used_threads():
    run_python("""
        import os, sys, time
        import numpy as np
        import greedyprune

        x = np.random.default_rng(0).normal(size=(4, 60, 8))
        want = greedyprune.select(x, 5, num_threads=2)  # the parent's thread team now exists
        pid = os.fork()
        if pid == 0:
            got = greedyprune.select(x, 5, num_threads=2)
            os._exit(0 if np.array_equal(got, want) else 3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                sys.exit(f"child exit code {os.waitstatus_to_exitcode(status)}" if status else 0)
            time.sleep(0.02)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        sys.exit("the forked child hung")
    """)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and RLIMIT_AS")
def test_a_huge_thread_count_starts_no_more_threads_than_cpus():
    # 1024 threads would need 8 GiB of stacks: more than the address space left to the process.
    run_python("""
        import os, resource
        import numpy as np
        import greedyprune

        def status(field):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(field))

        x = np.random.default_rng(0).normal(size=(1024, 4, 3))
        want = greedyprune.select(x, 2, num_threads=1)
        cpus = len(os.sched_getaffinity(0))
        room = (cpus + 16) * 128 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (status("VmSize:") * 1024 + room, resource.RLIM_INFINITY))
        before = status("Threads:")
        got = greedyprune.select(x, 2, num_threads=1024)
        assert np.array_equal(got, want)
        assert status("Threads:") - before <= cpus - 1, (status("Threads:"), before, cpus)
    """)


@pytest.mark.parametrize("shape, threads", [((100_000, 64), 1), ((4, 50_000, 64), 2)])
def test_ctrl_c_interrupts_a_long_call_promptly(shape, threads):
    # Uninterrupted, each call takes many seconds (farthest-point sampling of a fifth of the rows).
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    timer = threading.Timer(0.3, _thread.interrupt_main)
    start = time.perf_counter()
    timer.start()
    try:
        with python_sigint_handler(), pytest.raises(KeyboardInterrupt):
            greedyprune.select(x, shape[-2] // 5, lam=0.0, num_threads=threads)
    finally:
        timer.cancel()
    assert time.perf_counter() - start < 2.5
    small = x.reshape(-1, 64)[:50]
    np.testing.assert_array_equal(greedyprune.select(small, 5), reference.select(small, 5))


def test_flush_to_zero_on_the_calling_thread_changes_nothing():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    batch = rng.normal(size=(8, 40, 16)).astype(np.float32)
    batch[:, ::2] *= np.float32(1e-39)  # every other row subnormal
    large = rng.normal(size=(1, 2**16, 64)).astype(np.float32)  # shares its pass between threads
    large[:, ::2] *= np.float32(1e-39)
    want = [greedyprune.greedy(x, 12, None, 0.3, num_threads=1) for x in (batch, large)]
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        got = [[greedyprune.greedy(x, 12, None, 0.3, num_threads=t) for x in (batch, large)]
               for t in (1, 2)]
    finally:
        torch.set_flush_denormal(False)
    for answers in got:
        for (order, gains), (want_order, want_gains) in zip(answers, want):
            np.testing.assert_array_equal(order, want_order)
            np.testing.assert_array_equal(gains, want_gains)


def test_rows_pointing_the_same_way_tie_exactly_as_in_the_reference():
    example = [[1.4192704327512633], [0.11357618410652277], [0.16977419616931896]]
    np.testing.assert_array_equal(greedyprune.greedy(example, 2)[0], [0, 1])
    np.testing.assert_array_equal(reference.greedy(example, 2)[0], [0, 1])
    rng = np.random.default_rng(11)
    for trial in range(300):
        n, kind = int(rng.integers(2, 30)), trial % 3
        if kind == 0:  # D = 1
            x, dtypes = rng.normal(size=(n, 1)), (np.float64, np.float32)
        elif kind == 1:  # scaled copies of one row, both signs
            x, dtypes = rng.normal(size=(n, 1)) * rng.normal(size=(1, 9)), (np.float64, np.float32)
        else:  # exact duplicates of a few rows
            x, dtypes = rng.normal(size=(4, 9))[rng.integers(0, 4, size=n)], (np.float64,)
        s = rng.integers(0, 3, size=n).astype(np.float64) if trial % 2 else None
        k, lam = int(rng.integers(1, n + 1)), float(rng.choice([0.0, 0.3, 0.5, 1.0]))
        for dtype in dtypes:
            order, gains = greedyprune.greedy(x.astype(dtype), k, s, lam)
            want_order, want_gains = reference.greedy(x.astype(dtype), k, s, lam)
            np.testing.assert_array_equal(order, want_order, err_msg=f"trial {trial} {dtype}")
            np.testing.assert_allclose(gains, want_gains, rtol=0, atol=1e-15)


def test_every_method_converts_a_broadcast_tensor_without_materializing_it():
    """bfloat16 reaches NumPy as float32 one stored value at a time: a broadcast of 2**40 rows
    ends in MemoryError (or a method's own refusal), never in torch's allocator error."""
    torch = pytest.importorskip("torch")
    from greedyprune import methods

    features = torch.ones(1, 1, dtype=torch.bfloat16).expand(2**40, 1)
    saliency = torch.ones(1, dtype=torch.bfloat16).expand(2**40)
    for name in methods.names():
        with pytest.raises(MemoryError):
            methods.get(name)(features, 1, saliency)
    small = torch.arange(3, dtype=torch.bfloat16)[:, None].expand(3, 2)
    kept = methods.get("divprune")(small, 2)
    assert kept.tolist() == methods.get("divprune")(small.float().contiguous(), 2).tolist()
