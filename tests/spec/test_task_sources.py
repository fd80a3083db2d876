"""The task schema for math and the user's own files: defaults, cross-checks, and paths from the suite file."""

from __future__ import annotations

import copy

import pytest

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.fingerprint import fingerprint
from memft_bench.harness.core.options import to_dict
from memft_bench.harness.spec.config import load_suite, suite_from_data

BASE = {
    "name": "own",
    "model": {"kind": "tiny-llama"},
    "tasks": [{"name": "mine", "source": "file", "train_file": "train.jsonl", "scoring": "choice",
               "options": ["yes", "no"], "columns": {"prompt": "question", "answer": "label"}}],
}


def suite_with(**task_fields):
    data = copy.deepcopy(BASE)
    data["tasks"][0].update(task_fields)
    return data


def test_a_valid_file_task_loads():
    task = suite_from_data(suite_with(), "s.yaml").tasks[0]
    assert task.scoring == "choice" and task.options == ["yes", "no"] and task.task_family == "mine"


@pytest.mark.parametrize(("fields", "message"), [
    ({"train_file": None}, r"s\.yaml\.tasks\[0\]\.train_file: required"),
    ({"scoring": ""}, r"tasks\[0\]\.scoring: required .*choice, exact, number, regex"),
    ({"scoring": "fuzzy"}, r"tasks\[0\]\.scoring: .*got 'fuzzy'"),
    ({"columns": {"prompt": "q"}}, r"tasks\[0\]\.columns\.answer: required"),
    ({"columns": {"prompt": "q", "answer": "a", "label": "x"}}, r"tasks\[0\]\.columns: unknown key 'label'"),
    ({"options": ["yes"]}, r"tasks\[0\]\.options: scoring choice needs at least two"),
    ({"scoring": "number"}, r"tasks\[0\]\.options: only scoring choice has options"),
    ({"scoring": "regex", "options": []}, r"tasks\[0\]\.answer_regex: required for scoring regex"),
    ({"scoring": "regex", "options": [], "answer_regex": "(unclosed"}, r"answer_regex: not a valid regular"),
    ({"answer_regex": "x"}, r"tasks\[0\]\.answer_regex: only scoring regex"),
    ({"test_fraction": 0.95}, r"test_fraction"),
])
def test_bad_file_task_fields_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        suite_from_data(suite_with(**fields), "s.yaml")


def test_file_fields_on_another_source_are_refused():
    data = {"name": "x", "tasks": [{"name": "k", "generator": "kind", "train_file": "t.csv"}]}
    with pytest.raises(ConfigError, match="are for source: file"):
        suite_from_data(data, "s.yaml")


def test_math_tasks_default_to_gsm8k_and_check_their_test_sets():
    data = {"name": "m", "tasks": [{"name": "gsm", "source": "math"}]}
    task = suite_from_data(data, "s.yaml").tasks[0]
    assert task.eval_tasks == ["gsm8k"] and task.task_family == "math"
    data["tasks"][0]["eval_tasks"] = ["gsm8k", "SVAMP", "AQuA"]
    assert suite_from_data(data, "s.yaml").tasks[0].eval_tasks == ["gsm8k", "SVAMP", "AQuA"]
    data["tasks"][0]["eval_tasks"] = ["boolq"]
    with pytest.raises(ConfigError, match=r"eval_tasks: each must be one of gsm8k, AddSub.*\['boolq'\]"):
        suite_from_data(data, "s.yaml")


def test_llm_adapters_mode_refuses_tasks_scored_by_a_rule():
    data = {"name": "m", "tasks": [{"name": "gsm", "source": "math"}], "evaluation": {"mode": "llm-adapters"}}
    with pytest.raises(ConfigError, match="evaluation.mode: llm-adapters .* use mode generate"):
        suite_from_data(data, "s.yaml")


def test_relative_data_files_are_read_from_the_suite_files_folder(tmp_path):
    import yaml

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "own.yaml").write_text(yaml.safe_dump(suite_with(test_file="/abs/test.csv")), encoding="utf-8")
    task = load_suite(str(folder / "own.yaml")).tasks[0]
    assert task.train_file == str(folder / "train.jsonl")
    assert task.test_file == "/abs/test.csv"


def test_new_task_fields_leave_existing_fingerprints_alone():
    """Rows recorded before these fields existed keep their trial ids (resume, baselines)."""
    task = load_suite("tiny").tasks[0]
    data = to_dict(task)
    old = {k: v for k, v in data.items() if k not in ("train_file", "test_file", "test_fraction", "columns",
                                                      "scoring", "options", "answer_regex", "family")}
    assert fingerprint(data) == fingerprint(old)
    assert fingerprint({**data, "family": "other"}) != fingerprint(old)
