"""How sure an accuracy, or a difference of accuracies, is: intervals and paired tests (numpy only).

- `wilson`: the Wilson score interval of one proportion (k right of n). Used for a single per-task
  accuracy: unlike the normal ("Wald") interval it stays inside [0, 1] and keeps its coverage at the
  small n (30 items) and the extreme accuracies (0 or 1) that CPU-sized runs produce.
- `bootstrap_mean`: a percentile bootstrap interval of an average over tasks, resampling items within
  each task (stratified), so each task keeps its size. Used for the average over tasks of one trial.
- `paired_bootstrap`: the same for the difference of two methods scored on the *same* items: an item's
  pair of outcomes is resampled together, so the interval reflects only the items on which the two
  methods disagree (much narrower than two unpaired intervals side by side).
- `mcnemar`: the exact (binomial) McNemar test per task: among items where exactly one method is right,
  is either method right more often than a fair coin would be?
- `normal_difference`: the unpaired normal-approximation interval of the difference of two averages,
  for rows that kept no per-item records (older results), from per-task accuracies and item counts.
- `seed_interval`: mean, standard deviation and Student-t interval of a metric over seeds.

Every interval here is a 95% interval by default (`confidence`). The bootstrap is seeded, so a report is
reproducible byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
BOOTSTRAP_SAMPLES = 2000


def z_quantile(confidence: float) -> float:
    """The standard normal's two-sided quantile, by bisection of erf (no scipy needed at run time)."""
    target = confidence
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n (Wilson 1927); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} is not between 0 and n={n}")
    z = z_quantile(confidence)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _stratified_means(strata: Sequence[np.ndarray], samples: int, seed: int) -> np.ndarray:
    """`samples` bootstrap replicates of the mean over strata of each stratum's mean (items resampled
    with replacement inside each stratum). Drawn in chunks so a 10,000-item task stays small in memory."""
    rng = np.random.default_rng(seed)
    total = np.zeros(samples)
    for values in strata:
        n = len(values)
        if n == 0:
            continue
        chunk = max(1, 2_000_000 // n)
        for start in range(0, samples, chunk):
            stop = min(samples, start + chunk)
            idx = rng.integers(0, n, size=(stop - start, n))
            total[start:stop] += values[idx].mean(axis=1)
    return total / max(1, sum(1 for v in strata if len(v)))


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(replicates, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_mean(strata: Mapping[str, Sequence[float]], confidence: float = 0.95,
                   samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean over strata of each stratum's mean, lower, upper): percentile bootstrap, items resampled within
    each stratum (a task, or a task and seed)."""
    arrays = [np.asarray(v, dtype=float) for v in strata.values() if len(v)]
    if not arrays:
        raise ValueError("bootstrap_mean: no items")
    point = float(np.mean([a.mean() for a in arrays]))
    lo, hi = _percentiles(_stratified_means(arrays, samples, seed), confidence)
    return point, lo, hi


@dataclass
class PairedDifference:
    """B minus A on the same items: the observed difference of averages and its paired bootstrap interval."""

    difference: float
    low: float
    high: float
    items: int
    method: str = "paired bootstrap"

    @property
    def significant(self) -> bool:
        """The interval excludes 0: the two differ by more than the sampling noise of these items."""
        return self.low > 0 or self.high < 0


def paired_bootstrap(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], confidence: float = 0.95,
                     samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> PairedDifference:
    """Difference (b - a) of the averages over strata, items resampled in pairs within each stratum.

    `a` and `b` map the same strata to per-item scores (1 right, 0 wrong) of the same items in the same order.
    """
    if set(a) != set(b):
        raise ValueError(f"paired_bootstrap: different strata ({sorted(set(a) ^ set(b))})")
    diffs = []
    for key in a:
        x, y = np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)
        if x.shape != y.shape:
            raise ValueError(f"paired_bootstrap: stratum {key!r} has {len(x)} items in one and {len(y)} in the other")
        diffs.append(y - x)
    arrays = [d for d in diffs if len(d)]
    if not arrays:
        raise ValueError("paired_bootstrap: no items")
    point = float(np.mean([d.mean() for d in arrays]))
    lo, hi = _percentiles(_stratified_means(arrays, samples, seed), confidence)
    return PairedDifference(point, lo, hi, sum(len(d) for d in arrays))


def mcnemar(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """Exact McNemar test of two methods on the same items: (only A right, only B right, two-sided p).

    Under the null hypothesis each discordant item is equally likely to favour either method, so the smaller
    count is Binomial(n_discordant, 1/2); p = min(1, 2 P[X <= smaller]).
    """
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"mcnemar: {len(x)} items against {len(y)}")
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return only_a, only_b, 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return only_a, only_b, min(1.0, 2 * tail)


def _average_moments(side: Mapping[Any, tuple[float, int]]) -> tuple[float, float]:
    """Mean over tasks of per-task accuracies, and its variance as a sum of binomial variances p(1-p)/n."""
    tasks = [(min(1.0, max(0.0, p)), n) for p, n in side.values() if n]  # an edited row may leave [0, 1]
    if not tasks:
        raise ValueError("no items")
    mean = sum(p for p, _ in tasks) / len(tasks)
    variance = sum(p * (1 - p) / n for p, n in tasks) / len(tasks) ** 2
    return mean, variance


def normal_average(counts: Mapping[Any, tuple[float, int]], confidence: float = 0.95) -> tuple[float, float, float]:
    """(average over tasks, lower, upper) from per-task (accuracy, items), by the normal approximation: for
    rows that kept no per-item records to bootstrap."""
    mean, variance = _average_moments(counts)
    half = z_quantile(confidence) * math.sqrt(variance)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def normal_difference(a: Mapping[Any, tuple[float, int]], b: Mapping[Any, tuple[float, int]],
                      confidence: float = 0.95) -> PairedDifference:
    """Unpaired interval of (average of b) - (average of a) from per-task (accuracy, items).

    Each per-task accuracy is a binomial proportion with variance p(1-p)/n; the average over T tasks has
    the sum of those over T^2; the two runs are treated as independent (no per-item records to pair), which
    overstates the noise of a difference between methods scored on the same items: a conservative check.
    """
    mean_a, var_a = _average_moments(a)
    mean_b, var_b = _average_moments(b)
    half = z_quantile(confidence) * math.sqrt(var_a + var_b)
    difference = mean_b - mean_a
    items = sum(n for _, n in b.values())
    return PairedDifference(difference, difference - half, difference + half, items, "unpaired normal")


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, lower, upper) over seeds: a Student-t interval of the mean (std and bounds NaN for
    one seed). Only the 95% level has the t table; other levels use the normal quantile."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not len(x):
        return math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    df = len(x) - 1
    t = _T975[df - 1] if abs(confidence - 0.95) < 1e-12 and df <= len(_T975) else z_quantile(confidence)
    half = t * std / math.sqrt(len(x))
    return mean, std, mean - half, mean + half
