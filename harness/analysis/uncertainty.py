"""How sure the accuracies of a set of result rows are: intervals, paired differences, ties (for reports).

From the rows (and, where the rows kept them, their per-item records in `DIR/predictions/`):

- per task and method: the Wilson interval of the accuracy (one seed), or mean ± std over seeds with a
  Student-t interval over seeds (several seeds);
- the average over tasks: a bootstrap interval resampling items within each task (one seed; a normal
  interval from per-task counts when a row kept no per-item records), or the t interval over seeds;
- each method against a reference (`full` unless told otherwise): the difference of averages with a paired
  bootstrap interval over the items both were scored on, an exact McNemar test per task, and whether the
  difference is significant (its interval excludes 0);
- a ranking by average accuracy that says which methods are tied (no significant paired difference).

Rows are grouped by the report's method name (`lora (r=4)` for a swept variant); several seeds of a method
are strata of their own in the bootstraps, paired seed by seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from memft_bench.harness.core import stats
from memft_bench.harness.results import predictions

Items = dict[str, dict[int, float]]  # test set -> item index -> 1.0 right / 0.0 wrong


@dataclass
class MethodAccuracy:
    """Everything the report says about one method's accuracy."""

    name: str
    per_task: dict[str, tuple[float, int]]  # task -> (mean accuracy over seeds, items per seed)
    per_task_interval: dict[str, tuple[float, float]]
    per_task_std: dict[str, float]
    average: float
    average_interval: tuple[float, float]
    average_std: float
    seeds: int
    interval_kind: str  # how average_interval was computed


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    ok = frame[frame["status"] == "ok"].copy()
    if "variant" not in ok.columns:
        ok["variant"] = None
    ok["variant"] = ok["variant"].fillna("").astype(str)
    ok["name"] = [m + (f" ({v})" if v else "") for m, v in zip(ok["method"], ok["variant"])]
    return ok


def _counts(row: pd.Series) -> dict[str, tuple[float, int]]:
    """test set -> (accuracy, items) of one row (a commonsense row scores 8 test sets, a tiny row one)."""
    per = row.get("accuracy_per_task")
    items = row.get("eval_items")
    if isinstance(per, dict) and per:
        return {t: (float(a), int((items or {}).get(t) or 0) if isinstance(items, dict) else 0)
                for t, a in per.items() if a is not None}
    n = sum(items.values()) if isinstance(items, dict) else 0
    return {str(row["task"]): (float(row["accuracy"]), int(n))}


def collect(frame: pd.DataFrame) -> dict[str, dict[int, tuple[dict[str, tuple[float, int]], Items | None]]]:
    """name -> seed -> (per-task counts, per-item correctness or None), merged over the name's rows."""
    out: dict[str, dict[int, tuple[dict[str, tuple[float, int]], Items | None]]] = {}
    for _, row in _ok(frame).iterrows():
        seeds = out.setdefault(row["name"], {})
        counts, items = seeds.get(int(row["seed"]), ({}, {}))
        counts = {**counts, **_counts(row)}
        found = predictions.for_row(row.to_dict())
        items = None if items is None or found is None else {**items, **found}
        seeds[int(row["seed"])] = (counts, items)
    return out


def summarise_method(name: str, by_seed: dict[int, tuple[dict[str, tuple[float, int]], Items | None]],
                     confidence: float = 0.95) -> MethodAccuracy:
    tasks = sorted({t for counts, _ in by_seed.values() for t in counts})
    per_task, per_task_interval, per_task_std = {}, {}, {}
    for task in tasks:
        values = [counts[task] for counts, _ in by_seed.values() if task in counts]
        mean = sum(a for a, _ in values) / len(values)
        per_task[task] = (mean, values[0][1])
        if len(values) > 1:
            _, std, lo, hi = stats.seed_interval([a for a, _ in values], confidence)
            per_task_std[task] = std
        else:
            accuracy, n = values[0]
            lo, hi = stats.wilson(round(accuracy * n), n, confidence) if n else (math.nan, math.nan)
        per_task_interval[task] = (lo, hi)
    averages = [sum(a for a, _ in counts.values()) / len(counts) for counts, _ in by_seed.values()]
    if len(by_seed) > 1:
        average, std, lo, hi = stats.seed_interval(averages, confidence)
        kind = f"Student-t over {len(by_seed)} seeds"
    else:
        (counts, items), = by_seed.values()
        average, std = averages[0], math.nan
        if items:
            _, lo, hi = stats.bootstrap_mean({t: list(v.values()) for t, v in items.items()}, confidence)
            kind = "bootstrap over items"
        else:
            _, lo, hi = stats.normal_average(counts, confidence)
            kind = "normal, from per-task counts (no per-item records)"
    return MethodAccuracy(name, per_task, per_task_interval, per_task_std, average, (lo, hi), std,
                          len(by_seed), kind)


def accuracies(frame: pd.DataFrame, confidence: float = 0.95) -> dict[str, MethodAccuracy]:
    return {name: summarise_method(name, seeds, confidence) for name, seeds in collect(frame).items()}


