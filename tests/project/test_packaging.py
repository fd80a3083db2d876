"""The wheel built from the repository holds every subpackage, found rather than listed (setup.py).

A subpackage that a hand-written package list forgot would import from a checkout (editable install) and be
missing from a wheel: `bench` would fail only for users who install the wheel. Built offline from a copy of
the sources, with the lock's setuptools (no build isolation).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.commands import REPO_ROOT
from tests.conftest import small_suite_data

FOLDERS = ("harness", "methods", "kernels", "suites")


def expected_files() -> set[str]:
    files = set()
    for folder in FOLDERS:
        for path in (REPO_ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                files.add(f"memft_bench/{folder}/{path.relative_to(REPO_ROOT / folder).as_posix()}")
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built once from a copy of the sources."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, text=True)
    (built,) = (tmp_path / "dist").glob("memft_bench-*.whl")
    return built


def test_the_wheel_holds_every_module_and_suite(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = expected_files()
    subpackages = {f"memft_bench/harness/{sub}/__init__.py" for sub in
                   ("core", "sources", "results", "spec", "measure", "trial", "run", "analysis")}
    assert subpackages <= expected  # the layers this test is about exist in the repository
    assert sorted(expected - names) == []
    assert not [n for n in names if n.startswith(("tests/", "memft_bench/tests/", "harness/", "methods/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "bench = memft_bench.harness.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_bench_runs_from_the_installed_wheel(wheel, tmp_path):
    """`bench list` and a trial, from the wheel alone: installed into a folder put first on the path, run
    from a directory outside the checkout, so neither the editable install nor the folders can answer."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import memft_bench.harness.cli as c, memft_bench.harness.trial.worker as w; print(c.__file__, w.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in where), where
    listed = subprocess.run([sys.executable, "-m", "memft_bench.harness.cli", "list", "suites"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 0 and "tiny" in listed.stdout, listed.stderr
    (tmp_path / "unit.yaml").write_text(yaml.safe_dump(small_suite_data(steps=2)))
    ran = subprocess.run([sys.executable, "-m", "memft_bench.harness.cli", "run", "--suite", "unit.yaml", "--methods",
                          "full", "--out", "out", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert row["status"] == "ok", row["reason"]

