"""MLflow: one run per row, children of one parent run per sweep, which holds the report as artifacts.

By default the store is local and needs no server: a SQLite database in the run directory
(`sqlite:///DIR/mlflow.db`, artifacts in `DIR/mlruns`; `mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db`
shows it). `trackers.mlflow.tracking_uri` or `$MLFLOW_TRACKING_URI` points elsewhere. A server that is down
fails fast: unless the user set them, the client retries twice, one second apart, and waits 15 s for an
answer, instead of its default of minutes, so the warning comes while the sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from memft_bench.harness.trackers.base import Tracker
from memft_bench.harness.trackers.records import TrackedRun, text
from memft_bench.harness.trackers.settings import MlflowSettings

DATABASE = "mlflow.db"
ARTIFACTS = "mlruns"
FAST_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
METRICS_BATCH, PARAMS_BATCH = 1000, 100  # what one log_batch call takes
PARAM_LIMIT = 6000


def default_uri(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / DATABASE).resolve()}"


def tracking_uri(settings: MlflowSettings, out_dir: Path) -> str:
    return settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(out_dir)


def millis(stamp: str | None) -> int:
    """A row's ISO 8601 time in epoch milliseconds (now when the row has none)."""
    try:
        return int(dt.datetime.fromisoformat(str(stamp)).timestamp() * 1000)
    except ValueError:
        return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, out_dir: Path, suite: str, settings: MlflowSettings) -> None:
        super().__init__(out_dir, suite)
        self.settings = settings
        self.uri = tracking_uri(settings, out_dir)
        self.client: Any = None
        self.experiment_id = ""
        self.parent_id = ""

    @property
    def destination(self) -> str:
        store = "" if self.uri == default_uri(self.out_dir) else self.uri
        return f"{store}|{self.settings.experiment}" if self.settings.experiment else store

    def start(self) -> None:
        for variable, value in FAST_FAILURE.items():
            os.environ.setdefault(variable, value)
        from mlflow.tracking import MlflowClient

        for logger in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." is not news
            logging.getLogger(logger).setLevel(logging.WARNING)

        self.client = MlflowClient(tracking_uri=self.uri)
        name = self.settings.experiment or self.suite
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            local = self.uri == default_uri(self.out_dir)
            location = (self.out_dir / ARTIFACTS).resolve().as_uri() if local else None
            self.experiment_id = self.client.create_experiment(name, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(self.experiment_id)
        self.parent_id = self.parent_run()

    def parent_run(self) -> str:
        """The sweep's parent run: the one this directory's earlier runs made, while it still exists there."""
        state = self.read_state()
        if state.get("tracking_uri") == self.uri and state.get("experiment_id") == self.experiment_id:
            try:
                run = self.client.get_run(state["parent_run_id"])
            except Exception:  # deleted, or another store: start a new parent
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                self.client.update_run(run.info.run_id, status="RUNNING")
                return str(run.info.run_id)
        run = self.client.create_run(self.experiment_id, run_name=f"{self.suite} sweep ({self.out_dir.name})",
                                     tags={"suite": self.suite, "run_id": self.out_dir.name,
                                           "run_dir": str(self.out_dir.resolve())})
        self.write_state({"tracking_uri": self.uri, "experiment_id": self.experiment_id,
                          "parent_run_id": run.info.run_id})
        return str(run.info.run_id)

    def log(self, run: TrackedRun, attempt: int) -> str:
        from mlflow.entities import Metric, Param

        # a run of this row left by an interrupted attempt (created, never confirmed in the ledger) goes first
        for stale in self.client.search_runs([self.experiment_id], filter_string=f"tags.row_key = '{run.key}'"):
            self.client.delete_run(stale.info.run_id)
        tags = {**run.tags, "row_key": run.key, "mlflow.parentRunId": self.parent_id}
        created = self.client.create_run(self.experiment_id, start_time=millis(run.started_at), tags=tags,
                                         run_name=run.name)
        run_id = created.info.run_id
        stamp = millis(run.finished_at)
        metrics = [Metric(name, float(v), stamp, step) for name, points in run.series.items() for step, v in points]
        metrics += [Metric(name, float(v), stamp, run.steps) for name, v in run.metrics.items()]
        params = [Param(name, text(v)[:PARAM_LIMIT]) for name, v in run.params.items()]
        for start in range(0, len(params), PARAMS_BATCH):
            self.client.log_batch(run_id, params=params[start:start + PARAMS_BATCH])
        for start in range(0, len(metrics), METRICS_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + METRICS_BATCH])
        self.client.set_terminated(run_id, "FINISHED" if run.ok else "FAILED", end_time=stamp)
        return str(run_id)

    def log_report(self, files: list[Path]) -> None:
        for path in files:
            self.client.log_artifact(self.parent_id, str(path))

    def finish(self) -> None:
        self.client.set_terminated(self.parent_id, "FINISHED")
