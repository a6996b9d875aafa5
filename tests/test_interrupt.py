"""Ctrl-C during a batch whose images run in parallel arrives promptly, whichever thread runs
which image: also once the calling thread (the only one that may look for signals) has finished
its own share and waits for the others'. Each case first times the whole call uninterrupted, then
sends a real SIGINT to the main thread partway and asserts that KeyboardInterrupt arrives within a
third of that time (ratios of times measured side by side, so that a loaded machine changes
both). tests/c/test_core.c checks the same in C, without timing."""
from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

import greedyprune
from util import python_sigint_handler

#: One image takes most of a second here: farthest-point sampling of a quarter of its rows.
N, D, K = 8192, 64, 2048


def heavy_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, N, D), dtype=np.float32)


def batch_refused(threads: int, where: int) -> np.ndarray:
    """Image `where` holds a NaN: it is refused at once (the call raises ValueError once every
    image is done), so the thread that takes it waits for the others."""
    x = heavy_images(threads)
    x[where, 0, 0] = np.nan
    return x


def batch_uneven(threads: int) -> np.ndarray:
    """One image more than threads: some thread runs two, the others wait."""
    return heavy_images(threads + 1)


BATCHES = {
    "refused-first": lambda threads: batch_refused(threads, 0),
    "refused-last": lambda threads: batch_refused(threads, -1),
    "uneven": batch_uneven,
}


def run_once(x: np.ndarray, threads: int) -> None:
    try:
        greedyprune.select(x, K, lam=0.0, num_threads=threads)
    except ValueError:
        pass  # the batch with a NaN: refused after the other images ran


def sigint_latency(x: np.ndarray, threads: int, delay: float):
    """Seconds from a SIGINT sent `delay` seconds into the call to its KeyboardInterrupt, or None
    where the call ended before the signal was sent (a machine less loaded than when timed)."""
    sent, returned = [], []

    def fire():
        sent.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    timer = threading.Timer(delay, fire)
    with python_sigint_handler():
        try:
            timer.start()
            try:
                run_once(x, threads)
                returned.append(time.monotonic())
            finally:
                timer.join()  # the signal is sent by now; a late one raises here or in the sleep
                time.sleep(0.01)
        except KeyboardInterrupt:
            ended = time.monotonic()
        else:
            pytest.fail("no KeyboardInterrupt")
    if returned and returned[0] < sent[0]:
        return None
    assert not returned, f"the call returned {returned[0] - sent[0]:.3f} s after the signal"
    return ended - sent[0]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
@pytest.mark.parametrize("batch, threads", [("refused-first", 2), ("refused-last", 3),
                                            ("uneven", 2), ("uneven", 3), ("uneven", 4)])
def test_sigint_stops_a_parallel_batch_promptly(batch, threads):
    x = BATCHES[batch](threads)
    when = 0.6 if batch == "uneven" else 0.3  # uneven: once a thread has finished its share
    for _ in range(3):
        start = time.monotonic()
        run_once(x, threads)
        full = time.monotonic() - start
        latency = sigint_latency(x, threads, when * full)
        if latency is not None:
            break
    assert latency is not None and latency < full / 3, (latency, full)
    # Nothing left behind: the next call gives the answer of a single thread.
    small = heavy_images(threads, seed=1)[:, :300]
    np.testing.assert_array_equal(greedyprune.select(small, 20, num_threads=threads),
                                  greedyprune.select(small, 20, num_threads=1))
