"""The user's own files as a task: each format, each column mapping, every error line, and the seeded split."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.sources.user_files import (
    FileTask,
    load_file_task,
    read_rows,
    read_table,
    records_from_rows,
    split_indices,
)

QA = {"prompt": "question", "answer": "label"}
YES_NO = ["yes", "no"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_rows(n: int) -> list[dict]:
    return [{"question": f"is {i} even?", "label": "yes" if i % 2 == 0 else "no"} for i in range(n)]


def error_of(call, *args, **kwargs) -> str:
    """The BenchError's message, checked to be the one line the CLI prints."""
    with pytest.raises(BenchError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


# -- formats ----------------------------------------------------------------------------------------------------
def test_json_list(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(qa_rows(3)), encoding="utf-8")
    assert read_rows(path) == qa_rows(3)
    records = records_from_rows(read_rows(path), path, QA, "choice", YES_NO)
    assert records[1] == {"instruction": "is 1 even?", "input": "", "output": "no", "answer": "no"}


def test_json_lines_content_in_a_json_file(tmp_path):
    path = write_jsonl(tmp_path / "qa.json", qa_rows(3))
    assert read_rows(path) == qa_rows(3)


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "a", "label": "yes"}\n\n{"question": "b", "label": ""}\n', encoding="utf-8")
    table = read_table(path)
    assert table.lines == [1, 3] and table.columns == ["question", "label"]
    assert error_of(load_file_task, path, None, QA, "exact") == f"{path}: row 2 (line 3), column 'label': empty"


def test_json_scalars_become_text(tmp_path):
    rows = [{"q": "a", "n": 42}, {"q": "b", "n": True}, {"q": "c", "n": 3.0}, {"q": "d", "n": 0.1}]
    records = records_from_rows(rows, "f.json", {"prompt": "q", "answer": "n"}, "exact")
    assert [r["answer"] for r in records] == ["42", "true", "3.0", "0.1"]


def test_csv_keeps_every_cell_as_written(tmp_path):
    path = tmp_path / "qa.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "context", "label", "code"])
        writer.writerow(["pick one, or two?", "a, b", "yes", "007"])
        writer.writerow(["multi\nline", "", "true", "1e3"])
    rows = read_rows(path)
    assert rows == [{"question": "pick one, or two?", "context": "a, b", "label": "yes", "code": "007"},
                    {"question": "multi\nline", "context": "", "label": "true", "code": "1e3"}]
    assert read_table(path).lines == [2, 3]
    records = records_from_rows(rows, path, {"prompt": "question", "input": "context", "answer": "code"}, "exact")
    assert [r["answer"] for r in records] == ["007", "1e3"]
    assert records[0]["input"] == "a, b" and records[1]["input"] == ""


def test_csv_line_numbers_count_multiline_cells_and_blank_lines(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,label\n"two\nlines",yes\n\nthird,\n', encoding="utf-8")
    assert read_table(path).lines == [2, 5]
    message = error_of(load_file_task, path, None, QA, "choice", YES_NO)
    assert message == f"{path}: row 2 (line 5), column 'label': empty"


def test_csv_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("question,label\nq,yes\n".encode("utf-8-sig"))
    assert read_table(path).columns == ["question", "label"]


def test_parquet(tmp_path):
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "n": pa.array([7, None], pa.int64())}), path)
    assert read_rows(path) == [{"question": "a", "n": 7}, {"question": "b", "n": None}]
    message = error_of(load_file_task, path, None, {"prompt": "question", "answer": "n"}, "number")
    assert message == f"{path}: row 2, column 'n': empty"


def test_saved_dataset_folder_and_a_split_of_a_dataset_dict(tmp_path):
    data = datasets.Dataset.from_list(qa_rows(4))
    data.save_to_disk(str(tmp_path / "one"))
    assert read_rows(tmp_path / "one") == qa_rows(4)
    datasets.DatasetDict(train=data, test=data.select(range(2))).save_to_disk(str(tmp_path / "dd"))
    task = load_file_task("dd/train", "dd/test", QA, "choice", YES_NO, base_dir=tmp_path)
    assert len(task.train) == 4 and len(task.test) == 2
    message = error_of(read_rows, tmp_path / "dd")
    assert message == (f"{tmp_path / 'dd'}: a saved DatasetDict with splits train, test; point at one split's "
                       f"folder, e.g. {tmp_path / 'dd' / 'train'}")


# -- column mappings --------------------------------------------------------------------------------------------
ROWS = [{"q": "2+2?", "ctx": "arithmetic", "why": "2+2 is 4, so 4", "a": " 4 "}]


