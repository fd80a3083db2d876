"""Per-item records: what a trial predicted for every test item, in `DIR/predictions/<trial>.jsonl`.

One JSON object per line and item: `trial_id`, `task` (the test set), `index` (the item's index in its
test file, so the same item has the same index in every trial and run), `answer` (the gold answer),
`prediction` (the extracted answer, "" when none could be read), `correct`, and what the prediction came
from: the option `scores` (summed log-probabilities, loglik mode) or the generated `output` text. A
trial's per-task accuracy is the mean of `correct` over its task's lines, so any later analysis (intervals,
paired tests, error analysis) needs no re-run. The file is written whole and atomically (temp + fsync +
rename) after evaluation: it is either complete or absent. No torch here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DIRECTORY = "predictions"


def file_name(trial_id: str) -> str:
    """`<task>__<method>__seed<N>__<fingerprint>.jsonl` from a trial id (unique within a run directory)."""
    name = "__".join(str(trial_id).split("/")) + ".jsonl"
    return "".join(c if c.isalnum() or c in "._-[]=," else "_" for c in name)


def relative_path(trial_id: str) -> str:
    """Where a trial's records lie, relative to its run directory (the row's `predictions` field)."""
    return f"{DIRECTORY}/{file_name(trial_id)}"


def item_lines(trial_id: str, task: str, indices: list[int], records: list[Mapping[str, Any]],
               details: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The lines of one test set: each item's identity and gold answer joined with what was predicted."""
    if not len(indices) == len(records) == len(details):
        raise ValueError(f"{task}: {len(indices)} indices, {len(records)} records, {len(details)} predictions")
    return [{"trial_id": trial_id, "task": task, "index": int(i), "answer": r.get("answer"), **d}
            for i, r, d in zip(indices, records, details)]


def write(path: Path, lines: Iterable[Mapping[str, Any]]) -> None:
    """Write every line at once, atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # trials at once may write the same shared file
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def correctness(path: Path) -> dict[str, dict[int, float]]:
    """task -> {item index: 1.0 right / 0.0 wrong} of one predictions file; ValueError naming the first line
    that is not a record."""
    out: dict[str, dict[int, float]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                out.setdefault(str(line["task"]), {})[int(line["index"])] = 1.0 if line["correct"] else 0.0
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ValueError(f"{path}:{number}: not a prediction record") from None
    return out


def _unusable(problem: str) -> None:
    """Name a damaged predictions file (a `bench: warning:` line in the CLI): the comparison then falls back
    to unpaired intervals, and the reader must know why."""
    import warnings

    from memft_bench.harness.results.rows import ResultsWarning

    warnings.warn(f"{problem}; its row's items are not paired", ResultsWarning, stacklevel=3)


def for_row(row: Mapping[str, Any]) -> dict[str, dict[int, float]] | None:
    """The per-item correctness of a result row, or None when the row kept no (readable) records, or they do
    not reproduce the row's per-task accuracies (a file from another trial, an edited row): a comparison must
    never pair items that are not what the row reports."""
    rel, run_dir = row.get("predictions"), row.get("source_dir")
    if not isinstance(rel, str) or not isinstance(run_dir, str):
        return None
    path = Path(run_dir) / rel
    try:
        items = correctness(path)
    except OSError as exc:
        return _unusable(f"{path}: cannot read it ({exc.strerror})")
    except ValueError as exc:
        return _unusable(str(exc))
    per_task = row.get("accuracy_per_task")
    if not isinstance(per_task, dict) or set(per_task) != set(items):
        return _unusable(f"{path}: its tasks do not match its row's")
    for task, accuracy in per_task.items():
        values = list(items[task].values())
        if accuracy is None or not values or abs(sum(values) / len(values) - float(accuracy)) > 1e-9:
            return _unusable(f"{path}: its {task} items do not reproduce its row's accuracy")
    overall = row.get("accuracy")
    if overall is not None and abs(sum(per_task.values()) / len(per_task) - float(overall)) > 1e-9:
        return _unusable(f"{path}: its row's accuracy is not the mean of its per-task accuracies")
    return items
