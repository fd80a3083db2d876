"""The harness's layers hold in the real import graph (docs/architecture.md).

The graph is grimp's (import-linter's engine): every import statement of every module, at module level,
inside functions and under TYPE_CHECKING. The layer order itself is the import-linter contract in
pyproject.toml (also run by .ci/run); these tests add what a layers contract does not see: a cycle
between modules of one layer, a private name used across modules, and torch imported by a layer that
the CLI's fast commands load.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import REPO_ROOT

grimp = pytest.importorskip("grimp", reason="the test extra installs import-linter (and grimp)")

ROOT_PACKAGES = ("memft_bench.harness", "memft_bench.methods", "memft_bench.kernels")
FOLDERS = {"harness": "memft_bench.harness", "methods": "memft_bench.methods", "kernels": "memft_bench.kernels"}
#: The layers the CLI's fast commands (--help, list, report, compare) import: torch must wait for a trial.
NO_TORCH_AT_IMPORT = ("core", "sources", "results", "spec", "trackers", "analysis")


def import_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph(*ROOT_PACKAGES, include_external_packages=False)
    ours = {m for m in graph.modules if m.startswith("memft_bench.")}
    return {m: graph.find_modules_directly_imported_by(m) & ours for m in ours}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def private_names_across_modules(module: str, source: str) -> list[str]:
    """`from memft_bench.x import _name` and `alias._name` (alias bound to another module of ours)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("memft_bench"):
            for name in node.names:
                if name.name.startswith("_") and not name.name.startswith("__") and node.module != module:
                    problems.append(f"{module}:{node.lineno} imports {node.module}.{name.name}")
                aliases[name.asname or name.name] = f"{node.module}.{name.name}"
        elif isinstance(node, ast.Import):
            for name in node.names:
                if name.name.startswith("memft_bench") and name.asname:
                    aliases[name.asname] = name.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            problems.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
        # getattr(mod, "_x"), setattr(mod, "_x", v), monkeypatch.setattr(mod, "_x", v)
        if (isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[0], ast.Name)
                and node.args[0].id in aliases and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and node.args[1].value.startswith("_")
                and not node.args[1].value.startswith("__")):
            problems.append(f"{module}:{node.lineno} uses {aliases[node.args[0].id]}.{node.args[1].value}")
    return sorted(problems, key=lambda problem: int(problem.split(":")[1].split()[0]))


def our_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def test_the_import_linter_contracts_hold():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(REPO_ROOT / "pyproject.toml"), no_cache=True) == 0


def test_no_module_imports_itself_back_through_others():
    graph = import_graph()
    assert len(graph) >= len(our_modules()) - 1  # the graph saw every module (trial/__main__ aside)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_uses_another_modules_private_names():
    """In the package, and in the tests, benchmarks and scripts that use it."""
    sources = {name: path for name, path in our_modules().items()}
    for folder in ("tests", "benchmarks"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            sources[".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)] = path
    for path in sorted((REPO_ROOT / ".ci").iterdir()):
        if path.is_file() and path.read_text(encoding="utf-8", errors="replace").startswith("#!/usr/bin/env python"):
            sources[f".ci.{path.name}"] = path
    problems = [p for name, path in sources.items()
                for p in private_names_across_modules(name, path.read_text(encoding="utf-8"))]
    assert problems == []


def test_every_subpackage_of_the_harness_has_its_place_in_the_layers_contract():
    """`harness` is a namespace folder, so import-linter cannot hold an exhaustive container contract over it:
    a new subpackage left out of the list would be checked by no layer."""
    import tomllib

    contracts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    harness = REPO_ROOT / "harness"
    subpackages = {f"memft_bench.harness.{p.parent.name}" for p in harness.glob("*/__init__.py")}
    top_modules = {f"memft_bench.harness.{p.stem}" for p in harness.glob("*.py")}
    assert subpackages | top_modules == set(layers)


def test_the_private_name_check_can_fail():
    source = ("from memft_bench.harness.run.runner import _hidden\n"
              "from memft_bench.harness.run import runner\n"
              "runner._other()\n")
    source += "monkeypatch.setattr(runner, '_patched', None)\n"
    assert private_names_across_modules("memft_bench.harness.cli", source) == [
        "memft_bench.harness.cli:1 imports memft_bench.harness.run.runner._hidden",
        "memft_bench.harness.cli:3 uses memft_bench.harness.run.runner._other",
        "memft_bench.harness.cli:4 uses memft_bench.harness.run.runner._patched",
    ]


def test_the_fast_commands_layers_import_no_torch():
    modules = [name for name in our_modules()
               if name.split(".")[2:3] and name.split(".")[1] == "harness" and name.split(".")[2] in NO_TORCH_AT_IMPORT]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert len(modules) > 20
    assert out.strip() == "[]"
