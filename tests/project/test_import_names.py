"""Our code is importable only as `memft_bench.*`: the folder names belong to other distributions.

Hugging Face's `kernels` (which transformers >= 5.25 imports: `from kernels import CUDAProperties`) and
the registry's `harness` are real packages; `methods` and `suites` are generic. A regular package of ours
under one of those names at the repository root shadowed theirs for every process started there (trials
run with `python -m` from the root), and transformers failed to import. These tests install nothing: they
use what the lock installs, and stand-in packages on PYTHONPATH that they write themselves.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.commands import BENCH_CLI, REPO_ROOT

ROOT = REPO_ROOT
FOLDERS = ("harness", "methods", "kernels", "suites")


def _python(code: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_no_folder_is_a_regular_package_at_the_root():
    """A folder with an `__init__.py` at the root would win over any installed package of that name."""
    assert not [f for f in FOLDERS if (ROOT / f / "__init__.py").exists()]


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_packages_that_own_our_folder_names_are_the_ones_imported(tmp_path, cwd):
    """Stand-ins named like our folders, on PYTHONPATH (after the working directory in sys.path), are the
    modules `import harness` etc. give, from the root and from elsewhere, and the project still runs."""
    site = tmp_path / "site"
    for name in FOLDERS:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"OWNER = 'stand-in {name}'\n")
    code = """
        import json, harness, methods, kernels, suites
        from memft_bench.harness.spec.config import load_suite
        from memft_bench.methods.base import get_method_class
        from memft_bench.kernels.omp import batched_omp_torch
        owners = [getattr(m, "OWNER", m.__file__) for m in (harness, methods, kernels, suites)]
        print(json.dumps([owners, load_suite("tiny").name, get_method_class("lora").name]))
    """
    out = _python(code, ROOT if cwd == "root" else tmp_path, pythonpath=site)
    assert out.returncode == 0, out.stderr
    owners, suite, method = json.loads(out.stdout)
    assert owners == [f"stand-in {name}" for name in FOLDERS]
    assert (suite, method) == ("tiny", "lora")


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_the_hub_kernels_package_and_transformers_integration_import_from_the_root(tmp_path, where):
    """With Hugging Face's `kernels` installed (transformers depends on it from 5.25 on), `import kernels` is
    theirs from the repository root and from anywhere else, and transformers' hub-kernels integration imports."""
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels is not installed with this transformers (older than 5.25)")
    code = """
        import kernels
        from transformers.integrations import hub_kernels
        print(kernels.__file__)
    """
    out = _python(code, ROOT if where == "root" else tmp_path)
    assert out.returncode == 0, out.stderr
    imported = Path(out.stdout.strip()).resolve()
    assert imported == Path(dist.locate_file("kernels/__init__.py")).resolve()
    assert (ROOT / "kernels").resolve() not in imported.parents  # not our folder (a venv may live under ROOT)


def test_bench_lists_from_the_root_beside_stand_ins(tmp_path):
    """The command line, run from the root with stand-ins of every folder name installed, still answers."""
    site = tmp_path / "site"
    for name in FOLDERS:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text("raise ImportError('a stand-in must never be imported by bench')\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([*BENCH_CLI, "list", "suites"], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tiny" in out.stdout