@pytest.mark.parametrize(("columns", "expected"), [
    ({"prompt": "q", "answer": "a"}, {"instruction": "2+2?", "input": "", "output": "4", "answer": "4"}),
    ({"prompt": "q", "input": "ctx", "answer": "a"},
     {"instruction": "2+2?", "input": "arithmetic", "output": "4", "answer": "4"}),
    ({"prompt": "q", "response": "why", "answer": "a"},
     {"instruction": "2+2?", "input": "", "output": "2+2 is 4, so 4", "answer": "4"}),
    ({"prompt": "q", "input": "ctx", "response": "why", "answer": "a"},
     {"instruction": "2+2?", "input": "arithmetic", "output": "2+2 is 4, so 4", "answer": "4"}),
])
def test_column_mappings(columns, expected):
    assert records_from_rows(ROWS, "f.jsonl", columns, "number") == [expected]


def test_an_empty_input_cell_is_allowed_an_empty_response_is_not():
    rows = [{"q": "x", "ctx": "", "why": "", "a": "1"}]
    columns = {"prompt": "q", "input": "ctx", "answer": "a"}
    assert records_from_rows(rows, "f.csv", columns, "exact")[0]["input"] == ""
    message = error_of(records_from_rows, rows, "f.csv", {**columns, "response": "why"}, "exact")
    assert message == "f.csv: row 1, column 'why': empty"


def test_a_test_file_may_lack_the_response_column(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"q": f"q{i}", "why": f"because {i}", "a": str(i)} for i in range(3)])
    write_jsonl(tmp_path / "test.jsonl", [{"q": "q9", "a": "9"}])
    task = load_file_task("train.jsonl", "test.jsonl", {"prompt": "q", "response": "why", "answer": "a"}, "number",
                          base_dir=tmp_path)
    assert task.train[0]["output"] == "because 0"
    assert task.test == [{"instruction": "q9", "input": "", "output": "9", "answer": "9"}]
    assert task.test_indices == [0]
    assert "train.jsonl (3 rows)" in task.source and "test.jsonl (1 rows)" in task.source


# -- errors -----------------------------------------------------------------------------------------------------
def test_missing_column_names_the_file_the_columns_and_the_key(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "a", "label": "yes", "extra": 1}])
    message = error_of(load_file_task, path, None, {"prompt": "question", "answer": "answer"}, "exact")
    assert message == (f"{path}: no column 'answer' (columns: question, label, extra); "
                       "set columns.answer to one of them")


def test_missing_optional_column_in_a_csv_header(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,label\nq,yes\n", encoding="utf-8")
    message = error_of(load_file_task, path, None, {**QA, "input": "context"}, "exact")
    assert message == f"{path}: no column 'context' (columns: question, label); set columns.input to one of them"


def test_csv_with_bad_rows(tmp_path):
    """The first bad row is named with its line and column; the count of the others follows."""
    path = tmp_path / "bad.csv"
    path.write_text("question,label\nfine,yes\nno label,\n,no\nodd,maybe\n", encoding="utf-8")
    message = error_of(load_file_task, path, None, QA, "choice", YES_NO)
    assert message == f"{path}: row 2 (line 3), column 'label': empty (2 more rows with problems)"
    good = records_from_rows([{"question": "q", "label": "yes"}], path, QA, "choice", YES_NO)
    assert good[0]["answer"] == "yes"


def test_csv_row_with_too_many_cells(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("question,label\nfine,yes\nan, unquoted comma,no\n", encoding="utf-8")
    message = error_of(load_file_task, path, None, QA, "choice", YES_NO)
    assert message == f'{path}: row 2 (line 3): 3 cells, the header has 2 (a cell with a comma needs "quotes")'


def test_csv_rows_with_too_few_cells_name_the_missing_columns_and_the_count(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("question,solution,label\nno comma at all\nfine,s,yes\nq,s\n", encoding="utf-8")
    message = error_of(load_file_task, path, None, QA, "choice", YES_NO)
    assert message == (f"{path}: row 1 (line 2): 1 cell, the header has 3: columns 'solution', 'label' missing "
                       "(1 more row with problems)")


def test_csv_bad_quoting(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('question,label\n"closed"then text,yes\n', encoding="utf-8")
    assert error_of(read_rows, path) == f"{path}: line 2: not valid CSV (',' expected after '\"')"


def test_csv_header_naming_a_column_twice(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("question,label,label\nq,yes,no\n", encoding="utf-8")
    assert error_of(read_rows, path) == f"{path}: line 1: the header names column 'label' twice"


def test_answer_outside_the_options(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "a", "label": "yes"}, {"question": "b", "label": "maybe"}])
    message = error_of(load_file_task, path, None, QA, "choice", YES_NO)
    assert message == f"{path}: row 2 (line 2), column 'label': 'maybe' is not one of the options yes/no"


def test_number_scoring(tmp_path):
    rows = [{"q": "a", "n": "1,234"}, {"q": "b", "n": "-0.5"}, {"q": "c", "n": 12}]
    assert [r["answer"] for r in records_from_rows(rows, "f.json", {"prompt": "q", "answer": "n"}, "number")] == [
        "1234", "-0.5", "12"]
    written = [{"q": "a", "n": "She has 3 + 4 = 7.\n#### 1,007"}, {"q": "b", "n": "$2"}, {"q": "c", "n": "50%"}]
    assert [r["answer"] for r in records_from_rows(written, "f.json", {"prompt": "q", "answer": "n"}, "number")] == [
        "1007", "2", "50"]
    for bad in ("twelve", "nan", "1.2.3", "#### none"):
        message = error_of(records_from_rows, [{"q": "a", "n": bad}], "f.json", {"prompt": "q", "answer": "n"},
                           "number")
        assert message == (f"f.json: row 1, column 'n': {bad!r} is not a number (scoring 'number': a number, or a "
                           "solution ending in '#### <number>')")


def test_non_scalar_cell():
    message = error_of(records_from_rows, [{"q": ["a", "b"], "a": "x"}], "f.json", {"prompt": "q", "answer": "a"},
                       "exact")
    assert message == "f.json: row 1, column 'q': a list, expected a single value (text or a number)"


def test_a_key_missing_from_one_json_row_is_named_missing(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"question": "a", "label": "yes"}, {"question": "b"}]), encoding="utf-8")
    assert error_of(load_file_task, path, None, QA, "exact") == (f"{path}: row 2, column 'label': missing (the row "
                                                                  "has no such key)")


