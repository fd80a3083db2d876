"""The wheel built from the repository holds every subpackage, found rather than listed (setup.py).

A subpackage that a hand-written package list forgot would import from a checkout (editable install) and be
missing from a wheel: `bench` would fail only for users who install the wheel. Built offline from a copy of
the sources, with the lock's setuptools (no build isolation).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.commands import REPO_ROOT

FOLDERS = ("harness", "methods", "kernels", "suites")


def expected_files() -> set[str]:
    files = set()
    for folder in FOLDERS:
        for path in (REPO_ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                files.add(f"memft_bench/{folder}/{path.relative_to(REPO_ROOT / folder).as_posix()}")
    return files


def test_the_wheel_holds_every_module_and_suite(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("memft_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = expected_files()
    subpackages = {f"memft_bench/harness/{sub}/__init__.py" for sub in
                   ("core", "sources", "results", "spec", "measure", "trial", "run", "analysis")}
    assert subpackages <= expected  # the layers this test is about exist in the repository
    assert sorted(expected - names) == []
    assert not [n for n in names if n.startswith(("tests/", "memft_bench/tests/", "harness/", "methods/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "bench = memft_bench.harness.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
