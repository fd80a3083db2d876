"""Each tracker logs rows through its real library; the runs read back hold every figure of their rows.

The rows of `sample_rows` are logged once per module to MLflow (its local SQLite store), TensorBoard and W&B
(offline), then read back with MLflow's client, TensorBoard's EventAccumulator and wandb's own record schema.
Expected values are computed here from the row schema and harness/core/stats.py, not from
harness/trackers/records.py, so a figure renamed, dropped or changed on the way fails.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from memft_bench.harness.trackers.records import row_key
from tests.commands import REPO_ROOT
from tests.trackers.conftest import sample_rows

pytest.importorskip("mlflow", reason="the test extra installs mlflow-skinny")
pytest.importorskip("sqlalchemy", reason="the test extra installs sqlalchemy (MLflow's SQLite store)")
pytest.importorskip("tensorboard", reason="the test extra installs tensorboard")
pytest.importorskip("wandb", reason="the test extra installs wandb")

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

FIGURE = REPO_ROOT / "reports/tiny-cpu/accuracy_vs_peak.png"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One sweep's rows logged to all three trackers, and its report: (run directory, rows)."""
    from memft_bench.harness.trackers.registry import select

    out = tmp_path_factory.mktemp("sweep")
    rows = sample_rows()
    trackers = select("mlflow,tensorboard,wandb", {}, out, "tiny")
    warnings: list[str] = []
    trackers.start(warnings.append)
    trackers.log_rows(rows)
    (out / "report.md").write_text("# Report\n\n![accuracy](accuracy_vs_peak.png)\n", encoding="utf-8")
    shutil.copyfile(FIGURE, out / "accuracy_vs_peak.png")
    trackers.finish(out / "report.md", warnings.append)
    assert warnings == []
    return out, rows


def test_mlflow_runs_hold_every_figure_of_their_rows(logged):
    out, rows = logged
    found, (parent, artifacts) = mlflow_runs(f"sqlite:///{out / 'mlflow.db'}", "tiny")
    runs = by_key(found)
    assert len(runs) == len(rows)
    for row in rows:
        run = runs[row_key(row)]
        assert run.name == f"{row['task']}/{row['method']}{'[r=4]' if row['variant'] else ''}/seed{row['seed']}"
        check_identity(run.tags, row)
        assert run.params == expected_params_text(row)
        assert run.series["loss"] == expected_loss(row)
        for name, column in STEP_SERIES.items():
            assert run.series.get(name, []) == expected_loss(row, column)
        assert {k: v for k, v in run.metrics.items() if k not in ("loss", *STEP_SERIES)} == expected_metrics(row)
        assert run.finished_ok is (row["status"] == "ok")
        assert run.extra["parent"] == parent.info.run_id  # one sweep, one parent run
    assert parent.info.status == "FINISHED" and parent.data.tags["run_id"] == out.name
    assert sorted(artifacts) == ["accuracy_vs_peak.png", "report.md"]
    assert (out / "mlruns").is_dir()  # artifacts beside the database, in the run directory


def test_tensorboard_directories_hold_every_figure_of_their_rows(logged):
    out, rows = logged
    runs = tensorboard_runs(out / "tensorboard")
    assert len(runs) == len(rows)  # one directory per trial, nothing else
    for row in rows:
        run = runs["__".join(row["trial_id"].split("/"))]  # task__method[variant]__seedN__fingerprint
        check_identity(run.tags, row)
        assert run.params == row["method_params"]
        # TensorBoard's scalars are 32-bit floats: each figure is the row's, rounded to float32
        assert run.series["loss"] == [(s, float(np.float32(v))) for s, v in expected_loss(row)]
        for name, column in STEP_SERIES.items():
            assert run.series.get(name, []) == [(s, float(np.float32(v))) for s, v in expected_loss(row, column)]
        assert run.metrics == {k: float(np.float32(v)) for k, v in expected_metrics(row).items()}
        assert set(run.extra["final_steps"].values()) == {row["steps"]}
        assert run.finished_ok is (row["status"] == "ok")


def test_wandb_offline_runs_hold_every_figure_of_their_rows(logged):
    out, rows = logged
    trials = by_key(wandb_runs(out))
    assert len(trials) == len(rows) and {r.extra["job_type"] for r in trials.values()} == {"trial"}
    (report,) = by_key(wandb_runs(out / "trackers")).values()  # the report's run, apart from the rows'
    groups = {r.extra["group"] for r in [*trials.values(), report]}
    assert len(groups) == 1 and next(iter(groups)).startswith(out.name)  # one sweep, one group
    for row in rows:
        run = trials[row_key(row)]
        check_identity(run.tags, row)
        assert run.params == row["method_params"]
        assert run.series["loss"] == expected_loss(row)
        for name, column in STEP_SERIES.items():
            assert run.series.get(name, []) == expected_loss(row, column)
        assert {k: v for k, v in run.metrics.items() if k not in ("loss", *STEP_SERIES)} == expected_metrics(row)
        assert run.metrics["loss"] == row["loss_curve"][-1]
        assert f"method:{row['method']}" in run.extra["labels"] and f"status:{row['status']}" in run.extra["labels"]
        assert run.finished_ok is (row["status"] == "ok")
    assert report.extra["job_type"] == "report"
    assert sorted(report.extra["files"]) == ["accuracy_vs_peak.png", "report.md"]
    assert (report.extra["dir"] / "files" / "accuracy_vs_peak.png").read_bytes() == FIGURE.read_bytes()


def test_each_tracker_ledger_lists_each_row_once(logged):
    out, rows = logged
    for name in ("mlflow", "tensorboard", "wandb"):
        lines = [json.loads(line) for line in (out / "trackers" / f"{name}.jsonl").read_text().splitlines()]
        assert sorted(e["row"] for e in lines) == sorted(row_key(r) for r in rows)
