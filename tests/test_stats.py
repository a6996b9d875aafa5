"""greedyprune.stats: the Wilson interval and the exact paired test, against values worked out
by hand and from the binomial distribution."""
import math

import numpy as np
import pytest

from greedyprune import stats


@pytest.mark.parametrize("accuracy, n, low, high", [
    (0.5, 100, 0.40383, 0.59617),
    (1.0, 10, 0.72247, 1.0),     # not empty at 1
    (0.0, 10, 0.0, 0.27753),
    (0.9, 2000, 0.88608, 0.91239),
])
def test_wilson_interval(accuracy, n, low, high):
    assert stats.wilson_interval(accuracy, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_narrows_with_n_and_holds_the_estimate():
    wide, narrow = stats.wilson_interval(0.8, 100), stats.wilson_interval(0.8, 10000)
    assert wide[0] < narrow[0] < 0.8 < narrow[1] < wide[1]


def binomial_two_sided(wins, losses):
    n, k = wins + losses, min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


@pytest.mark.parametrize("wins, losses", [(5, 0), (10, 3), (30, 30), (7, 12), (120, 80)])
def test_paired_test_is_the_exact_mcnemar_test(wins, losses):
    ties = 40
    a = np.array([1] * wins + [0] * losses + [1] * (ties // 2) + [0] * (ties // 2))
    b = np.array([0] * wins + [1] * losses + [1] * (ties // 2) + [0] * (ties // 2))
    p = stats.paired_test(a, b)
    assert p == pytest.approx(binomial_two_sided(wins, losses), rel=1e-9)
    assert stats.paired_test(b, a) == p   # symmetric
    assert stats.paired_test(a, a) == 1.0


def test_paired_test_handles_many_questions_and_fractional_scores():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 20000)
    assert 0.0 <= stats.paired_test(a, 1 - a) <= 1.0
    # Means over seeds: only the sign of each difference counts.
    assert stats.paired_test([1 / 3, 1, 0], [0, 2 / 3, 0]) == pytest.approx(0.5)


def test_bad_input_is_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="n must be a positive integer"):
        stats.wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match=r"accuracy must be in \[0, 1\]"):
        stats.wilson_interval(1.5, 10)
    with pytest.raises(ValueError, match="a and b must be 1-D and of the same length"):
        stats.paired_test([1, 0], [1])
