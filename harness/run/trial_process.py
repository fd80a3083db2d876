"""One trial's process, as the parent sees it: `python -m memft_bench.harness.trial SPEC ROW` started in
its own session with its output in `DIR/logs/<trial>.log`, watched without blocking, killed past its
timeout, and turned into a failure row when it ends without writing its own. Every executor (local and
Slurm) starts and reads trials through this module, so a trial's statuses mean the same wherever it ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memft_bench.harness.core.records_io import now
from memft_bench.harness.measure.glibc_heap import heap_environment
from memft_bench.harness.results.rows import empty_row, method_label

if TYPE_CHECKING:
    from memft_bench.harness.run.planning import Trial


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
        if str(spec.get("device", "")).startswith("cpu"):  # glibc's heap policy from the first allocation
            child_env.update(heap_environment())
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
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".trial-"))
    process = TrialProcess(trial.spec, tmp / "spec.json", tmp / "row.json", out_dir / "logs" / log_name(trial),
                           timeout_s, env)
    return process, tmp


def signal_reason(returncode: int) -> tuple[str, str]:
    """Status and reason of a trial process that ended without writing its row."""
    if returncode < 0:
        number = -returncode
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        if number == signal.SIGKILL:
            # The kernel's OOM killer sends SIGKILL, but so can a user or a scheduler: say both.
            return "error", f"trial process killed by {name} (if nobody sent it, the kernel's out-of-memory killer)"
        return "error", f"trial process killed by {name}"
    return "error", f"trial process exited with code {returncode} without writing a result"


def log_name(trial: Trial) -> str:
    name = f"{trial.task}__{method_label(trial.method, trial.variant)}__seed{trial.seed}.log"
    return "".join(c if c.isalnum() or c in "._-[]=," else "_" for c in name)


def last_progress_line(log_path: Path) -> str | None:
    """The trial log's latest `step ...` or `evaluated ...` line, for the progress bar."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(("step ", "evaluated ")):
            return line.strip()
    return None
