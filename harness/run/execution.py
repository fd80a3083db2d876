"""`bench run`'s options for where trials run, and the executor they choose.

Kept apart from `harness/cli.py` so the command gains one parameter, `execution`, for all of them:
`--executor local|slurm`, `--devices 0,1,...` (one trial per GPU at once), `--jobs N` (N CPU trials at
once), `--detach` (submit to Slurm and return), and `--slurm KEY=VALUE` (cluster settings over the suite's
`slurm:` section). Imports neither torch nor submitit until a run needs them, so `bench --help` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from memft_bench.harness.core.errors import ConfigError

EXECUTORS = ("local", "slurm")


@dataclass
class Execution:
    executor: str = "local"
    devices: str | None = None
    jobs: int | None = None
    detach: bool = False
    slurm: tuple[str, ...] = ()

    def gpu_indices(self) -> list[int]:
        """The torch indices of the GPUs local trials run on (`--devices`, or the first `--jobs` GPUs)."""
        if self.devices is not None:
            return [int(d) for d in self.devices.split(",") if d.strip().isdigit()]
        return list(range(self.jobs or 1))

    def build(self, suite: Any, device: str, timeout_s: float | None) -> tuple[Any, str]:
        """(executor, the trials' device string), or ConfigError before anything runs or is submitted."""
        from memft_bench.harness.run.devices import resolve_device

        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor {self.executor!r}: expected one of {', '.join(EXECUTORS)}")
        if self.executor == "slurm":
            return self._slurm(suite, device, timeout_s or suite.trial_timeout_s)
        if self.detach:
            raise ConfigError("--detach submits to a cluster and returns: it needs --executor slurm")
        if self.slurm:
            raise ConfigError("--slurm settings apply to --executor slurm only")
        from memft_bench.harness.run.devices import cpu_slots, device_slots
        from memft_bench.harness.run.local import LocalExecutor

        if self.devices is not None:
            if self.jobs is not None:
                raise ConfigError("--devices runs one trial per GPU; --jobs is for CPU trials: give one of them")
            if device.strip().lower() not in ("auto", "cuda"):
                raise ConfigError(f"--devices with --device {device}: --devices chooses the GPUs itself")
            devices = [d.strip() for d in self.devices.split(",") if d.strip()]
            if not devices:
                raise ConfigError("--devices: list GPU indices, e.g. 0,1,2,3")
            return LocalExecutor(device_slots(devices)), "cuda:0"
        resolved = resolve_device(device)
        if self.jobs is not None and self.jobs > 1:
            if resolved == "cpu":
                return LocalExecutor(cpu_slots(self.jobs)), resolved
            if device.strip().lower() not in ("auto", "cuda"):
                raise ConfigError(f"--jobs {self.jobs} with --device {device}: trials sharing one GPU would mix their "
                                  "memory figures; use --devices 0,1,... (one trial per GPU), or --device cpu")
            # on GPUs, N at once means one trial on each of the first N GPUs (never two on one)
            return LocalExecutor(device_slots([str(i) for i in range(self.jobs)])), "cuda:0"
        return LocalExecutor(), resolved

    def _slurm(self, suite: Any, device: str, timeout_s: float | None) -> tuple[Any, str]:
        from memft_bench.harness.run.slurm import SlurmExecutor, preflight
        from memft_bench.harness.spec.slurm_settings import slurm_spec

        if self.devices is not None or self.jobs is not None:
            raise ConfigError("--devices and --jobs are for local runs; with --executor slurm every trial is a job "
                              "(set slurm.gpus_per_trial and slurm.max_jobs)")
        spec = slurm_spec(suite.slurm, list(self.slurm))
        text = device.strip().lower()
        if text == "auto":
            resolved = "cuda:0" if spec.gpus_per_trial else "cpu"
        elif text in ("cuda", "cuda:0"):
            resolved = "cuda:0"
        elif text == "cpu":
            resolved = "cpu"
        else:
            raise ConfigError(f"--device {device} with --executor slurm: a job sees its own GPUs as cuda:0; "
                              "use auto, cpu or cuda")
        if resolved != "cpu" and not spec.gpus_per_trial:
            raise ConfigError(f"--device {device} with --executor slurm: set slurm.gpus_per_trial=1 (or more)")
        preflight(spec, timeout_s)
        return SlurmExecutor(spec, detach=self.detach), resolved


def execution_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options to a click command and pass them on as one `execution` keyword argument."""

    @functools.wraps(func)
    def wrapper(*args: Any, executor: str, devices: str | None, jobs: int | None, detach: bool,
                slurm: tuple[str, ...], **kwargs: Any) -> Any:
        return func(*args, execution=Execution(executor, devices, jobs, detach, slurm), **kwargs)

    options = [
        click.option("--executor", default="local", show_default=True, metavar="local|slurm",
                     help="Where trials run: local processes, or one Slurm job per trial (through submitit)."),
        click.option("--devices", metavar="0,1,...",
                     help="Run one trial per listed GPU at once, each process pinned with CUDA_VISIBLE_DEVICES."),
        click.option("--jobs", type=click.IntRange(min=1), metavar="N",
                     help="Run N trials at once: on a CPU with the cores split between them; on GPUs one per GPU."),
        click.option("--detach", is_flag=True,
                     help="With --executor slurm: submit and return; run the same command again to collect rows."),
        click.option("--slurm", multiple=True, metavar="KEY=VALUE",
                     help="Slurm setting over the suite's slurm: section (partition, time_min, gpus_per_trial, "
                          "cpus_per_trial, mem, account, qos, sbatch_args, max_jobs, setup); repeatable."),
    ]
    for add in reversed(options):
        wrapper = add(wrapper)
    return wrapper
