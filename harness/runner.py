"""Plan the trials of a run and execute each one in its own process, resumably.

A run is (suite, methods, seeds) -> one trial per task x method x seed. Each trial has an id made of
its names and a fingerprint of everything that determines its result (model, task, budget,
evaluation, method options, seed, device), so rerunning the same command skips what is recorded and
changing any option makes a new trial instead of silently reusing an old one. Rows are appended to
`DIR/results.jsonl` as each trial ends, so an interrupted run loses at most the trial in flight.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memft_bench.harness.config import SuiteSpec, fingerprint
from memft_bench.harness.errors import BenchError, ConfigError
from memft_bench.harness.records_io import now
from memft_bench.harness.results import (
    RESULTS_FILE,
    append_row,
    describe_damage,
    empty_row,
    repair_torn_tail,
    scan_rows,
)

LOCK_FILE = ".lock"
FAILED_STATUSES = ("oom", "diverged", "error", "timeout")


@dataclass
class Trial:
    task: str
    method: str
    seed: int
    spec: dict[str, Any]
    variant: str = ""

    @property
    def trial_id(self) -> str:
        return self.spec["trial_id"]

    @property
    def label(self) -> str:
        method = f"{self.method}[{self.variant}]" if self.variant else self.method
        return f"{self.task}/{method}/seed{self.seed}"


@dataclass
class RunPlan:
    suite: SuiteSpec
    methods: list[str]
    out_dir: Path
    device: str
    trials: list[Trial] = field(default_factory=list)
    #: every (method, variant label, validated options) of the run, once: what the pre-flight checks.
    variants: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the plan resolved (state budgets), for the log


def resolve_device(device: str) -> str:
    """The device string every trial of a run uses: always indexed on a GPU (`cuda:N`), so that
    `torch.cuda.set_device`, the allocator meters, NVML's handle and the row all name one GPU.

    `auto` -> `cuda:0` (the first GPU torch sees, after CUDA_VISIBLE_DEVICES) when one is visible, else
    `cpu`; `cuda` -> `cuda:0`; `cuda:N` is checked against the number of visible GPUs. Asking torch for the
    device count does not create a CUDA context in the runner, which would hold GPU memory for the whole
    sweep.
    """
    import torch

    text = device.strip().lower()
    if text == "auto":
        return "cuda:0" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"--device {device}: no CUDA GPU is visible to torch (use --device cpu or auto)")
    index = int(match.group(1) or 0)
    if index >= count:
        raise ConfigError(f"--device {device}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1} "
                          "(CUDA_VISIBLE_DEVICES renumbers them from 0)")
    return f"cuda:{index}"


def _method_module(name: str) -> str | None:
    """The module a child process must import to find `name` (None for built-ins and entry points)."""
    from memft_bench.methods.base import get_method_class, plugin_entry_points
    from memft_bench.methods.builtin import BUILTIN_METHODS

    cls = get_method_class(name)
    if name in BUILTIN_METHODS or name in plugin_entry_points():
        return None
    if cls.__module__ == "__main__":
        raise ConfigError(
            f"method {name!r} is registered in __main__; trials run in their own process, so define it in an "
            "importable module or publish it through the `bench.methods` entry-point group"
        )
    return cls.__module__


def plan(
    suite: SuiteSpec,
    methods: list[str],
    out_dir: Path,
    device: str,
    sweeps: dict[str, dict[str, list[Any]]] | None = None,
    command: str | None = None,
) -> RunPlan:
    """Validate every method, variant and option, then list the trials (task-major, as reports read)."""
    from memft_bench.harness import predictions
    from memft_bench.harness.budgets import resolve as resolve_budget
    from memft_bench.harness.options import to_dict
    from memft_bench.harness.sweeps import merge, variant_label, variants
    from memft_bench.methods.base import build_options

    if not methods:
        raise ConfigError(f"suite {suite.name} names no default_methods; pass --methods a,b,c")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise ConfigError(f"--methods lists {', '.join(duplicates)} more than once")
    modules = {m: _method_module(m) for m in methods}
    preflight_data(suite)
    all_sweeps = merge(suite.sweeps, sweeps or {})
    for swept in sweeps or {}:
        if swept not in methods:
            raise ConfigError(f"--set {swept}.…: {swept} is swept but not run (add it to --methods)")
    instances: list[tuple[str, str, dict[str, Any]]] = []  # (method, variant label, validated params)
    run_plan_notes: list[str] = []
    for m in methods:
        for values in variants(all_sweeps, m):
            label = variant_label(values)
            where = f"{suite.name}: methods.{m}" + (f" [{label}]" if label else "")
            merged = {**(suite.methods.get(m) or {}), **values}
            if m in suite.state_budgets:  # SGC's k and s from a state budget and the model's shapes
                merged, resolution = resolve_budget(suite, m, merged)
                if resolution is not None:
                    run_plan_notes.append(resolution.note)
            params = to_dict(build_options(m, merged, where))
            instances.append((m, label, params))
    suite_data = suite.to_data()
    shared = {k: suite_data[k] for k in ("model", "budget", "evaluation", "data_seed")}
    run_plan = RunPlan(suite, methods, out_dir, device, variants=instances, notes=run_plan_notes)
    for task in suite.tasks:
        for method, label, params in instances:
            for seed in suite.seeds:
                key = fingerprint({**shared, "task": to_dict(task), "method": method,
                                   "params": params, "seed": seed, "device": device})
                name = f"{method}[{label}]" if label else method
                untrained = fingerprint({**shared, "task": to_dict(task), "seed": seed, "device": device})
                spec = {
                    "untrained_score_file": str(out_dir / "untrained" / f"{task.name}-seed{seed}-{untrained}.json"),
                    "suite": suite_data, "task": task.name, "method": method, "variant": label,
                    "method_module": modules[method], "method_params": params, "seed": seed, "device": device,
                    "run_id": out_dir.name, "trial_id": f"{task.name}/{name}/seed{seed}/{key}", "command": command,
                }
                spec["predictions_file"] = str(out_dir / predictions.relative_path(spec["trial_id"]))
                run_plan.trials.append(Trial(task.name, method, seed, spec, label))
    return run_plan


def preflight_data(suite: SuiteSpec) -> None:
    """Read every data file the trials will read, so a missing or malformed one stops the run before training."""
    from memft_bench.harness import commonsense

    for task in suite.tasks:
        if task.source == "commonsense":
            data_dir = commonsense.resolve_data_dir(task.data_dir)
            if task.data_dir is None:
                task.data_dir = str(data_dir)  # trials see the same directory, whatever their environment
            commonsense.training_mix(data_dir, seed=0)  # the same files, chosen the same way, as the trials
            for name in task.eval_tasks:
                commonsense.load_test_set(data_dir, name)


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """One `bench run` per output directory at a time: two writers would run the same trials twice."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(out_dir / LOCK_FILE, "w")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise BenchError(f"--out {out_dir}: cannot write there ({exc.strerror}); choose another directory") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BenchError(f"another `bench run` is writing to {out_dir}; wait for it or use --out") from None
        yield


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


