"""The command line: fast listing, one-line errors, and an end-to-end run that resumes and records failures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.commands import BENCH_CLI
from tests.conftest import small_suite_data


def bench(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH_CLI, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_help_and_list_do_not_import_torch():
    code = (
        "import sys\n"
        "from memft_bench.harness.cli import main\n"
        "for argv in (['--help'], ['list', 'methods'], ['list', 'suites']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'pandas') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "lora" in out and "galore" in out and "tiny" in out


def test_list_methods_verbose_shows_options():
    out = bench("list", "methods", "-v")
    assert out.returncode == 0
    assert "r (an integer, default 32): adapter rank" in out.stdout


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    _one_line_error(bench("run", "--methods", "nope", "--out", str(tmp_path / "a")), "unknown method 'nope'", "lora")
    _one_line_error(bench("run", "--suite", "nope", "--out", str(tmp_path / "b")), "unknown suite 'nope'", "tiny")
    _one_line_error(bench("run", "--set", "lora.r=zero", "--out", str(tmp_path / "c")), "methods.lora.r")
    _one_line_error(bench("run", "--seeds", "a,b", "--out", str(tmp_path / "d")), "--seeds")
    _one_line_error(bench("report", str(tmp_path / "nothing")), "no results.jsonl")
    assert not (tmp_path / "a" / "results.jsonl").exists()


@pytest.mark.slow  # the CLI end to end in subprocesses: left out of the stacks' fast tests
def test_end_to_end_run_resume_and_failed_trial(tmp_path):
    suite = small_suite_data(steps=4)
    suite["model"]["pretrain_steps"] = 3
    suite["default_methods"] = ["full", "lora", "mezo", "fault-raise"]
    suite["methods"] = {"lora": {"r": 2}}
    suite["evaluation"]["before_training"] = True
    suite_file = tmp_path / "unit.yaml"
    suite_file.write_text(yaml.safe_dump(suite), encoding="utf-8")
    out = tmp_path / "run"

    # a method that raises in its second step fails inside its trial; the others must still run, and the
    # exit status says a trial hit an error
    first = bench("run", "--suite", str(suite_file), "--out", str(out), "--plugin", "tests.faults", "--quiet")
    assert first.returncode == 1, first.stderr
    rows = {r["method"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["full"]["status"] == rows["mezo"]["status"] == rows["lora"]["status"] == "ok"
    assert rows["fault-raise"]["status"] == "error" and "injected failure" in rows["fault-raise"]["reason"]
    assert rows["mezo"]["mem_grads_mb"] == 0 and rows["mezo"]["forward_passes_per_step"] == 2
    full = rows["full"]
    assert full["steps"] == 4 and full["accuracy"] is not None and full["eval_items"] == {"kind": 16}
    assert full["optimizer_state_elements"] == 2 * full["trainable_params"]
    assert full["tokens_per_s"] > 0 and full["peak_mem_rss_mb"] > 0
    # the untrained model is scored once and shared by every method that starts from it
    assert rows["mezo"]["accuracy_per_task_before"] == full["accuracy_per_task_before"] is not None
    assert len(list((out / "untrained").glob("*.json"))) == 1
    logs = [p.read_text() for p in (out / "logs").glob("*.log")]
    # scored on the model as built, before prepare(), once: the three others reuse it
    assert sum("untrained score: reused" in text for text in logs) == 3
    assert (out / "report.md").read_text().count("| full") >= 1

    # the same command again: every trial is recorded, nothing runs
    logs_before = {p.name: p.stat().st_mtime_ns for p in (out / "logs").glob("*.log")}
    again = bench("run", "--suite", str(suite_file), "--out", str(out), "--plugin", "tests.faults", "--quiet")
    assert again.returncode == 1 and "4 of 4 trials already recorded" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "logs").glob("*.log")} == logs_before  # nothing started
    assert len((out / "results.jsonl").read_text().splitlines()) == 4

    # a fixed option is a different trial; a comma-separated value sweeps; --strict fails only on failures
    fixed = bench("run", "--suite", str(suite_file), "--out", str(out), "--methods", "lora", "--set", "lora.r=2,4",
                  "--quiet", "--strict")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    lora_ok = {r["variant"]: r for r in rows if r["method"] == "lora" and r["status"] == "ok" and r["variant"]}
    assert set(lora_ok) == {"r=2", "r=4"}
    assert lora_ok["r=4"]["trainable_params"] == 2 * lora_ok["r=2"]["trainable_params"] < 0.2 * full["trainable_params"]
    assert lora_ok["r=2"]["method_params"]["r"] == 2 and lora_ok["r=2"]["command"].startswith("bench run")

    report_dir = tmp_path / "report"
    report = bench("report", str(out), "-o", str(report_dir))
    assert report.returncode == 0, report.stderr
    text = (report_dir / "REPORT.md").read_text()
    for heading in ("## Accuracy", "## Memory", "## Speed", "## Failed trials", "lora (r=2)", "× full: w+g+opt"):
        assert heading in text
    for png in ("accuracy_vs_peak.png", "accuracy_vs_state.png", "loss_curves.png", "memory_breakdown.png"):
        assert (report_dir / png).stat().st_size > 1000 and f"]({png})" in text

    # compare: a run against itself passes; a worsened copy fails and names the metric
    same = bench("compare", str(out), str(out))
    assert same.returncode == 0 and "0 regression(s)" in same.stdout
    worse = tmp_path / "worse.jsonl"
    with open(worse, "w") as f:
        for row in rows:
            if row["method"] == "full":
                row = dict(row, accuracy=row["accuracy"] - 0.5,
                           optimizer_state_elements=row["optimizer_state_elements"] + 1)
            f.write(json.dumps(row) + "\n")
    regressed = bench("compare", str(out), str(worse))
    assert regressed.returncode == 1
    assert "accuracy" in regressed.stdout and "optimizer_state_elements" in regressed.stdout
    assert "REGRESSION" in regressed.stdout
    assert bench("compare", str(out), str(tmp_path / "nothing")).returncode == 2


def test_a_bad_heap_policy_stops_the_run_in_one_line(tmp_path):
    """BENCH_CPU_MMAP_THRESHOLD is read by every CPU trial: a bad value is refused once, before any trial."""
    import os

    result = subprocess.run([*BENCH_CLI, "run", "--methods", "lora", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, BENCH_CPU_MMAP_THRESHOLD="64k"))
    _one_line_error(result, "BENCH_CPU_MMAP_THRESHOLD='64k'", "'dynamic'")
    assert not (tmp_path / "run" / "results.jsonl").exists()
