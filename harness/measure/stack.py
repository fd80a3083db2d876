"""The software stack a result depends on: what is installed, what the lock says, what pyproject allows.

A benchmark figure depends on library versions (a transformers release changed every trial's outcome
once), so three questions are answered here, without importing torch:

- `installed_stack()`: every distribution memft-bench pulls in (its requirements, and those of the extras
  that are installed, followed transitively), name -> version. Every result row records it.
- `lock_differences()`: where that stack differs from `requirements-lock.txt`, the exact versions CI tests
  and the README's commands install (`bench env` reports it).
- `unsupported()`: installed versions outside the ranges pyproject.toml declares (`bench run` refuses them
  with one line each, before any trial starts).
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from memft_bench.harness.core.paths import PROJECT_ROOT

DISTRIBUTION = "memft-bench"
LOCK_NAME = "requirements-lock.txt"


def normalize(name: str) -> str:
    """PEP 503's spelling of a distribution name (`Galore_Torch` and `galore-torch` are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _requirements(dist: str) -> list[Requirement]:
    try:
        texts = importlib.metadata.requires(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    out = []
    for text in texts:
        try:
            out.append(Requirement(text))
        except InvalidRequirement:  # a malformed line in someone's metadata: not ours to judge
            continue
    return out


def _applies(req: Requirement, extras: set[str]) -> bool:
    """Whether `req` is wanted here: its marker holds for this interpreter and one of `extras` (or none)."""
    if req.marker is None:
        return True
    for extra in extras | {""}:
        try:
            if req.marker.evaluate({"extra": extra}):
                return True
        except UndefinedEnvironmentName:
            return False
    return False


def _extras(dist: str) -> set[str]:
    try:
        return set(importlib.metadata.metadata(dist).get_all("Provides-Extra") or [])
    except importlib.metadata.PackageNotFoundError:
        return set()


def installed_stack(root: str = DISTRIBUTION) -> dict[str, str]:
    """name -> version of every installed distribution that `root` depends on, transitively, through its
    core requirements and any of its extras (an extra's packages count where they are installed)."""
    stack: dict[str, str] = {}
    visited: dict[str, set[str]] = {}  # name -> the extras it was followed with
    pending = [(root, _extras(root))]
    while pending:
        dist, extras = pending.pop()
        for req in _requirements(dist):
            name = normalize(req.name)
            if not _applies(req, extras):
                continue
            version = stack.get(name) or _version(req.name)
            if version is None:
                continue  # an extra's package that is not installed, or a broken environment
            stack[name] = version
            wanted = set(req.extras)
            if name not in visited or not wanted <= visited[name]:  # new, or met again with more extras
                visited[name] = visited.get(name, set()) | wanted
                pending.append((req.name, visited[name]))
    own = _version(root)
    if own is not None:
        stack[normalize(root)] = own
    return dict(sorted(stack.items()))


def lock_file() -> Path | None:
    """The repository's lock, when the project runs from its checkout (an editable install); None for a
    wheel, which carries no lock."""
    path = PROJECT_ROOT / LOCK_NAME
    return path if path.is_file() else None


def read_lock(path: Path) -> dict[str, str]:
    """name -> version of each `name==version` line of a pip requirements or constraints file."""
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)(\s*;.*)?", text)
        if not match:
            raise ValueError(f"{path}:{number}: not a `name==version` line: {text!r}")
        pins[normalize(match.group(1))] = match.group(2)
    return pins


def same_version(a: str, b: str) -> bool:
    """Versions equal up to a local label (`2.13.0+cpu` is the `2.13.0` release, built for the CPU)."""
    try:
        return Version(a).public == Version(b).public
    except InvalidVersion:
        return a == b


@dataclass(frozen=True)
class Difference:
    name: str
    installed: str | None
    wanted: str | None

    def __str__(self) -> str:
        return f"{self.name} {self.installed or 'not installed'} (lock: {self.wanted or 'not locked'})"


def lock_differences(stack: dict[str, str], lock: dict[str, str]) -> list[Difference]:
    """The packages of `stack` whose version is not the lock's, or that the lock does not pin (a CUDA build of
    torch brings nvidia-* and triton, which a lock made on a CPU machine lacks). A locked package that is not
    installed is no difference: it belongs to an extra this installation did not ask for."""
    out = [Difference(name, version, lock.get(name)) for name, version in stack.items()
           if name != normalize(DISTRIBUTION) and not (name in lock and same_version(version, lock[name]))]
    return sorted(out, key=lambda d: d.name)


def describe_differences(differences: list[Difference]) -> str:
    """One line: the versions that differ in full, then the packages the lock does not pin, by name."""
    changed = [str(d) for d in differences if d.wanted]
    unlocked = [d.name for d in differences if not d.wanted]
    parts = [", ".join(changed)] if changed else []
    if unlocked:
        parts.append(f"{len(unlocked)} not in the lock: {', '.join(unlocked)}")
    return "; ".join(parts)


def stack_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """`name a -> b` for each package both stacks record at different versions (bench compare's note)."""
    return [f"{name} {before[name]} -> {after[name]}" for name in sorted(set(before) & set(after))
            if not same_version(before[name], after[name])]


@dataclass(frozen=True)
class Unsupported:
    name: str
    installed: str
    allowed: str

    def __str__(self) -> str:
        hint = (f"pip install -c {LOCK_NAME} -e . installs the tested versions" if lock_file() else
                f"pip install '{self.name}{self.allowed}'")
        return (f"{self.name} {self.installed} is installed, outside the supported range {self.name}{self.allowed} "
                f"({hint})")


#: extras that only the tests and CI use: an old pytest does not change a measurement, so it is not refused
TOOLING_EXTRAS = frozenset({"test"})


def unsupported(root: str = DISTRIBUTION) -> list[Unsupported]:
    """Installed direct dependencies of `root` (core, and the runtime extras' where installed: not the test
    tools) outside the declared range."""
    out = []
    extras = _extras(root) - TOOLING_EXTRAS
    for req in _requirements(root):
        if not _applies(req, extras) or not str(req.specifier):
            continue
        version = _version(req.name)
        if version is None:
            continue
        try:
            allowed = req.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            continue
        if not allowed:
            out.append(Unsupported(normalize(req.name), version, str(req.specifier)))
    return sorted(set(out), key=lambda u: u.name)


def constraints_text(stack: dict[str, str], source: str) -> str:
    """A pip constraints file pinning `stack` (a recorded row's), so `pip install -c FILE -e .` reinstalls
    it; local labels (`+cpu`) are dropped so the pins resolve on any index that has the release."""
    lines = [f"# the stack recorded in {source}",
             "# reinstall with: pip install -c FILE -e \".[test,methods,gguf]\" (the extras whose packages it pins)"]
    lines += [f"{name}=={Version(v).public if _valid(v) else v}" for name, v in sorted(stack.items())
              if name != normalize(DISTRIBUTION)]
    return "\n".join(lines) + "\n"


def _valid(version: str) -> bool:
    try:
        Version(version)
    except InvalidVersion:
        return False
    return True
