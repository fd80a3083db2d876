"""`bench compare BASELINE CURRENT`: regressions of accuracy, memory and speed, for CI.

Trials are matched by (task, method, variant, seed). Each metric has a rule:
- accuracy: a regression when it drops by more than `accuracy_abs` (absolute) *and* the drop is
  significant: the 95% interval of the difference excludes 0. The interval is a paired bootstrap over the
  items both runs scored when both rows kept per-item records that reproduce their accuracies, else an
  unpaired normal interval from the per-task accuracies and item counts (older rows without records);
  a drop inside the sampling noise of the items is reported as `within noise`, a significant one within the
  tolerance as `within tolerance`, neither as a regression;
- exact memory accounting (state elements, weights, gradients, optimizer state): any increase, since
  these figures are deterministic;
- measured peaks (RSS, CUDA allocator, NVML): an increase by more than `peak_rel` (relative);
- speed: the step time *as a ratio to `full` in the same run* growing by more than `time_ratio_rel`
  (absolute times differ between machines; ratios measured in one run do not, much), judged per method
  (and variant) on the geometric mean over its trials (tasks and seeds): a slower method is slower on
  every task, while a busy neighbour on a shared CI machine slows one trial's steps (one task's ratio has
  been seen to move 2.6x between two quiet machines while the method's other task moved 1.3x).
A trial missing or failed in CURRENT that was ok in BASELINE is a regression too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from memft_bench.harness.core.errors import BenchError, ConfigError
from memft_bench.harness.core.options import build, option

KEY = ["task", "method", "variant", "seed"]
EXACT = ["trainable_params", "optimizer_state_elements", "mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb"]
PEAKS = ["peak_mem_rss_mb", "peak_mem_allocated_mb", "peak_mem_nvml_mb"]


@dataclass
class Tolerance:
    accuracy_abs: float = option(0.0, "allowed drop in accuracy (absolute), beyond which a significant drop "
                                 "is a regression", min=0.0)
    confidence: float = option(0.95, "level of the accuracy difference's interval", min=0.5, max=0.999)
    peak_rel: float = option(0.25, "allowed relative increase of a measured memory peak", min=0.0)
    time_ratio_rel: float = option(0.5, "allowed relative increase of step time / full's step time", min=0.0)
    exact_rel: float = option(0.0, "allowed relative increase of the exact memory accounting", min=0.0)


@dataclass
class Finding:
    trial: str
    metric: str
    baseline: Any
    current: Any
    verdict: str  # "regression", "better", "same", "within noise", "within tolerance"
    interval: str = ""  # accuracy: the difference and its interval


@dataclass
class Comparison:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. the two runs were measured on different stacks

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "regression"]


def load_tolerance(path: Path | None) -> Tolerance:
    if path is None:
        return Tolerance()
    if not path.is_file():
        raise ConfigError(f"--tolerance {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return build(Tolerance, data, str(path))


def _frame(path: Path) -> pd.DataFrame:
    from memft_bench.harness.results.rows import load_frame, results_path

    if not results_path(path).is_file():
        raise BenchError(f"{path}: no results here (give a run directory or a results.jsonl file)")
    from memft_bench.harness.analysis.tuning_report import split_phases

    frame, _ = split_phases(load_frame([path]))  # a tuned run's final rows; its search is not a result
    if frame.empty:
        raise BenchError(f"{path}: the results file has no rows")
    if "variant" not in frame.columns:
        frame["variant"] = None
    frame["variant"] = frame["variant"].fillna("")
    return frame


def _time_ratio(frame: pd.DataFrame) -> pd.Series:
    """Step time over `full`'s step time on the same task and seed, in the same run."""
    full = frame[(frame["method"] == "full") & (frame["status"] == "ok")].set_index(["task", "seed"])
    ratios = []
    for _, row in frame.iterrows():
        key = (row["task"], row["seed"])
        base = full["step_time_ms_median"].get(key) if key in full.index else None
        value = row["step_time_ms_median"]
        ratios.append(value / base if base and value else None)
    return pd.Series(ratios, index=frame.index, dtype="float64")


def compare(baseline: pd.DataFrame, current: pd.DataFrame, tol: Tolerance) -> Comparison:
    baseline = baseline.assign(time_ratio=_time_ratio(baseline))
    current = current.assign(time_ratio=_time_ratio(current))
    cur = {tuple(r[k] for k in KEY): r for _, r in current.iterrows()}
    result = Comparison()
    for _, base in baseline.iterrows():
        key = tuple(base[k] for k in KEY)
        name = "/".join(str(k) for k in key if k != "")
        if base["status"] != "ok":
            continue  # nothing to hold the current run to
        now = cur.get(key)
        if now is None:
            result.findings.append(Finding(name, "trial", "ok", "missing", "regression"))
            continue
        if now["status"] != "ok":
            result.findings.append(Finding(name, "status", "ok", f"{now['status']}: {now['reason']}", "regression"))
            continue
        result.findings.append(_accuracy(name, base, now, tol))
        for metric in EXACT:
            result.findings.append(_check(name, metric, base[metric], now[metric],
                                          lambda b, c: c > b * (1 + tol.exact_rel) + 1e-9))
        for metric in PEAKS:
            result.findings.append(_check(name, metric, base[metric], now[metric],
                                          lambda b, c: c > b * (1 + tol.peak_rel)))
    result.findings.extend(_speed(baseline, current, tol))
    return Comparison([f for f in result.findings if f is not None], stack_notes(baseline, current))


