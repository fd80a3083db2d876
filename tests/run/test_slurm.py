"""`bench run --executor slurm` against a real one-node Slurm (tests/slurm_cluster.py starts and stops it).

A slice of the tiny suite (one task, few steps, a small test set) runs as Slurm jobs and locally with
`--jobs 2`, and the rows must agree; a job killed with scancel becomes a row that says so and
`--retry-failed` resubmits it; `--detach` returns at once and a second `bench run` collects the rows;
Ctrl-C cancels the jobs the run submitted; bad settings are refused before anything is submitted.
Skipped, with the reason, where Slurm cannot start; `BENCH_REQUIRE_SLURM=1` (set by .ci/run) turns the
skip into a failure, so CI always runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from memft_bench.harness.results.rows import read_rows
from tests import slurm_cluster
from tests.commands import BENCH_CLI, REPO_ROOT, default_sigint

ROOT = REPO_ROOT
pytestmark = pytest.mark.slow

#: What must not differ between a Slurm job and a local process running the same trial.
SAME = ("status", "accuracy", "accuracy_per_task", "eval_items", "steps", "loss_curve", "trainable_params",
        "optimizer_state_elements", "state_elements", "mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb")


def _unavailable(reason: str) -> None:
    if os.environ.get("BENCH_REQUIRE_SLURM"):
        pytest.fail(f"BENCH_REQUIRE_SLURM is set but Slurm cannot run here: {reason}")
    pytest.skip(f"no Slurm cluster: {reason}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if slurm_cluster.existing_partition() is None and (reason := slurm_cluster.missing_reason()):
        _unavailable(reason)
    try:
        running = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _unavailable(str(exc))
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(running.env())  # the bench processes and their jobs find this cluster
    try:
        yield running
    finally:
        if running.conf is not None:
            if saved is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = saved
        slurm_cluster.stop(running)


def _tiny_slice(tmp_path: Path) -> Path:
    """The tiny suite cut to one task, 5 steps, 16 test items and a briefly pre-trained model."""
    suite = yaml.safe_load((ROOT / "suites" / "tiny.yaml").read_text(encoding="utf-8"))
    suite["tasks"] = [{**suite["tasks"][0], "train_size": 200, "test_size": 16}]
    suite["model"]["pretrain_steps"] = 10
    suite["budget"].update(steps=5, micro_batch_size=8)
    suite["trial_timeout_s"] = 300
    path = tmp_path / "tiny-slice.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    return path


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH_CLI, "run", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


def _slurm_args(suite: Path, out: Path, *extra: str) -> list[str]:
    return ["--suite", str(suite), "--out", str(out), "--executor", "slurm", "--slurm", "mem=1G", "--no-report",
            "--quiet", *extra]


def _ledger(out: Path) -> list[dict]:
    path = out / "slurm" / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def _wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _training(log: Path) -> bool:
    return log.exists() and "step " in log.read_text(errors="replace")


def test_detached_slurm_rows_equal_a_local_parallel_run(cluster, tmp_path):
    suite = _tiny_slice(tmp_path)
    local = _bench("--suite", str(suite), "--out", str(tmp_path / "local"), "--methods", "full,lora", "--jobs", "2",
                   "--no-report", "--quiet")
    assert local.returncode == 0, local.stderr

    out = tmp_path / "slurm"
    started = time.monotonic()
    detached = _bench(*_slurm_args(suite, out, "--methods", "full,lora", "--detach"))
    assert detached.returncode == 0, detached.stderr
    assert time.monotonic() - started < 60 and "2 trial(s) are Slurm jobs still in flight" in detached.stdout
    assert not read_rows(out / "results.jsonl")
    collected = _bench(*_slurm_args(suite, out, "--methods", "full,lora"))
    assert collected.returncode == 0, collected.stderr
    again = _bench(*_slurm_args(suite, out, "--methods", "full,lora"))
    assert "2 of 2 trials already recorded" in again.stdout  # nothing is submitted twice

    local_rows = {r["trial_id"]: r for r in read_rows(tmp_path / "local" / "results.jsonl")}
    slurm_rows = {r["trial_id"]: r for r in read_rows(out / "results.jsonl")}
    assert local_rows.keys() == slurm_rows.keys() and len(slurm_rows) == 2
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    for trial_id, row in slurm_rows.items():
        assert row["status"] == "ok", row["reason"]
        assert {k: row[k] for k in SAME} == {k: local_rows[trial_id][k] for k in SAME}, trial_id
        assert row["slurm_job_id"] and row["node"] and local_rows[trial_id]["slurm_job_id"] is None
    submitted = [e["job_id"] for e in _ledger(out) if e["event"] == "submitted"]
    assert {r["slurm_job_id"] for r in slurm_rows.values()} == set(submitted)


def test_a_cancelled_job_is_a_row_with_its_reason_and_retry_resubmits_it(cluster, tmp_path):
    suite = _tiny_slice(tmp_path)
    out = tmp_path / "run"
    args = _slurm_args(suite, out, "--methods", "fault-slow", "--plugin", "tests.faults", "--set", "budget.steps=8")
    waiting = subprocess.Popen([*BENCH_CLI, "run", *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _training(out / "logs" / "kind__fault-slow__seed0.log"), "the job's trial to train")
    (job_id,) = [e["job_id"] for e in _ledger(out)]
    subprocess.run(["scancel", job_id], check=True)
    stdout, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 1, stderr  # the cancelled job's `error` row
    (row,) = read_rows(out / "results.jsonl")
    assert row["status"] == "error" and row["slurm_job_id"] == job_id
    assert f"slurm job {job_id}" in row["reason"] and "cancelled" in row["reason"], row["reason"]

    retried = _bench(*args, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    (row,) = read_rows(out / "results.jsonl")
    assert row["status"] == "ok" and row["slurm_job_id"] != job_id


def test_ctrl_c_cancels_the_jobs_this_run_submitted(cluster, tmp_path):
    out = tmp_path / "run"
    args = _slurm_args(_tiny_slice(tmp_path), out, "--methods", "fault-slow,full", "--plugin", "tests.faults",
                       "--set", "budget.steps=60")
    sweep = subprocess.Popen([*BENCH_CLI, "run", *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    _wait_for(lambda: len(_ledger(out)) == 2, "two submissions")
    jobs = {e["job_id"] for e in _ledger(out)}
    _wait_for(lambda: jobs & _squeue_ids(), "the jobs to be queued")
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    _wait_for(lambda: not jobs & _squeue_ids(), "the jobs to leave the queue", timeout=60)
    assert {e["job_id"] for e in _ledger(out) if e["event"] == "withdrawn"} == jobs
    assert not read_rows(out / "results.jsonl")


def test_a_partition_that_does_not_exist_submits_nothing(cluster, tmp_path):
    before = _squeue_ids()
    result = _bench(*_slurm_args(_tiny_slice(tmp_path), tmp_path / "r", "--slurm", "partition=nope"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "slurm.partition: no partition 'nope'" in lines[0] and cluster.partition in lines[0]
    assert _squeue_ids() == before and not (tmp_path / "r").exists()
