"""A result row as one tracked run: its tags, parameters, step series and final metrics.

Every tracker logs the same `TrackedRun`, built here from the row alone, so MLflow, TensorBoard and W&B hold
the same figures under the same names, and the names are the row's own columns (`accuracy`,
`peak_mem_rss_mb`, `state_bytes/exp_avg`, ...): a reader compares a tracked run with its row key by key.

- tags (strings): the trial's identity (suite, task, method, variant, seed, trial id), its outcome, the
  commit and the environment it ran in (`env.*`, flattened from the row's `env`);
- parameters: the method's options (`method_params`), as the trial validated them;
- step series: the loss curve and each step's wall time, at the steps the row kept (every step up to 200
  steps, then every `steps // 200`-th: the worker subsamples both so); their median and 90th percentile are
  final metrics like the rest;
- final metrics: every numeric column (accuracy, each memory meter, the exact accounting, throughput and
  times), the per-key mappings (`accuracy/<task>`, `state_bytes/<key>`, `method_metrics/<key>`, ...), and
  the accuracy's 95% interval from `core/stats.py`, as the report computes it without per-item records:
  Wilson's per task, the normal approximation over the per-task counts for the average (the report's
  bootstrap needs the per-item records, which a tracker does not read).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from memft_bench.harness.core.stats import normal_average, wilson
from memft_bench.harness.results.rows import NUMBERS, trial_label

#: Mapping columns logged key by key as `<column>/<key>` (accuracy per task, items per task, state by key).
MAPPED = {"accuracy_per_task": "accuracy", "accuracy_per_task_before": "accuracy_before",
          "eval_items": "eval_items", "state_elements": "state_elements", "state_bytes": "state_bytes",
          "method_metrics": "method_metrics"}
#: Step series: metric name -> the row column that holds it, one value per kept step.
SERIES = {"loss": "loss_curve", "step_time_ms": "step_time_ms_curve"}
#: Row columns recorded as tags, besides the environment (strings; null ones are left out).
TAG_COLUMNS = ("run_id", "trial_id", "suite", "task", "method", "variant", "seed", "status", "reason", "model",
               "device", "precision", "dtype", "gradient_checkpointing", "data_source", "predictions", "command",
               "started_at", "finished_at", "node", "slurm_job_id")
CONFIDENCE = 0.95
TAG_LIMIT = 5000  # MLflow keeps tag values up to 8000 characters, older servers 5000


@dataclass
class TrackedRun:
    """What every tracker logs for one row."""

    key: str  # the row's identity: the ledgers' key, so the same row is logged once
    trial_id: str
    name: str  # task/method[variant]/seedN, as the console names the trial
    ok: bool
    steps: int  # training steps completed: the step of the final metrics
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    metrics: dict[str, float | int] = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def labels(self) -> list[str]:
        """Short `key:value` labels for trackers whose tags are a list (W&B: 64 characters each)."""
        keys = ("suite", "task", "method", "variant", "seed", "status")
        return [f"{k}:{self.tags[k]}"[:64] for k in keys if self.tags.get(k)]


def row_key(row: dict[str, Any]) -> str:
    """A row's identity: its trial id and when it started and finished. A trial run again (--retry-failed)
    has a new row, so a new key; the same row read back from results.jsonl has the same key."""
    text = json.dumps([row.get("trial_id"), row.get("started_at"), row.get("finished_at")])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def metric_name(*parts: object) -> str:
    """Names every tracker accepts: letters, digits and `_-./ `, parts joined by `/`."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(p)) for p in parts)


def number(value: Any) -> float | int | None:
    """A finite int or float (bools and NaN left out: trackers store neither as a figure)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def text(value: Any) -> str:
    """A tag or parameter value: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def accuracy_intervals(row: dict[str, Any]) -> dict[str, float]:
    """95% intervals: each test set's (Wilson) and the average's (normal, from per-task accuracy and items)."""
    per_task, items = row.get("accuracy_per_task") or {}, row.get("eval_items") or {}
    counted = {t: (p, int(items[t])) for t, p in per_task.items()
               if number(p) is not None and number(items.get(t)) is not None and items[t] > 0}
    out: dict[str, float] = {}
    for task, (p, n) in counted.items():
        out[metric_name("accuracy", task, "ci_low")], out[metric_name("accuracy", task, "ci_high")] = \
            wilson(round(p * n), n, CONFIDENCE)
    if counted and len(counted) == len(per_task) and number(row.get("accuracy")) is not None:
        _, out["accuracy_ci_low"], out["accuracy_ci_high"] = normal_average(counted, CONFIDENCE)
    return out


def flatten(prefix: str, data: Any) -> dict[str, str]:
    """`env.packages.torch`-style tags from nested data; nulls left out."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(f"{prefix}.{key}", value))
        return out
    return {} if data is None else {prefix: text(data)[:TAG_LIMIT]}


def tags_of(row: dict[str, Any]) -> dict[str, str]:
    tags = {c: text(row[c])[:TAG_LIMIT] for c in TAG_COLUMNS if row.get(c) is not None}
    tags.setdefault("variant", "")
    env = row.get("env") or {}
    tags["commit"] = str(env.get("git_commit") or "")
    tags.update(flatten("env", env))
    for column in ("method_info", "meter_notes"):
        tags.update(flatten(column, row.get(column) or {}))
    return tags


def series_of(row: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Each series at the steps its values came from (the worker keeps every `max(1, steps // 200)`-th)."""
    out = {}
    for name, column in SERIES.items():
        values = row.get(column) or []
        stride = max(1, int(row.get("steps") or len(values)) // 200)
        points = [(i * stride, v) for i, v in enumerate(values) if number(v) is not None]
        if points:
            out[name] = points
    return out


def metrics_of(row: dict[str, Any]) -> dict[str, float | int]:
    metrics: dict[str, float | int] = {}
    for column in NUMBERS:
        value = number(row.get(column))
        if column != "seed" and value is not None:
            metrics[column] = value
    for column, prefix in MAPPED.items():
        for key, value in (row.get(column) or {}).items():
            if number(value) is not None:
                metrics[metric_name(prefix, key)] = number(value)  # type: ignore[assignment]
    metrics.update(accuracy_intervals(row))
    return metrics


def tracked_run(row: dict[str, Any]) -> TrackedRun:
    return TrackedRun(
        key=row_key(row), trial_id=row["trial_id"], ok=row.get("status") == "ok",
        name=trial_label(row["task"], row["method"], row.get("variant"), row["seed"]),
        steps=int(row.get("steps") or 0), tags=tags_of(row), params=dict(row.get("method_params") or {}),
        series=series_of(row), metrics=metrics_of(row), started_at=row.get("started_at"),
        finished_at=row.get("finished_at"),
    )
