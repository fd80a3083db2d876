"""Execute a planned run (`planning.py`), each trial in its own process, resumably.

The runner is the single writer of `DIR/results.jsonl`: it holds the directory's lock, skips the trials
already recorded (a trial id is its names and a fingerprint of its whole configuration), hands the rest to
an executor (local processes or Slurm jobs) and appends each row as its trial ends, so an interrupted run
loses at most the trials in flight. SIGTERM stops it like Ctrl-C, after killing what is running. With
trackers (`--log-to`), each row goes to them right after its append, and the rows recorded earlier that a
tracker has not logged yet (an interrupted sweep, a tracker added later) go first (harness/trackers/).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.core.records_io import now
from memft_bench.harness.results.rows import (
    RESULTS_FILE,
    append_row,
    describe_damage,
    empty_row,
    repair_torn_tail,
    scan_rows,
    trial_label,
)
from memft_bench.harness.run.planning import RunPlan, Trial
from memft_bench.harness.run.trial_process import planned_columns

if TYPE_CHECKING:
    from memft_bench.harness.trackers.sweep import SweepTrackers

LOCK_FILE = ".lock"
FAILED_STATUSES = ("oom", "diverged", "error", "timeout")


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


class Terminated(Exception):
    """SIGTERM arrived: stop like Ctrl-C, after killing the trial in flight."""


class TerminationHold:
    """Whether SIGTERM is held back for now, and the one that arrived meanwhile (see `termination_deferred`)."""

    holding = False
    pending: str | None = None


@contextlib.contextmanager
def termination_deferred() -> Iterator[None]:
    """Hold SIGTERM while a tracker's library runs: such code may catch `Exception` (W&B does, and MLflow wraps
    it in its own error), which would swallow `Terminated` and let the sweep run on. A SIGTERM that arrives
    in the block is raised when the block ends."""
    outer = TerminationHold.holding
    TerminationHold.holding = True
    try:
        yield
    finally:
        TerminationHold.holding = outer
        reason = None if outer else TerminationHold.pending
        if not outer:
            TerminationHold.pending = None
    if reason:
        raise Terminated(reason)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into an exception so children are killed and results stay valid, as on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        reason = f"received {signal.Signals(signum).name}"
        if TerminationHold.holding:
            TerminationHold.pending = reason
            return
        raise Terminated(reason)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def summary_line(row: dict[str, Any]) -> str:
    """One line per finished trial for the console."""
    label = trial_label(row["task"], row["method"], row.get("variant"), row["seed"])
    if row["status"] != "ok":
        return f"{label}: {row['status'].upper()} {row.get('reason') or ''}"
    if row.get("phase") == "search":  # a search trial is scored on the validation split only
        parts = [f"{label}: ok validation accuracy={row['validation_accuracy']:.3f}"]
        if row.get("validation_loss") is not None:
            parts.append(f"validation loss={row['validation_loss']:.3f}")
    else:
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
        **planned_columns(trial.spec), status="oom", reason=reason,
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
    trackers: SweepTrackers | None = None,
) -> list[dict[str, Any]]:
    """Execute the plan's trials that have no recorded row yet; returns the rows of every planned trial.

    `refusals`: (method, variant) -> why its trials cannot fit (the pre-flight's figures); those trials are
    recorded as `oom` rows without starting a process. `executor` decides where the others run
    (harness/run/local.py, harness/run/slurm.py; default: one local process at a time). Trials still in flight
    on a cluster after a detached submission have no row yet. `trackers` log every row after its append (a
    tracker that fails says so in one line and the sweep goes on); the caller logs the report and finishes
    them.
    """
    from tqdm import tqdm

    from memft_bench.harness.run.local import LocalExecutor

    out_dir = run_plan.out_dir
    results = out_dir / RESULTS_FILE
    with run_lock(out_dir), terminate_as_interrupt(), stop_on_write_failure(results):
        recorded = {row["trial_id"]: row for row in readable_rows(results, echo)}
        todo = [t for t in run_plan.trials if t.trial_id not in recorded
                or (retry_failed and recorded[t.trial_id].get("status") in FAILED_STATUSES)]
        skipped = len(run_plan.trials) - len(todo)
        if skipped:
            echo(f"{skipped} of {len(run_plan.trials)} trials already recorded in {results}; skipping them")

        def track(row: dict[str, Any]) -> None:
            """The row to every tracker, one row at a time, a SIGTERM held until the row is logged."""
            if trackers is not None:
                with termination_deferred():
                    trackers.log_row(row)

        if trackers is not None:
            rerun = {t.trial_id for t in todo}  # a failed row about to be retried is superseded: not logged
            with termination_deferred():
                trackers.start(lambda message: echo(f"bench: warning: {message}"), passthrough=(Terminated,))
            for trial in run_plan.trials:  # what earlier runs did not log
                if trial.trial_id in recorded and trial.trial_id not in rerun:
                    track(recorded[trial.trial_id])
        refused = [t for t in todo if (t.method, t.variant) in (refusals or {})]
        for trial in refused:
            row = refused_row(trial, (refusals or {})[(trial.method, trial.variant)])
            append_row(results, row)
            recorded[trial.trial_id] = row
            echo(summary_line(row))
            track(row)
        todo = [t for t in todo if t not in refused]
        executor = executor or LocalExecutor()
        bar = tqdm(total=len(todo), desc="trials", unit="trial", disable=not progress or not todo, file=sys.stderr)

        def say(line: str) -> None:
            if progress:
                bar.write(line, file=sys.stderr)
            else:
                echo(line)

        if trackers is not None:
            trackers.warn = lambda message: say(f"bench: warning: {message}")
        timeout = timeout_s or run_plan.suite.trial_timeout_s
        with contextlib.closing(executor.rows(todo, out_dir, timeout, bar.set_postfix_str)) as finished:
            for trial, row, seconds in finished:
                append_row(results, row)
                recorded[trial.trial_id] = row
                bar.update()
                say(f"{summary_line(row)} ({seconds:.0f}s)")
                track(row)
        bar.close()
    return [recorded[t.trial_id] for t in run_plan.trials if t.trial_id in recorded]
