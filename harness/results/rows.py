"""Result rows: the schema, atomic appends to `results.jsonl`, and reading them back.

One JSON object per trial, one line each. A row is written with a single `write` on a file opened
for appending, then flushed and fsync'ed, so a crash leaves at most a torn last line (no newline);
`bench run` moves such a fragment aside when it resumes, and the trial runs again. Any other line
that is not a row (a damaged file, an edit gone wrong) is named with its line number by every reader,
and `bench run` refuses to append to such a file until it is fixed. A failed append (a full disk, a
read-only directory) is undone, so the rows before it stay intact. `pandas.read_json(path,
lines=True)` reads a file back, and `load_frame` does the same with these checks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"

STATUSES = ("ok", "oom", "diverged", "error", "timeout")


class ResultsWarning(UserWarning):
    """A results file line that is not a row; the CLI prints it as one `bench: warning:` line."""


@dataclass
class Scan:
    """A results file read line by line: the rows, the numbers of the lines that are not rows, and whether
    the last line is torn (a write that never finished: no newline)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    corrupt_lines: list[int] = field(default_factory=list)
    torn_line: int | None = None
    reasons: dict[int, str] = field(default_factory=dict)  # line -> why it is not a row

#: The columns every row has, in report order. Null where a meter does not apply.
COLUMNS = [
    "run_id", "trial_id", "suite", "task", "method", "variant", "method_params", "model", "seed", "device",
    "precision", "dtype", "gradient_checkpointing",
    "status", "reason",
    "steps", "time_budget_s", "batch_size", "micro_batch_size", "cutoff_len", "tokens_seen", "target_tokens_seen",
    "forward_passes_per_step",
    "accuracy", "accuracy_per_task", "eval_items", "predictions", "accuracy_before", "accuracy_per_task_before",
    "data_source", "task_family", "scoring",
    # tuning (harness/run/tuning.py): "search" rows score the validation split only, "final" rows the tests
    "phase", "tuning", "validation_accuracy", "validation_loss", "validation_items",
    "loss_first", "loss_last", "loss_curve", "step_time_ms_curve",
    "trainable_params", "optimizer_state_elements", "state_elements", "state_bytes",
    "mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb", "mem_other_mb",
    "peak_mem_rss_mb", "peak_mem_rss_eval_mb",
    "peak_mem_allocated_mb", "peak_mem_reserved_mb", "peak_mem_allocated_eval_mb",
    "peak_mem_nvml_mb", "peak_mem_nvml_process_mb", "peak_mem_nvml_eval_mb",
    # the training peak predicted before training (harness/trial/predicted_peak.py) and the measured one it predicts
    "mem_predicted_peak_mb", "peak_mem_training_mb", "mem_prediction_error_pct",
    # CPU: the non-tensor memory the first step brought (library code, threads), left out of peak_mem_training_mb
    "mem_cpu_library_pages_mb",
    "step_time_ms_median", "step_time_ms_p90", "tokens_per_s", "train_time_s", "eval_time_s",
    "method_metrics", "method_info", "meter_notes",
    "started_at", "finished_at", "command", "env",
    "node", "slurm_job_id",  # where a Slurm job ran the trial (null for local runs)
]


#: What a readable row's columns hold (null is always allowed but for the identity columns): a line that
#: parses as JSON but breaks this is damaged too, and is named, not fed to the report's arithmetic.
IDENTITY = ("trial_id", "method", "task", "status")
#: A tuned run's two kinds of trial: the search (validation split only) and the final (the tests).
PHASES = ("search", "final")
NUMBERS = ("seed", "steps", "time_budget_s", "batch_size", "micro_batch_size", "cutoff_len", "tokens_seen",
           "target_tokens_seen", "forward_passes_per_step", "accuracy",
           "accuracy_before", "loss_first", "loss_last", "trainable_params", "optimizer_state_elements",
           "mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb", "mem_other_mb", "peak_mem_rss_mb",
           "peak_mem_rss_eval_mb", "peak_mem_allocated_mb", "peak_mem_reserved_mb", "peak_mem_allocated_eval_mb",
           "peak_mem_nvml_mb", "peak_mem_nvml_process_mb", "peak_mem_nvml_eval_mb", "mem_predicted_peak_mb",
           "peak_mem_training_mb", "mem_prediction_error_pct", "mem_cpu_library_pages_mb", "step_time_ms_median",
           "step_time_ms_p90", "tokens_per_s", "train_time_s", "eval_time_s", "validation_accuracy",
           "validation_loss", "validation_items")
TEXTS = ("run_id", "suite", "variant", "model", "device", "precision", "dtype", "reason", "data_source", "task_family",
         "phase", "started_at", "finished_at", "command", "node", "slurm_job_id", "predictions")
MAPPINGS = ("method_params", "accuracy_per_task", "eval_items", "accuracy_per_task_before", "state_elements",
            "method_metrics", "method_info", "meter_notes", "env", "state_bytes", "scoring", "tuning")


