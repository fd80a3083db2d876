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

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memft_bench.harness.errors import ConfigError
from memft_bench.harness.records_io import now
from memft_bench.harness.results import empty_row

#: What every executor yields: the trial, its row, and the wall-clock seconds it took from start to row.
Finished = tuple[Any, dict[str, Any], float]
Show = Callable[[str], None]

PROGRESS_EVERY_S = 2.0


def failure_row(spec: dict[str, Any], status: str, reason: str, log_path: Path | str, started: str,
                **extra: Any) -> dict[str, Any]:
    """The row of a trial that ended without writing its own (killed, timed out, ended by Slurm)."""
    return empty_row(
        run_id=spec["run_id"], trial_id=spec["trial_id"], suite=spec["suite"]["name"], task=spec["task"],
        method=spec["method"], variant=spec.get("variant") or None, method_params=spec["method_params"],
        seed=spec["seed"], device=spec["device"], command=spec.get("command"),
        status=status, reason=f"{reason}; log: {log_path}", started_at=started, finished_at=now(), **extra,
    )


class TrialProcess:
    """One running `python -m memft_bench.harness.trial SPEC ROW`, watched without blocking.

    `poll()` returns None while the trial runs, then its row: the one the trial wrote, or a failure row
    when the process died without writing one or ran past `timeout_s` (then its process group is killed).
    """

    def __init__(self, spec: dict[str, Any], spec_path: Path, result_path: Path, log_path: Path,
                 timeout_s: float | None = None, env: dict[str, str] | None = None) -> None:
        self.spec, self.result_path, self.log_path, self.timeout_s = spec, result_path, log_path, timeout_s
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        child_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
        child_env.update(env or {})
        child_env["BENCH_RUNNER_PID"] = str(os.getpid())  # the trial dies with this process (PR_SET_PDEATHSIG)
        self.started = now()
        self.t0 = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w", encoding="utf-8") as log:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "memft_bench.harness.trial", str(spec_path), str(result_path)],
                stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True,
            )
        self._last_progress = 0.0
        self.progress_line: str | None = None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.t0

    def poll(self) -> dict[str, Any] | None:
        from memft_bench.harness.runner import signal_reason

        returncode = self.child.poll()
        if returncode is None:
            if self.timeout_s is not None and self.seconds >= self.timeout_s:
                self.kill()
                return self._row_or("timeout", f"trial exceeded trial_timeout_s={self.timeout_s:g} and was stopped")
            return None
        return self._row_or(*signal_reason(returncode))

    def wait(self, on_progress: Show | None = None, interval: float = 0.2) -> dict[str, Any]:
        """Block until the trial ends (its row), reporting progress lines; the child is killed if interrupted."""
        try:
            while (row := self.poll()) is None:
                self.report(on_progress)
                time.sleep(interval)
            return row
        except BaseException:
            self.kill()
            raise

    def report(self, on_progress: Show | None) -> None:
        """Refresh `progress_line` from the log (every 2 s) and pass it on."""
        from memft_bench.harness.runner import last_progress_line

        if time.monotonic() - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = time.monotonic()
        self.progress_line = last_progress_line(self.log_path) or self.progress_line
        if on_progress and self.progress_line:
            on_progress(self.progress_line)

    def kill(self) -> None:
        """Kill the trial's whole process group (it runs in its own session) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child.pid, signal.SIGKILL)
        self.child.wait()

    def _row_or(self, status: str, reason: str) -> dict[str, Any]:
        if self.result_path.is_file():
            return json.loads(self.result_path.read_text(encoding="utf-8"))
        return failure_row(self.spec, status, reason, self.log_path, self.started)


def start_local(trial: Any, out_dir: Path, timeout_s: float | None,
                env: dict[str, str] | None = None) -> tuple[TrialProcess, Path]:
    """Start `trial` with its spec and row in a private directory under `out_dir` (the caller removes it)."""
    from memft_bench.harness.runner import log_name

    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".trial-"))
    process = TrialProcess(trial.spec, tmp / "spec.json", tmp / "row.json", out_dir / "logs" / log_name(trial),
                           timeout_s, env)
    return process, tmp


@dataclass
class Slot:
    """Where one trial at a time runs: its name for the progress bar and the environment it adds."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


def device_slots(devices: list[str]) -> list[Slot]:
    """One slot per GPU of `--devices 0,1,...`, indices as torch numbers the visible GPUs.

    Under an inherited CUDA_VISIBLE_DEVICES, index i is the i-th GPU it lists, so `--devices 0,1` inside
    `CUDA_VISIBLE_DEVICES=2,3` runs on GPUs 2 and 3, as `--device cuda:0`/`cuda:1` would.
    """
    import torch

    if len(set(devices)) != len(devices):
        raise ConfigError(f"--devices {','.join(devices)}: a GPU is listed twice")
    if not all(d.isdigit() for d in devices):
        raise ConfigError(f"--devices {','.join(devices)}: expected GPU indices such as 0,1,2,3")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError("--devices: no CUDA GPU is visible to torch (use --jobs N to run trials at once on the CPU)")
    bad = [d for d in devices if int(d) >= count]
    if bad:
        raise ConfigError(f"--devices {','.join(devices)}: torch sees {count} GPU(s), 0 to {count - 1}")
    inherited = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    physical = [inherited[int(d)] if inherited else d for d in devices]
    return [Slot(f"gpu{p}", {"CUDA_VISIBLE_DEVICES": p}) for p in physical]


def cpu_slots(jobs: int) -> list[Slot]:
    """`jobs` CPU slots, each with an equal share of the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(max(1, cores // jobs))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return [Slot(f"cpu{i}", dict(env)) for i in range(jobs)]


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
        from memft_bench.harness.slurm import refuse_if_jobs_in_flight

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
