"""Run a sweep's trials as Slurm jobs through `submitit`: one job per trial, or one job array for many.

Each job runs `run_trial_job` on its node, which starts the same entry point as a local run,
`python -m memft_bench.harness.trial SPEC ROW`, with the same timeout and failure rows, and leaves the trial's row
in `DIR/slurm/trials/<trial>-<nonce>/row.json` with the Slurm job id and node added. The jobs never
touch `results.jsonl`: the `bench run` that holds the directory's lock collects their rows and appends
them, so rows stay one per trial. This needs a filesystem that the submitting host and the nodes share
(`--out`, the model cache and the Python environment), as every Slurm sweep does.

`DIR/slurm/jobs.jsonl` is the ledger of submissions (submitted, collected, withdrawn), which is how a
`bench run` after `--detach`, or after the submitting one was stopped, finds the jobs still in flight
instead of submitting their trials twice. A job that Slurm ends before its trial writes a row (time
limit, preemption without requeue, node failure, scancel, its memory limit) becomes a failure row whose
reason names the job, its node and Slurm's state; `--retry-failed` resubmits it. Preemption: submitit
requeues a job that Slurm signals ahead of preemption (the trial then starts again from the beginning).

Job states come from `sacct`, and from `scontrol show job` where accounting storage is disabled
(one-node test clusters), which lists a job for `MinJobAge` seconds after it ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memft_bench.harness.core.errors import BenchError, ConfigError
from memft_bench.harness.run.slurm_ledger import ledger_add, ledger_in_flight
from memft_bench.harness.run.trial_process import (
    Finished,
    Show,
    TrialProcess,
    failure_row,
    last_progress_line,
    log_name,
)
from memft_bench.harness.spec.slurm_settings import SlurmSpec

COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
POLL_S = 3.0

#: Slurm's end states with the row status and reason a job in that state gets when it wrote no row.
ENDED: dict[str, tuple[str, str]] = {
    "TIMEOUT": ("timeout", "reached its Slurm time limit (slurm.time_min)"),
    "PREEMPTED": ("error", "was preempted and not requeued"),
    "NODE_FAIL": ("error", "ended by a node failure"),
    "CANCELLED": ("error", "was cancelled (scancel, or an administrator)"),
    "OUT_OF_MEMORY": ("oom", "exceeded its Slurm memory limit (slurm.mem)"),
    "BOOT_FAIL": ("error", "ended because its node failed to boot"),
    "DEADLINE": ("error", "reached its Slurm deadline"),
    "FAILED": ("error", "failed before its trial wrote a row (see the submitit log)"),
    "COMPLETED": ("error", "completed without writing a row"),
    "REVOKED": ("error", "was revoked by Slurm"),
    "SPECIAL_EXIT": ("error", "ended in SPECIAL_EXIT"),
}


def submitit_parameters(spec: SlurmSpec, job_name: str, timeout_s: float | None) -> dict[str, Any]:
    """`SlurmExecutor.update_parameters` keywords for these settings."""
    time_min = spec.time_min or (math.ceil(timeout_s / 60) + 5 if timeout_s else 60)
    params: dict[str, Any] = {"job_name": job_name, "time": time_min, "cpus_per_task": spec.cpus_per_trial,
                              "stderr_to_stdout": True}
    optional = {"partition": spec.partition, "mem": spec.mem, "account": spec.account, "qos": spec.qos,
                "gpus_per_node": spec.gpus_per_trial or None, "array_parallelism": spec.max_jobs,
                "setup": spec.setup or None}
    params.update({k: v for k, v in optional.items() if v is not None})
    extra: dict[str, Any] = {}
    for arg in spec.sbatch_args:
        name, sep, value = arg[2:].partition("=")
        extra[name] = value if sep else True
    if extra:
        params["additional_parameters"] = extra
    return params


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no output)"


def preflight(spec: SlurmSpec, timeout_s: float | None) -> None:
    """Refuse settings Slurm would refuse, before anything is submitted: the commands, the partition, and
    `sbatch --test-only` of the job script submitit would submit (account, QOS, memory, GPUs, time)."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'memft-bench[slurm]'") from None
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        raise ConfigError(f"--executor slurm: Slurm commands not found on PATH ({', '.join(missing)}); run on a "
                          "host with Slurm's client tools, or use the local executor")
    listing = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    if listing.returncode != 0:
        raise ConfigError(f"--executor slurm: sinfo failed: {_first_line(listing.stderr)}")
    partitions = sorted(set(listing.stdout.split()))
    if spec.partition is not None and spec.partition not in partitions:
        raise ConfigError(f"slurm.partition: no partition {spec.partition!r} on this cluster; it has: "
                          f"{', '.join(partitions) or '(none)'}")
    from submitit.slurm.slurm import _make_sbatch_string

    with tempfile.TemporaryDirectory(prefix="bench-sbatch-") as tmp:
        script = Path(tmp) / "check.sh"
        params = submitit_parameters(spec, "bench-check", timeout_s)
        script.write_text(_make_sbatch_string(command="true", folder=tmp, **params), encoding="utf-8")
        check = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        message = " ".join(line.strip() for line in check.stderr.strip().splitlines()[:2])
        raise ConfigError(f"--executor slurm: Slurm refuses these settings: {message}")