class Terminated(Exception):
    """SIGTERM arrived: stop like Ctrl-C, after killing the trial in flight."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into an exception so children are killed and results stay valid, as on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"received {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_name(trial: Trial) -> str:
    method = f"{trial.method}[{trial.variant}]" if trial.variant else trial.method
    name = f"{trial.task}__{method}__seed{trial.seed}.log"
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


def summary_line(row: dict[str, Any]) -> str:
    """One line per finished trial for the console."""
    method = f"{row['method']}[{row['variant']}]" if row.get("variant") else row["method"]
    label = f"{row['task']}/{method}/seed{row['seed']}"
    if row["status"] != "ok":
        return f"{label}: {row['status'].upper()} {row.get('reason') or ''}"
    parts = [f"{label}: ok accuracy={row['accuracy']:.3f}"]
    if row.get("loss_first") is not None and row.get("loss_last") is not None:
        parts.append(f"loss {row['loss_first']:.3f}->{row['loss_last']:.3f}")
    peak = row.get("peak_mem_allocated_mb") or row.get("peak_mem_rss_mb")
    if peak:
        parts.append(f"peak={peak:.0f}MB")
    if row.get("tokens_per_s"):
        parts.append(f"tokens/s={row['tokens_per_s']:.0f}")
    return " ".join(parts)


WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


@contextlib.contextmanager
def stop_on_write_failure(results: Path) -> Iterator[None]:
    """A full disk or an output directory that became unwritable stops the sweep with one line; the rows
    already appended stay intact (`append_row` undoes a half-written one) and the same command resumes."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        where = exc.filename or results
        raise BenchError(f"cannot write {where} ({exc.strerror}): the sweep stopped; the rows already in {results} "
                         "are intact; free space or make the directory writable, then rerun the same command to "
                         "resume") from None


