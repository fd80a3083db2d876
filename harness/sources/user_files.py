"""The user's own data as a task: a local file, a column mapping and a scoring type, declared in a suite file.

A file becomes the harness's records `{"instruction", "input", "output", "answer"}`: instruction = the
prompt column, input = the input column (or ""), output = the response column (the training target) or,
without one, the answer, answer = the answer column, stripped. Every problem (a bad path, an unreadable file,
a missing column, an empty or non-scalar cell, an answer outside the options, an answer that is not a number,
no rows) is one `BenchError` line naming the file, and for a cell the row (1-based, counting data rows; for
CSV and JSON Lines also the line it starts on) and the column, raised before any trial starts.

Formats, by suffix:

- `.json`: a JSON list of objects (JSON Lines content in a `.json` file is read as JSON Lines);
- `.jsonl`: one JSON object per line (blank lines skipped);
- `.csv`: a header row, then one row per record; every cell is kept as the text written (no type guessing:
  "007" stays "007", "true" stays "true", an empty cell is empty, never NaN);
- `.parquet`: needs pyarrow (`pip install 'memft-bench[files]'`);
- a folder: a `Dataset` saved with `datasets`' `save_to_disk` (needs `datasets`, same extra). A saved
  `DatasetDict` is refused with a line naming its splits: point at one split's folder (`path/train`), which
  `save_to_disk` writes as a saved `Dataset` of its own.

The readers are the standard library's `json` and `csv`, pyarrow and `datasets`, not pandas: `pandas.read_csv`
pads a short row with empty cells without a word and cannot say which line a row came from, and
`pandas.read_json` turns "007" into 7 and the ints of a column with a gap into floats (1 -> 1.0), where the
standard library keeps every value as written and gives the line of each row and of each syntax error.

Values: text as written; an int as `str(value)`; a bool as JSON writes it ("true"/"false"); a float as
Python writes it (`str(value)`: 3.0 stays "3.0", 0.1 stays "0.1"; write such answers as text or ints to
control their form); NaN and null count as empty; a list, an object or bytes is refused.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memft_bench.harness.core.errors import BenchError

EXTRA_HINT = "pip install 'memft-bench[files]'"
SCORINGS = ("choice", "exact", "number", "regex")
COLUMN_KEYS = ("prompt", "input", "response", "answer")
REQUIRED_COLUMN_KEYS = ("prompt", "answer")
SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


@dataclass
class Table:
    """Rows read from one file, with the line each row starts on (None where the format has no lines) and
    the file's columns (a header, a schema, or the keys of its rows in order of first appearance)."""

    rows: list[dict[str, Any]]
    columns: list[str]
    lines: list[int | None] = field(default_factory=list)


@dataclass
class FileTask:
    """A task from the user's files: records to train on, records to test on, and where they came from."""

    train: list[dict[str, str]]
    test: list[dict[str, str]]
    test_indices: list[int]  # each test item's row index (0-based) in its source file: pairs items across runs
    source: str  # one line for reports: the files, their sizes, and how the test set was chosen


# -- reading ----------------------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one file or saved-dataset folder, each a dict from column name to value."""
    return read_table(Path(path)).rows


