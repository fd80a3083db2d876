"""harness.core.stats against independent references: scipy's binomial test and Wilson interval, closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memft_bench.harness.core import stats

scipy_stats = pytest.importorskip("scipy.stats")


def test_normal_quantile():
    assert stats.z_quantile(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert stats.z_quantile(0.99) == pytest.approx(2.575829, abs=1e-6)


@pytest.mark.parametrize(("k", "n"), [(0, 30), (1, 30), (10, 30), (29, 30), (30, 30), (123, 240), (5, 7)])
def test_wilson_matches_scipy(k, n):
    expected = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    lo, hi = stats.wilson(k, n)
    assert lo == pytest.approx(expected.low, abs=1e-6)
    assert hi == pytest.approx(expected.high, abs=1e-6)


def test_wilson_known_value_at_zero():
    z2 = stats.z_quantile(0.95) ** 2
    assert stats.wilson(0, 30) == pytest.approx((0.0, z2 / (30 + z2)))  # closed form at k = 0
    with pytest.raises(ValueError):
        stats.wilson(31, 30)


@pytest.mark.parametrize(("only_a", "only_b", "same"), [(0, 6, 10), (3, 9, 0), (7, 7, 5), (1, 12, 40), (0, 0, 3)])
def test_mcnemar_matches_the_exact_binomial_test(only_a, only_b, same):
    a = [1] * only_a + [0] * only_b + [1] * same
    b = [0] * only_a + [1] * only_b + [1] * same
    got_a, got_b, p = stats.mcnemar(a, b)
    assert (got_a, got_b) == (only_a, only_b)
    expected = scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert p == pytest.approx(expected, rel=1e-9)
    if (only_a, only_b) == (0, 6):
        assert p == pytest.approx(2 / 64)  # 2 * (1/2)^6


def test_bootstrap_interval_agrees_with_the_normal_interval_at_large_n():
    values = [1.0] * 300 + [0.0] * 700
    mean, lo, hi = stats.bootstrap_mean({"t": values}, samples=4000)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 1000)
    assert mean == pytest.approx(0.3)
    assert lo == pytest.approx(0.3 - half, abs=0.004)
    assert hi == pytest.approx(0.3 + half, abs=0.004)


def test_bootstrap_of_an_average_over_tasks_and_its_degenerate_case():
    mean, lo, hi = stats.bootstrap_mean({"a": [1.0] * 10, "b": [0.0] * 30})
    assert (mean, lo, hi) == (0.5, 0.5, 0.5)  # no spread inside either task: no uncertainty
    mean, lo, hi = stats.bootstrap_mean({"a": [1, 0] * 50, "b": [1, 0, 0, 0] * 25})
    assert mean == pytest.approx((0.5 + 0.25) / 2)
    assert lo < mean < hi


def test_paired_bootstrap_identical_methods_are_tied():
    rng = np.random.default_rng(0)
    a = {"t1": rng.integers(0, 2, 50).tolist(), "t2": rng.integers(0, 2, 50).tolist()}
    d = stats.paired_bootstrap(a, a)
    assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0)
    assert not d.significant


def test_paired_bootstrap_finds_a_consistent_improvement_that_unpaired_intervals_miss():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 200)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:16]] = 1  # 16 of 200 items flip from wrong to right, none back
    paired = stats.paired_bootstrap({"t": base}, {"t": better})
    assert paired.difference == pytest.approx(16 / 200)
    assert paired.significant and paired.low > 0
    p_a, p_b = base.mean(), better.mean()
    unpaired = stats.normal_difference({"t": (p_a, 200)}, {"t": (p_b, 200)})
    assert not unpaired.significant  # the same difference is inside two independent samples' noise
    assert unpaired.high - unpaired.low > paired.high - paired.low


def test_paired_bootstrap_refuses_unpaired_input():
    with pytest.raises(ValueError):
        stats.paired_bootstrap({"t": [1, 0]}, {"t": [1, 0, 1]})
    with pytest.raises(ValueError):
        stats.paired_bootstrap({"t": [1]}, {"u": [1]})


def test_normal_difference_closed_form():
    d = stats.normal_difference({"a": (0.5, 100), "b": (0.2, 50)}, {"a": (0.6, 100), "b": (0.3, 50)})
    var = (0.25 / 100 + 0.16 / 50) / 4 + (0.24 / 100 + 0.21 / 50) / 4
    assert d.difference == pytest.approx(0.1)
    assert d.high - d.difference == pytest.approx(stats.z_quantile(0.95) * math.sqrt(var))


def test_seed_interval_is_students_t():
    mean, std, lo, hi = stats.seed_interval([0.5, 0.6, 0.7])
    half = scipy_stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (mean, std) == pytest.approx((0.6, 0.1))
    assert (lo, hi) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-3)
    assert math.isnan(stats.seed_interval([0.4])[2])
