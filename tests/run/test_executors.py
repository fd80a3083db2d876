"""Executors without a cluster: Slurm settings and their sbatch script, job states, slots, bad input, and
several local trials at once (rows, the progress of each, Ctrl-C killing every trial in flight, resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.results.rows import read_rows
from memft_bench.harness.run.devices import cpu_slots, device_slots
from memft_bench.harness.run.slurm import ENDED, SlurmExecutor, parse_scontrol, submitit_parameters
from memft_bench.harness.spec.slurm_settings import SlurmSpec, slurm_spec
from tests.commands import BENCH_CLI, REPO_ROOT, TRIAL_MODULE, default_sigint
from tests.conftest import small_suite_data

ROOT = REPO_ROOT


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH_CLI, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env=env)


def _one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("bench: error: ") and fragment in lines[0], lines[0]


def test_slurm_settings_are_validated_and_layered():
    spec = slurm_spec({"partition": "gpu", "sbatch_args": ["--constraint=a100"]},
                      ["gpus_per_trial=2", "sbatch_args=--exclusive", "time_min=90", "mem=64G", "max_jobs=4"])
    assert (spec.partition, spec.gpus_per_trial, spec.time_min, spec.mem, spec.max_jobs) == ("gpu", 2, 90, "64G", 4)
    assert spec.sbatch_args == ["--constraint=a100", "--exclusive"]
    for flags, fragment in [(["gpus_per_trial=two"], "slurm.gpus_per_trial: expected an integer, got 'two'"),
                            (["cpus_per_trial=0"], "slurm.cpus_per_trial: must be >= 1"),
                            (["mem=lots"], "slurm.mem: expected a size"),
                            (["sbatch_args=constraint"], "slurm.sbatch_args: expected --name"),
                            (["nodes=2"], "slurm: unknown option 'nodes'"),
                            (["partition"], "expected KEY=VALUE")]:
        with pytest.raises(ConfigError, match=fragment):
            slurm_spec({}, flags)


def test_the_sbatch_script_carries_every_setting():
    from submitit.slurm.slurm import _make_sbatch_string

    spec = SlurmSpec(partition="gpu", gpus_per_trial=1, cpus_per_trial=8, mem="64G", account="lab", qos="high",
                     sbatch_args=["--constraint=a100", "--exclusive"], max_jobs=3, setup=["module load cuda"])
    params = submitit_parameters(spec, "bench-x", timeout_s=3600)
    assert params["time"] == 65  # the trial timeout plus start-up margin
    script = _make_sbatch_string(command="true", folder="/tmp/f", map_count=5, **params)
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=64G", "--account=lab",
                 "--qos=high", "--constraint=a100", "#SBATCH --exclusive", "--array=0-4%3", "--time=65",
                 "module load cuda"):
        assert line in script, line
    assert submitit_parameters(SlurmSpec(), "b", None)["time"] == 60


def test_job_states_from_scontrol_expand_arrays():
    text = ("JobId=20 ArrayJobId=19 ArrayTaskId=1 JobName=b JobState=CANCELLED Reason=None NodeList=node7\n"
            "JobId=19 ArrayJobId=19 ArrayTaskId=2-4%2 JobName=b JobState=PENDING Reason=JobArrayTaskLimit "
            "NodeList=(null)\n"
            "JobId=23 JobName=c JobState=TIMEOUT NodeList=node2\n")
    states = parse_scontrol(text)
    assert states["19_1"] == {"State": "CANCELLED", "NodeList": "node7"}
    assert {states[f"19_{i}"]["State"] for i in (2, 3, 4)} == {"PENDING"}
    assert states["23"]["State"] == "TIMEOUT"
    assert ENDED["TIMEOUT"][0] == "timeout" and ENDED["OUT_OF_MEMORY"][0] == "oom"


def test_a_job_slurm_ended_becomes_a_row_that_names_it():
    from memft_bench.harness.run.slurm import WatchedJob

    spec = {"run_id": "r", "trial_id": "kind/full/seed0/abc", "suite": {"name": "unit"}, "task": "kind",
            "method": "full", "variant": "", "method_params": {}, "seed": 0, "device": "cpu"}
    item = WatchedJob(type("T", (), {"spec": spec})(), {"log": "/x.log", "submitted_at": 0.0}, 0.0)
    row = SlurmExecutor.ended_row(item, "19_1", "NODE_FAIL", "node7")
    assert row["status"] == "error" and row["slurm_job_id"] == "19_1" and row["node"] == "node7"
    assert "slurm job 19_1 on node7 ended by a node failure (state NODE_FAIL)" in row["reason"]
    assert "--retry-failed" in row["reason"]
    assert SlurmExecutor.ended_row(item, "5", "TIMEOUT", "")["status"] == "timeout"


def test_slots_split_the_cores_and_pin_one_gpu_each(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    slots = cpu_slots(2)
    assert len(slots) == 2 and slots[0].env["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in device_slots(["1", "0"])] == ["7", "5"]
    with pytest.raises(ConfigError, match="torch sees 2 GPU"):
        device_slots(["2"])
    with pytest.raises(ConfigError, match="listed twice"):
        device_slots(["0", "0"])


@pytest.mark.parametrize(("args", "fragment"), [
    (["--executor", "k8s"], "--executor 'k8s': expected one of local, slurm"),
    (["--detach"], "--detach submits to a cluster"),
    (["--slurm", "partition=x"], "--slurm settings apply to --executor slurm only"),
    (["--jobs", "2", "--devices", "0"], "give one of them"),
    (["--executor", "slurm", "--slurm", "gpus_per_trial=two"], "slurm.gpus_per_trial: expected an integer"),
    (["--executor", "slurm", "--jobs", "2"], "--devices and --jobs are for local runs"),
])
def test_bad_execution_options_are_one_line(tmp_path, args, fragment):
    _one_line_error(_bench("run", "--out", str(tmp_path / "r"), *args), fragment)
    assert not (tmp_path / "r").exists()


def test_missing_slurm_commands_are_one_line(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # python, but no Slurm client
    _one_line_error(_bench("run", "--out", str(tmp_path / "r"), "--executor", "slurm", env=env),
                    "Slurm commands not found on PATH")
    assert not (tmp_path / "r").exists()


def _suite_file(tmp_path: Path, steps: int) -> Path:
    suite = small_suite_data(steps=steps)
    suite["tasks"][0]["test_size"] = 4
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    return path


def _trial_processes(out: Path) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if TRIAL_MODULE in line and str(out) in line]


@pytest.mark.slow  # the CLI end to end in subprocesses: left out of the stacks' fast tests
def test_parallel_trials_ctrl_c_kills_all_in_flight_then_resume(tmp_path):
    """--jobs 2: both trials run at once; Ctrl-C kills both and exits 130 with no row for them; the same
    command then gives exactly one row per trial, with the fault trial's reason intact."""
    out = tmp_path / "run"
    args = [*BENCH_CLI, "run", "--suite", str(_suite_file(tmp_path, 12)), "--methods",
            "fault-slow,fault-sigkill", "--plugin", "tests.faults", "--out", str(out), "--jobs", "2"]
    sweep = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_sigint)
    deadline = time.time() + 300
    log = out / "logs" / "kind__fault-slow__seed0.log"
    while time.time() < deadline and not (log.exists() and "step " in log.read_text()
                                          and len(read_rows(out / "results.jsonl")) == 1):
        time.sleep(0.5)  # the SIGKILL trial has its row while the slow one is training
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, stderr
    assert "[cpu" in stderr  # the progress bar names each slot's trial
    time.sleep(0.5)
    assert _trial_processes(out) == []
    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 1, resumed.stderr  # the SIGKILL trial's `error` row
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = {json.loads(line)["method"]: json.loads(line) for line in lines}
    assert len(lines) == 2 and rows["fault-slow"]["status"] == "ok"
    assert rows["fault-sigkill"]["status"] == "error" and "SIGKILL" in rows["fault-sigkill"]["reason"]


