"""Determinism: the same commit, seed and machine give identical rows (issue "Fair by protocol", item 6).

The trial of a method with randomness of its own (SGC's random A, MeZO's perturbations z) is run twice, in
this process and as the runner runs it (`python -m memft_bench.harness.trial SPEC ROW`, a fresh process),
and everything the trial computes must be bitwise identical: the loss curve, the first and last losses, the
accuracies, the method's diagnostics and every item's prediction and scores. Only what measures the machine
(times, memory peaks, timestamps, the environment) may differ. Two seeds must give different loss curves,
so the comparison can fail. What differs across machines (another CPU model or thread count) is not
asserted here: see reports/determinism/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memft_bench.harness.results.predictions import read
from memft_bench.harness.run.planning import plan
from memft_bench.harness.spec.config import suite_from_data
from memft_bench.harness.trial.worker import run_trial
from tests.conftest import small_suite_data

#: Sizes for the small suite's weights (v_proj has 512 entries there): s < k <= 512.
PARAMS = {"sgc": {"lr": 1e-2, "k": 32, "s": 4}, "mezo": {"lr": 1e-3, "eps": 1e-3}}
#: Row columns that measure the machine or the moment, not what the trial computed.
MEASURED = {
    "started_at", "finished_at", "env", "step_time_ms_curve", "step_time_ms_median", "step_time_ms_p90",
    "tokens_per_s", "train_time_s", "eval_time_s", "mem_other_mb", "peak_mem_rss_mb", "peak_mem_rss_eval_mb",
    "peak_mem_allocated_mb", "peak_mem_reserved_mb", "peak_mem_allocated_eval_mb", "peak_mem_nvml_mb",
    "peak_mem_nvml_process_mb", "peak_mem_nvml_eval_mb", "peak_mem_training_mb", "mem_prediction_error_pct",
    "mem_cpu_library_pages_mb",
    "meter_notes",
}


def _spec(tmp_path: Path, method: str, seed: int = 0, run: str = "a") -> dict[str, Any]:
    data = small_suite_data(steps=6)
    data["seeds"] = [seed]
    data["methods"] = {method: PARAMS[method]}
    suite = suite_from_data(data, "determinism")
    (trial,) = plan(suite, [method], tmp_path / run / "run", "cpu").trials  # one run_id
    spec = dict(trial.spec)
    spec.pop("untrained_score_file", None)
    return spec


def _computed(row: dict[str, Any]) -> dict[str, Any]:
    """The row without what measures the machine; the method's diagnostics without their timings."""
    out = {k: v for k, v in row.items() if k not in MEASURED}
    if out.get("method_metrics"):
        out["method_metrics"] = {k: v for k, v in out["method_metrics"].items()
                                 if "time" not in k and "share" not in k}
    return out


def _run_in_process(spec: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    row = run_trial(spec)
    assert row["status"] == "ok", row["reason"]
    return row, read(Path(spec["predictions_file"]))


def _run_as_worker(spec: dict[str, Any], tmp_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec_path, row_path = tmp_path / "spec.json", tmp_path / "row.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "memft_bench.harness.trial", str(spec_path), str(row_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    row = json.loads(row_path.read_text(encoding="utf-8"))
    assert row["status"] == "ok", row["reason"]
    return row, read(Path(spec["predictions_file"]))


def _assert_identical(first: dict[str, Any], second: dict[str, Any]) -> None:
    a, b = _computed(first), _computed(second)
    for key in ("loss_curve", "loss_first", "loss_last", "accuracy", "accuracy_per_task", "steps"):
        assert a[key] == b[key], (key, a[key], b[key])  # == on floats parsed from JSON: bitwise
    assert a == b, sorted(k for k in a if a[k] != b.get(k))


@pytest.mark.parametrize("method", ["sgc", "mezo"])
def test_same_seed_gives_identical_rows_and_predictions(tmp_path, method):
    first, first_items = _run_in_process(_spec(tmp_path, method, run="a"))
    second, second_items = _run_in_process(_spec(tmp_path, method, run="b"))
    assert len(first["loss_curve"]) == 6 and first["loss_curve"][0] != first["loss_curve"][-1]  # it trained
    _assert_identical(first, second)
    assert first_items == second_items  # every item's prediction and its options' scores
    assert first["method_params"] == {**first["method_params"], **PARAMS[method]}


def test_the_worker_process_gives_the_in_process_row(tmp_path):
    """The runner's fresh process per trial computes what this process does (no state carried in)."""
    here, here_items = _run_in_process(_spec(tmp_path, "sgc", run="a"))
    there, there_items = _run_as_worker(_spec(tmp_path, "sgc", run="b"), tmp_path)
    _assert_identical(here, there)
    assert here_items == there_items


@pytest.mark.parametrize("method", ["sgc", "mezo"])
def test_another_seed_gives_another_loss_curve(tmp_path, method):
    """The seed reaches the trial (data order, the model, the method's randomness): the test above can fail."""
    zero, _ = _run_in_process(_spec(tmp_path, method, seed=0, run="a"))
    one, _ = _run_in_process(_spec(tmp_path, method, seed=1, run="b"))
    assert zero["loss_curve"] != one["loss_curve"]
    assert zero["loss_last"] != one["loss_last"]


def test_another_projection_seed_alone_changes_sgc(tmp_path):
    """SGC's own randomness (A) alone, with the data order and the model fixed, changes its trajectory."""
    spec = _spec(tmp_path, "sgc", run="a")
    other = _spec(tmp_path, "sgc", run="b")
    other["method_params"] = {**other["method_params"], "projection_seed": 1}
    first, _ = _run_in_process(spec)
    second, _ = _run_in_process(other)
    assert first["loss_curve"][0] == second["loss_curve"][0]  # the same model and first batch
    assert first["loss_curve"] != second["loss_curve"]
