"""The tuning protocol: the grid, the choice on validation scores, the validation split's disjointness, the
refusals of bad settings, and a tuned run end to end (search rows never scored on the tests)."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from memft_bench.harness.core.errors import BenchError, ConfigError
from memft_bench.harness.run import planning, tuning
from memft_bench.harness.spec.config import suite_from_data
from memft_bench.harness.spec.tuning import TuningSpec, knob_values, method_grid
from tests.cli.test_cli import _one_line_error, bench
from tests.conftest import small_suite_data


def _tuned(**tuning_fields) -> dict:
    data = small_suite_data(steps=4)
    data["methods"] = {"full": {"lr": 1e-3}, "lora": {"lr": 1e-3, "r": 2}, "mezo": {"lr": 1e-4}}
    data["tuning"] = {"knobs": {"lr": {"scale": [0.3, 1, 3]}}, "steps": 3, "validation_size": 16, **tuning_fields}
    return data


def test_knob_values_in_each_form():
    assert knob_values([1, 2], 5, "w") == [1, 2]
    assert knob_values({"scale": [0.1, 1, 10]}, 3e-4, "w") == [3e-5, 3e-4, 3e-3]
    assert knob_values({"log_range": [1e-4, 1e-2], "points": 3}, None, "w") == [1e-4, 1e-3, 1e-2]
    with pytest.raises(ConfigError, match="scale needs the method's own value"):
        knob_values({"scale": [1, 2]}, None, "w")
    spec = TuningSpec(knobs={"lr": [1e-4, 1e-3], "r": [2, 4]}, methods={"mezo": {"lr": [1e-6, 1e-5]}})
    assert method_grid(spec, "lora", {"lr": 1e-3, "r": 8}) == [
        {"lr": 1e-4, "r": 2}, {"lr": 1e-4, "r": 4}, {"lr": 1e-3, "r": 2}, {"lr": 1e-3, "r": 4}]
    assert [c["lr"] for c in method_grid(spec, "mezo", {"lr": 1e-6, "r": 8})] == [1e-6, 1e-6, 1e-5, 1e-5]


@pytest.mark.parametrize(("fields", "message"), [
    ({"knobs": {}}, "tuning.knobs: name at least one knob"),
    ({"knobs": {"lr": []}}, "tuning.knobs.lr: an empty grid searches nothing"),
    ({"knobs": {"lr": {"log_range": [1e-2, 1e-4], "points": 3}}}, "log_range: expected [low, high]"),
    ({"knobs": {"lr": {"scale": []}}}, "scale: expected a non-empty list"),
    ({"steps": 1}, "tuning.steps: 1 search steps leave none to time after the 1 warm-up steps"),
    ({"methods": {"lora": {"r": [2]}}}, "methods.lora.r: not a knob of the search"),
])
def test_bad_tuning_settings_are_refused_by_name(fields, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        suite_from_data(_tuned(**fields), "t.yaml").tuning_spec("t.yaml")


def _search_plan(data, methods, tmp_path):
    suite = suite_from_data(data, "t.yaml")
    spec = suite.tuning_spec()
    tuning.prepare(suite, spec)
    return suite, spec, planning.plan(suite, methods, tmp_path, "cpu", stage=tuning.search_stage(suite, spec, methods))


def test_knobs_a_method_lacks_and_unequal_grids_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="tuning.knobs.r: method full has no option 'r'"):
        _search_plan(_tuned(knobs={"r": [2, 4]}), ["full", "lora"], tmp_path)
    with pytest.raises(ConfigError, match="same number of configurations .*full 3, lora 2"):
        _search_plan(_tuned(methods={"lora": {"lr": [1e-3, 1e-2]}}), ["full", "lora"], tmp_path)


def test_a_validation_split_larger_than_the_training_data_is_refused(tmp_path):
    data = _tuned(validation_size=64)  # the task has 64 training records
    with pytest.raises(BenchError, match="validation_size: 64 is too many: the task's 64 training records"):
        _search_plan(data, ["full"], tmp_path)


def test_search_plan_has_every_configuration_on_one_seed_with_the_search_budget(tmp_path):
    data = _tuned()
    data["seeds"] = [3, 4]
    suite, spec, plan = _search_plan(data, ["full", "lora"], tmp_path)
    assert [t.variant for t in plan.trials] == ["lr=0.0003", "lr=0.001", "lr=0.003"] * 2
    assert {t.seed for t in plan.trials} == {3}
    assert all(t.spec["phase"] == "search" and t.spec["suite"]["budget"]["steps"] == 3 for t in plan.trials)
    assert all(t.spec["suite"]["evaluation"]["before_training"] is False for t in plan.trials)
    assert all("/search/" in t.trial_id for t in plan.trials)
    assert suite.tasks[0].validation_size == 16


def _rows(plan, scores):
    return [{"trial_id": t.trial_id, "status": status, "validation_accuracy": acc, "validation_loss": loss}
            for t, (status, acc, loss) in zip(plan.trials, scores)]


def test_the_choice_is_the_best_validation_accuracy_then_the_lowest_loss(tmp_path):
    data = _tuned()
    data["tuning"]["knobs"] = {"lr": [1e-4, 3e-4, 1e-3, 3e-3]}
    _, spec, plan = _search_plan(data, ["full", "lora"], tmp_path)
    rows = _rows(plan, [("ok", 0.5, 1.0), ("ok", 0.7, 0.9), ("ok", 0.7, 0.8), ("diverged", None, None),
                        ("ok", 0.2, 1.0), ("error", None, None), ("ok", 0.2, 2.0), ("ok", 0.9, 3.0)])
    choices = tuning.choose(plan, rows, spec)
    full, lora = choices[("kind", "full", "")], choices[("kind", "lora", "")]
    assert full.values == {"lr": 1e-3} and full.on_edge == []  # tie at 0.7: the lower loss
    assert lora.values == {"lr": 3e-3} and lora.on_edge == ["lr"]  # the largest value searched
    assert [s["status"] for s in full.searched] == ["ok", "ok", "ok", "diverged"]
    nothing = tuning.choose(plan, _rows(plan, [("diverged", None, None)] * 8), spec)[("kind", "full", "")]
    assert nothing.values is None and "no configuration of the search finished ok" in nothing.reason


def test_the_validation_split_is_disjoint_from_test_and_training_data():
    from memft_bench.harness.trial.data import item_key, load_task

    data = small_suite_data()
    data["tasks"][0].update(generator="category", train_size=400, test_size=100, validation_size=30)
    suite = suite_from_data(data, "t.yaml")
    task = load_task(suite.tasks[0], suite, seed=0)
    again = load_task(suite.tasks[0], suite, seed=7)
    validation = {item_key(r) for r in task.validation}
    assert len(task.validation) == len(validation) == 30
    assert not validation & {item_key(r) for r in task.train}
    assert not validation & {item_key(r) for r in task.tests["kind"]}
    assert task.validation == again.validation  # the same split for every seed
    assert len(task.validation_indices) == 30


def test_a_task_whose_tests_repeat_its_training_questions_is_held_out_by_record_and_says_so():
    """tiny's kind task asks 48 questions, 47 of them in its test set: no split by question exists, so records are
    held out (never trained on) and the data source says that validation, test and training share questions."""
    from memft_bench.harness.trial.data import load_task

    data = small_suite_data()
    data["tasks"][0].update(train_size=2000, test_size=200, validation_size=20)
    suite = suite_from_data(data, "t.yaml")
    task = load_task(suite.tasks[0], suite, seed=0)
    assert len(task.validation) == 20 and len(task.train) == 1980
    assert "held out by record, not by question (the task asks only 48 distinct questions, 47 of them" in task.source
    assert not any(r is v for r in task.train for v in task.validation)  # no held-out record is trained on


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # a tuned run in subprocesses: 6 search and 3 final trials
def test_a_tuned_run_scores_the_search_on_validation_only_and_reports_it(tmp_path):
    data = copy.deepcopy(_tuned())
    data["seeds"] = [0]
    suite_file = tmp_path / "t.yaml"
    suite_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "run"
    result = bench("run", "--suite", str(suite_file), "--methods", "full,lora", "--out", str(out), "--quiet",
                   "--jobs", "2")
    assert result.returncode == 0, result.stderr
    rows = _jsonl(out / "results.jsonl")
    search = [r for r in rows if r["phase"] == "search"]
    final = [r for r in rows if r["phase"] == "final"]
    assert len(search) == 6 and len(final) == 2
    for row in search:  # the search never scores a test item
        assert row["accuracy"] is None and row["accuracy_per_task"] is None and row["accuracy_per_task_before"] is None
        assert row["validation_items"] == 16 and row["steps"] == 3
        assert {item["task"] for item in _jsonl(out / row["predictions"])} == {"validation"}
    for row in final:
        record = row["tuning"]
        best = max(record["searched"], key=lambda s: (s["validation_accuracy"], -s["validation_loss"]))
        assert record["chosen"] == best["values"] and row["method_params"]["lr"] == best["values"]["lr"]
        assert row["steps"] == 4 and set(row["accuracy_per_task"]) == {"kind"}
    summary = json.loads((out / "tuning.json").read_text())
    assert len(summary["choices"]) == 2 and summary["validation_size"] == {"kind": 16}
    report = (out / "report.md").read_text()
    assert "## Tuning protocol" in report
    for row in search:
        assert f"lr={row['method_params']['lr']:.3g}" in report  # every searched value is shown
    assert report.count("| full ") >= 2 and "lr=0.0003]" not in report.split("## Tuning protocol")[0]


def test_bad_tuning_input_is_one_line_and_exit_2(tmp_path):
    data = _tuned(knobs={"r": [2, 4]})
    suite_file = tmp_path / "t.yaml"
    suite_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    _one_line_error(bench("run", "--suite", str(suite_file), "--methods", "full", "--out", str(tmp_path / "o")),
                    "method full has no option 'r'")
    data = _tuned(validation_size=500)
    suite_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    _one_line_error(bench("run", "--suite", str(suite_file), "--methods", "full", "--out", str(tmp_path / "o")),
                    "validation_size: 500 is too many")
    assert not (tmp_path / "o" / "results.jsonl").exists()
