"""A task declared on the user's own files, no Python: a JSONL multiple-choice task and a CSV task scored by the
final number of a generation run end to end; a CSV with bad rows stops the run before any trial, in one line."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.cli.test_cli import _one_line_error, bench
from tests.conftest import small_suite_data


def _own_suite(tmp_path, tasks: list[dict]) -> str:
    suite = small_suite_data(steps=3)
    suite["tasks"] = tasks
    suite["evaluation"]["max_new_tokens"] = 6
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    return str(path)


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _write_csv(path, header, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.mark.slow  # two trials in subprocesses
def test_own_jsonl_and_csv_tasks_run_and_are_reported(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    animals = ["dog", "cat", "horse", "cow", "bird"]
    things = ["stone", "chair", "table", "spoon", "cup"]
    _write_jsonl(data / "alive.jsonl", [{"q": f"is a {w} alive?", "label": "yes" if w in animals else "no"}
                                        for w in (animals + things) * 4])
    _write_csv(data / "sums.csv", ["question", "solution", "result"],
               [[f"what is {a} plus {b}?", f"{a} plus {b} is {a + b}. #### {a + b}", str(a + b)]
                for a in range(6) for b in range(5)])
    suite = _own_suite(tmp_path, [
        {"name": "alive", "source": "file", "train_file": "data/alive.jsonl", "scoring": "choice",
         "options": ["yes", "no"], "columns": {"prompt": "q", "answer": "label"}, "test_fraction": 0.25},
        {"name": "sums", "source": "file", "train_file": "data/sums.csv", "scoring": "number", "family": "arithmetic",
         "columns": {"prompt": "question", "response": "solution", "answer": "result"}, "test_fraction": 0.2},
    ])
    out = tmp_path / "run"
    result = bench("run", "--suite", suite, "--methods", "full", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = {r["task"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["alive"]["status"] == rows["sums"]["status"] == "ok"
    assert rows["alive"]["eval_items"] == {"alive": 10} and rows["sums"]["eval_items"] == {"sums": 6}
    assert rows["alive"]["task_family"] == "alive" and rows["sums"]["task_family"] == "arithmetic"
    assert rows["alive"]["scoring"] == {"alive": "multiple choice; the option with the highest log-likelihood"}
    assert rows["sums"]["scoring"]["sums"].startswith("final number (LLM-Adapters")
    assert rows["sums"]["scoring"]["sums"].endswith("; greedy decoding, at most 6 new tokens")
    assert "alive.jsonl" in rows["alive"]["data_source"]
    items = [json.loads(line) for line in (out / rows["sums"]["predictions"]).read_text().splitlines()]
    assert len(items) == 6 and all("output" in item for item in items)
    train_rows = {i for i in range(30)}
    assert {item["index"] for item in items} <= train_rows  # indices name the CSV's data rows
    report = (out / "report.md").read_text()
    assert "| sums " in report and "| alive " in report and "alive average" not in report  # one set a family
    assert "mean of the 2 test sets' accuracies (alive: alive; arithmetic: sums)" in report


def test_bad_rows_stop_the_run_in_one_line_before_any_trial(tmp_path):
    _write_csv(tmp_path / "bad.csv", ["question", "label"], [["is it?", "yes"], ["and this?", ""], ["so?", "no"]])
    suite = _own_suite(tmp_path, [{"name": "mine", "source": "file", "train_file": "bad.csv", "scoring": "choice",
                                   "options": ["yes", "no"], "columns": {"prompt": "question", "answer": "label"}}])
    out = tmp_path / "run"
    _one_line_error(bench("run", "--suite", suite, "--methods", "full", "--out", str(out)),
                    "bad.csv", "row 2 (line 3)", "column 'label'", "empty")
    assert not (out / "results.jsonl").exists()

    _write_csv(tmp_path / "bad.csv", ["question", "label"], [["is it?", "yes"], ["and this?", "maybe"]])
    _one_line_error(bench("run", "--suite", suite, "--methods", "full", "--out", str(out)),
                    "bad.csv", "row 2", "column 'label'", "'maybe' is not one of the options yes/no")
    suite_missing = _own_suite(tmp_path, [{"name": "mine", "source": "file", "train_file": "bad.csv",
                                           "scoring": "exact", "columns": {"prompt": "question", "answer": "gold"}}])
    _one_line_error(bench("run", "--suite", suite_missing, "--out", str(out)), "bad.csv", "no column 'gold'")
    assert not (out / "results.jsonl").exists()
