"""Which device a run's trials use and how trials share a machine: `--device` resolved to one indexed GPU or
the CPU, one slot per GPU of `--devices`, or N CPU slots with the cores split for `--jobs N`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from memft_bench.harness.core.errors import ConfigError


@dataclass
class Slot:
    """Where one trial at a time runs: its name for the progress bar and the environment it adds."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


def device_slots(devices: list[str]) -> list[Slot]:
    """One slot per GPU of `--devices 0,1,...`, indices as torch numbers the visible GPUs.

    Under an inherited CUDA_VISIBLE_DEVICES, index i is the i-th GPU it lists, so `--devices 0,1` inside
    `CUDA_VISIBLE_DEVICES=2,3` runs on GPUs 2 and 3, as `--device cuda:0`/`cuda:1` would.
    """
    import torch

    if len(set(devices)) != len(devices):
        raise ConfigError(f"--devices {','.join(devices)}: a GPU is listed twice")
    if not all(d.isdigit() for d in devices):
        raise ConfigError(f"--devices {','.join(devices)}: expected GPU indices such as 0,1,2,3")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError("--devices: no CUDA GPU is visible to torch (use --jobs N to run trials at once on the CPU)")
    bad = [d for d in devices if int(d) >= count]
    if bad:
        raise ConfigError(f"--devices {','.join(devices)}: torch sees {count} GPU(s), 0 to {count - 1}")
    inherited = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    physical = [inherited[int(d)] if inherited else d for d in devices]
    return [Slot(f"gpu{p}", {"CUDA_VISIBLE_DEVICES": p}) for p in physical]


def cpu_slots(jobs: int) -> list[Slot]:
    """`jobs` CPU slots, each with an equal share of the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(max(1, cores // jobs))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return [Slot(f"cpu{i}", dict(env)) for i in range(jobs)]


def resolve_device(device: str) -> str:
    """The device string every trial of a run uses: always indexed on a GPU (`cuda:N`), so that
    `torch.cuda.set_device`, the allocator meters, NVML's handle and the row all name one GPU.

    `auto` -> `cuda:0` (the first GPU torch sees, after CUDA_VISIBLE_DEVICES) when one is visible, else
    `cpu`; `cuda` -> `cuda:0`; `cuda:N` is checked against the number of visible GPUs. Asking torch for the
    device count does not create a CUDA context in the runner, which would hold GPU memory for the whole
    sweep.
    """
    import torch

    text = device.strip().lower()
    if text == "auto":
        return "cuda:0" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"--device {device}: no CUDA GPU is visible to torch (use --device cpu or auto)")
    index = int(match.group(1) or 0)
    if index >= count:
        raise ConfigError(f"--device {device}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1} "
                          "(CUDA_VISIBLE_DEVICES renumbers them from 0)")
    return f"cuda:{index}"