@dataclass
class Comparison:
    """`name` against `reference` on the items both were scored on."""

    name: str
    reference: str
    difference: stats.PairedDifference
    mcnemar: dict[str, tuple[int, int, float]]  # task -> (only reference right, only name right, p)


def compare_methods(a: dict[int, tuple[dict, Items | None]], b: dict[int, tuple[dict, Items | None]],
                    confidence: float = 0.95) -> tuple[stats.PairedDifference, dict[str, tuple[int, int, float]]]:
    """b - a over the seeds and items both have: paired when both kept per-item records, else unpaired."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no common seed")
    paired_a, paired_b, tests = {}, {}, {}
    if all(a[s][1] and b[s][1] for s in seeds):
        for s in seeds:
            items_a, items_b = a[s][1], b[s][1]
            for task in sorted(set(items_a) & set(items_b)):
                common = sorted(set(items_a[task]) & set(items_b[task]))
                if common:
                    paired_a[(task, s)] = [items_a[task][i] for i in common]
                    paired_b[(task, s)] = [items_b[task][i] for i in common]
    if paired_a:
        difference = stats.paired_bootstrap(paired_a, paired_b, confidence)
        for task in sorted({t for t, _ in paired_a}):
            x = [v for (t, _), vs in paired_a.items() if t == task for v in vs]
            y = [v for (t, _), vs in paired_b.items() if t == task for v in vs]
            tests[task] = stats.mcnemar(x, y)
        return difference, tests
    counts_a = {(t, s): c for s in seeds for t, c in a[s][0].items() if t in b[s][0]}
    counts_b = {(t, s): c for s in seeds for t, c in b[s][0].items() if t in a[s][0]}
    return stats.normal_difference(counts_a, counts_b, confidence), tests


def against_reference(frame: pd.DataFrame, reference: str, confidence: float = 0.95,
                      data: dict | None = None) -> list[Comparison]:
    data = collect(frame) if data is None else data
    if reference not in data:
        return []
    out = []
    for name, seeds in data.items():
        if name == reference:
            continue
        try:
            difference, tests = compare_methods(data[reference], seeds, confidence)
        except ValueError:
            continue
        out.append(Comparison(name, reference, difference, tests))
    return out


def ranking(frame: pd.DataFrame, confidence: float = 0.95, data: dict | None = None,
            summary: dict[str, MethodAccuracy] | None = None) -> list[tuple[str, float, list[str]]]:
    """(name, average, names tied with it) from best to worst; tied: no significant paired difference."""
    data = collect(frame) if data is None else data
    summary = {n: summarise_method(n, seeds, confidence) for n, seeds in data.items()} if summary is None else summary
    names = sorted(summary, key=lambda n: -summary[n].average)
    ties: dict[str, list[str]] = {name: [] for name in names}
    for i, name in enumerate(names):
        for other in names[i + 1:]:  # significance is symmetric: one bootstrap per pair
            try:
                difference, _ = compare_methods(data[name], data[other], confidence)
            except ValueError:
                continue
            if not difference.significant:
                ties[name].append(other)
                ties[other].append(name)
    return [(name, summary[name].average, [n for n in names if n in ties[name]]) for name in names]


def row_difference(base: dict, now: dict, confidence: float = 0.95) -> stats.PairedDifference | None:
    """`now`'s accuracy minus `base`'s (two rows of one trial, e.g. a baseline run and a new one) with its
    interval: paired over their common items when both rows kept per-item records that reproduce their
    accuracies, else unpaired normal from per-task counts, centred on the rows' own accuracies (so a row whose
    records do not match it is judged by what it reports). None when neither is possible."""
    items_base, items_now = predictions.for_row(base), predictions.for_row(now)
    if items_base and items_now:
        a = {t: [items_base[t][i] for i in sorted(set(items_base[t]) & set(items_now.get(t, {})))]
             for t in items_base}
        b = {t: [items_now[t][i] for i in sorted(set(items_base[t]) & set(items_now.get(t, {})))]
             for t in items_base}
        if any(a.values()):
            return stats.paired_bootstrap({t: v for t, v in a.items() if v}, {t: v for t, v in b.items() if v},
                                          confidence)
    try:
        counts_base, counts_now = _counts(pd.Series(base)), _counts(pd.Series(now))
        if not all(n for _, n in counts_base.values()) or not all(n for _, n in counts_now.values()):
            return None
        spread = stats.normal_difference(counts_base, counts_now, confidence)
    except (TypeError, ValueError, KeyError):
        return None
    difference = float(now["accuracy"]) - float(base["accuracy"])
    half = spread.high - spread.difference
    return stats.PairedDifference(difference, difference - half, difference + half, spread.items, spread.method)


@dataclass
class Analysis:
    """Everything a report says about accuracy uncertainty, computed once (per-item records read once)."""

    accuracies: dict[str, MethodAccuracy]
    comparisons: list[Comparison]
    ranking: list[tuple[str, float, list[str]]]
    reference: str


def analyse(frame: pd.DataFrame, reference: str, confidence: float = 0.95) -> Analysis:
    data = collect(frame)
    summary = {name: summarise_method(name, seeds, confidence) for name, seeds in data.items()}
    return Analysis(summary, against_reference(frame, reference, confidence, data),
                    ranking(frame, confidence, data, summary), reference)
