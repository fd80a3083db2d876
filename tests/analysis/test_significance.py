"""Intervals, paired comparisons and ties in reports, and `bench compare`'s significance rule, on run
directories this test writes (rows plus per-item records), with no training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from memft_bench.harness.cli import main
from memft_bench.harness.results import predictions
from memft_bench.harness.results.rows import append_row, empty_row, load_frame

TASKS = {"boolq": 120, "piqa": 120}


def _write_run(directory, correct: dict[str, dict[str, list[int]]], seed: int = 0) -> None:
    """One commonsense-like row per method (two test sets) with its per-item records."""
    for method, per_task in correct.items():
        trial_id = f"commonsense/{method}/seed{seed}/abc"
        lines = [{"trial_id": trial_id, "task": t, "index": i, "answer": "a", "prediction": "a" if c else "b",
                  "correct": bool(c)} for t, values in per_task.items() for i, c in enumerate(values)]
        predictions.write(directory / predictions.relative_path(trial_id), lines)
        per = {t: sum(v) / len(v) for t, v in per_task.items()}
        append_row(directory / "results.jsonl", empty_row(
            run_id=directory.name, trial_id=trial_id, suite="commonsense-cpu", task="commonsense", method=method,
            seed=seed, device="cpu", status="ok", accuracy=sum(per.values()) / len(per), accuracy_per_task=per,
            eval_items={t: len(v) for t, v in per_task.items()}, predictions=predictions.relative_path(trial_id),
            steps=10, batch_size=4, mem_weights_mb=1.0, mem_grads_mb=1.0, mem_optimizer_mb=1.0,
            trainable_params=10, optimizer_state_elements=20, peak_mem_rss_mb=100.0, step_time_ms_median=5.0))


def _methods(seed: int = 0) -> dict[str, dict[str, list[int]]]:
    rng = np.random.default_rng(seed)
    full = {t: rng.integers(0, 2, n).tolist() for t, n in TASKS.items()}
    lora = {t: list(v) for t, v in full.items()}
    for t in lora:  # two items flip: inside the noise
        lora[t][lora[t].index(0)] = 1
    mezo = {t: [0] * (n // 2) + [1] * (n - n // 2) for t, n in TASKS.items()}
    mezo = {t: [int(x and y) for x, y in zip(v, full[t])] for t, v in mezo.items()}  # right on far fewer items
    return {"full": full, "lora": lora, "mezo": mezo}


@pytest.fixture
def run_dir(tmp_path):
    directory = tmp_path / "run"
    _write_run(directory, _methods())
    return directory


def test_predictions_reproduce_the_rows_accuracies(run_dir):
    frame = load_frame([run_dir])
    for _, row in frame.iterrows():
        items = predictions.for_row(row.to_dict())
        assert items is not None
        for task, accuracy in row["accuracy_per_task"].items():
            assert np.mean(list(items[task].values())) == pytest.approx(accuracy)


def test_records_that_do_not_match_their_row_are_not_used(run_dir):
    frame = load_frame([run_dir])
    row = frame.iloc[0].to_dict()
    row["accuracy_per_task"] = {t: a - 0.1 for t, a in row["accuracy_per_task"].items()}
    assert predictions.for_row(row) is None
    assert predictions.for_row({**frame.iloc[0].to_dict(), "predictions": "predictions/none.jsonl"}) is None


def test_report_shows_intervals_paired_differences_and_ties(run_dir, tmp_path):
    from memft_bench.harness.analysis.report import write_report

    text = write_report([run_dir], tmp_path / "out", with_figures=False).read_text(encoding="utf-8")
    assert "Wilson" in text and "bootstrap over items" in text
    table = text.split("## Accuracy")[1].split("###")[0]
    assert table.count("[") >= 9  # every cell of 3 methods x (2 tasks + average) has its interval
    paired = text.split("### Paired comparison against `full`")[1].split("###")[0]
    lora_line = next(line for line in paired.splitlines() if line.startswith("| lora"))
    mezo_line = next(line for line in paired.splitlines() if line.startswith("| mezo"))
    assert "no (tied)" in lora_line and "paired bootstrap" in lora_line
    assert "**yes**" in mezo_line
    ranking = text.split("### Ranking")[1]
    lines = [line for line in ranking.splitlines() if line.startswith("|")][2:]
    ranks = {line.split("|")[2].strip(): line.split("|")[1].strip() for line in lines}
    assert ranks["lora"] == ranks["full"] == "1" and ranks["mezo"] == "3"


def test_reference_option_changes_the_paired_reference(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["report", str(run_dir), "-o", str(tmp_path / "r"), "--no-figures",
                                       "--reference", "lora", "-q"])
    assert result.exit_code == 0, result.output
    assert "### Paired comparison against `lora`" in (tmp_path / "r" / "REPORT.md").read_text(encoding="utf-8")


def _lowered_copy(run_dir, tmp_path, method: str, by: float):
    """A copy of the run whose `method` row reports an accuracy lower by `by` (its records left as they were)."""
    copy = tmp_path / f"lowered-{by}"
    shutil.copytree(run_dir, copy)
    rows = [json.loads(line) for line in (copy / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    with open(copy / "results.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            if row["method"] == method:
                row["accuracy"] -= by
                row["accuracy_per_task"] = {t: a - by for t, a in row["accuracy_per_task"].items()}
            f.write(json.dumps(row) + "\n")
    return copy


def test_compare_flags_only_a_significant_drop_beyond_the_tolerance(run_dir, tmp_path):
    tolerance = tmp_path / "tol.yaml"
    tolerance.write_text("accuracy_abs: 0.01\n", encoding="utf-8")
    small = CliRunner().invoke(main, ["compare", str(run_dir), str(_lowered_copy(run_dir, tmp_path, "lora", 0.03)),
                                      "--tolerance", str(tolerance)])
    assert small.exit_code == 0, small.output
    assert "within noise" in small.output and "[" in small.output  # the interval is printed
    large = CliRunner().invoke(main, ["compare", str(run_dir), str(_lowered_copy(run_dir, tmp_path, "lora", 0.25)),
                                      "--tolerance", str(tolerance)])
    assert large.exit_code == 1, large.output
    line = next(line for line in large.output.splitlines() if "REGRESSION" in line)
    assert "lora" in line and "accuracy" in line and "unpaired normal" in line


def test_compare_pairs_items_when_both_runs_kept_matching_records(tmp_path):
    base, worse = tmp_path / "base", tmp_path / "worse"
    methods = _methods()
    _write_run(base, {"lora": methods["lora"]})
    degraded = {t: list(v) for t, v in methods["lora"].items()}
    for t in degraded:  # 20 right answers per task become wrong, none the other way
        ones = [i for i, c in enumerate(degraded[t]) if c][:20]
        for i in ones:
            degraded[t][i] = 0
    _write_run(worse, {"lora": degraded})
    result = CliRunner().invoke(main, ["compare", str(base), str(worse)])
    assert result.exit_code == 1
    assert "paired bootstrap" in next(line for line in result.output.splitlines() if "REGRESSION" in line)


def test_compare_of_baseline_rows_without_records_still_works(run_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    with open(bare / "results.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            row.pop("predictions")
            f.write(json.dumps(row) + "\n")
    result = CliRunner().invoke(main, ["compare", str(bare), str(run_dir)])
    assert result.exit_code == 0, result.output


def test_every_planned_trial_has_its_own_predictions_file(tmp_path):
    from memft_bench.harness.run import planning
    from memft_bench.harness.spec.config import load_suite

    plan = planning.plan(load_suite("tiny"), ["full", "lora"], tmp_path / "run", "cpu")
    files = [t.spec["predictions_file"] for t in plan.trials]
    assert len(set(files)) == len(files) == len(plan.trials)
    for t in plan.trials:
        assert t.spec["predictions_file"] == str(tmp_path / "run" / predictions.relative_path(t.trial_id))
