"""Memory sizes a user names: `24GiB`, `80GB`, `512MiB`, or a common GPU by name (`--gpu h100-80gb`).

`bench run --dry-run --memory 24GiB` (or `--gpu NAME`) answers "will it fit?" for a device the user does not
have here. A GPU's figure is the total memory its driver reports (`nvidia-smi`'s "Total", in MiB) less the CUDA
context every process pays before its first tensor (`CUDA_CONTEXT_BYTES`, a typical figure for recent drivers: it
varies by a few hundred MiB with the driver, the GPU and the loaded libraries). No torch here.
"""

from __future__ import annotations

import re

from memft_bench.harness.core.errors import BenchError

MiB = 2**20
GiB = 2**30

#: What a CUDA context and the CUDA libraries take on the device before the first tensor (a typical figure).
CUDA_CONTEXT_BYTES = 512 * MiB

#: name -> total device memory as the driver reports it (MiB).
GPUS: dict[str, int] = {
    "h200-141gb": 143_771,
    "h100-80gb": 81_559,
    "h100-94gb": 95_830,
    "a100-80gb": 81_920,
    "a100-40gb": 40_960,
    "l40s-48gb": 46_068,
    "a6000-48gb": 49_140,
    "l4-24gb": 23_034,
    "rtx4090-24gb": 24_564,
    "rtx3090-24gb": 24_576,
    "a10-24gb": 23_028,
    "v100-32gb": 32_510,
    "v100-16gb": 16_160,
    "t4-16gb": 15_360,
}

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def format_size(n: int | None) -> str:
    """`3.10 GiB`, or `48.8 MiB` below a tenth of a GiB; `?` for an unknown size."""
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / MiB:.1f} MiB"


def parse_size(text: str, option: str = "--memory") -> int:
    """Bytes of `24GiB`, `24 GB` (decimal), `24G` (binary, as `free -g` means it), `1.5TiB`; one clear error else."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text or "")
    unit = (match.group(2).lower() if match else "") or "gib"
    if not match or unit not in _UNITS:
        raise BenchError(f"{option} {text!r}: expected a size such as 24GiB, 80GB or 512MiB")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise BenchError(f"{option} {text!r}: the size must be positive")
    return size


def gpu_memory(name: str) -> tuple[int, str]:
    """(bytes usable by a trial, a line saying where the figure comes from) of a GPU named as in `GPUS`."""
    key = "-".join(name.strip().lower().replace("_", " ").replace("-", " ").split())  # "H100 80GB" too
    if key not in GPUS:
        raise BenchError(f"--gpu {name!r}: unknown GPU; known: {', '.join(GPUS)} (or give --memory SIZE)")
    total = GPUS[key] * MiB
    usable = total - CUDA_CONTEXT_BYTES
    return usable, (f"{key}: {GPUS[key]:,} MiB as its driver reports, less {CUDA_CONTEXT_BYTES // MiB} MiB for the "
                    f"CUDA context = {usable / GiB:.2f} GiB for the trial")