@pytest.mark.parametrize(("name", "content"), [
    ("empty.json", "[]"), ("blank.json", " \n"), ("empty.jsonl", "\n\n"), ("header.csv", "question,label\n"),
    ("zero.csv", ""),
])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert error_of(load_file_task, path, None, QA, "exact") == f"{path}: no rows"


def test_empty_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string()), "label": pa.array([], pa.string())}), path)
    assert error_of(load_file_task, path, None, QA, "exact") == f"{path}: no rows"


def test_file_not_found_names_the_field(tmp_path):
    message = error_of(load_file_task, "data/missing.jsonl", None, QA, "exact", base_dir=tmp_path)
    assert message == f"{tmp_path / 'data' / 'missing.jsonl'}: file not found (train_file, relative to {tmp_path})"
    write_jsonl(tmp_path / "train.jsonl", qa_rows(3))
    message = error_of(load_file_task, tmp_path / "train.jsonl", tmp_path / "nope.csv", QA, "exact")
    assert message == f"{tmp_path / 'nope.csv'}: file not found (test_file)"


def test_relative_paths_without_base_dir_use_the_current_directory(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", qa_rows(5))
    monkeypatch.chdir(tmp_path)
    assert len(load_file_task("train.jsonl", None, QA, "exact").train) == 4


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("bad.json", '[{"a": 1},', "not valid JSON (line 1, column 11: Expecting value)"),
    ("bad.json", '{"a": 1}', "expected a JSON list of objects (or JSON Lines: one object per line), got an object"),
    ("bad.json", '[{"a": 1}, 2]', "row 2: expected an object, got a number"),
    ("bad.jsonl", '{"a": 1}\n{"a": \n', "row 2 (line 2): not valid JSON (column 7: Expecting value)"),
    ("bad.jsonl", '{"a": 1}\n[1, 2]\n', "row 2 (line 2): expected a JSON object, got a list"),
    ("bad.txt", "hello", "unsupported file type '.txt' (expected .json, .jsonl, .csv, .parquet, or a folder saved "
                         "with datasets' save_to_disk)"),
])
def test_unreadable_files(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert error_of(read_rows, path) == f"{path}: {expected}"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("question,label\ncaf\xe9,yes\n".encode("latin-1"))
    assert error_of(read_rows, path) == f"{path}: line 2: not UTF-8 text (byte 0xe9); save it as UTF-8"


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("hello", encoding="utf-8")
    assert error_of(read_rows, path).startswith(f"{path}: not a readable Parquet file (")


def test_a_folder_that_is_not_a_saved_dataset(tmp_path):
    assert error_of(read_rows, tmp_path) == (
        f"{tmp_path}: a folder, but not a dataset saved with datasets' save_to_disk (no state.json); point at a "
        ".json, .jsonl, .csv, .parquet file or at a saved Dataset's folder")


def test_missing_optional_packages_name_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"question": ["a"]}), path)
    datasets.Dataset.from_list(qa_rows(2)).save_to_disk(str(tmp_path / "saved"))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as when pyarrow is not installed
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert error_of(read_rows, path) == f"reading {path} needs pyarrow: pip install 'memft-bench[files]'"
    assert error_of(read_rows, tmp_path / "saved") == (
        f"reading {tmp_path / 'saved'} (a saved dataset) needs datasets: pip install 'memft-bench[files]'")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"columns": {"prompt": "question"}}, "columns.answer: required (the file's column holding the answer)"),
    ({"columns": {**QA, "label": "x"}}, "columns: unknown key 'label' (expected prompt, input, response, answer)"),
    ({"scoring": "fuzzy"}, "scoring: 'fuzzy' is not one of choice, exact, number, regex"),
    ({"scoring": "choice"}, "options: required for scoring 'choice' (the answers a row may have)"),
    ({"scoring": "regex"}, "answer_regex: required for scoring 'regex'"),
    ({"scoring": "regex", "answer_regex": "(unclosed"},
     "answer_regex: not a valid regular expression (missing ), unterminated subpattern at position 0)"),
    ({"test_fraction": 1.0}, "test_fraction: 1.0 is not between 0 and 1 (exclusive)"),
])
def test_bad_task_fields(tmp_path, kwargs, expected):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(5))
    args = {"columns": QA, "scoring": "exact", **kwargs}
    assert error_of(load_file_task, path, None, **args) == expected