# -- the ledger of submissions -------------------------------------------------------------------------


# -- job states -------------------------------------------------------------------------------------------

def _expand_array(job_id: str, task_ids: str) -> list[str]:
    """`4`, `0-3%2`, `1,3-5` -> the array task job ids `4_0`, ..."""
    out = []
    for part in task_ids.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            out += [f"{job_id}_{i}" for i in range(int(low), int(high or low) + 1)]
    return out


def parse_scontrol(text: str) -> dict[str, dict[str, str]]:
    """`scontrol show job -o` output -> job id (array tasks as `12_3`) -> {"State", "NodeList"}."""
    states: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "JobId" not in fields:
            continue
        info = {"State": fields.get("JobState", "UNKNOWN"), "NodeList": fields.get("NodeList", "")}
        states[fields["JobId"]] = info
        if fields.get("ArrayJobId") and fields.get("ArrayTaskId"):
            for key in _expand_array(fields["ArrayJobId"], fields["ArrayTaskId"]):
                states[key] = info
    return states


def job_states(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """job id (`12` or `12_3`) -> {"State", "NodeList"}, from sacct (parsed by submitit), else scontrol."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    bases = sorted({j.split("_")[0] for j in job_ids})
    command = ["sacct", "-o", "JobID,State,NodeList", "--parsable2", *(a for b in bases for a in ("-j", b))]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    states: dict[str, dict[str, str]] = {}
    if out is not None and out.returncode == 0:
        states = SlurmInfoWatcher().read_info(out.stdout)
    missing = [j for j in job_ids if j not in states]
    if missing:
        listing = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=60)
        fallback = parse_scontrol(listing.stdout)
        states.update({j: fallback[j] for j in missing if j in fallback})
    return {j: {"State": (states.get(j, {}).get("State") or "UNKNOWN").split()[0].upper(),
                "NodeList": states.get(j, {}).get("NodeList", "")} for j in job_ids}


# -- inside the job -----------------------------------------------------------------------------------

def run_trial_job(spec_path: str, row_path: str, log_path: str, timeout_s: float | None) -> str:
    """What a Slurm job runs: the trial's own entry point, as locally, then its row with job id and node.

    The trial uses the job's CPUs as its threads. When submitit signals the time limit, the trial is killed
    and the row says `timeout`; on preemption submitit requeues the job (the trial is killed, no row).
    """
    import socket

    from submitit import JobEnvironment
    from submitit.core.utils import UncompletedJobError

    from memft_bench.harness.core.records_io import write_json_atomic

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    env = {"OMP_NUM_THREADS": cpus, "MKL_NUM_THREADS": cpus} if cpus and "OMP_NUM_THREADS" not in os.environ else {}
    job_id = JobEnvironment().job_id
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    own_row = Path(row_path).with_name("trial-row.json")
    process = TrialProcess(spec, Path(spec_path), own_row, Path(log_path), timeout_s, env)
    try:
        row = process.wait()
        if process.child.returncode == -signal.SIGTERM and not own_row.is_file():
            # Slurm sends SIGTERM to every process of a job it ends (scancel, preemption, node drain): write no
            # row here, so the collector reads the reason from the job's state.
            raise RuntimeError("the trial received SIGTERM: Slurm is ending this job")
    except UncompletedJobError:  # submitit's signal ahead of the time limit: the job will not be requeued
        process.kill()
        row = failure_row(spec, "timeout", f"slurm job {job_id} on {node} reached its Slurm time limit "
                          "(slurm.time_min) and the trial was stopped", log_path, process.started)
    row.update(slurm_job_id=job_id, node=node)
    write_json_atomic(Path(row_path), row)
    return str(row["status"])


# -- the executor ---------------------------------------------------------------------------------------

@dataclass
class WatchedJob:
    trial: Any
    entry: dict[str, Any]
    t0: float
    ended_seen: int = 0
    state: str = "PENDING"


class SlurmExecutor:
    """Submits the trials as Slurm jobs and collects their rows; with `detach`, returns after submitting."""

    #: trials run on the cluster's nodes, not where `bench run` runs: the pre-flight's fit check does not apply
    runs_here = False

    def __init__(self, spec: SlurmSpec, detach: bool = False) -> None:
        self.spec, self.detach = spec, detach
        self.in_flight = 0
        self.submitted = 0

    def describe(self) -> str:
        return f" as Slurm jobs (partition {self.spec.partition or 'default'})"

    def summary(self) -> str | None:
        """What the CLI says after `rows()` when jobs are still running (after --detach)."""
        if not self.in_flight:
            return None
        return (f"{self.in_flight} trial(s) are Slurm jobs still in flight ({self.submitted} submitted now); "
                "run the same command again to collect their rows")

    def rows(self, todo: list[Any], out_dir: Path, timeout_s: float | None, show: Show) -> Iterator[Finished]:
        in_flight = ledger_in_flight(out_dir)
        watched = {in_flight[t.trial_id]["job_id"]: WatchedJob(t, in_flight[t.trial_id], time.monotonic())
                   for t in todo if t.trial_id in in_flight}
        new = [t for t in todo if t.trial_id not in in_flight]
        mine: list[str] = []
        try:
            if watched:
                yield from self._collect(out_dir, watched, passes=2)
            if new:
                for job_id, entry in self._submit(new, out_dir, timeout_s):
                    watched[job_id] = WatchedJob(entry.pop("trial"), entry, time.monotonic())
                    mine.append(job_id)
            self.submitted = len(mine)
            if self.detach:
                self.in_flight = len(watched)
                return
            waiting_since = time.monotonic()
            while watched:
                show(self._status(watched))
                # every 3 s at first, then less often (at most every 30 s): sacct queries load the cluster
                time.sleep(min(30.0, max(POLL_S, (time.monotonic() - waiting_since) / 10)))
                yield from self._collect(out_dir, watched)
        except BaseException:  # Ctrl-C, SIGTERM or an error: cancel what this run submitted
            self._withdraw(out_dir, {j: w for j, w in watched.items() if j in mine})
            raise

    def _submit(self, trials: list[Any], out_dir: Path, timeout_s: float | None) -> list[tuple[str, dict[str, Any]]]:
        import submitit

        folder = (out_dir / "slurm" / "submitit").resolve()
        executor = submitit.SlurmExecutor(folder=folder / "%j")
        executor.update_parameters(**submitit_parameters(self.spec, f"bench-{out_dir.name}", timeout_s))
        entries = []
        with self._submission_errors(), executor.batch():
            for trial in trials:
                name = log_name(trial)[: -len(".log")]
                work = (out_dir / "slurm" / "trials" / f"{name}-{uuid.uuid4().hex[:8]}").resolve()
                work.mkdir(parents=True)
                log = (out_dir / "logs" / log_name(trial)).resolve()
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text("submitted to Slurm; waiting for a node\n", encoding="utf-8")
                (work / "spec.json").write_text(json.dumps(trial.spec), encoding="utf-8")
                job = executor.submit(run_trial_job, str(work / "spec.json"), str(work / "row.json"), str(log),
                                      timeout_s)
                entries.append((job, {"trial": trial, "trial_id": trial.trial_id, "row": str(work / "row.json"),
                                      "log": str(log), "submitted_at": time.time()}))
        out = []
        for job, entry in entries:
            entry["job_id"] = str(job.job_id)
            ledger_add(out_dir, "submitted", {k: v for k, v in entry.items() if k != "trial"})
            out.append((entry["job_id"], entry))
        return out

    @staticmethod
    @contextlib.contextmanager
    def _submission_errors() -> Iterator[None]:
        from submitit.core.utils import FailedSubmissionError

        try:
            yield
        except (FailedSubmissionError, subprocess.CalledProcessError) as exc:
            raise BenchError(f"sbatch refused the submission: {_first_line(str(exc))}") from None

    def _collect(self, out_dir: Path, watched: dict[str, WatchedJob], passes: int = 1) -> Iterator[Finished]:
        """Rows of the watched jobs that ended; an ended job with no row must be seen ended twice (a row
        written just before the job ended may take a moment to appear on a network filesystem)."""
        for index in range(passes):
            if index:
                time.sleep(1.0)
            states = job_states(list(watched))
            for job_id, item in list(watched.items()):
                state, node = states[job_id]["State"], states[job_id]["NodeList"]
                item.state = state
                row_path = Path(item.entry["row"])
                if row_path.is_file():
                    row = json.loads(row_path.read_text(encoding="utf-8"))
                elif state in ENDED or state == "UNKNOWN":
                    item.ended_seen += 1
                    if item.ended_seen < 2:
                        continue
                    row = self.ended_row(item, job_id, state, node)
                else:
                    item.ended_seen = 0
                    continue
                row.setdefault("slurm_job_id", job_id)
                del watched[job_id]
                yield item.trial, row, time.monotonic() - item.t0
                # after the runner appended the row: a crash in between leaves the job `submitted` in the
                # ledger, and the next run collects the same row file again rather than losing the row
                ledger_add(out_dir, "collected", {"trial_id": item.trial.trial_id, "job_id": job_id})

    @staticmethod
    def ended_row(item: WatchedJob, job_id: str, state: str, node: str) -> dict[str, Any]:
        if state == "UNKNOWN":
            status, what = "error", "is no longer known to Slurm (sacct has no record) and wrote no row"
        else:
            status, what = ENDED[state]
        where = f" on {node}" if node and node not in ("None", "(null)") else ""
        reason = f"slurm job {job_id}{where} {what} (state {state}); --retry-failed resubmits it"
        started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(item.entry.get("submitted_at", time.time())))
        return failure_row(item.trial.spec, status, reason, item.entry["log"], started, slurm_job_id=job_id,
                           node=node or None)

    def _withdraw(self, out_dir: Path, jobs: dict[str, WatchedJob]) -> None:
        """Cancel these jobs and mark them withdrawn, so the next run submits their trials again."""
        if not jobs:
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=60)
        for job_id, item in jobs.items():
            ledger_add(out_dir, "withdrawn", {"trial_id": item.trial.trial_id, "job_id": job_id})

    def _status(self, watched: dict[str, WatchedJob]) -> str:
        running = [(job_id, item) for job_id, item in sorted(watched.items()) if item.state == "RUNNING"]
        parts = [f"slurm: {len(running)} running, {len(watched) - len(running)} waiting"]
        for job_id, item in running:
            line = last_progress_line(Path(item.entry["log"]))
            parts.append(f"{item.trial.label} [{job_id}]" + (f": {line}" if line else ""))
        return " | ".join(parts)
