"""The runner logs each row once, after appending it: a failing tracker is one warning and changes nothing
else, an interrupted sweep resumes without logging a row twice, and a retried trial's new row is a new run.

Trials "run" through a fake executor that hands the runner made-up rows at once, so these tests exercise
the runner's real loop, results.jsonl and the real tracking libraries in seconds.
"""

from __future__ import annotations

import copy
import errno
import itertools
import json

import pytest

from memft_bench.harness.results.rows import RESULTS_FILE
from memft_bench.harness.trackers.base import Tracker
from memft_bench.harness.trackers.records import row_key
from memft_bench.harness.trackers.settings import MlflowSettings, TensorboardSettings
from memft_bench.harness.trackers.sweep import SweepTrackers
from tests.conftest import small_suite_data
from tests.trackers.conftest import baseline_rows

tensorboard = pytest.importorskip("tensorboard", reason="the test extra installs tensorboard")

CLOCK = itertools.count()


class FakeExecutor:
    """Hands out one made-up row per trial; `stop_after` trials in, a Ctrl-C; `fail` trials end in `error`."""

    def __init__(self, stop_after: int | None = None, fail: tuple[str, ...] = ()) -> None:
        self.stop_after, self.fail = stop_after, fail

    def describe(self) -> str:
        return ""

    def rows(self, todo, out_dir, timeout_s, show):
        template = baseline_rows()[0]
        for index, trial in enumerate(todo):
            if index == self.stop_after:
                raise KeyboardInterrupt
            tick = next(CLOCK)
            row = copy.deepcopy(template)
            row.update(run_id=out_dir.name, trial_id=trial.trial_id, suite=trial.spec["suite"]["name"],
                       task=trial.task, method=trial.method, seed=trial.seed,
                       method_params=trial.spec["method_params"], started_at=f"2026-12-01T10:{tick:02d}:00+00:00",
                       finished_at=f"2026-12-01T10:{tick:02d}:30+00:00")
            if trial.label in self.fail:
                row.update(status="error", reason="during training: RuntimeError: injected", accuracy=None,
                           accuracy_per_task=None)
            yield trial, row, 0.5


class Raising(Tracker):
    """A tracker whose store is gone: a full disk."""

    name = "raising"
    calls = 0

    def log(self, run, attempt):
        Raising.calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def plan_for():
    """plan(out_dir): the small suite's full and lora on two seeds (4 trials), into out_dir."""
    from memft_bench.harness.run import planning
    from memft_bench.harness.spec.config import suite_from_data

    suite = suite_from_data({**small_suite_data(), "seeds": [0, 1]}, "unit suite")
    return lambda out: planning.plan(suite, ["full", "lora"], out, "cpu")


def results(out) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


def test_a_failing_tracker_is_one_warning_and_the_sweep_and_its_results_go_on(tmp_path, plan_for):
    from memft_bench.harness.run import runner
    from memft_bench.harness.trackers.tensorboard_tracker import TensorboardTracker

    Raising.calls = 0
    plan = plan_for(tmp_path)
    trackers = SweepTrackers([Raising(tmp_path, "unit"), TensorboardTracker(tmp_path, "unit", TensorboardSettings())],
                             tmp_path)
    lines: list[str] = []
    rows = runner.run(plan, echo=lines.append, progress=False, executor=FakeExecutor(), trackers=trackers)
    assert len(rows) == 4 and [r["trial_id"] for r in results(tmp_path)] == [t.trial_id for t in plan.trials]
    warnings = [line for line in lines if line.startswith("bench: warning:")]
    assert len(warnings) == 1 and "raising: OSError" in warnings[0] and "No space left" in warnings[0]
    assert Raising.calls == 1  # off for the rest of the sweep
    assert len([p for p in (tmp_path / "tensorboard").iterdir()]) == 4  # the other tracker went on
    assert not (tmp_path / "trackers" / "raising.jsonl").exists()
    trackers.finish(None, lines.append)
    assert len([line for line in lines if "warning" in line]) == 1


def test_the_runners_sigterm_is_not_taken_for_a_tracker_failure(tmp_path):
    from memft_bench.harness.run.runner import Terminated

    class Interrupted(Tracker):
        name = "interrupted"

        def log(self, run, attempt):
            raise Terminated("received SIGTERM")

    trackers = SweepTrackers([Interrupted(tmp_path, "unit")], tmp_path)
    trackers.start(print, passthrough=(Terminated,))
    with pytest.raises(Terminated):
        trackers.log_row(baseline_rows()[0])


@pytest.mark.parametrize("uri", ["sqlite:////proc/no-such-dir/mlflow.db", "http://127.0.0.1:9"])
def test_an_unreachable_mlflow_store_is_one_warning(tmp_path, monkeypatch, uri):
    pytest.importorskip("mlflow", reason="the test extra installs mlflow-skinny")
    from memft_bench.harness.trackers.mlflow_tracker import MlflowTracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the server is down: no need to wait for it
    trackers = SweepTrackers([MlflowTracker(tmp_path, "unit", MlflowSettings(tracking_uri=uri))], tmp_path)
    warnings: list[str] = []
    trackers.start(warnings.append)
    trackers.log_rows(baseline_rows()[:3])
    trackers.finish(None, warnings.append)
    assert len(warnings) == 1 and warnings[0].startswith("mlflow: ") and "not logging to mlflow" in warnings[0]
    assert not (tmp_path / "trackers" / "mlflow.jsonl").exists()


