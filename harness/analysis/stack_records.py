"""The stacks that result rows recorded (`env.packages`): what `bench compare` notes and `bench env
--constraints` turns back into pins. Reads rows only; imports neither torch nor pandas."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.measure.stack import constraints_text, normalize


def _versions_seen(envs: Iterable[Any]) -> dict[str, Counter]:
    """name -> how many rows recorded each version of it, over the rows' `env` records."""
    seen: dict[str, Counter] = {}
    for env in envs:
        packages = env.get("packages") if isinstance(env, dict) else None
        for name, version in (packages or {}).items():
            if isinstance(version, str) and version:
                seen.setdefault(normalize(name), Counter())[version] += 1
    return dict(sorted(seen.items()))


def recorded_stack(envs: Iterable[Any]) -> dict[str, str]:
    """name -> version over the rows' `env` records; a package recorded at several versions in one run
    (a run resumed after an upgrade) takes its most frequent one."""
    return {name: counts.most_common(1)[0][0] for name, counts in _versions_seen(envs).items()}


def mixed_versions(envs: Iterable[Any]) -> list[str]:
    """Packages recorded at more than one version within one run, as `name a, b`."""
    return [f"{name} {', '.join(sorted(counts))}" for name, counts in _versions_seen(envs).items()
            if len(counts) > 1]


def recorded_constraints(results: Path) -> str:
    """A pip constraints file pinning the stack a results file (or run directory) recorded."""
    from memft_bench.harness.results.rows import read_rows, results_path

    path = results_path(results)
    if not path.is_file():
        raise BenchError(f"--constraints {results}: no results here (give a run directory or a results.jsonl file)")
    stack = recorded_stack(row.get("env") for row in read_rows(path))
    if not stack:
        raise BenchError(f"--constraints {results}: its rows recorded no package versions")
    return constraints_text(stack, str(path))
