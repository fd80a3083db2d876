"""Where a run's trials execute: in local processes, one at a time or several at once.

Every trial runs the same entry point, `python -m memft_bench.harness.trial SPEC ROW`, in its own process (own
session, output to `DIR/logs/<trial>.log`), whichever executor starts it; the runner alone appends
rows to `results.jsonl`, so rows stay one per trial and appends stay atomic however many trials are
in flight. An executor's `rows()` yields `(trial, row, seconds)` as trials finish. A local executor
with several slots runs one trial per slot: one per GPU (`--devices 0,1`: each trial process sees
only its GPU through `CUDA_VISIBLE_DEVICES`, so the trial's device is `cuda:0` and the trial id is
the same whichever GPU it lands on), or N CPU trials at once (`--jobs N`) with the cores split
between them (`OMP_NUM_THREADS`), so they do not fight over the cores. Ctrl-C, SIGTERM or an error
in the runner kills every trial in flight and writes no row for them (they run again on resume).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memft_bench.harness.run.devices import Slot
from memft_bench.harness.run.trial_process import Finished, Show, TrialProcess, start_local


class LocalExecutor:
    """Runs trials in local processes, as many at once as it has slots (one slot: one after another)."""

    def __init__(self, slots: list[Slot] | None = None) -> None:
        self.slots = slots or [Slot("local")]

    def describe(self) -> str:
        if len(self.slots) == 1:
            return ""
        return f" ({len(self.slots)} at once: {', '.join(s.name for s in self.slots)})"

    def summary(self) -> str | None:
        return None  # every trial it started has its row

    def rows(self, todo: list[Any], out_dir: Path, timeout_s: float | None, show: Show) -> Iterator[Finished]:
        from memft_bench.harness.run.slurm_ledger import refuse_if_jobs_in_flight

        refuse_if_jobs_in_flight(out_dir, todo)
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        waiting = list(todo)
        running: dict[int, tuple[Any, TrialProcess, Path]] = {}
        shown = ""
        try:
            while waiting or running:
                for index, slot in enumerate(self.slots):
                    if index not in running and waiting:
                        trial = waiting.pop(0)
                        process, tmp = start_local(trial, out_dir, timeout_s, slot.env)
                        running[index] = (trial, process, tmp)
                for index, (trial, process, tmp) in list(running.items()):
                    row = process.poll()
                    if row is None:
                        process.report(None)
                        continue
                    del running[index]
                    shutil.rmtree(tmp, ignore_errors=True)
                    yield trial, row, process.seconds
                status = self._status(running)
                if status != shown:
                    show(status)
                    shown = status
                if running:
                    time.sleep(0.2)
        finally:  # Ctrl-C, SIGTERM, or the consumer stopped: nothing may outlive the run
            for _trial, process, tmp in running.values():
                process.kill()
                shutil.rmtree(tmp, ignore_errors=True)

    def _status(self, running: dict[int, tuple[Any, TrialProcess, Path]]) -> str:
        parts = []
        for index, (trial, process, _tmp) in sorted(running.items()):
            where = f"[{self.slots[index].name}] " if len(self.slots) > 1 else ""
            line = f": {process.progress_line}" if process.progress_line else ""
            parts.append(f"{where}{trial.label}{line}")
        return " | ".join(parts)
