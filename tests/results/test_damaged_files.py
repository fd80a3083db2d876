"""Damaged files are named, never skipped in silence; a full disk or an unwritable output directory stops a
sweep with one line and leaves every earlier row intact; random and corrupted inputs to every command give
only our one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.results.rows import COLUMNS, STATUSES, append_row, empty_row, read_rows, scan_rows
from memft_bench.harness.run.runner import readable_rows
from tests.commands import BENCH_CLI, REPO_ROOT
from tests.conftest import small_suite_data

ROOT = REPO_ROOT
BASELINE = ROOT / "reports" / "baselines" / "tiny" / "results.jsonl"


def _bench(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *BENCH_CLI, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def _run_dir_with_corrupt_line(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    lines = BASELINE.read_text().splitlines()[:3]
    lines[1] = lines[1][: len(lines[1]) // 2] + "#" + lines[1][len(lines[1]) // 2:]  # damage in the middle
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_a_corrupt_line_is_named_by_report_and_compare_and_run_refuses_to_append(tmp_path):
    run = _run_dir_with_corrupt_line(tmp_path)
    before = (run / "results.jsonl").read_bytes()

    report = _bench("report", str(run), "-o", str(tmp_path / "rep"), "--no-figures", "--quiet")
    assert report.returncode == 0, report.stderr
    assert f"bench: warning: {run / 'results.jsonl'}:2: corrupt line (not JSON)" in report.stderr

    compare = _bench("compare", str(run), str(run))
    assert compare.returncode == 0, compare.stderr
    assert ":2: corrupt line" in compare.stderr

    resume = _bench("run", "--methods", "full", "--out", str(run))
    assert resume.returncode == 2 and "Traceback" not in resume.stderr
    assert resume.stderr.count("bench: error:") == 1
    assert "line(s) 2 are not JSON rows" in resume.stderr and "fix or delete those lines" in resume.stderr
    assert (run / "results.jsonl").read_bytes() == before


def test_a_row_with_wrong_types_is_corrupt_too(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, empty_row(trial_id="a", method="full", task="t", seed=0, status="ok", accuracy=0.5))
    with open(path, "a") as f:
        wrong_type = empty_row(trial_id="b", method="full", task="t", seed=0, status="ok", accuracy="high")
        f.write(json.dumps(wrong_type) + "\n")
        f.write(json.dumps(empty_row(trial_id="c", method="full", task="t", seed=0, status="finished")) + "\n")
    scan = scan_rows(path)
    assert [r["trial_id"] for r in scan.rows] == ["a"] and scan.corrupt_lines == [2, 3]
    assert scan.reasons == {2: "accuracy is not a number", 3: "status 'finished' is not one of " + ", ".join(STATUSES)}


def test_a_torn_last_line_is_moved_aside_before_appending(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, empty_row(trial_id="a", method="full", task="t", seed=0, status="ok", accuracy=0.5))
    with open(path, "a") as f:
        f.write(json.dumps(empty_row(trial_id="b"))[:50])  # the write a crash interrupted
    notes: list[str] = []
    rows = readable_rows(path, notes.append)
    assert [r["trial_id"] for r in rows] == ["a"]
    assert path.read_text().endswith("}\n") and len(path.read_text().splitlines()) == 1
    assert "torn last line" in notes[0] and (tmp_path / "results.jsonl.torn").read_text().startswith('{"run_id"')
    append_row(path, empty_row(trial_id="c", method="full", task="t", seed=0, status="ok", accuracy=0.5))
    assert [r["trial_id"] for r in read_rows(path)] == ["a", "c"]


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "512k"):
    """A tmpfs of `size` mounted at `path` (needs root and mount rights: skipped where they are missing)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(directory: Path) -> None:
    with open(directory / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def _suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(small_suite_data()), encoding="utf-8")
    return path


def test_a_failed_append_leaves_no_half_row(tmp_path):
    with small_filesystem(tmp_path / "fs", "64k") as fs:
        path = fs / "results.jsonl"
        append_row(path, empty_row(trial_id="a", method="full", task="t", seed=0, status="ok", accuracy=0.5))
        intact = path.read_bytes()
        big = empty_row(trial_id="b", method="full", task="t", seed=0, status="ok", reason="x" * 200_000)
        with pytest.raises(OSError):
            append_row(path, big)
        assert path.read_bytes() == intact


