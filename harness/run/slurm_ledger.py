"""The Slurm ledger, `DIR/slurm/jobs.jsonl`: every job a run submitted and how it ended, so a rerun can tell
which trials are still in flight on the cluster and refuses to start them a second time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.results.rows import append_row

LEDGER = Path("slurm") / "jobs.jsonl"


def ledger_in_flight(out_dir: Path) -> dict[str, dict[str, Any]]:
    """trial_id -> its latest submission, for the trials whose latest submission is neither collected nor
    withdrawn. The ledger's lines are events, not result rows: read with its own reader (a torn last line,
    from a crash while appending, is skipped)."""
    path = out_dir / LEDGER
    if not path.exists():
        return {}
    latest: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("trial_id"), str):
            latest[event["trial_id"]] = event
    return {trial_id: e for trial_id, e in latest.items() if e.get("event") == "submitted"}


def ledger_add(out_dir: Path, event: str, entry: dict[str, Any]) -> None:
    append_row(out_dir / LEDGER, {**entry, "event": event, "at": time.time()})


def refuse_if_jobs_in_flight(out_dir: Path, todo: list[Any]) -> None:
    """A local run must not run again a trial that a Slurm job is still running for this directory."""
    if not (out_dir / LEDGER).exists():
        return
    in_flight = ledger_in_flight(out_dir)
    busy = [t for t in todo if t.trial_id in in_flight]
    if busy:
        jobs = ", ".join(in_flight[t.trial_id]["job_id"] for t in busy[:5])
        raise BenchError(f"{out_dir}: {len(busy)} of these trials are Slurm jobs still in flight ({jobs}); collect "
                         "them with `bench run --executor slurm` on the same --out, or scancel them first")
