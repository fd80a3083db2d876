"""The trackers by name: which one `--log-to` and `trackers.log_to` choose, and whether its library is there.

Choosing checks, without importing anything, that each chosen tracker's packages are installed, so that a
missing one stops `bench run` with one line naming the extra to install before any trial starts.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memft_bench.harness.core.errors import BenchError, ConfigError
from memft_bench.harness.core.options import build
from memft_bench.harness.trackers.base import Tracker
from memft_bench.harness.trackers.settings import TrackersSpec
from memft_bench.harness.trackers.sweep import SweepTrackers

NONE = "none"


@dataclass(frozen=True)
class Entry:
    module: str
    cls: str
    packages: tuple[str, ...]  # import names that must be installed


ENTRIES = {
    "mlflow": Entry("memft_bench.harness.trackers.mlflow_tracker", "MlflowTracker", ("mlflow",)),
    "tensorboard": Entry("memft_bench.harness.trackers.tensorboard_tracker", "TensorboardTracker", ("tensorboard",)),
    "wandb": Entry("memft_bench.harness.trackers.wandb_tracker", "WandbTracker", ("wandb",)),
}
#: MLflow's SQL stores (SQLite, the default) need these besides mlflow-skinny.
SQL_STORE_PACKAGES = ("sqlalchemy", "alembic")
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def parse_log_to(value: str | None, suite_list: list[str]) -> tuple[list[str], str]:
    """(names, where they came from): `--log-to a,b` replaces the suite's `trackers.log_to`; `none` empties it."""
    if value is None:
        return list(dict.fromkeys(suite_list)), "suite trackers.log_to"
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    if names == [NONE]:
        return [], "--log-to"
    unknown = [n for n in names if n not in ENTRIES]
    if unknown or not names:
        problem = f"unknown tracker {unknown[0]!r}" if unknown else "no tracker named"
        raise ConfigError(f"--log-to {value!r}: {problem}; choose from {', '.join(ENTRIES)} (comma-separated), "
                          f"or {NONE}")
    return list(dict.fromkeys(names)), "--log-to"


def missing_packages(name: str, spec: TrackersSpec, out_dir: Path) -> list[str]:
    packages = list(ENTRIES[name].packages)
    if name == "mlflow":
        from memft_bench.harness.trackers.mlflow_tracker import tracking_uri

        scheme = tracking_uri(spec.mlflow, out_dir).partition(":")[0].partition("+")[0]
        if scheme in SQL_SCHEMES:
            packages += SQL_STORE_PACKAGES
    return [p for p in packages if importlib.util.find_spec(p) is None]


def build_tracker(name: str, spec: TrackersSpec, out_dir: Path, suite: str) -> Tracker:
    entry = ENTRIES[name]
    cls: Any = getattr(importlib.import_module(entry.module), entry.cls)
    return cls(out_dir, suite, getattr(spec, name))


def select(log_to: str | None, suite_trackers: dict[str, Any], out_dir: Path, suite: str) -> SweepTrackers | None:
    """The sweep's trackers, or None when it logs to none. Raises a BenchError (one line, exit 2) for an
    unknown name or a tracker whose packages are missing."""
    spec = build(TrackersSpec, suite_trackers, f"suite {suite}: trackers")
    names, where = parse_log_to(log_to, spec.log_to)
    for name in names:
        missing = missing_packages(name, spec, out_dir)
        if missing:
            raise BenchError(f"{where} {name}: {', '.join(missing)} not installed; "
                             f"pip install 'memft-bench[{name}]' (or drop {name})")
    if not names:
        return None
    return SweepTrackers([build_tracker(name, spec, out_dir, suite) for name in names], out_dir)
