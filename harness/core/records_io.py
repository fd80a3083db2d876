"""Two small helpers that the runner, the executors and the trial worker all need: a timestamp and an
atomic JSON write. They live apart from `harness/trial/worker.py` so the parent process never imports the worker
module (and torch's import-time machinery with it) for them."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any


def now() -> str:
    """The current UTC time, ISO 8601 to the second: rows' started_at / finished_at."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` so a reader never sees half a file: a private temporary file, synced, then renamed over
    `path` (concurrent trials may write the same file, hence the pid in the temporary name)."""
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