def method_label(method: str, variant: str | None) -> str:
    """`lora[r=4]` for a swept variant, `lora` without one: how trial ids, logs and the console name it."""
    return f"{method}[{variant}]" if variant else method


def trial_label(task: str, method: str, variant: str | None, seed: int) -> str:
    """`task/method[variant]/seedN`: a trial's name, the start of its id."""
    return f"{task}/{method_label(method, variant)}/seed{seed}"


def row_problem(row: Any) -> str | None:
    """Why a parsed line is not a row, or None."""
    if not isinstance(row, dict):
        return "not a JSON object"
    for column in IDENTITY:
        if not isinstance(row.get(column), str):
            return f"{column} is not a string"
    if not isinstance(row.get("seed"), int) or isinstance(row["seed"], bool):
        return "seed is not an integer"
    if row["status"] not in STATUSES:
        return f"status {row['status']!r} is not one of {', '.join(STATUSES)}"
    for columns, kinds, what in ((NUMBERS, (int, float), "a number"), (TEXTS, (str,), "a string"),
                                 (MAPPINGS, (dict,), "an object")):
        for column in columns:
            value = row.get(column)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and kinds != (str,)):
                return f"{column} is not {what}"
    for curve in ("loss_curve", "step_time_ms_curve"):
        if row.get(curve) is not None and not isinstance(row[curve], list):
            return f"{curve} is not a list"
    if row.get("phase") not in (None, *PHASES):
        return f"phase {row['phase']!r} is not one of {', '.join(PHASES)}"
    if row["status"] == "ok" and row.get("phase") == "search" and row.get("validation_accuracy") is None:
        return "an ok search row without a validation accuracy"
    if row["status"] == "ok" and row.get("phase") != "search" and row.get("accuracy") is None:
        return "an ok row without an accuracy"
    for column in ("accuracy_per_task", "accuracy_per_task_before", "eval_items"):
        values = (row.get(column) or {}).values()
        if any(v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)) for v in values):
            return f"{column} holds a value that is not a number"
    return None


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
    """Append one row as one line, durably (flush + fsync). If the write fails (ENOSPC, EROFS, ...), the file
    is cut back to its length before, so no half row is left behind, and the OSError is raised."""
    data = (json.dumps(_clean(row), sort_keys=False) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab", buffering=0) as f:  # unbuffered: a failure is raised here, not at close
        size = f.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
            os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                f.truncate(size)
            raise


def scan_rows(path: Path) -> Scan:
    """Every line of a results file, classified. A line that does not parse as a JSON object is corrupt,
    except a last line without its newline, which is torn."""
    scan = Scan()
    if not path.exists():
        return scan
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    tail = lines.pop()  # after the last newline: b"" for a complete file, a fragment for a torn one
    if tail.strip():
        lines.append(tail)
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            problem = row_problem(row)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            row, problem = None, "not JSON"
        if problem is None:
            scan.rows.append(row)
        elif problem == "not JSON" and tail.strip() and lineno == len(lines):
            scan.torn_line = lineno
        else:
            scan.corrupt_lines.append(lineno)
            scan.reasons[lineno] = problem
    return scan


def describe_damage(path: Path, scan: Scan) -> list[str]:
    """One line per problem of a scanned file, naming the file and line."""
    problems = [f"{path}:{n}: corrupt line ({scan.reasons.get(n, 'not a row')}); left out of what is read"
                for n in scan.corrupt_lines]
    if scan.torn_line is not None:
        problems.append(f"{path}:{scan.torn_line}: torn last line (a write that never finished); ignored")
    return problems


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a results file; each line that is not a row is named in a ResultsWarning.

    When a trial has several rows (a retried failure), the last one wins.
    """
    scan = scan_rows(path)
    for problem in describe_damage(path, scan):
        warnings.warn(problem, ResultsWarning, stacklevel=2)
    by_trial: dict[str, dict[str, Any]] = {}
    for index, row in enumerate(scan.rows):
        by_trial[str(row.get("trial_id", f"row{index}"))] = row
    return list(by_trial.values())


def repair_torn_tail(path: Path, scan: Scan) -> Path | None:
    """Move a torn last line out of the way before appending (an append would glue the next row onto it):
    the fragment goes to `results.jsonl.torn`, and the file is cut at its last newline."""
    if scan.torn_line is None:
        return None
    with open(path, "rb+") as f:
        data = f.read()
        cut = data.rfind(b"\n") + 1
        aside = path.with_name(path.name + ".torn")
        with open(aside, "ab") as out:
            out.write(data[cut:] + b"\n")
        f.truncate(cut)
    return aside


def results_path(path: str | Path) -> Path:
    """Accept a run directory or a results file."""
    p = Path(path)
    return p / RESULTS_FILE if p.is_dir() else p


def load_frame(paths: list[str | Path]):
    """A pandas DataFrame of the rows of one or more run directories / results files."""
    import pandas as pd

    # source_dir: the run directory a row came from, where its per-item records (`predictions`) lie
    rows = [{**row, "source_dir": str(results_path(p).parent)} for p in paths for row in read_rows(results_path(p))]
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    return frame
