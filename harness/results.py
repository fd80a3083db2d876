"""Result rows: the schema, atomic appends to `results.jsonl`, and reading them back.

One JSON object per trial, one line each. A row is written with a single `write` on a file opened
for appending, then flushed and fsync'ed, so a crash leaves at most a torn last line; the reader
skips such a line with a warning and the trial runs again on resume. `pandas.read_json(path,
lines=True)` reads a file back, and `load_frame` does the same with the torn-line check.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"

STATUSES = ("ok", "oom", "diverged", "error", "timeout")

#: The columns every row has, in report order. Null where a meter does not apply.
COLUMNS = [
    "run_id", "trial_id", "suite", "task", "method", "variant", "method_params", "model", "seed", "device",
    "precision", "dtype",
    "status", "reason",
    "steps", "batch_size", "tokens_seen", "target_tokens_seen", "forward_passes_per_step",
    "accuracy", "accuracy_per_task", "eval_items", "accuracy_before", "accuracy_per_task_before", "data_source",
    "loss_first", "loss_last", "loss_curve",
    "trainable_params", "optimizer_state_elements", "state_elements", "state_bytes",
    "mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb", "mem_other_mb",
    "peak_mem_rss_mb", "peak_mem_rss_eval_mb",
    "peak_mem_allocated_mb", "peak_mem_reserved_mb", "peak_mem_allocated_eval_mb",
    "peak_mem_nvml_mb", "peak_mem_nvml_process_mb", "peak_mem_nvml_eval_mb",
    "step_time_ms_median", "step_time_ms_p90", "tokens_per_s", "train_time_s", "eval_time_s",
    "method_metrics", "method_info", "meter_notes",
    "started_at", "finished_at", "command", "env",
]


def empty_row(**known: Any) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(known)
    return row


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row as one line, durably (flush + fsync)."""
    line = json.dumps(_clean(row), sort_keys=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a results file; a torn or corrupt line is skipped with a warning.

    When a trial has several rows (a retried failure), the last one wins.
    """
    if not path.exists():
        return []
    by_trial: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
            except ValueError:
                warnings.warn(f"{path}:{lineno}: ignoring an incomplete or corrupt row", stacklevel=2)
                continue
            by_trial[str(row.get("trial_id", f"line{lineno}"))] = row
    return list(by_trial.values())


def results_path(path: str | Path) -> Path:
    """Accept a run directory or a results file."""
    p = Path(path)
    return p / RESULTS_FILE if p.is_dir() else p


def load_frame(paths: list[str | Path]):
    """A pandas DataFrame of the rows of one or more run directories / results files."""
    import pandas as pd

    rows = [row for p in paths for row in read_rows(results_path(p))]
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    return frame
