"""`--eval-mode llm-adapters`: LLM-Adapters' prompt strings exactly, for a record of every task; their
response reading; the mode end to end on the tiny model, with its per-item records."""

from __future__ import annotations

import json

import pytest

from memft_bench.harness.sources.commonsense import TASKS, from_hub_records
from memft_bench.harness.trial import llm_adapters
from tests.commands import REPO_ROOT

ROOT = REPO_ROOT
SHARED = next((p / "shared" / "data" / "commonsense" for p in (ROOT.parent, ROOT.parent.parent)
               if (p / "shared" / "data" / "commonsense").is_dir()), ROOT.parent / "shared" / "data" / "commonsense")

# The strings as LLM-Adapters' scripts build them, written out line by line (16-space indents included):
# commonsense_evaluate.py's generate_prompt(instruction) ...
EVAL_HEAD = "Below is an instruction that describes a task. Write a response that appropriately completes the request. "
# ... and finetune.py's generate_prompt(data_point) without an input (two trailing spaces on its first line).
TRAIN_HEAD = ("Below is an instruction that describes a task. "
              "Write a response that appropriately completes the request.  ")
PAD = "                "


def expected_eval(instruction: str) -> str:
    return "\n".join([EVAL_HEAD, "", PAD + "### Instruction:", PAD + instruction, "", PAD + "### Response:", PAD])


def expected_train(instruction: str, output: str) -> str:
    return "\n".join([TRAIN_HEAD, "", PAD + "### Instruction:", PAD + instruction, PAD, PAD + "### Response:",
                      PAD + output])


HUB_ROWS = {
    "boolq": {"question": "is the sky blue", "answer": True},
    "piqa": {"goal": "open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
    "social_i_qa": {"context": "Ann gave Bo a gift.", "question": "How does Bo feel?", "answerA": "glad",
                    "answerB": "sad", "answerC": "angry", "label": "1"},
    "hellaswag": {"activity_label": "Cooking", "ctx": "A man cracks an egg", "endings": ["a", "b", "c", "d"],
                  "label": "2"},
    "winogrande": {"sentence": "The cup fell off the table because _ was tilted.", "option1": "the cup",
                   "option2": "the table", "answer": "2"},
    "ARC-Challenge": {"question": "What is H2O?", "choices": {"label": ["A", "B"], "text": ["water", "salt"]},
                      "answerKey": "A"},
    "ARC-Easy": {"question": "What is 2+2?", "choices": {"label": ["A", "B", "C"], "text": ["3", "4", "5"]},
                 "answerKey": "B"},
    "openbookqa": {"question_stem": "Plants need", "choices": {"label": ["A", "B", "C", "D"],
                                                                "text": ["light", "dark", "salt", "sand"]},
                   "answerKey": "A"},
}


def _records(task: str) -> list[dict[str, str]]:
    records = from_hub_records(task, [HUB_ROWS[task]])
    if SHARED.is_dir():
        records.append(json.loads((SHARED / task / "test.json").read_text(encoding="utf-8"))[0])
    return records


@pytest.mark.parametrize("task", TASKS)
def test_prompts_are_llm_adapters_strings_for_every_task(task):
    for record in _records(task):
        assert llm_adapters.eval_prompt(record) == expected_eval(record["instruction"])
        assert llm_adapters.train_prompt(record) + record["output"] == expected_train(record["instruction"],
                                                                                       record["output"])


def test_training_prompt_with_an_input_and_evaluation_that_ignores_it():
    record = {"instruction": "Do it.", "input": "ctx", "output": "done", "answer": "x"}
    head = ("Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request. ")
    assert llm_adapters.train_prompt(record) + "done" == "\n".join(
        [head, "", PAD + "### Instruction:", PAD + "Do it.", PAD, PAD + "### Input:", PAD + "ctx", PAD,
         PAD + "### Response:", PAD + "done"])
    assert llm_adapters.eval_prompt(record) == expected_eval("Do it.")  # their evaluation passes input=None


def test_response_is_read_after_the_first_response_marker():
    decoded = expected_eval("Q?") + "the correct answer is answer2 ### Response: answer1"
    assert llm_adapters.response_of(decoded) == "the correct answer is answer2"


def test_llm_adapters_mode_end_to_end_writes_the_generated_text(tmp_path):
    """A trial in this mode trains on their prompt, decodes with 4 beams, and records each output."""
    from memft_bench.harness.results.predictions import read
    from memft_bench.harness.trial.worker import run_trial
    from tests.conftest import small_suite_data

    data = small_suite_data()
    data["evaluation"] = {"mode": "llm-adapters", "batch_size": 16}
    data["tasks"][0]["test_size"] = 4
    path = tmp_path / "predictions" / "t.jsonl"
    spec = {"suite": data, "task": "kind", "method": "lora", "variant": "", "method_params": {"lr": 1e-3},
            "seed": 0, "device": "cpu", "run_id": "r", "trial_id": "kind/lora/seed0/x", "predictions_file": str(path)}
    row = run_trial(spec)
    assert row["status"] == "ok", row["reason"]
    lines = read(path)
    assert len(lines) == 4 and all("output" in line for line in lines)
    assert all(line["prompt"].startswith(EVAL_HEAD + "\n\n" + PAD + "### Instruction:\n") for line in lines)
    assert row["accuracy"] == sum(line["correct"] for line in lines) / 4
    assert row["predictions"] == "predictions/kind__lora__seed0__x.jsonl"
