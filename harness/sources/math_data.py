"""The math suite's data: GSM8K to train and test on, and LLM-Adapters' arithmetic test sets as extra tests.

Layout: one root directory DIR (`--data-dir DIR`, `$BENCH_DATA_DIR`, or fetched once into `<cache>/data/math`
by `harness.sources.fetch.fetch_math`) holding

- `DIR/gsm8k/train.jsonl`, `DIR/gsm8k/test.jsonl`: GSM8K's release (Cobbe et al. 2021, openai/grade-school-math,
  `grade_school_math/data/`), one `{"question", "answer"}` object a line, the answer a worked solution with
  calculator annotations `<<48/2=24>>` and a last line `#### <number>`; required;
- `DIR/math/<task>/test.json` for the tasks of `MATH_TEST_SETS`: LLM-Adapters' test sets (Hu et al. 2023,
  `dataset/<task>/test.json`), JSON lists of `{"instruction", "input", "output", "answer"}` whose `answer` is
  a number written as a string, except AQuA's, an option letter A-E; optional (extra, out-of-distribution test
  sets). Their `output` fields are model-written rationales, not references: score on `answer` only.
  LLM-Adapters' gsm8k test set is GSM8K's test set, so test set "gsm8k" reads GSM8K's own file.

Both kinds become the same records, `{"instruction", "input", "output", "answer"}`, `answer` the reference
(a number without thousands separators, or AQuA's letter; scoring is `harness.sources.answers`). Every problem
with a file is one `BenchError` line naming the file (and the line or record). No torch here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.sources.answers import reference_number
from memft_bench.harness.sources.commonsense import DATA_DIR_ENV, read_records, seeded_indices

#: LLM-Adapters' arithmetic test sets besides gsm8k (their gsm8k equals GSM8K's test, read from GSM8K's file).
MATH_TEST_SETS = ("AddSub", "MultiArith", "SingleEq", "SVAMP", "AQuA", "mawps")
TEST_SETS = ("gsm8k", *MATH_TEST_SETS)
GSM8K_SPLITS = ("train", "test")
AQUA_LETTERS = ("A", "B", "C", "D", "E")

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_CALCULATOR = re.compile(r"<<[^>]*>>")


def strip_calculator(text: str) -> str:
    """A GSM8K solution without its calculator annotations: `48/2 = <<48/2=24>>24` -> `48/2 = 24`."""
    return _CALCULATOR.sub("", text)


def read_gsm8k(path: Path) -> list[dict[str, str]]:
    """GSM8K records from one JSONL file: `{"instruction": question, "input": "", "output": solution,
    "answer": reference number}`.

    `output`, the training response, is the worked solution as published, `#### <number>` last line included,
    less the calculator annotations `<<...>>`: GSM8K's authors trained with a calculator that filled those in,
    and the model trained here has none, so it learns to write the arithmetic itself. `answer` is the text after
    the last `####`, thousands commas removed ("1,000" -> "1000"; `answers.reference_number`, which also
    writes it canonically: "18.00" -> "18"). Blank lines are skipped. Any problem is one
    `BenchError` line naming the file and the line number.
    """
    if not path.is_file():
        raise BenchError(f"{path}: file not found (expected GSM8K's grade_school_math/data/{path.name} as "
                         f"<data-dir>/gsm8k/{path.name})")
    records = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BenchError(f"{path}: line {n} is not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchError(f"{path}: line {n} is not valid JSON (column {exc.colno}: {exc.msg})") from None
            if not isinstance(item, dict):
                raise BenchError(f"{path}: line {n} is not a JSON object")
            missing = [k for k in ("question", "answer") if not isinstance(item.get(k), str)]
            if missing:
                raise BenchError(f"{path}: line {n} has no string {', '.join(repr(k) for k in missing)}")
            number = reference_number(item["answer"])
            if number is None:
                raise BenchError(f"{path}: line {n}: the answer has no final '#### <number>' line")
            records.append({"instruction": item["question"], "input": "", "output": strip_calculator(item["answer"]),
                            "answer": number})
    if not records:
        raise BenchError(f"{path}: the file has no records")
    return records


def read_math_test(path: Path, task: str) -> list[dict[str, str]]:
    """One of LLM-Adapters' arithmetic test sets, validated: every record has string instruction, output and
    answer, the answer a number (an option letter A-E for AQuA). The records are returned as in the file."""
    if task not in TEST_SETS:
        raise BenchError(f"unknown math test set {task!r}; expected one of {', '.join(TEST_SETS)}")
    if not path.is_file():
        raise BenchError(f"{path}: file not found (an extra math test set: copy LLM-Adapters' "
                         f"dataset/{task}/test.json there, or leave {task} out of the test sets)")
    records = read_records(path, None)
    for i, record in enumerate(records):
        answer = record["answer"]
        if task == "AQuA":
            if answer.strip() not in AQUA_LETTERS:
                raise BenchError(f"{path}: record {i}: answer {answer!r} is not an option letter A-E")
        elif not _NUMBER.fullmatch(answer.strip()):
            raise BenchError(f"{path}: record {i}: answer {answer!r} is not a number")
    return records


def _check_root(path: Path, named: str) -> Path:
    if not path.is_dir():
        raise BenchError(f"{named}: not a directory")
    missing = [f"gsm8k/{s}.jsonl" for s in GSM8K_SPLITS if not (path / "gsm8k" / f"{s}.jsonl").is_file()]
    if missing:
        raise BenchError(f"{named}: no {' or '.join(missing)} there: copy GSM8K's grade_school_math/data/"
                         f"{{train,test}}.jsonl (openai/grade-school-math) as {path}/gsm8k/{{train,test}}.jsonl "
                         f"(and, optionally, LLM-Adapters' dataset/<task>/test.json as {path}/math/<task>/test.json)")
    return path


def resolve_math_dir(data_dir: str | None) -> Path:
    """The math data's root: `data_dir` (--data-dir), else `$BENCH_DATA_DIR` when it holds `gsm8k/`, else the
    published files fetched once into the cache (`harness.sources.fetch.fetch_math`; offline, one error line says
    what to copy where). A directory given without `gsm8k/train.jsonl` and `gsm8k/test.jsonl` is one error line."""
    if data_dir:
        return _check_root(Path(data_dir).expanduser(), f"--data-dir {data_dir}")
    env = os.environ.get(DATA_DIR_ENV)
    if env and (Path(env).expanduser() / "gsm8k").is_dir():
        return _check_root(Path(env).expanduser(), f"${DATA_DIR_ENV}={env}")
    from memft_bench.harness.sources.fetch import fetch_math

    return fetch_math()


def load_gsm8k_split(root: Path, split: str) -> list[dict[str, str]]:
    """GSM8K's `split` ("train" or "test") as records (`read_gsm8k`)."""
    if split not in GSM8K_SPLITS:
        raise BenchError(f"unknown GSM8K split {split!r}; expected train or test")
    return read_gsm8k(Path(root) / "gsm8k" / f"{split}.jsonl")


def load_math_test(root: Path, name: str) -> list[dict[str, str]]:
    """Every record of test set `name` (one of `TEST_SETS`): GSM8K's test file for "gsm8k", else
    `<root>/math/<name>/test.json`."""
    if name not in TEST_SETS:
        raise BenchError(f"unknown math test set {name!r}; expected one of {', '.join(TEST_SETS)}")
    if name == "gsm8k":
        return load_gsm8k_split(root, "test")
    return read_math_test(Path(root) / "math" / name / "test.json", name)


def load_math_test_items(root: Path, name: str, limit: int | None = None,
                         seed: int = 0) -> tuple[list[int], list[dict[str, str]]]:
    """(each kept item's index in the test file, the records), as `commonsense.load_test_items`: a seeded subset
    of `limit` items in file order (all when no limit), the index naming an item in per-item records so two runs,
    or two methods, are paired on the same test items."""
    records = load_math_test(root, name)
    indices = seeded_indices(len(records), limit, seed)
    return indices, [records[i] for i in indices]