def read_table(path: Path) -> Table:
    """Rows, columns and line numbers of one file, chosen by suffix (a folder: a saved `datasets` Dataset)."""
    path = Path(path)
    if path.is_dir():
        return _read_saved_dataset(path)
    if not path.is_file():
        raise BenchError(f"{path}: file not found")
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise BenchError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r} (expected "
                         f"{', '.join(SUFFIXES)}, or a folder saved with datasets' save_to_disk)")
    return reader(path)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark, as spreadsheet programs write, is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line, byte = exc.object[:exc.start].count(b"\n") + 1, exc.object[exc.start]
        raise BenchError(f"{path}: line {line}: not UTF-8 text (byte {byte:#04x}); save it as UTF-8") from None
    except OSError as exc:
        raise BenchError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """The keys of JSON rows in order of first appearance (rows may differ: a missing key is an empty cell)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _read_json(path: Path) -> Table:
    """A JSON list of objects; content that is JSON Lines (several values, one per line) is read as such."""
    text = _read_text(path)
    if not text.strip():  # an empty file has no rows (records_from_rows says so), not a JSON syntax error
        return Table([], [], [])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a first value parsed, then more: JSON Lines in a .json file
            return _parse_jsonl(path, text)
        raise BenchError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise BenchError(f"{path}: expected a JSON list of objects (or JSON Lines: one object per line), "
                         f"got {_type_name(data)}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise BenchError(f"{path}: row {i + 1}: expected an object, got {_type_name(row)}")
    return Table(data, _columns_of(data), [None] * len(data))


def _read_jsonl(path: Path) -> Table:
    return _parse_jsonl(path, _read_text(path))


def _parse_jsonl(path: Path, text: str) -> Table:
    """One JSON object per non-blank line; each row keeps its line number for error messages."""
    rows: list[dict[str, Any]] = []
    lines: list[int | None] = []
    for line_no, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON text may hold U+2028
        if not line.strip():
            continue
        where = f"row {len(rows) + 1} (line {line_no})"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{path}: {where}: not valid JSON (column {exc.colno}: {exc.msg})") from None
        if not isinstance(row, dict):
            raise BenchError(f"{path}: {where}: expected a JSON object, got {_type_name(row)}")
        rows.append(row)
        lines.append(line_no)
    return Table(rows, _columns_of(rows), lines)


def _read_csv(path: Path) -> Table:
    """A header, then rows of exactly as many cells, every cell kept as text (strict RFC 4180 quoting)."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)  # newline="": as csv asks
    header: list[str] | None = None
    rows: list[dict[str, Any]] = []
    lines: list[int | None] = []
    line_no = 0  # the last line the reader consumed: a record starts on the line after the previous one ended
    try:
        for cells in reader:
            start, line_no = line_no + 1, reader.line_num
            if not cells:  # a blank line
                continue
            if header is None:
                header = _csv_header(path, cells)
                continue
            row = dict(zip(header, cells))
            if len(cells) != len(header):  # named with the row's other problems by records_from_rows
                row[RAGGED] = (len(cells), header)
            rows.append(row)
            lines.append(start)
    except csv.Error as exc:
        raise BenchError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    return Table(rows, header or [], lines)


def _csv_header(path: Path, cells: list[str]) -> list[str]:
    """The header row; a name given twice would make one of its columns unreachable, so it is refused."""
    seen: set[str] = set()
    for name in cells:
        if name in seen:
            raise BenchError(f"{path}: line 1: the header names column {name!r} twice")
        seen.add(name)
    return cells