def test_a_local_run_refuses_trials_that_slurm_jobs_are_running(tmp_path, small_suite):
    from memft_bench.harness.core.errors import BenchError
    from memft_bench.harness.run.local import LocalExecutor
    from memft_bench.harness.run.planning import plan
    from memft_bench.harness.run.slurm_ledger import ledger_add

    trials = plan(small_suite, ["full"], tmp_path, "cpu").trials
    ledger_add(tmp_path, "submitted", {"trial_id": trials[0].trial_id, "job_id": "42_0"})
    with pytest.raises(BenchError, match=r"Slurm jobs still in flight \(42_0\)"):
        next(LocalExecutor().rows(trials, tmp_path, None, print))
    ledger_add(tmp_path, "collected", {"trial_id": trials[0].trial_id, "job_id": "42_0"})
    from memft_bench.harness.run.slurm_ledger import ledger_in_flight

    assert ledger_in_flight(tmp_path) == {}


def test_jobs_on_gpus_means_one_trial_per_gpu(monkeypatch, small_suite):
    import torch

    from memft_bench.harness.run.execution import Execution

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for execution in (Execution(jobs=2), Execution(devices="0,1")):
        executor, device = execution.build(small_suite, "auto", None)
        assert device == "cuda:0" and [s.env["CUDA_VISIBLE_DEVICES"] for s in executor.slots] == ["0", "1"]
    with pytest.raises(ConfigError, match="torch sees 2 GPU"):
        Execution(jobs=3).build(small_suite, "auto", None)
    with pytest.raises(ConfigError, match="trials sharing one GPU"):
        Execution(jobs=2).build(small_suite, "cuda:1", None)
    executor, device = Execution(jobs=2).build(small_suite, "cpu", None)
    assert device == "cpu" and "OMP_NUM_THREADS" in executor.slots[0].env


def test_rows_the_trial_never_wrote_still_sit_on_the_sweeps_axes(tmp_path, small_suite):
    """A refused, killed or timed-out trial's row records the batch, length and checkpointing it was planned at
    (an out-of-memory sweep's rows are read along those axes); a forward-only method's checkpointing is None."""
    from memft_bench.harness.run.planning import plan
    from memft_bench.harness.run.runner import refused_row
    from memft_bench.harness.run.trial_process import failure_row

    trials = plan(small_suite, ["full", "mezo"], tmp_path, "cpu",
                  sweeps={"budget": {"gradient_checkpointing": ["true"], "micro_batch_size": ["3"]}}).trials
    budget = small_suite.budget
    for trial in trials:
        for row in (refused_row(trial, "predicted 9 GiB"), failure_row(trial.spec, "oom", "killed", "log", "t0")):
            assert row["micro_batch_size"] == 3 and row["cutoff_len"] == budget.cutoff_len
            assert row["batch_size"] == 3 * budget.grad_accum and row["precision"] == small_suite.model.precision
            assert row["model"] == small_suite.model.label
            assert row["gradient_checkpointing"] is (None if trial.method == "mezo" else True), trial.method
