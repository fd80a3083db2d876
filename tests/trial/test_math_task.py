"""A `source: math` task through a whole trial, on a small data folder in GSM8K's and LLM-Adapters' layouts: the
training data leaves out test questions, the tests are scored from generated text by their rules, and the row and
per-item records say how."""

from __future__ import annotations

import json

from memft_bench.harness.results import predictions
from memft_bench.harness.run.planning import plan
from memft_bench.harness.spec.config import load_suite, suite_from_data
from memft_bench.harness.trial.data import load_task
from memft_bench.harness.trial.worker import run_trial
from tests.conftest import small_suite_data


def _math_folder(root):
    questions = [(f"A farmer has {a} cows and buys {b} more. How many cows?", a + b) for a in range(2, 8)
                 for b in range(1, 4)]
    train = [{"question": q, "answer": f"{q.split()[3]} + {n - int(q.split()[3])} = <<x>>{n} cows.\n#### {n:,}"}
             for q, n in questions]
    test = [{"question": questions[0][0], "answer": f"#### {questions[0][1]}"},  # repeats a training question
            {"question": "What is 1,000 plus 234?", "answer": "1000 + 234 = 1234\n#### 1,234"}]
    (root / "gsm8k").mkdir(parents=True)
    (root / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    (root / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test), encoding="utf-8")
    aqua = [{"instruction": "Pick one. Answer Choices: (A) 1 (B) 2", "input": "", "output": "", "answer": "B"}]
    (root / "math" / "AQuA").mkdir(parents=True)
    (root / "math" / "AQuA" / "test.json").write_text(json.dumps(aqua), encoding="utf-8")
    return questions


def _suite(root):
    data = small_suite_data(steps=2)
    data["tasks"] = [{"name": "gsm", "source": "math", "data_dir": str(root), "eval_tasks": ["gsm8k", "AQuA"]}]
    data["evaluation"] = {"batch_size": 8, "max_new_tokens": 4}
    return suite_from_data(data, "math test")


def test_math_data_leaves_test_questions_out_of_training(tmp_path):
    questions = _math_folder(tmp_path / "data")
    suite = _suite(tmp_path / "data")
    task = load_task(suite.tasks[0], suite, seed=0)
    assert len(task.train) == len(questions) - 1  # the repeated test question is not trained on
    assert questions[0][0] not in {r["instruction"] for r in task.train}
    assert all("<<" not in r["output"] for r in task.train)
    assert [r["answer"] for r in task.tests["gsm8k"]] == [str(questions[0][1]), "1234"]
    assert task.scoring("gsm8k").kind == "number" and task.scoring("AQuA").kind == "letter"
    assert "1 that repeat a test question left out" in task.source


def test_a_math_trial_scores_generations_by_their_rules(tmp_path):
    _math_folder(tmp_path / "data")
    suite = _suite(tmp_path / "data")
    (trial,) = plan(suite, ["full"], tmp_path / "run", "cpu").trials
    row = run_trial(trial.spec)
    assert row["status"] == "ok", row["reason"]
    assert row["eval_items"] == {"gsm8k": 2, "AQuA": 1} and row["task_family"] == "math"
    assert row["scoring"]["gsm8k"].startswith("final number (LLM-Adapters")
    assert row["scoring"]["gsm8k"].endswith("greedy decoding, at most 4 new tokens")
    assert row["scoring"]["AQuA"].startswith("option letter")
    items = predictions.read(tmp_path / "run" / row["predictions"])
    assert {i["task"] for i in items} == {"gsm8k", "AQuA"} and all("output" in i for i in items)


def test_the_built_in_math_suites_load_and_score_by_number():
    for name in ("math", "math-cpu"):
        suite = load_suite(name)
        (task,) = suite.tasks
        assert task.source == "math" and task.eval_tasks == ["gsm8k"] and suite.evaluation.mode == "generate"
    assert load_suite("math-cpu").model.path == "smollm2-135m"