def _read_parquet(path: Path) -> Table:
    """A Parquet file through pyarrow, values as Python objects (an int column with nulls stays ints)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BenchError(f"reading {path} needs pyarrow: {EXTRA_HINT}") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise BenchError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    rows = table.to_pylist()
    return Table(rows, list(table.column_names), [None] * len(rows))


def _read_saved_dataset(path: Path) -> Table:
    """A folder written by `datasets`' `save_to_disk`: a Dataset, or a DatasetDict refused with its splits."""
    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():
        splits = _saved_splits(dict_file)
        example = path / (splits[0] if splits else "train")
        raise BenchError(f"{path}: a saved DatasetDict with splits {', '.join(splits) or '(none)'}; point at one "
                         f"split's folder, e.g. {example}")
    if not (path / "state.json").is_file():
        raise BenchError(f"{path}: a folder, but not a dataset saved with datasets' save_to_disk (no state.json); "
                         f"point at a {', '.join(SUFFIXES)} file or at a saved Dataset's folder")
    try:
        import datasets
    except ImportError:
        raise BenchError(f"reading {path} (a saved dataset) needs datasets: {EXTRA_HINT}") from None
    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:  # any failure inside the library becomes the one line naming the folder
        raise BenchError(f"{path}: cannot load the saved dataset ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(dataset, datasets.Dataset):
        raise BenchError(f"{path}: a saved {type(dataset).__name__}, expected a Dataset; point at one split's folder")
    rows = dataset.to_list()
    return Table(rows, list(dataset.column_names), [None] * len(rows))


def _saved_splits(dict_file: Path) -> list[str]:
    try:
        return [str(s) for s in json.loads(dict_file.read_text(encoding="utf-8")).get("splits", [])]
    except (OSError, ValueError, AttributeError):
        return []


# -- validating --------------------------------------------------------------------------------------------------
def records_from_rows(rows: Sequence[Mapping[str, Any]], path: Path | str, columns: Mapping[str, str],
                      scoring: str, options: Sequence[str] | None = None, answer_regex: str | None = None,
                      lines: Sequence[int | None] | None = None, file_columns: Sequence[str] | None = None,
                      response_optional: bool = False) -> list[dict[str, str]]:
    """Validate every row and convert it to a record; the first problem is raised as one line naming the file,
    the row and the column (with how many other rows have problems, so one pass fixes them all).

    `lines` gives each row's line in the file; `file_columns` the file's columns (default: the rows' keys);
    `response_optional` (a test file) lets the response column be absent or empty: output is then the answer.
    """
    _check_task_fields(columns, scoring, options, answer_regex)
    if not rows:
        raise BenchError(f"{path}: no rows")
    present = list(file_columns) if file_columns is not None else _columns_of([dict(r) for r in rows])
    mapping = _mapped_columns(path, columns, present, response_optional)
    records, problems = [], []
    for i, row in enumerate(rows):
        line = lines[i] if lines is not None and i < len(lines) else None
        where = f"row {i + 1}" + (f" (line {line})" if line is not None else "")
        if RAGGED in row:
            problems.append(f"{path}: {where}: {_ragged(*row[RAGGED])}")
            continue
        try:
            records.append(_record(row, mapping, scoring, options, response_optional))
        except _CellError as exc:
            problems.append(f"{path}: {where}, column {exc.column!r}: {exc.reason}")
    if problems:
        more = len(problems) - 1
        raise BenchError(problems[0] + (f" ({more} more row{'s' if more > 1 else ''} with problems)" if more else ""))
    return records


def _check_task_fields(columns: Mapping[str, str], scoring: str, options: Sequence[str] | None,
                       answer_regex: str | None) -> None:
    """The suite fields that every file needs right before a row is read (the schema checks them too)."""
    unknown = [k for k in columns if k not in COLUMN_KEYS]
    if unknown:
        raise BenchError(f"columns: unknown key {unknown[0]!r} (expected {', '.join(COLUMN_KEYS)})")
    for key in REQUIRED_COLUMN_KEYS:
        if not columns.get(key):
            raise BenchError(f"columns.{key}: required (the file's column holding the {key})")
    if scoring not in SCORINGS:
        raise BenchError(f"scoring: {scoring!r} is not one of {', '.join(SCORINGS)}")
    if scoring == "choice" and not options:
        raise BenchError("options: required for scoring 'choice' (the answers a row may have)")
    if scoring == "regex":
        if not answer_regex:
            raise BenchError("answer_regex: required for scoring 'regex'")
        try:
            re.compile(answer_regex)
        except re.error as exc:
            raise BenchError(f"answer_regex: not a valid regular expression ({exc})") from None


def _mapped_columns(path: Path | str, columns: Mapping[str, str], present: Sequence[str],
                    response_optional: bool) -> dict[str, str]:
    """The mapping's keys to the file's column names; a column the file lacks is an error naming the key."""
    mapping = {}
    for key in COLUMN_KEYS:
        name = columns.get(key)
        if not name:
            continue
        if name not in present:
            if key == "response" and response_optional:
                continue
            listed = ", ".join(c if c.strip() == c and c else repr(c) for c in present) or "none"
            raise BenchError(f"{path}: no column {name!r} (columns: {listed}); set columns.{key} to one of them")
        mapping[key] = name
    return mapping


#: The key a CSV row with the wrong number of cells carries: (its cell count, the header).
RAGGED = "\0ragged"


def _ragged(count: int, header: Sequence[str]) -> str:
    cells = f"{count} cell{'s' if count != 1 else ''}"
    if count < len(header):
        missing = ", ".join(repr(c) for c in header[count:])
        return (f"{cells}, the header has {len(header)}: column{'s' if len(header) - count > 1 else ''} {missing} "
                "missing")
    return f"{cells}, the header has {len(header)} (a cell with a comma needs \"quotes\")"


class _CellError(Exception):
    """One cell's problem, turned into the row's line by `records_from_rows`."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column, self.reason = column, reason


def _record(row: Mapping[str, Any], mapping: dict[str, str], scoring: str, options: Sequence[str] | None,
            response_optional: bool) -> dict[str, str]:
    """One row as a record, or a `_CellError` for its first bad cell."""
    instruction = _text(row, mapping["prompt"], required=True)
    answer = _check_answer(_text(row, mapping["answer"], required=True).strip(), mapping["answer"], scoring, options)
    source_input = _text(row, mapping["input"], required=False) if "input" in mapping else ""
    output = answer
    if "response" in mapping:
        output = _text(row, mapping["response"], required=not response_optional) or answer
    return {"instruction": instruction, "input": source_input, "output": output, "answer": answer}


def _text(row: Mapping[str, Any], column: str, required: bool) -> str:
    """A cell as text (module docstring: how numbers and bools are written); empty is an error when required."""
    if column not in row:  # a JSON row without the key (a CSV row has every column)
        if required:
            raise _CellError(column, "missing (the row has no such key)")
        return ""
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float | decimal.Decimal | datetime.date | datetime.time):
        text = str(value)
    else:
        raise _CellError(column, f"{_type_name(value)}, expected a single value (text or a number)")
    if required and not text.strip():
        raise _CellError(column, "empty")
    return text


def _check_answer(answer: str, column: str, scoring: str, options: Sequence[str] | None) -> str:
    """The answer as the scoring compares it: one of the options, or (scoring number) a finite number, which may
    be written as GSM8K writes references (a worked solution ending in `#### 1,234`: the number after the last
    `####`), with thousands commas, a leading `$` or a trailing `%`; stored as that number."""
    if scoring == "choice" and answer not in (options or ()):
        raise _CellError(column, f"{answer!r} is not one of the options {'/'.join(options or ())}")
    if scoring != "number":
        return answer
    from memft_bench.harness.sources.answers import reference_number

    text = (reference_number(answer) or "") if "####" in answer else answer
    text = text.strip().removeprefix("$").removesuffix("%").replace(",", "").strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise _CellError(column, f"{answer[:60]!r} is not a number (scoring 'number': a number, or a solution "
                         "ending in '#### <number>')")
    return text


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", tuple: "a list", str: "text", bytes: "bytes", bool: "a bool",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# -- the task ---------------------------------------------------------------------------------------------------
def resolve_path(value: str | Path, base_dir: Path | str | None, field_name: str) -> Path:
    """A suite's path: relative ones against the suite file's folder (else the current directory); a path
    that does not exist is one line naming it and the suite field that gave it."""
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.exists():
        relative = f", relative to {base_dir}" if base_dir is not None and not Path(value).is_absolute() else ""
        raise BenchError(f"{path}: file not found ({field_name}{relative})")
    return path


def load_records(path: Path, columns: Mapping[str, str], scoring: str, options: Sequence[str] | None,
                 answer_regex: str | None, response_optional: bool = False) -> list[dict[str, str]]:
    """Read one file and validate it into records (line numbers in messages where the format has lines)."""
    table = read_table(path)
    return records_from_rows(table.rows, path, columns, scoring, options, answer_regex, lines=table.lines,
                             file_columns=table.columns, response_optional=response_optional)


def split_indices(n: int, test_fraction: float, seed: int, path: Path | str) -> list[int]:
    """The held-out rows (sorted) of a seeded split: round(test_fraction * n), at least 1, leaving at least 1
    to train on. Depends only on n, the fraction and the seed, so every method and run tests the same rows."""
    if not 0 < test_fraction < 1:
        raise BenchError(f"test_fraction: {test_fraction} is not between 0 and 1 (exclusive)")
    held_out = max(1, round(test_fraction * n))
    if n - held_out < 1:
        raise BenchError(f"{path}: {n} row{'s' if n != 1 else ''} cannot be split into train and test "
                         f"(test_fraction {test_fraction} holds out {held_out}, leaving {n - held_out} to train "
                         "on); add rows or set test_file")
    return sorted(random.Random(seed).sample(range(n), held_out))


def load_file_task(train_file: str | Path, test_file: str | Path | None, columns: Mapping[str, str], scoring: str,
                   options: Sequence[str] | None = None, answer_regex: str | None = None,
                   test_fraction: float = 0.2, seed: int = 0, base_dir: Path | str | None = None) -> FileTask:
    """The task from the user's files: the test file when given (all its rows, in order), else a seeded split
    of the train file (the rest trains, in file order). Every file is checked in full before returning."""
    _check_task_fields(columns, scoring, options, answer_regex)
    train_path = resolve_path(train_file, base_dir, "train_file")
    test_path = resolve_path(test_file, base_dir, "test_file") if test_file is not None else None
    if test_path is not None and test_path.resolve() == train_path.resolve():
        raise BenchError(f"{test_path}: test_file is the train_file; drop test_file to hold out a seeded split")
    rows = load_records(train_path, columns, scoring, options, answer_regex)
    if test_path is not None:
        test = load_records(test_path, columns, scoring, options, answer_regex, response_optional=True)
        source = f"train {train_path} ({len(rows)} rows), test {test_path} ({len(test)} rows)"
        return FileTask(rows, test, list(range(len(test))), source)
    held = split_indices(len(rows), test_fraction, seed, train_path)
    held_set = set(held)
    train = [r for i, r in enumerate(rows) if i not in held_set]
    source = (f"{train_path} ({len(rows)} rows): {len(held)} held out for test with seed {seed} "
              f"(test_fraction {test_fraction}), {len(train)} train")
    return FileTask(train, [rows[i] for i in held], held, source)


def content_digest(*paths: str | Path | None) -> str:
    """A short SHA-256 of the files' bytes (a saved dataset directory: every file in it, by relative path), so a
    trial's fingerprint changes when the user's data does and a rerun never reuses rows of other data."""
    import hashlib

    digest = hashlib.sha256()
    for value in paths:
        if value is None:
            continue
        path = Path(value)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
            try:
                with open(file, "rb") as handle:
                    for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError:
                digest.update(b"unreadable")
    return digest.hexdigest()[:16]