def readable_rows(results: Path, echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """The recorded rows, or a refusal: appending to a file with a corrupt line would bury the damage under
    new rows. A torn last line (a crash mid-append) is moved aside with a note instead."""
    scan = scan_rows(results)
    if scan.corrupt_lines:
        lines = ", ".join(map(str, scan.corrupt_lines[:10])) + (" ..." if len(scan.corrupt_lines) > 10 else "")
        raise BenchError(f"{results}: line(s) {lines} are not JSON rows; bench run does not append to a file it "
                         "cannot read: fix or delete those lines (the others are intact), or move the file away to "
                         "start over, then rerun")
    aside = repair_torn_tail(results, scan)
    if aside is not None:
        echo(f"{describe_damage(results, scan)[0]}; moved to {aside}, its trial runs again")
    return scan.rows


def pending_variants(run_plan: RunPlan, retry_failed: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """The variants with a trial still to run: a resumed sweep pre-flights only what it will start."""
    scan = scan_rows(run_plan.out_dir / RESULTS_FILE)
    recorded = {row["trial_id"]: row for row in scan.rows}
    pending = {(t.method, t.variant) for t in run_plan.trials if t.trial_id not in recorded
               or (retry_failed and recorded[t.trial_id].get("status") in FAILED_STATUSES)}
    return [v for v in run_plan.variants if (v[0], v[1]) in pending]


def refused_row(trial: Trial, reason: str) -> dict[str, Any]:
    """The row of a trial the pre-flight predicted cannot fit: `oom`, never started."""
    return empty_row(
        run_id=trial.spec["run_id"], trial_id=trial.trial_id, suite=trial.spec["suite"]["name"], task=trial.task,
        method=trial.method, variant=trial.variant or None, method_params=trial.spec["method_params"],
        seed=trial.seed, device=trial.spec["device"], command=trial.spec.get("command"),
        precision=trial.spec["suite"]["model"]["precision"], status="oom", reason=reason,
        started_at=now(), finished_at=now(),
    )


def run(
    run_plan: RunPlan,
    retry_failed: bool = False,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = True,
    refusals: dict[tuple[str, str], str] | None = None,
    executor: Any = None,
) -> list[dict[str, Any]]:
    """Execute the plan's trials that have no recorded row yet; returns the rows of every planned trial.

    `refusals`: (method, variant) -> why its trials cannot fit (the pre-flight's figures); those trials are
    recorded as `oom` rows without starting a process. `executor` decides where the others run
    (harness/executors.py, harness/slurm.py; default: one local process at a time). Trials still in flight
    on a cluster after a detached submission have no row yet.
    """
    from tqdm import tqdm

    from memft_bench.harness.executors import LocalExecutor

    out_dir = run_plan.out_dir
    results = out_dir / RESULTS_FILE
    with run_lock(out_dir), terminate_as_interrupt(), stop_on_write_failure(results):
        recorded = {row["trial_id"]: row for row in readable_rows(results, echo)}
        todo = [t for t in run_plan.trials if t.trial_id not in recorded
                or (retry_failed and recorded[t.trial_id].get("status") in FAILED_STATUSES)]
        skipped = len(run_plan.trials) - len(todo)
        if skipped:
            echo(f"{skipped} of {len(run_plan.trials)} trials already recorded in {results}; skipping them")
        refused = [t for t in todo if (t.method, t.variant) in (refusals or {})]
        for trial in refused:
            row = refused_row(trial, (refusals or {})[(trial.method, trial.variant)])
            append_row(results, row)
            recorded[trial.trial_id] = row
            echo(summary_line(row))
        todo = [t for t in todo if t not in refused]
        executor = executor or LocalExecutor()
        bar = tqdm(total=len(todo), desc="trials", unit="trial", disable=not progress or not todo, file=sys.stderr)
        timeout = timeout_s or run_plan.suite.trial_timeout_s
        with contextlib.closing(executor.rows(todo, out_dir, timeout, bar.set_postfix_str)) as finished:
            for trial, row, seconds in finished:
                append_row(results, row)
                recorded[trial.trial_id] = row
                bar.update()
                line = f"{summary_line(row)} ({seconds:.0f}s)"
                if progress:
                    bar.write(line, file=sys.stderr)
                else:
                    echo(line)
        bar.close()
    return [recorded[t.trial_id] for t in run_plan.trials if t.trial_id in recorded]
