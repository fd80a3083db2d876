"""`bench run --log-to tensorboard,mlflow,wandb` end to end: a real trial, its row in results.jsonl, and the
same row in each tracker, read back; the same command again logs nothing twice."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import yaml

from memft_bench.harness.trackers.records import row_key
from tests.commands import BENCH_CLI
from tests.conftest import small_suite_data

for library in ("mlflow", "sqlalchemy", "tensorboard", "wandb"):
    pytest.importorskip(library, reason="the test extra installs every tracker's library")

from tests.trackers.readback import (  # noqa: E402
    STEP_SERIES,
    by_key,
    check_identity,
    expected_loss,
    expected_metrics,
    expected_params_text,
    mlflow_runs,
    tensorboard_runs,
    wandb_runs,
)


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH_CLI, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # the CLI end to end in subprocesses: left out of the stacks' fast tests
def test_bench_run_logs_each_trial_to_every_tracker_once(tmp_path):
    suite = tmp_path / "unit.yaml"
    suite.write_text(yaml.safe_dump(small_suite_data()), encoding="utf-8")
    out = tmp_path / "run"
    command = ("run", "--suite", str(suite), "--methods", "full", "--steps", "3", "--out", str(out), "--quiet",
               "--log-to", "tensorboard,mlflow,wandb")
    first = bench(*command)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "warning" not in first.stdout + first.stderr
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["status"] == "ok" and len(row["loss_curve"]) == 3

    found, (parent, artifacts) = mlflow_runs(f"sqlite:///{out / 'mlflow.db'}", "unit")
    run = by_key(found)[row_key(row)]
    check_identity(run.tags, row)
    assert run.params == expected_params_text(row) and run.series["loss"] == expected_loss(row)
    assert run.series["step_time_ms"] == expected_loss(row, "step_time_ms_curve") and row["step_time_ms_curve"]
    assert {k: v for k, v in run.metrics.items() if k not in ("loss", *STEP_SERIES)} == expected_metrics(row)
    assert {"report.md", "loss_curves.png"} <= set(artifacts) and parent.info.status == "FINISHED"

    (board,) = tensorboard_runs(out / "tensorboard").values()
    check_identity(board.tags, row)
    assert board.metrics == {k: float(np.float32(v)) for k, v in expected_metrics(row).items()}

    trials = by_key(wandb_runs(out))  # the rows' runs, and nothing else
    assert list(trials) == [row_key(row)]
    check_identity(trials[row_key(row)].tags, row)
    assert trials[row_key(row)].series["loss"] == expected_loss(row)
    (report,) = by_key(wandb_runs(out / "trackers")).values()
    assert {"report.md", "loss_curves.png"} <= set(report.extra["files"])

    again = bench(*command)  # resumed: nothing to run, nothing logged twice
    assert again.returncode == 0 and "1 of 1 trials already recorded" in again.stdout
    assert len(mlflow_runs(f"sqlite:///{out / 'mlflow.db'}", "unit")[0]) == 1
    assert len(tensorboard_runs(out / "tensorboard")) == 1
    assert len(wandb_runs(out)) == 1 and len(wandb_runs(out / "trackers")) == 1
