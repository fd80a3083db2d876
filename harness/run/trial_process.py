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


def planned_columns(spec: dict[str, Any]) -> dict[str, Any]:
    """The model and budget columns of a trial, from its spec, as the trial's own row records them: a row the
    trial never wrote (refused by the pre-flight, killed, timed out) still sits on its sweep's axes (batch,
    length, checkpointing), which is where out-of-memory rows matter. Checkpointing is None where it does not
    apply (a method that never runs a backward pass), as in the trial's own row."""
    from memft_bench.harness.spec.config import suite_from_data
    from memft_bench.methods.base import backpropagates

    try:
        suite = suite_from_data(spec["suite"], "trial spec")
    except Exception:  # the trial's own row says what is wrong with its spec
        return {}
    budget = suite.budget
    checkpointing: bool | None = budget.gradient_checkpointing
    if checkpointing and not backpropagates(spec["method"]):
        checkpointing = None
    return {"model": suite.model.label, "precision": suite.model.precision, "batch_size": budget.batch_size,
            "time_budget_s": budget.time_s or None, "micro_batch_size": budget.micro_batch_size,
            "cutoff_len": budget.cutoff_len, "gradient_checkpointing": checkpointing}


def failure_row(spec: dict[str, Any], status: str, reason: str, log_path: Path | str, started: str,
                **extra: Any) -> dict[str, Any]:
    """The row of a trial that ended without writing its own (killed, timed out, ended by Slurm)."""
    return empty_row(
        run_id=spec["run_id"], trial_id=spec["trial_id"], suite=spec["suite"]["name"], task=spec["task"],
        method=spec["method"], variant=spec.get("variant") or None, method_params=spec["method_params"],
        seed=spec["seed"], device=spec["device"], command=spec.get("command"), **planned_columns(spec),
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
        self.rss_max = 0  # the child's resident set, sampled at each poll: all a kernel-killed trial leaves
        self.killed_here = False
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
            self.rss_max = max(self.rss_max, resident_bytes(self.child.pid))
            return None
        status, reason = signal_reason(returncode)
        if returncode == -signal.SIGKILL and not self.killed_here and not self.result_path.is_file():
            status, reason = killed_reason(self.rss_max, memory_limit_bytes(), read_training_started(self.result_path))
        return self._row_or(status, reason)

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
        self.killed_here = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child.pid, signal.SIGKILL)
        self.child.wait()

    def _row_or(self, status: str, reason: str) -> dict[str, Any]:
        if self.result_path.is_file():
            return json.loads(self.result_path.read_text(encoding="utf-8"))
        started = read_training_started(self.result_path)  # the prediction the trial made before it died
        extra = {"mem_predicted_peak_mb": started["mem_predicted_peak_mb"]} if started else {}
        return failure_row(self.spec, status, reason, self.log_path, self.started, **extra)


def training_started_path(result_path: Path | str) -> Path:
    """Where a trial writes, as training starts, what a row it never writes should still carry
    (`worker.write_training_started`): its predicted peak and its idle baseline."""
    return Path(f"{result_path}.training")


def read_training_started(result_path: Path | str) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(training_started_path(result_path).read_text(encoding="utf-8"))
    return None


def resident_bytes(pid: int) -> int:
    """A process's resident set now (0 when it cannot be read: the process is gone)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return 0


def memory_limit_bytes() -> int:
    """The memory this process's trials may use before the kernel's out-of-memory killer acts: the machine's
    MemTotal, or its cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) where that is lower."""
    import psutil

    limits = [int(psutil.virtual_memory().total)]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = Path(path).read_text(encoding="utf-8").strip()
            if text != "max" and int(text) < 2**60:
                limits.append(int(text))
    return min(limits)


#: A SIGKILL nobody here sent, after the trial's resident set came this close to the memory limit, is taken as
#: the kernel's out-of-memory killer (the set is sampled every 0.2 s, so its last figure is below the real one).
OOM_KILL_SHARE = 0.8


def killed_reason(rss_max: int, limit: int | None, started: dict[str, Any] | None) -> tuple[str, str]:
    """Status and reason of a trial killed by SIGKILL that this process did not send: `oom` when its sampled
    resident set reached `OOM_KILL_SHARE` of the memory limit, with how far off its prediction was (what
    training needed at least: the last sample less its idle baseline); else `error`, saying both causes."""
    mib = 2**20
    near_limit = bool(limit) and rss_max >= OOM_KILL_SHARE * limit
    if near_limit:
        reason = (f"trial process killed by SIGKILL, by the kernel's out-of-memory killer as far as can be told: its "
                  f"resident set reached at least {rss_max / mib:.0f} MiB of the {limit / mib:.0f} MiB allowed")
    else:
        reason = "trial process killed by SIGKILL (if nobody sent it, the kernel's out-of-memory killer)" + (
            f"; its resident set reached at least {rss_max / mib:.0f} MiB" if rss_max else "")
    predicted = (started or {}).get("mem_predicted_peak_mb")
    idle = (started or {}).get("cpu_idle_non_tensor_mb")
    if predicted is not None and rss_max and idle is not None:
        needed = rss_max / mib - idle
        reason += f"; predicted training peak {predicted:.0f} MiB, at least {needed:.0f} MiB needed when last sampled"
        if needed > predicted:
            short = needed - predicted
            reason += f": the prediction was at least {short:.0f} MiB ({100 * short / needed:.0f} %) short"
    elif predicted is not None:
        reason += f"; predicted training peak {predicted:.0f} MiB"
    return ("oom" if near_limit else "error"), reason


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
