"""The suite's `trackers:` section: which trackers a suite logs to, and each one's few settings.

Data only, validated like every other suite field (`harness.core.options.build`); it never enters a trial's
fingerprint (planning hashes the model, budget, evaluation and data seed), so adding or changing it changes
no trial id and a logged sweep resumes the same trials as an unlogged one.
"""

from __future__ import annotations

from dataclasses import dataclass

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option

#: The trackers `--log-to` and `trackers.log_to` accept, in the order they log.
TRACKER_NAMES = ("mlflow", "tensorboard", "wandb")


@dataclass
class MlflowSettings:
    tracking_uri: str | None = option(
        None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///DIR/mlflow.db: a local store in "
        "the run directory, artifacts in DIR/mlruns)")
    experiment: str | None = option(None, "experiment name (default: the suite's name)")


@dataclass
class TensorboardSettings:
    log_dir: str | None = option(None, "directory of the event files, one subdirectory per trial (default: "
                                 "DIR/tensorboard)")


@dataclass
class WandbSettings:
    project: str = option("memft-bench", "W&B project")
    entity: str | None = option(None, "W&B entity, a team or user (default: the logged-in user's)")
    group: str | None = option(None, "group of the sweep's runs (default: the run directory's name and a hash of "
                               "its path, kept in DIR/trackers/wandb.json so a resumed sweep stays in one group)")
    mode: str | None = option(
        None, "online or offline (default: $WANDB_MODE, else online when logged in: WANDB_API_KEY or a netrc "
        "entry; else offline, runs under DIR/wandb/ for `wandb sync`)", choices=(None, "online", "offline"))


@dataclass
class TrackersSpec:
    log_to: list[str] = option(default_factory=list,
                               help="trackers every run of the suite logs to; bench run --log-to replaces the list")
    mlflow: MlflowSettings = option(default_factory=MlflowSettings, help="MLflow settings")
    tensorboard: TensorboardSettings = option(default_factory=TensorboardSettings, help="TensorBoard settings")
    wandb: WandbSettings = option(default_factory=WandbSettings, help="Weights & Biases settings")

    def validate(self, where: str) -> None:
        unknown = [name for name in self.log_to if name not in TRACKER_NAMES]
        if unknown:
            raise ConfigError(f"{where}.log_to: unknown tracker {unknown[0]!r}; choose from "
                              f"{', '.join(TRACKER_NAMES)}")