def stack_notes(baseline: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """A note (never a regression) when the runs were measured with different package versions: a
    difference in figures may then be the libraries', not the code's."""
    from memft_bench.harness.analysis.stack_records import mixed_versions, recorded_stack
    from memft_bench.harness.measure.stack import stack_changes

    if "env" not in baseline.columns or "env" not in current.columns:
        return []
    notes = []
    changes = stack_changes(recorded_stack(baseline["env"]), recorded_stack(current["env"]))
    if changes:
        notes.append(f"note: the two runs were measured on different stacks ({len(changes)} package(s)): "
                     + ", ".join(changes))
    for label, frame in (("baseline", baseline), ("current", current)):
        mixed = mixed_versions(frame["env"])
        if mixed:
            notes.append(f"note: the {label} run's rows were measured on more than one stack: " + "; ".join(mixed))
    base_heap, now_heap = (" / ".join(sorted(heap_policies(f["env"]))) or "not recorded" for f in (baseline, current))
    if base_heap != now_heap:
        notes.append(f"note: the two runs' CPU trials ran under different heap policies (env.cpu_heap: baseline "
                     f"{base_heap}; current {now_heap}): their peak RSS and step times are not comparable")
    return notes


def heap_policies(envs: pd.Series) -> set[str]:
    """The glibc heap policies the CPU rows of a run recorded (`harness/measure/glibc_heap.py`); empty when none
    did (GPU rows, or rows from before the policy)."""
    return {env["cpu_heap"] for env in envs if isinstance(env, dict) and env.get("cpu_heap")}


def _speed(baseline: pd.DataFrame, current: pd.DataFrame, tol: Tolerance) -> list[Finding | None]:
    """Per method (and variant): the geometric means of step time / full over the trials ok in both runs."""
    both = baseline[baseline["status"] == "ok"].merge(
        current[current["status"] == "ok"], on=KEY, suffixes=("_base", "_now"))
    both = both.dropna(subset=["time_ratio_base", "time_ratio_now"])
    both = both[(both["time_ratio_base"] > 0) & (both["time_ratio_now"] > 0)]
    findings: list[Finding | None] = []
    for (method, variant), group in both.groupby(["method", "variant"], sort=False):
        base = math.exp(sum(math.log(v) for v in group["time_ratio_base"]) / len(group))
        now = math.exp(sum(math.log(v) for v in group["time_ratio_now"]) / len(group))
        name = f"{method}/{variant}" if variant else str(method)
        metric = "step_time / full" + (f" (geomean of {len(group)} trials)" if len(group) > 1 else "")
        findings.append(_check(name, metric, base, now, lambda b, c: c > b * (1 + tol.time_ratio_rel)))
    return findings


def _accuracy(name: str, base: pd.Series, now: pd.Series, tol: Tolerance) -> Finding | None:
    """Accuracy: a regression only when the drop is beyond the tolerance and outside the noise."""
    from memft_bench.harness.analysis.uncertainty import row_difference

    finding = _check(name, "accuracy", base["accuracy"], now["accuracy"],
                     lambda b, c: c < b - tol.accuracy_abs - 1e-12, higher_is_better=True)
    if finding is None or _missing(finding.current):
        return finding
    difference = row_difference(base.to_dict(), now.to_dict(), tol.confidence)
    if difference is None:
        return finding
    finding.interval = (f"{difference.difference:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}] "
                        f"{difference.method}")
    if float(finding.current) < float(finding.baseline):  # every drop is listed, with its interval
        if not difference.high < 0:
            finding.verdict = "within noise"
        elif finding.verdict != "regression":
            finding.verdict = "within tolerance"
    return finding


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check(name: str, metric: str, base: Any, now: Any, worse, higher_is_better: bool = False) -> Finding | None:
    if _missing(base):
        return None  # the meter did not apply in the baseline
    if _missing(now):
        return Finding(name, metric, base, None, "regression")
    if worse(float(base), float(now)):
        verdict = "regression"
    elif float(now) == float(base):
        verdict = "same"
    else:
        verdict = "better" if (float(now) > float(base)) == higher_is_better else "same"
    return Finding(name, metric, base, now, verdict)


def render(comparison: Comparison, show_all: bool = False) -> str:
    rows = [f for f in comparison.findings if show_all or f.verdict != "same"]
    lines = [f"{len(comparison.regressions)} regression(s) in {len(comparison.findings)} checks", *comparison.notes,
             ""]
    if rows:
        table = pd.DataFrame([{"trial": f.trial, "metric": f.metric, "baseline": _fmt(f.baseline),
                               "current": _fmt(f.current), "verdict": f.verdict.upper() if f.verdict == "regression"
                               else f.verdict, "difference [95% interval]": f.interval or ""} for f in rows])
        if not table["difference [95% interval]"].any():
            table = table.drop(columns="difference [95% interval]")
        lines.append(table.to_markdown(index=False))
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return "–" if value is None else str(value)


def run_compare(baseline: Path, current: Path, tolerance: Path | None) -> Comparison:
    return compare(_frame(baseline), _frame(current), load_tolerance(tolerance))