def test_a_full_disk_stops_the_sweep_with_one_line_and_keeps_every_row(tmp_path):
    with small_filesystem(tmp_path / "fs") as fs:
        out = fs / "run"
        out.mkdir()
        row = empty_row(trial_id="x/earlier", method="full", task="kind", seed=0, status="ok", accuracy=0.5)
        earlier = json.dumps(row) + "\n"
        (out / "results.jsonl").write_text(earlier)
        _fill(fs)
        result = _bench("run", "--suite", str(_suite_file(tmp_path)), "--methods", "full", "--out", str(out), "-q")
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("bench: error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in result.stderr
        assert "rerun the same command to resume" in errors[0]
        assert (out / "results.jsonl").read_text() == earlier


def test_a_read_only_output_directory_is_one_line(tmp_path):
    with small_filesystem(tmp_path / "fs") as fs:
        (fs / "run").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        result = _bench("run", "--suite", str(_suite_file(tmp_path)), "--methods", "full", "--out", str(fs / "run"))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        ours = [line for line in result.stderr.splitlines() if line.startswith("bench:")]
        assert ours == [f"bench: error: --out {fs / 'run'}: cannot write there (Read-only file system); "
                        "choose another directory"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_an_unwritable_output_directory_as_a_user_without_root_powers(tmp_path):
    """Tests run as root, whom permissions do not stop: `setpriv --bounding-set -all` drops every capability
    (CAP_DAC_OVERRIDE included), so the command meets the directory's permissions as a normal user would."""
    out = tmp_path / "theirs"
    out.mkdir()
    os.chown(out, 65534, 65534)  # nobody's, mode 755: nobody else may write in it
    out.chmod(0o755)
    probe = subprocess.run(["setpriv", "--bounding-set", "-all", "--", "touch", str(out / "x")], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("dropping capabilities does not take effect here")
    result = _bench("run", "--suite", str(_suite_file(tmp_path)), "--methods", "full", "--out", str(out),
                    prefix=("setpriv", "--bounding-set", "-all", "--"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot write there (Permission denied)" in result.stderr


# -- fuzzing the readers of every command ---------------------------------------------------------------------
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
ROW_FIELDS = st.sampled_from([*COLUMNS[:30], "bogus"])
ROWS = st.fixed_dictionaries(
    {"trial_id": st.sampled_from(["a", "b", "c"]), "method": st.sampled_from(["full", "lora", "x"]),
     "task": st.sampled_from(["kind", "alive"]), "status": st.sampled_from([*STATUSES, "weird"]),
     "seed": st.sampled_from([0, 1])},
).flatmap(lambda base: st.dictionaries(ROW_FIELDS, VALUES, max_size=8).map(lambda extra: {**extra, **base}))
LINES = st.one_of(ROWS.map(lambda r: json.dumps(r)), st.text(max_size=40), st.binary(max_size=40).map(repr))


def _write_lines(path: Path, lines: list[str], torn: bool) -> None:
    text = "\n".join(lines) + ("" if torn else "\n")
    path.write_text(text, encoding="utf-8", errors="surrogateescape")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(LINES, min_size=1, max_size=6), st.booleans())
def test_random_results_files_give_report_and_compare_only_our_errors(tmp_path_factory, lines, torn):
    import warnings

    from memft_bench.harness.analysis.compare import run_compare
    from memft_bench.harness.analysis.report import write_report

    run = tmp_path_factory.mktemp("fuzz")
    _write_lines(run / "results.jsonl", lines, torn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(BenchError):
            write_report([run], run / "out.md", with_figures=False)
        with contextlib.suppress(BenchError):
            run_compare(run, run, None)


TOLERANCES = st.one_of(
    st.text(max_size=40),
    st.dictionaries(st.sampled_from(["accuracy_abs", "peak_rel", "time_ratio_rel", "exact_rel", "bogus"]), VALUES,
                    max_size=4).map(yaml.safe_dump),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TOLERANCES)
def test_random_tolerance_files_give_only_our_errors(tmp_path_factory, text):
    from memft_bench.harness.analysis.compare import load_tolerance

    path = tmp_path_factory.mktemp("tol") / "tolerance.yaml"
    path.write_text(text, encoding="utf-8")
    with contextlib.suppress(BenchError):
        load_tolerance(path)


DATA = st.one_of(
    st.text(max_size=60),
    st.lists(st.dictionaries(st.sampled_from(["instruction", "input", "output", "answer", "x"]), VALUES,
                             max_size=5), max_size=3).map(json.dumps),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(DATA)
def test_random_data_files_give_only_our_errors(tmp_path_factory, text):
    from memft_bench.harness.sources import commonsense

    data_dir = tmp_path_factory.mktemp("data")
    for task in commonsense.TASKS:
        (data_dir / task).mkdir()
        (data_dir / task / "test.json").write_text(text, encoding="utf-8")
    with contextlib.suppress(BenchError):
        commonsense.load_test_set(data_dir, commonsense.TASKS[0])


def test_damaged_model_files_are_one_line_naming_the_file_and_the_rebuild(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from memft_bench.harness.sources import pretrained

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.zeros(64, 64)}, str(model_dir / "model.safetensors"))
    pretrained.check_model_files(str(model_dir))  # intact: nothing to say
    data = (model_dir / "model.safetensors").read_bytes()
    (model_dir / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(BenchError, match=r"model\.safetensors: damaged \(.*\); copy or download the model"):
        pretrained.check_model_files(str(model_dir))

    monkeypatch.setattr(pretrained, "models_cache_root", lambda: tmp_path / "cache")
    alias_dir = tmp_path / "cache" / "models" / "smollm2-135m"
    alias_dir.mkdir(parents=True)
    (alias_dir / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    with pytest.raises(BenchError, match=rf"tokenizer\.json: damaged .*delete {alias_dir} and rerun"):
        pretrained.check_model_files(str(alias_dir))


PREDICTION_LINES = st.one_of(
    st.fixed_dictionaries({"task": st.sampled_from(["kind", "x"]), "index": VALUES, "correct": VALUES}).map(json.dumps),
    st.text(max_size=30),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(PREDICTION_LINES, max_size=5), st.one_of(st.none(), st.floats(0, 1)))
def test_random_predictions_files_are_named_never_raised(tmp_path_factory, lines, accuracy):
    import warnings

    from memft_bench.harness.results import predictions
    from memft_bench.harness.results.rows import ResultsWarning

    run = tmp_path_factory.mktemp("pred")
    (run / "p.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    row = {"predictions": "p.jsonl", "source_dir": str(run), "accuracy": accuracy,
           "accuracy_per_task": {"kind": accuracy}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = predictions.for_row(row)
    if found is None:
        assert any(issubclass(w.category, ResultsWarning) and "p.jsonl" in str(w.message) for w in caught)
