"""Soak tests: long use changes nothing. Marked ``soak``: the default ``pytest`` run leaves them
out, ``make soak`` (``pytest -m soak``) runs them, and CI runs that after ``make test``.

Each test measures a baseline after a warm-up round, runs many rounds, then checks that the
process is back to it: resident memory after ``gc.collect()`` (a tolerance for the allocator),
live Python objects by type, forward hooks and pre-hooks on every submodule, open handles
(``greedyprune.hf.get_handle``), threads (``threading.active_count`` and ``/proc/self/task``);
and that the answers at the end equal those at the start, bit for bit.

Length: SOAK_SECONDS (default 30) seconds per test; the C core's test runs twice as long.
"""
from __future__ import annotations

import collections
import gc
import os
import random
import threading
import time

import numpy as np
import pytest

pytest.importorskip("transformers")
from hf_models import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread here)

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
#: Growth allowed after the warm-up: resident memory (the allocator keeps freed pages), objects
#: of any one type, all objects.
RSS_SLACK_MB = {"core": 8.0, "hf": 48.0}
TYPE_SLACK, TOTAL_SLACK = 50, 400


def rss_mb() -> float:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def process_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def object_counts() -> collections.Counter:
    gc.collect()
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


class Baseline:
    """What the process holds now; ``check()`` compares a later state with it."""

    def __init__(self, kind: str, model=None):
        self.kind, self.model = kind, model
        self.objects = object_counts()
        self.rss = rss_mb()
        self.threads = (threading.active_count(), process_threads())
        self.hooks = hook_counts(model) if model is not None else None

    def check(self, rounds: int, seconds: float) -> str:
        from greedyprune.hf import get_handle

        objects = object_counts()
        grown = {t: objects[t] - self.objects[t] for t in objects
                 if objects[t] - self.objects[t] > TYPE_SLACK}
        total = sum(objects.values()) - sum(self.objects.values())
        rss = rss_mb()
        threads = (threading.active_count(), process_threads())
        summary = (f"{self.kind}: {rounds} rounds in {seconds:.0f} s; RSS {self.rss:.1f} -> "
                   f"{rss:.1f} MB; objects {sum(self.objects.values())} -> "
                   f"{sum(objects.values())}; threads {self.threads} -> {threads}")
        print(summary)
        assert not grown and total <= TOTAL_SLACK, (summary, grown)
        assert rss - self.rss <= RSS_SLACK_MB[self.kind], summary
        assert threads[0] == self.threads[0] and threads[1] <= self.threads[1], summary
        if self.model is not None:
            assert hook_counts(self.model) == self.hooks
            assert get_handle(self.model) is None
        return summary


def hook_counts(model):
    return {name: (len(m._forward_pre_hooks), len(m._forward_hooks))
            for name, m in model.named_modules()}


# --------------------------------------------------------------------------------- the C core


def core_cases(rng: random.Random, count: int):
    """Small calls of every shape kind: batches of 0 to 3, 1 to 12 tokens, 1 to 6 features,
    every dtype, with and without saliency, 1 to 4 threads; but only one call in 128 runs
    images on a team of threads (starting one takes far longer than a small call: milliseconds
    on a busy machine), the others stay on the calling thread."""
    data = np.random.default_rng(rng.randrange(2**32))
    cases = []
    for _ in range(count):
        b, n, d = rng.randrange(4), rng.randrange(1, 13), rng.randrange(1, 7)
        dtype = rng.choice([np.float32, np.float64, np.float16])
        x = data.standard_normal((b, n, d)).astype(dtype)
        s = data.random((b, n)).astype(dtype) if rng.random() < 0.5 else None
        threads = rng.randrange(1, 5)
        if b > 1 and rng.random() > 1 / 128:
            threads = 1
        cases.append((x, s, rng.randrange(1, n + 1), rng.choice([0.0, 0.3, 1.0]), threads,
                      rng.random() < 0.5))
    return cases