def test_test_file_that_is_the_train_file(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(5))
    message = error_of(load_file_task, path, "qa.jsonl", QA, "exact", base_dir=tmp_path)
    assert message == f"{path}: test_file is the train_file; drop test_file to hold out a seeded split"


def test_too_few_rows_to_split(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", qa_rows(1))
    message = error_of(load_file_task, path, None, QA, "exact")
    assert message == (f"{path}: 1 row cannot be split into train and test (test_fraction 0.2 holds out 1, "
                       "leaving 0 to train on); add rows or set test_file")


def test_regex_scoring_loads(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(5))
    task = load_file_task(path, None, QA, "regex", answer_regex=r"\b(yes|no)\b")
    assert len(task.test) == 1


# -- the split --------------------------------------------------------------------------------------------------
def test_seeded_split_is_deterministic_disjoint_and_complete(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(50))
    first = load_file_task(path, None, QA, "choice", YES_NO, test_fraction=0.2, seed=3)
    again = load_file_task(path, None, QA, "choice", YES_NO, test_fraction=0.2, seed=3)
    other = load_file_task(path, None, QA, "choice", YES_NO, test_fraction=0.2, seed=4)
    assert isinstance(first, FileTask) and first == again and first.test_indices != other.test_indices
    assert len(first.test) == 10 and len(first.train) == 40
    assert first.test_indices == sorted(first.test_indices)
    rows = qa_rows(50)
    assert [r["instruction"] for r in first.test] == [rows[i]["question"] for i in first.test_indices]
    test_questions = {r["instruction"] for r in first.test}
    train_questions = [r["instruction"] for r in first.train]
    assert not test_questions & set(train_questions)
    assert sorted(test_questions | set(train_questions)) == sorted(r["question"] for r in rows)
    assert train_questions == [r["question"] for i, r in enumerate(rows) if i not in first.test_indices]
    assert first.source == f"{path} (50 rows): 10 held out for test with seed 3 (test_fraction 0.2), 40 train"


@pytest.mark.parametrize(("n", "fraction", "held_out"), [(2, 0.2, 1), (5, 0.2, 1), (10, 0.25, 2), (10, 0.5, 5),
                                                         (3, 0.6, 2), (100, 0.01, 1)])
def test_split_sizes(n, fraction, held_out):
    indices = split_indices(n, fraction, 0, "f.csv")
    assert len(indices) == held_out and len(set(indices)) == held_out and all(0 <= i < n for i in indices)


def test_split_that_would_leave_nothing_to_train(tmp_path):
    message = error_of(split_indices, 2, 0.9, 0, "f.csv")
    assert message == ("f.csv: 2 rows cannot be split into train and test (test_fraction 0.9 holds out 2, leaving 0 "
                       "to train on); add rows or set test_file")
