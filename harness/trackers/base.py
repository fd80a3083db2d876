"""What a tracker implements, and the ledger that remembers which rows it logged.

A tracker is told about rows one at a time, after the runner appended them, and about the report once it
is written. It imports its library only in `start()`, so choosing one costs nothing until it logs. The
ledger, `DIR/trackers/<name>.jsonl`, gets one line per row after the tracker logged that row, so a resumed
sweep (or a crash between the append and the log) logs each row exactly once; a small state file beside it,
`DIR/trackers/<name>.json`, keeps what the sweep's later runs must find again (MLflow's parent run, the W&B
group).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memft_bench.harness.core.records_io import now, write_json_atomic
from memft_bench.harness.trackers.records import TrackedRun

TRACKERS_DIR = "trackers"


class Tracker:
    """One tracking tool for one sweep (one run directory)."""

    name = ""

    def __init__(self, out_dir: Path, suite: str) -> None:
        self.out_dir = out_dir
        self.suite = suite

    def start(self) -> None:
        """Import the library and reach the store: a tracker that cannot fails here, before any row."""

    def log(self, run: TrackedRun, attempt: int) -> str:
        """Log one row as one run; returns where it went (a run id, a directory). `attempt` counts the rows of
        the same trial logged before this one (a trial run again by --retry-failed)."""
        raise NotImplementedError

    def log_report(self, files: list[Path]) -> None:
        """The sweep's report and figures, as artifacts of the run that stands for the sweep (a tool without
        one, TensorBoard, logs nothing)."""

    def finish(self) -> None:
        """The sweep is over (its report was logged, or there is none)."""

    @property
    def destination(self) -> str:
        """Where the runs go, when not this tool's default place for the run directory ("" for that): a
        tracking URI, a log directory, a W&B project. The ledger and state are kept per destination, so a
        sweep sent somewhere new logs every row there, instead of finding them logged already elsewhere."""
        return ""

    @property
    def file_stem(self) -> str:
        if not self.destination:
            return self.name
        return f"{self.name}-{hashlib.sha256(self.destination.encode()).hexdigest()[:8]}"

    @property
    def ledger_file(self) -> Path:
        return self.out_dir / TRACKERS_DIR / f"{self.file_stem}.jsonl"

    @property
    def state_file(self) -> Path:
        return self.out_dir / TRACKERS_DIR / f"{self.file_stem}.json"

    def read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, state: dict[str, Any]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_file, state)


class Ledger:
    """The rows one tracker has logged, by row key, in `DIR/trackers/<tracker>.jsonl`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.logged: dict[str, str] = {}  # row key -> trial id
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.logged[str(entry["row"])] = str(entry["trial_id"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: that row was not confirmed, so it is logged again

    def __contains__(self, key: str) -> bool:
        return key in self.logged

    def attempts(self, trial_id: str) -> int:
        return sum(1 for t in self.logged.values() if t == trial_id)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def add(self, run: TrackedRun, where: str) -> None:
        """One line, flushed and synced: only a row whose line is complete counts as logged."""
        line = json.dumps({"row": run.key, "trial_id": run.trial_id, "run": where, "logged_at": now()}) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as f:
            if f.tell() and not self._ends_with_newline():
                line = "\n" + line  # after a torn line, on a line of its own
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.logged[run.key] = run.trial_id


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Tracking libraries warn about their own deprecations; none of it concerns a benchmark's user."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
