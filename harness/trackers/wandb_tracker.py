"""Weights & Biases: one run per row, every run of the sweep in one group, and a `report` run for the report.

Offline unless the user is logged in (WANDB_API_KEY, or the netrc entry `wandb login` writes) or says
otherwise (`trackers.wandb.mode`, `$WANDB_MODE`): offline runs are written with no network, and `wandb sync`
uploads them later. `DIR/wandb/offline-run-*/` holds one run per row; the group's `report` run (job type
`report`: the report and its figures as files) is written apart, under `DIR/trackers/wandb/`, so that the
runs beside the rows are exactly the rows. A run's id is its row's key, so a row logged again after an
interrupted attempt replaces that attempt's offline directory (online, the same id resumes the same run)
instead of adding a second run. The console, system metrics, git and requirements capture are off: the row
already records the environment.
"""

from __future__ import annotations

import hashlib
import netrc
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from memft_bench.harness.trackers.base import TRACKERS_DIR, Tracker
from memft_bench.harness.trackers.records import TrackedRun
from memft_bench.harness.trackers.settings import WandbSettings

#: Settings that keep W&B to what the runner hands it (each left out where an older wandb lacks it).
QUIET_SETTINGS = {"console": "off", "silent": True, "disable_git": True, "save_code": False,
                  "disable_job_creation": True, "x_disable_stats": True, "x_disable_meta": True,
                  "x_disable_machine_info": True, "x_save_requirements": False}


def logged_in() -> bool:
    """An API key in the environment or in the netrc entry of the W&B host, as `wandb login` leaves it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(settings: WandbSettings) -> str:
    return settings.mode or os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, out_dir: Path, suite: str, settings: WandbSettings) -> None:
        super().__init__(out_dir, suite)
        self.settings = settings
        self.mode = resolve_mode(settings)
        self.group = ""

    @property
    def destination(self) -> str:
        if self.mode == "offline":
            return ""  # offline runs live under DIR/wandb whatever the project; `wandb sync` sends them later
        return f"{self.mode}:{self.settings.entity or ''}/{self.settings.project}"

    def start(self) -> None:
        import wandb  # noqa: F401 (installed, importable)

        state = self.read_state()
        path = str(self.out_dir.resolve())
        self.group = self.settings.group or state.get("group") or \
            f"{self.out_dir.name}-{hashlib.sha256(path.encode()).hexdigest()[:6]}"
        if state.get("group") != self.group:
            self.write_state({"group": self.group})

    def init(self, run_id: str, name: str, job_type: str, where: Path, **kwargs: Any) -> Any:
        """A run written under `where`/wandb/ (offline); the settings object is new for each run, since
        wandb.init fills in the one it is given."""
        import wandb

        if self.mode == "offline":  # an earlier, interrupted attempt of this very run
            for stale in (where / "wandb").glob(f"offline-run-*-{run_id}"):
                shutil.rmtree(stale, ignore_errors=True)
        known = getattr(wandb.Settings, "model_fields", {})
        settings = wandb.Settings(**{k: v for k, v in QUIET_SETTINGS.items() if k in known})
        where.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=self.settings.project, entity=self.settings.entity, group=self.group,
                          job_type=job_type, name=name, id=run_id, dir=str(where), mode=self.mode,
                          settings=settings, resume="allow" if self.mode == "online" else None, **kwargs)

    def log(self, run: TrackedRun, attempt: int) -> str:
        handle = self.init(run.key, run.name, "trial", self.out_dir, config={**run.params, "bench": run.tags},
                           tags=run.labels)
        where = str(handle.id) if self.mode != "offline" else os.path.relpath(Path(handle.dir).parent, self.out_dir)
        try:
            by_step: dict[int, dict[str, float]] = {}
            for series, points in run.series.items():
                for step, value in points:
                    by_step.setdefault(step, {})[series] = value
            for step in sorted(by_step):
                handle.log(by_step[step], step=step)
            handle.summary.update(run.metrics)
        finally:
            handle.finish(exit_code=0 if run.ok else 1)
        return where

    def log_report(self, files: list[Path]) -> None:
        run_id = "report-" + hashlib.sha256(self.group.encode()).hexdigest()[:12]
        handle = self.init(run_id, f"{self.group} report", "report", self.out_dir / TRACKERS_DIR)
        try:
            for path in files:
                copy = Path(handle.dir) / path.name
                shutil.copyfile(path, copy)
                handle.save(str(copy), base_path=handle.dir, policy="now")
        finally:
            handle.finish()
