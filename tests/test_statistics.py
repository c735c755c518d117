"""Confidence bounds on accuracies, checked against the binomial distribution itself."""

import numpy as np
import pytest

scipy_stats = pytest.importorskip("scipy.stats")

from pixdisc.statistics import clopper_pearson_interval, clopper_pearson_lower  # noqa: E402


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 10), (10, 10), (697, 1000), (999, 1000)])
def test_interval_ends_are_the_binomial_tail_points(k, n):
    lower, upper = clopper_pearson_interval(k, n, 0.95)
    assert 0 <= lower <= k / n <= upper <= 1
    if k > 0:  # at p = lower, seeing k or more successes has probability exactly 2.5%
        assert scipy_stats.binom.sf(k - 1, n, lower) == pytest.approx(0.025, rel=1e-6)
    else:
        assert lower == 0
    if k < n:
        assert scipy_stats.binom.cdf(k, n, upper) == pytest.approx(0.025, rel=1e-6)
    else:
        assert upper == 1


def test_interval_covers_at_least_the_confidence_for_every_p():
    n = 30
    intervals = [clopper_pearson_interval(k, n, 0.9) for k in range(n + 1)]
    for p in np.linspace(0.001, 0.999, 199):
        coverage = sum(scipy_stats.binom.pmf(k, n, p) for k, (lo, hi) in enumerate(intervals) if lo <= p <= hi)
        assert coverage >= 0.9 - 1e-9, p


def test_one_sided_lower_bound_is_below_the_two_sided_lower_end():
    assert clopper_pearson_lower(700, 1000, 0.025) == pytest.approx(clopper_pearson_interval(700, 1000, 0.95)[0])


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="successes must lie in"):
        clopper_pearson_interval(11, 10)
    with pytest.raises(ValueError, match="at least one sample"):
        clopper_pearson_interval(0, 0)
