"""harness.sources.math_data: GSM8K's JSONL and LLM-Adapters' arithmetic test sets, on small files written here
and, when present, on the shared copies of the published files (../shared/data)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.sources import fetch, math_data
from memft_bench.harness.sources.commonsense import DATA_DIR_ENV, seeded_indices
from tests.commands import REPO_ROOT

# ../shared/data beside the project (a git worktree one level deeper finds it two levels up)
SHARED = next((p / "shared" / "data" for p in (REPO_ROOT.parent, REPO_ROOT.parent.parent)
               if (p / "shared" / "data" / "gsm8k").is_dir()), REPO_ROOT.parent / "shared" / "data")
needs_shared = pytest.mark.skipif(not (SHARED / "gsm8k").is_dir(), reason="needs the shared math data")

SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def _jsonl(path: Path, items: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


def _root(tmp_path: Path, extra: dict[str, list] | None = None) -> Path:
    """A data root in the layout: gsm8k/{train,test}.jsonl and math/<task>/test.json for `extra`."""
    root = tmp_path / "data"
    _jsonl(root / "gsm8k" / "train.jsonl", [{"question": f"q{i}", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n"
                                                                            f"#### {i + 1}"} for i in range(5)])
    _jsonl(root / "gsm8k" / "test.jsonl", [{"question": f"t{i}", "answer": f"#### {i},000"} for i in range(10)])
    for task, records in (extra or {}).items():
        (root / "math" / task).mkdir(parents=True)
        (root / "math" / task / "test.json").write_text(json.dumps(records), encoding="utf-8")
    return root


def _rec(answer: str) -> dict[str, str]:
    return {"instruction": "How many?", "input": "", "output": "The answer is so.", "answer": answer}


def _one_line_error(call, *needles: str) -> str:
    with pytest.raises(BenchError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# -- GSM8K -------------------------------------------------------------------------------------------------
def test_a_gsm8k_line_becomes_a_record_without_calculator_annotations(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", [
        {"question": "Natalia sold clips?", "answer": SOLUTION},
        {"question": "Big?", "answer": "It is 1,000 x 1,000 = <<1000*1000=1000000>>1,000,000\n#### 1,000,000"},
        {"question": "Below zero?", "answer": "3-10 = <<3-10=-7>>-7\n#### -7"},
        {"question": "Half?", "answer": "#### 2 is wrong\n#### 0.5"},
    ])
    records = math_data.read_gsm8k(path)
    assert records[0] == {"instruction": "Natalia sold clips?", "input": "",
                          "output": "Natalia sold 48/2 = 24 clips in May.\n"
                                    "Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72",
                          "answer": "72"}
    assert [r["answer"] for r in records] == ["72", "1000000", "-7", "0.5"]  # the last '#### ', commas removed
    assert records[1]["output"] == "It is 1,000 x 1,000 = 1,000,000\n#### 1,000,000"  # the solution keeps its text
    assert all("<<" not in r["output"] and ">>" not in r["output"] for r in records)


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "a", "answer": "#### 1"}) + "\n\n" + "{oops\n", encoding="utf-8")
    _one_line_error(lambda: math_data.read_gsm8k(path), str(path), "line 3 is not valid JSON")
    path.write_text(json.dumps({"question": "a", "answer": "#### 1"}) + "\n\n", encoding="utf-8")
    assert len(math_data.read_gsm8k(path)) == 1


@pytest.mark.parametrize("content, needle", [
    (b'{"question": "a", "answer": "#### 1"}\n\xff\xfe\n', "line 2 is not UTF-8"),
    (b'{"question": "a", "answer": "#### 1"}\n{"question": "b", \n', "line 2 is not valid JSON"),
    (b'["question", "answer"]\n', "line 1 is not a JSON object"),
    (b'{"question": "a", "answer": "#### 1"}\n{"answer": "#### 2"}\n', "line 2 has no string 'question'"),
    (b'{"question": "a", "answer": 3}\n', "line 1 has no string 'answer'"),
    (b'{"question": "a", "answer": "#### 1"}\n{"question": "b", "answer": "it is 4"}\n',
     "line 2: the answer has no final '#### <number>' line"),
    (b'{"question": "a", "answer": "#### four"}\n', "line 1: the answer has no final '#### <number>' line"),
    (b'{"question": "a", "answer": "####"}\n', "line 1: the answer has no final"),
    (b"", "the file has no records"),
    (b"\n  \n", "the file has no records"),
])
def test_every_problem_with_a_gsm8k_file_is_one_line_naming_file_and_line(tmp_path, content, needle):
    path = tmp_path / "gsm8k" / "train.jsonl"
    path.parent.mkdir()
    path.write_bytes(content)
    _one_line_error(lambda: math_data.read_gsm8k(path), str(path), needle)


def test_a_missing_gsm8k_file_says_what_belongs_there(tmp_path):
    _one_line_error(lambda: math_data.read_gsm8k(tmp_path / "gsm8k" / "test.jsonl"), "file not found",
                    "grade_school_math/data/test.jsonl", "<data-dir>/gsm8k/test.jsonl")


@pytest.mark.parametrize("answer, number", [("x\n#### 1,234", "1234"), ("#### 12\n#### -3.5 ", "-3.5"),
                                            ("so\n####  7\n", "7"), ("#### 1,000,000.5", "1000000.5"),
                                            ("#### 18.00", "18")])
def test_the_reference_number_is_the_last_one_after_the_mark(tmp_path, answer, number):
    path = _jsonl(tmp_path / "test.jsonl", [{"question": "q", "answer": answer}])
    assert math_data.read_gsm8k(path)[0]["answer"] == number


@pytest.mark.parametrize("answer", ["no mark 5", "#### $5", "#### four", "####", "#### 5\nand #### x"])
def test_an_answer_without_a_final_number_is_refused(tmp_path, answer):
    path = _jsonl(tmp_path / "test.jsonl", [{"question": "q", "answer": answer}])
    _one_line_error(lambda: math_data.read_gsm8k(path), "line 1: the answer has no final")


# -- LLM-Adapters' test sets --------------------------------------------------------------------------------
def test_math_test_sets_are_read_as_published(tmp_path):
    root = _root(tmp_path, {"SVAMP": [_rec("8.0"), _rec("-15.0"), _rec("1.8333333333333335"), _rec("43")],
                            "AQuA": [_rec("A"), _rec("E")]})
    assert [r["answer"] for r in math_data.read_math_test(root / "math" / "SVAMP" / "test.json", "SVAMP")] == [
        "8.0", "-15.0", "1.8333333333333335", "43"]
    assert math_data.read_math_test(root / "math" / "AQuA" / "test.json", "AQuA") == [_rec("A"), _rec("E")]


@pytest.mark.parametrize("task, records, needle", [
    ("AddSub", [_rec("4"), _rec("four")], "record 1: answer 'four' is not a number"),
    ("mawps", [_rec("1,000")], "record 0: answer '1,000' is not a number"),
    ("AQuA", [_rec("A"), _rec("F")], "record 1: answer 'F' is not an option letter A-E"),
    ("AQuA", [_rec("4")], "is not an option letter"),
    ("SingleEq", [{"instruction": "x", "output": "y"}], "record 0 has no string 'answer'"),
    ("MultiArith", [], "the file has no records"),
    ("SVAMP", {"answer": "1"}, "expected a JSON list"),
])
def test_every_problem_with_a_math_test_set_is_one_line(tmp_path, task, records, needle):
    path = tmp_path / "math" / task / "test.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    _one_line_error(lambda: math_data.read_math_test(path, task), str(path), needle)


def test_math_test_set_bad_bytes_missing_file_and_unknown_task(tmp_path):
    path = tmp_path / "test.json"
    path.write_bytes(b"[\xff]")
    _one_line_error(lambda: math_data.read_math_test(path, "AddSub"), "not UTF-8")
    path.write_text("[{", encoding="utf-8")
    _one_line_error(lambda: math_data.read_math_test(path, "AddSub"), "not valid JSON")
    _one_line_error(lambda: math_data.read_math_test(tmp_path / "nope.json", "SVAMP"), "file not found",
                    "dataset/SVAMP/test.json")
    _one_line_error(lambda: math_data.read_math_test(path, "MATH"), "unknown math test set 'MATH'", "AQuA")


# -- the root, loading ---------------------------------------------------------------------------------------
def test_load_splits_and_test_items(tmp_path):
    root = _root(tmp_path, {"SVAMP": [_rec(str(i)) for i in range(20)]})
    assert [r["answer"] for r in math_data.load_gsm8k_split(root, "train")] == ["1", "2", "3", "4", "5"]
    assert math_data.load_gsm8k_split(root, "train")[0]["output"] == "0 + 1 = 1\n#### 1"
    indices, records = math_data.load_math_test_items(root, "gsm8k", limit=4, seed=3)
    assert indices == seeded_indices(10, 4, 3)
    assert [r["answer"] for r in records] == [f"{i}000" for i in indices]  # GSM8K's own test file
    indices, records = math_data.load_math_test_items(root, "SVAMP", limit=5, seed=1)
    assert indices == seeded_indices(20, 5, 1) and [r["answer"] for r in records] == [str(i) for i in indices]
    assert math_data.load_math_test_items(root, "SVAMP")[0] == list(range(20))
    assert math_data.load_math_test_items(root, "SVAMP", limit=5, seed=1) == math_data.load_math_test_items(
        root, "SVAMP", limit=5, seed=1)
    _one_line_error(lambda: math_data.load_gsm8k_split(root, "dev"), "unknown GSM8K split 'dev'")
    _one_line_error(lambda: math_data.load_math_test_items(root, "gsm-hard"), "unknown math test set")
    _one_line_error(lambda: math_data.load_math_test_items(root, "AQuA"), "file not found",
                    str(root / "math" / "AQuA" / "test.json"))


def test_test_set_names():
    assert math_data.TEST_SETS == ("gsm8k", "AddSub", "MultiArith", "SingleEq", "SVAMP", "AQuA", "mawps")
    assert {f.local for f in fetch.MATH_FILES} == {"gsm8k/train.jsonl", "gsm8k/test.jsonl"} | {
        f"math/{t}/test.json" for t in math_data.MATH_TEST_SETS}


def test_resolve_a_given_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "fetch_math", lambda *a, **k: pytest.fail("must not fetch"))
    root = _root(tmp_path)
    assert math_data.resolve_math_dir(str(root)) == root
    _one_line_error(lambda: math_data.resolve_math_dir(str(tmp_path / "none")), "not a directory")
    (root / "gsm8k" / "test.jsonl").unlink()
    _one_line_error(lambda: math_data.resolve_math_dir(str(root)), f"--data-dir {root}: no gsm8k/test.jsonl there",
                    "grade_school_math/data/{train,test}.jsonl", f"{root}/gsm8k/{{train,test}}.jsonl")
    _one_line_error(lambda: math_data.resolve_math_dir(str(tmp_path)), "no gsm8k/train.jsonl or gsm8k/test.jsonl")


def test_resolve_from_the_environment_or_the_fetched_cache(tmp_path, monkeypatch):
    fetched = tmp_path / "cache" / "data" / "math"
    monkeypatch.setattr(fetch, "fetch_math", lambda *a, **k: fetched)
    root = _root(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(root))
    assert math_data.resolve_math_dir(None) == root
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))  # e.g. a commonsense directory: no gsm8k/ there
    assert math_data.resolve_math_dir(None) == fetched
    monkeypatch.delenv(DATA_DIR_ENV)
    assert math_data.resolve_math_dir(None) == fetched
    (root / "gsm8k" / "train.jsonl").unlink()
    monkeypatch.setenv(DATA_DIR_ENV, str(root))  # holds gsm8k/ but not both files: say so
    _one_line_error(lambda: math_data.resolve_math_dir(None), f"${DATA_DIR_ENV}={root}: no gsm8k/train.jsonl")


# -- the published files (shared copies) ----------------------------------------------------------------------
@needs_shared
def test_shared_gsm8k_counts_and_every_record_converts():
    train, test = (math_data.load_gsm8k_split(SHARED, s) for s in ("train", "test"))
    assert (len(train), len(test)) == (7473, 1319)
    for r in train + test:
        assert r["instruction"] and r["input"] == "" and "<<" not in r["output"] and ">>" not in r["output"]
        assert r["output"].rstrip().rsplit("\n", 1)[-1].startswith("#### ")
        float(r["answer"])


@needs_shared
@pytest.mark.parametrize("name", math_data.TEST_SETS)
def test_shared_math_test_sets_load(name):
    counts = {"gsm8k": 1319, "AddSub": 395, "MultiArith": 600, "SingleEq": 508, "SVAMP": 1000, "AQuA": 254,
              "mawps": 238}
    if name != "gsm8k" and not (SHARED / "math" / name / "test.json").is_file():
        pytest.skip(f"no shared math/{name}")
    indices, records = math_data.load_math_test_items(SHARED, name)
    assert len(records) == counts[name] and indices == list(range(counts[name]))


@needs_shared
def test_llm_adapters_gsm8k_is_gsm8ks_test_set():
    """Why "gsm8k" reads GSM8K's own file: LLM-Adapters' copy has the same questions and answers (reordered)."""
    path = SHARED / "math" / "gsm8k" / "test.json"
    if not path.is_file():
        pytest.skip("no shared math/gsm8k")
    ours = {r["instruction"].strip(): float(r["answer"]) for r in math_data.load_gsm8k_split(SHARED, "test")}
    theirs = {r["instruction"].strip(): float(r["answer"]) for r in math_data.read_math_test(path, "gsm8k")}
    assert ours == theirs


@needs_shared
@pytest.mark.parametrize("f", fetch.MATH_FILES, ids=lambda f: f.local)
def test_pinned_math_ids_are_git_hash_object_of_the_shared_files(f):
    """The shared files are the published ones byte for byte, so git's own id of each is the pinned blob id."""
    path = SHARED / f.local
    if not path.is_file():
        pytest.skip(f"no shared {f.local}")
    out = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f.blob == fetch.git_blob_id(path)