def test_the_core_holds_steady_over_many_calls():
    from greedyprune import _core

    cases = core_cases(random.Random(0), 512)

    def call(case):
        x, s, k, lam, threads, sort = case
        return _core.greedy(x, s, k, lam, threads, sort)

    def answers():
        return [call(c) for c in cases]

    first = answers()
    baseline = Baseline("core")
    start, rounds, calls = time.monotonic(), 0, 0
    while time.monotonic() - start < 2 * SECONDS:
        for case in cases:
            call(case)
        calls += len(cases)
        rounds += 1
    elapsed = time.monotonic() - start
    last = answers()
    for case, a, b in zip(cases, first, last):
        assert np.array_equal(a[0], b[0]) and (a[1] is None or np.array_equal(a[1], b[1])), case
    del first, last, a, b, case
    print(f"core: {calls} calls")
    baseline.check(rounds, elapsed)


# --------------------------------------------------------------------------- models under hooks


def tiny_model(arch):
    from hf_models import batch, tiny

    model = tiny(arch).model
    prompts = {
        "llava_next": [[[3, "img", 2]], [[1, "img", 2, "img", 4], [5, "img", 1]],
                       [[2, "img", 1], [4], [1, "img", 3, "img", 1, "img", 2]]],
        "qwen2_vl": [[[3, "img", 2]], [[1, "img", 2, "vid", 1, "img", 1], [2, "vid", 1]],
                     [[6], [2, "img", 2], [1, "img", 1, "img", 1]]],
    }[arch]
    # Batches of 1 to 3 rows holding 0 to 3 images, image sizes drawn by the builders.
    return model, [batch(arch, p, seed=i)[0] for i, p in enumerate(prompts)]


def builtin_model():
    from greedyprune import builtin, scenes

    model, processor = builtin.load()
    batches = []
    for count in (1, 2):
        records = scenes.benchmark(count, count)
        images = [r.image for r in records]
        texts = ["USER: <image>\n" + r.question + " ASSISTANT:" for r in records]
        batches.append(dict(processor(images=images, text=texts, return_tensors="pt",
                                      padding=True)))
    return model, batches


def one_round(model, batches, rng: random.Random, generate: bool) -> int:
    """Each way of using a handle once, on batches in a random order; with `generate`, beam
    search and greedy generation too. Returns the prefills run."""
    import torch
    from greedyprune.hf import attach

    prefills = 0
    with torch.no_grad():
        for i in rng.sample(range(len(batches)), len(batches)):
            inputs = batches[i]
            with attach(model, keep_ratio=rng.choice([0.25, 0.5])) as handle:
                model(**inputs)
                with attach(model, keep=1, method=rng.choice(["greedyprune", "random"])):
                    model(**inputs)
                with handle.disabled():
                    model(**inputs)
                prefills += 3
                if generate:
                    model.generate(**inputs, max_new_tokens=2, num_beams=2, do_sample=False)
            if generate:
                model.generate(**inputs, max_new_tokens=2, do_sample=False)
                prefills += 2
    return prefills


def answers(model, batches):
    import torch
    from greedyprune.hf import attach

    with torch.no_grad():
        plain = [model(**b).logits for b in batches]
        with attach(model, keep_ratio=0.25):
            pruned = [model(**b).logits for b in batches]
            generated = [model.generate(**b, max_new_tokens=3, do_sample=False) for b in batches]
    return plain, pruned, generated


@pytest.mark.parametrize("arch", ["llava_next", "qwen2_vl", "builtin"])
def test_hooked_models_hold_steady_over_many_prefills(arch):
    import torch

    model, batches = builtin_model() if arch == "builtin" else tiny_model(arch)
    rng = random.Random(0)
    first = answers(model, batches)
    one_round(model, batches, rng, True)  # warm-up: lazily built caches, hooks of transformers
    baseline = Baseline("hf", model)
    start, rounds, prefills = time.monotonic(), 0, 0
    while time.monotonic() - start < SECONDS:
        prefills += one_round(model, batches, rng, generate=rounds % 4 == 0)
        rounds += 1
    elapsed = time.monotonic() - start
    last = answers(model, batches)
    for a, b in zip(first, last):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    del first, last, a, b
    print(f"{arch}: {prefills} prefills")
    baseline.check(rounds, elapsed)
