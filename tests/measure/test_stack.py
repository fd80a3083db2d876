"""The installed stack against the lock and the declared ranges: bench env, bench compare, bench run."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from memft_bench.harness.analysis.compare import render, run_compare
from memft_bench.harness.measure.stack import (
    Difference,
    describe_differences,
    installed_stack,
    lock_differences,
    lock_file,
    read_lock,
    stack_changes,
    unsupported,
)
from tests.commands import BENCH_CLI, REPO_ROOT

ROOT = REPO_ROOT


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH_CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, **(env or {})})


def _fake_distribution(site: Path, name: str, version: str, requires: tuple[str, ...] = (),
                       extras: tuple[str, ...] = ()) -> None:
    """Metadata only (no code): importlib.metadata finds it first when `site` leads sys.path."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Provides-Extra: {e}" for e in extras), *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_the_committed_lock_pins_every_package_once():
    pins = read_lock(ROOT / "requirements-lock.txt")
    assert {"torch", "transformers", "peft", "kernels", "pytest"} <= set(pins)
    assert all("+" not in version for version in pins.values())  # resolvable on any index that has the release


def test_read_lock_names_a_line_that_is_not_a_pin(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# comment\ntorch==2.13.0\ntransformers>=5\n")
    with pytest.raises(ValueError, match=r"lock.txt:3: not a `name==version` line"):
        read_lock(lock)


def test_installed_stack_is_what_importlib_sees():
    stack = installed_stack()
    for name in ("torch", "transformers", "peft", "pandas", "click", "memft-bench"):
        assert stack[name] == importlib.metadata.version(name)
    assert "tokenizers" in stack  # transitive: transformers' requirement, followed


def test_differences_from_a_lock_ignore_local_labels_and_name_each_package():
    stack = {"torch": "2.13.0+cpu", "transformers": "5.26.0", "cupy-cuda13x": "14.2.0", "memft-bench": "0.1.0"}
    lock = {"torch": "2.13.0", "transformers": "5.25.0", "peft": "0.21.2"}
    assert lock_differences(stack, lock) == [Difference("cupy-cuda13x", "14.2.0", None),
                                              Difference("transformers", "5.26.0", "5.25.0")]
    assert str(lock_differences(stack, lock)[1]) == "transformers 5.26.0 (lock: 5.25.0)"
    assert stack_changes({"torch": "2.13.0+cpu", "peft": "0.20"}, {"torch": "2.13.0", "peft": "0.21"}) == [
        "peft 0.20 -> 0.21"]


@pytest.mark.skipif(not os.environ.get("BENCH_EXPECT_LOCKED_STACK"),
                    reason="set by .ci/run, whose fresh environment the README's command installed from the lock")
def test_the_readme_command_installed_exactly_the_lock():
    assert lock_file() is not None
    assert [str(d) for d in lock_differences(installed_stack(), read_lock(lock_file()))] == []


def test_bench_env_says_where_the_stack_differs_from_a_lock(tmp_path):
    lock = tmp_path / "lock.txt"
    torch_version = importlib.metadata.version("torch")
    lock.write_text(f"torch==0.0.1\ntransformers=={importlib.metadata.version('transformers')}\n")
    out = _bench("env", "--lock", str(lock))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["packages"]["torch"] == torch_version  # stdout stays JSON
    note = [line for line in out.stderr.splitlines() if "differs from" in line]
    assert len(note) == 1 and f"torch {torch_version} (lock: 0.0.1)" in note[0]
    assert re.search(r"(: |, )transformers ", note[0]) is None  # the package the lock pins at its version


def test_unsupported_names_the_package_its_version_and_the_range(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _fake_distribution(site, "demo-root", "1.0", ("click>=99.0", "pyyaml>=1.0", "nosuchpackage>=1.0"))
    monkeypatch.syspath_prepend(str(site))
    problems = unsupported("demo-root")
    assert [(p.name, p.allowed) for p in problems] == [("click", ">=99.0")]
    assert str(problems[0]).startswith(f"click {importlib.metadata.version('click')} is installed, outside the "
                                       "supported range click>=99.0")


def test_test_tools_are_never_refused_but_runtime_extras_are(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _fake_distribution(site, "demo-root", "1.0", ('pytest>=99.0; extra == "test"', 'click>=99.0; extra == "slurm"'),
                       extras=("test", "slurm"))
    monkeypatch.syspath_prepend(str(site))
    assert [p.name for p in unsupported("demo-root")] == ["click"]


def test_differences_are_told_apart_from_packages_the_lock_does_not_pin():
    line = describe_differences([Difference("nvidia-cublas", "13.1", None), Difference("torch", "2.14.1", "2.13.0"),
                                 Difference("triton", "3.6.0", None)])
    assert line == "torch 2.14.1 (lock: 2.13.0); 2 not in the lock: nvidia-cublas, triton"


def test_extras_met_again_are_followed(tmp_path, monkeypatch):
    """`b` is required plainly first, then as `b[x]`: the packages of its extra belong to the stack too."""
    site = tmp_path / "site"
    _fake_distribution(site, "demo-a", "1.0", ("demo-b", "demo-c"))
    _fake_distribution(site, "demo-c", "1.0", ("demo-b[x]",))
    _fake_distribution(site, "demo-b", "1.0", ('demo-d; extra == "x"',), extras=("x",))
    _fake_distribution(site, "demo-d", "2.0")
    monkeypatch.syspath_prepend(str(site))
    assert installed_stack("demo-a") == {"demo-a": "1.0", "demo-b": "1.0", "demo-c": "1.0", "demo-d": "2.0"}


def test_bench_run_refuses_a_stack_outside_the_declared_ranges_before_any_trial(tmp_path):
    site = tmp_path / "site"
    _fake_distribution(site, "transformers", "4.0.0")  # shadows the real metadata, not the code
    out_dir = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    out = _bench("run", "--out", str(out_dir), env=env)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("bench: error:")]
    assert errors == [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "transformers 4.0.0 is installed, outside the supported range transformers>=" \
        in errors[0]
    assert not out_dir.exists()
    allowed = _bench("run", "--dry-run", "--out", str(out_dir), env={**env, "BENCH_ALLOW_UNSUPPORTED_STACK": "1"})
    assert allowed.returncode == 0, allowed.stderr
    assert "bench: warning: transformers 4.0.0 is installed" in allowed.stderr


def _row(packages: dict[str, str]) -> dict:
    return {"task": "kind", "method": "full", "variant": "", "seed": 0, "status": "ok", "accuracy": 0.5,
            "env": {"packages": packages}}


def _write_run(directory: Path, packages: dict[str, str]) -> Path:
    directory.mkdir()
    (directory / "results.jsonl").write_text(json.dumps({**_row(packages), "trial_id": "kind__full__seed0"}) + "\n")
    return directory


def test_compare_notes_runs_measured_on_different_stacks(tmp_path):
    base = _write_run(tmp_path / "base", {"torch": "2.13.0+cpu", "transformers": "5.24.0"})
    same = _write_run(tmp_path / "same", {"torch": "2.13.0", "transformers": "5.24.0"})
    moved = _write_run(tmp_path / "moved", {"torch": "2.13.0", "transformers": "5.25.0"})
    assert run_compare(base, same, None).notes == []
    comparison = run_compare(base, moved, None)
    assert comparison.notes == ["note: the two runs were measured on different stacks (1 package(s)): "
                                "transformers 5.24.0 -> 5.25.0"]
    assert not comparison.regressions
    assert comparison.notes[0] in render(comparison)
    out = _bench("compare", str(base), str(moved))
    assert out.returncode == 0 and comparison.notes[0] in out.stdout


def test_bench_env_constraints_reinstall_what_a_run_recorded(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [_row({"torch": "2.13.0+cpu", "transformers": "5.24.0", "memft-bench": "0.1.0"})]
    (run / "results.jsonl").write_text("".join(json.dumps({**r, "trial_id": "t"}) + "\n" for r in rows))
    out = _bench("env", "--constraints", str(run))
    assert out.returncode == 0, out.stderr
    pins = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    assert pins == ["torch==2.13.0", "transformers==5.24.0"]
    missing = _bench("env", "--constraints", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.startswith("bench: error: --constraints")


def test_ci_runs_the_readme_test_command_verbatim_and_both_commands_install_the_lock():
    printed = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print-test-command"], capture_output=True,
                             text=True, timeout=60, check=True).stdout.strip()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert printed.endswith("python -m pytest -q -n 2 --dist loadfile") and f"\n{printed}\n" in readme
    run_command = next(line for line in readme.splitlines() if line.endswith("&& bench run"))
    for command in (printed, run_command):
        assert command.startswith("pip install -c requirements-lock.txt -e ")
