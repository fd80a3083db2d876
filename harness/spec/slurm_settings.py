"""Slurm settings as a suite (`slurm:`) or `--slurm key=value` gives them: data only, validated before
anything is submitted; `run/slurm.py` is the executor that uses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import build, option


@dataclass
class SlurmSpec:
    """Cluster settings for `--executor slurm`: the suite's `slurm:` section, then `--slurm KEY=VALUE`."""

    partition: str | None = option(None, "partition to submit to (default: the cluster's default partition)")
    time_min: int | None = option(
        None, "time limit of each trial's job in minutes (default: the trial timeout plus 5 minutes, else 60)",
        min=1)
    gpus_per_trial: int = option(0, "GPUs each trial's job gets (its trial runs on cuda:0 of them)", min=0)
    cpus_per_trial: int = option(1, "CPUs each trial's job gets (also its torch threads)", min=1)
    mem: str | None = option(None, "memory per job, as sbatch --mem takes it: 16G, 64000M (default: the cluster's)")
    account: str | None = option(None, "account to charge (sbatch --account)")
    qos: str | None = option(None, "quality of service (sbatch --qos)")
    sbatch_args: list[str] = option(default_factory=list,
                                    help="extra sbatch arguments, each --name or --name=value (--constraint=a100)")
    max_jobs: int | None = option(None, "most jobs of one submission running at once (the array's %N)", min=1)
    setup: list[str] = option(default_factory=list,
                              help="shell lines each job runs before its trial (module load ..., source venv/...)")

    def validate(self, where: str) -> None:
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem):
            raise ConfigError(f"{where}.mem: expected a size such as 16G or 64000M; got {self.mem!r}")
        for arg in self.sbatch_args:
            if not re.fullmatch(r"--[a-z][a-z0-9-]*(=.+)?", arg):
                raise ConfigError(f"{where}.sbatch_args: expected --name or --name=value; got {arg!r}")


def slurm_spec(suite_section: dict[str, Any], flags: list[str]) -> SlurmSpec:
    """The suite's `slurm:` section with `--slurm KEY=VALUE` flags on top (a list option's flags add up)."""
    data = dict(suite_section or {})
    lists = {"sbatch_args", "setup"}
    for text in flags:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--slurm {text!r}: expected KEY=VALUE, e.g. partition=gpu or gpus_per_trial=1")
        if key in lists:
            previous = data.get(key) if isinstance(data.get(key), list) else []
            data[key] = [*previous, value.strip()]
        else:
            data[key] = value.strip()
    return build(SlurmSpec, data, "slurm")