def tracked_keys(out) -> dict[str, list[str]]:
    """Each tracker's runs, as the row keys they came from (one entry per run found)."""
    from tests.trackers.readback import mlflow_runs, tensorboard_runs, wandb_runs

    ledger = {json.loads(line)["run"]: json.loads(line)["row"]
              for line in (out / "trackers" / "tensorboard.jsonl").read_text().splitlines()}
    return {
        "mlflow": sorted(key for key, _ in mlflow_runs(f"sqlite:///{out / 'mlflow.db'}", "unit")[0]),
        "tensorboard": sorted(ledger[name] for name in tensorboard_runs(out / "tensorboard")),
        "wandb": sorted(key for key, _ in wandb_runs(out)),
    }


def test_an_interrupted_sweep_resumes_logging_each_row_once_and_a_retried_trial_is_a_new_run(tmp_path, plan_for):
    pytest.importorskip("mlflow", reason="the test extra installs mlflow-skinny")
    pytest.importorskip("wandb", reason="the test extra installs wandb")
    from memft_bench.harness.run import runner
    from memft_bench.harness.trackers.registry import select

    def sweep(executor, retry_failed=False):  # a fresh `bench run --log-to ...` on the same directory
        trackers = select("mlflow,tensorboard,wandb", {}, tmp_path, "unit")
        lines: list[str] = []
        runner.run(plan_for(tmp_path), retry_failed=retry_failed, echo=lines.append, progress=False,
                   executor=executor, trackers=trackers)
        trackers.finish(None, lines.append)
        assert not [line for line in lines if "warning" in line], lines

    def every_row_once() -> None:
        keys = sorted(row_key(r) for r in results(tmp_path))
        assert tracked_keys(tmp_path) == {"mlflow": keys, "tensorboard": keys, "wandb": keys}

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after two trials
        sweep(FakeExecutor(stop_after=2, fail=("kind/lora/seed1",)))
    assert len(results(tmp_path)) == 2
    every_row_once()

    sweep(FakeExecutor(fail=("kind/lora/seed1",)))  # the same command: the other two trials
    assert len(results(tmp_path)) == 4
    every_row_once()

    # a crash between a row's append and its log: the next run logs that row, once, replacing what it left
    for name in ("mlflow", "tensorboard", "wandb"):
        ledger = tmp_path / "trackers" / f"{name}.jsonl"
        ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[:-1]))
    sweep(FakeExecutor())
    every_row_once()

    sweep(FakeExecutor(), retry_failed=True)  # the failed trial again: a new row, logged as a new run
    rows = results(tmp_path)
    assert len(rows) == 5 and rows[-1]["trial_id"] == rows[3]["trial_id"] and rows[-1]["status"] == "ok"
    every_row_once()
    slug = "__".join(rows[3]["trial_id"].split("/"))
    assert (tmp_path / "tensorboard" / slug).is_dir() and (tmp_path / "tensorboard" / f"{slug}__attempt2").is_dir()


def test_a_sigterm_while_a_tracker_logs_still_stops_the_sweep(tmp_path, plan_for):
    """A tracker's library may catch Exception (W&B does): the runner holds SIGTERM while it logs and stops
    the sweep right after, instead of letting the library swallow it."""
    import contextlib
    import os
    import signal

    from memft_bench.harness.run import runner
    from memft_bench.harness.run.runner import Terminated

    class Swallowing(Tracker):
        name = "swallowing"
        calls = 0

        def log(self, run, attempt):
            Swallowing.calls += 1
            with contextlib.suppress(Exception):  # what a library's own error handling does
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while the library runs

    plan = plan_for(tmp_path)
    trackers = SweepTrackers([Swallowing(tmp_path, "unit")], tmp_path)
    with pytest.raises(Terminated):
        runner.run(plan, echo=lambda line: None, progress=False, executor=FakeExecutor(), trackers=trackers)
    assert Swallowing.calls == 1  # stopped after the first row's logging, not after the whole sweep
    assert len(results(tmp_path)) == 1  # the row was appended before its logging; nothing else ran


def test_a_tracker_library_that_does_not_import_is_one_warning_naming_its_extra(tmp_path):
    class Broken(Tracker):
        name = "wandb"

        def start(self):
            raise ImportError("cannot import name 'Run' from 'wandb' (a wandb.py first on the path)")

    trackers = SweepTrackers([Broken(tmp_path, "unit")], tmp_path)
    warnings: list[str] = []
    trackers.start(warnings.append)
    assert len(warnings) == 1 and "pip install 'memft-bench[wandb]'" in warnings[0]


def test_a_sweep_sent_to_a_new_destination_logs_every_row_there(tmp_path):
    """The ledger says which rows went where: rows logged to the default place are logged again to another
    log directory (or tracking URI, or W&B project), and not again to the first."""
    from memft_bench.harness.trackers.tensorboard_tracker import TensorboardTracker

    rows = baseline_rows()[:2]
    other = tmp_path / "elsewhere"
    for settings in (TensorboardSettings(), TensorboardSettings(log_dir=str(other)), TensorboardSettings()):
        trackers = SweepTrackers([TensorboardTracker(tmp_path, "unit", settings)], tmp_path)
        trackers.start(print)
        trackers.log_rows(rows)
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2 and len(list(other.iterdir())) == 2
    ledgers = sorted(p.name for p in (tmp_path / "trackers").glob("tensorboard*.jsonl"))
    assert len(ledgers) == 2 and "tensorboard.jsonl" in ledgers
