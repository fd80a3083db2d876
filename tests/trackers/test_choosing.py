"""Choosing trackers: `--log-to` and the suite's `trackers:` section are validated before anything starts, a
missing library is one line naming the extra, no tracking library is imported until a tracker logs, and the
section never changes a trial id. No tracking library is needed here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from memft_bench.harness.core.errors import BenchError, ConfigError
from memft_bench.harness.trackers import records
from memft_bench.harness.trackers.registry import ENTRIES, select
from memft_bench.harness.trackers.settings import TRACKER_NAMES
from memft_bench.harness.trackers.sweep import report_files
from tests.commands import BENCH_CLI
from tests.conftest import small_suite_data

LIBRARIES = ("mlflow", "wandb", "tensorboard", "torch")


def test_the_names_and_their_modules_agree():
    assert tuple(ENTRIES) == TRACKER_NAMES


def test_log_to_takes_a_comma_list_replaces_the_suites_and_none_turns_them_off(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # every library "installed"
    assert select(None, {}, tmp_path, "unit") is None
    assert select("tensorboard, mlflow,tensorboard", {}, tmp_path, "unit").names == ["tensorboard", "mlflow"]
    assert select(None, {"log_to": ["wandb"]}, tmp_path, "unit").names == ["wandb"]
    assert select("mlflow", {"log_to": ["wandb"]}, tmp_path, "unit").names == ["mlflow"]
    assert select("none", {"log_to": ["wandb"]}, tmp_path, "unit") is None
    with pytest.raises(ConfigError, match=r"--log-to 'mlflow,nope': unknown tracker 'nope'; choose from mlflow, "):
        select("mlflow,nope", {}, tmp_path, "unit")
    with pytest.raises(ConfigError, match=r"trackers.log_to: unknown tracker 'comet'"):
        select(None, {"log_to": ["comet"]}, tmp_path, "unit")
    with pytest.raises(ConfigError, match=r"trackers.wandb.mode: must be one of"):
        select(None, {"wandb": {"mode": "sometimes"}}, tmp_path, "unit")
    with pytest.raises(ConfigError, match=r"trackers.mlflow: unknown option 'uri'"):
        select(None, {"mlflow": {"uri": "x"}}, tmp_path, "unit")


def test_a_missing_library_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    gone = {"wandb", "sqlalchemy"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    with pytest.raises(BenchError, match=r"^--log-to wandb: wandb not installed; pip install 'memft-bench\[wandb\]'"):
        select("tensorboard,wandb", {}, tmp_path, "unit")
    with pytest.raises(BenchError, match=r"mlflow: sqlalchemy not installed; pip install 'memft-bench\[mlflow\]'"):
        select(None, {"log_to": ["mlflow"]}, tmp_path, "unit")  # the default SQLite store needs it
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else object())
    assert select("mlflow", {"mlflow": {"tracking_uri": "http://mlflow.example:5000"}}, tmp_path, "unit")


def test_the_trackers_section_changes_no_trial_id(tmp_path):
    from memft_bench.harness.run import planning
    from memft_bench.harness.spec.config import suite_from_data

    plain = suite_from_data(small_suite_data(), "unit")
    logged = suite_from_data({**small_suite_data(), "trackers": {"log_to": ["mlflow", "wandb"], "wandb": {
        "project": "p", "mode": "offline"}, "mlflow": {"experiment": "e"}}}, "unit")
    assert logged.trackers["log_to"] == ["mlflow", "wandb"]
    ids = [[t.trial_id for t in planning.plan(s, ["full", "lora"], tmp_path, "cpu").trials] for s in (plain, logged)]
    assert ids[0] == ids[1]


def test_choosing_and_the_commands_help_import_no_tracking_library():
    code = ("import sys\n"
            "from memft_bench.harness.cli import main\n"
            "import memft_bench.harness.trackers.registry, memft_bench.harness.trackers.sweep\n"
            "for argv in (['--help'], ['run', '--help'], ['list', 'suites']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as e:\n"
            "        assert e.code in (0, None), e.code\n"
            f"print('LOADED', sorted(m for m in {LIBRARIES!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out and "--log-to TRACKERS" in out


def test_bench_run_refuses_an_unknown_tracker_in_one_line_before_anything_starts(tmp_path):
    result = subprocess.run([*BENCH_CLI, "run", "--log-to", "mlflow,neptune", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        "bench: error: --log-to 'mlflow,neptune': unknown tracker 'neptune'; choose from mlflow, tensorboard, wandb "
        "(comma-separated), or none"]
    assert not (tmp_path / "run").exists()


def test_bench_run_refuses_a_missing_library_before_any_trial(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from memft_bench.harness.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    monkeypatch.setenv("BENCH_ALLOW_UNSUPPORTED_STACK", "1")
    result = CliRunner().invoke(main, ["run", "--log-to", "wandb", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "bench: error: --log-to wandb: wandb not installed; pip install 'memft-bench[wandb]'" in result.output
    assert not (tmp_path / "run").exists()


def test_the_loss_curve_keeps_its_steps_and_the_intervals_are_the_reports():
    from memft_bench.harness.core.stats import normal_average, wilson

    assert records.wilson is wilson and records.normal_average is normal_average  # the report's own, no copy
    row = {"steps": 450, "loss_curve": [1.0, None, 0.5], "accuracy": 0.6,
           "accuracy_per_task": {"a": 0.5, "b/c": 0.7}, "eval_items": {"a": 30, "b/c": 40}}
    assert records.series_of(row) == {"loss": [(0, 1.0), (4, 0.5)]}  # a NaN (null) step is left out
    intervals = records.accuracy_intervals(row)
    mean, low, high = normal_average({"a": (0.5, 30), "b/c": (0.7, 40)})
    assert (intervals["accuracy_ci_low"], intervals["accuracy_ci_high"]) == pytest.approx((low, high))
    assert intervals["accuracy/b_c/ci_high"] == pytest.approx(wilson(28, 40)[1])


def test_the_report_goes_with_the_figures_it_shows(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "b.png").write_bytes(b"png")
    report = tmp_path / "report.md"
    report.write_text("![one](a.png)\n![missing](gone.png)\n![again](a.png)\n", encoding="utf-8")
    assert report_files(report) == [report, tmp_path / "a.png"]
    assert report_files(tmp_path / "none.md") == []
