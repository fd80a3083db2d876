"""Memory sizes a user names: `24GiB`, `80GB`, `512MiB`, or a common GPU by name (`--gpu h100-80gb`).

`bench run --dry-run --memory 24GiB` (or `--gpu NAME`) answers "will it fit?" for a device the user does not
have here. A GPU's figure is the memory CUDA itself reports (`torch.cuda.mem_get_info()`'s total, the "total
capacity" of torch's out-of-memory message), which is a few hundred MiB below `nvidia-smi`'s "Total" (the driver
keeps that part), less the CUDA context every process pays before its first tensor (`CUDA_CONTEXT_BYTES`, a
typical figure for recent drivers with lazy module loading: it varies by a few hundred MiB with the driver, the
GPU and the libraries loaded). `--memory SIZE` is taken as the memory free for the trial: nothing is subtracted.
No torch here.
"""

from __future__ import annotations

import re

from memft_bench.harness.core.errors import BenchError

MiB = 2**20
GiB = 2**30

#: What a CUDA context and the CUDA libraries take on the device before the first tensor (a typical figure).
CUDA_CONTEXT_BYTES = 512 * MiB
#: What a trial's own process holds on a CPU before its model (Python, torch, transformers, peft and the harness
#: imported), the CPU's counterpart of the context: its anonymous resident set, 337 MiB measured on this
#: project's CPU machine (the 107 MiB of library code it maps besides is shared and reclaimable).
CPU_TRIAL_PROCESS_BYTES = 340 * MiB

#: name -> the total memory CUDA reports on that card (GiB, as torch's out-of-memory message prints it: the
#: lowest figure commonly reported, since it moves by a few hundredths with the driver and the ECC setting).
GPUS_GIB: dict[str, float] = {
    "b200-180gb": 178.35,
    "h200-141gb": 139.80,
    "h100-94gb": 93.09,
    "h100-80gb": 79.11,
    "a100-80gb": 79.15,
    "a100-40gb": 39.39,
    "l40s-48gb": 44.39,
    "l40-48gb": 44.39,
    "a40-48gb": 44.34,
    "a6000-48gb": 47.53,
    "rtx6000ada-48gb": 47.40,
    "v100-32gb": 31.74,
    "rtx4090-24gb": 23.64,
    "rtx3090-24gb": 23.56,
    "a10-24gb": 22.05,
    "l4-24gb": 22.03,
    "v100-16gb": 15.77,
    "t4-16gb": 14.75,
}

#: name -> the same in whole MiB
GPUS: dict[str, int] = {name: round(gib * 1024) for name, gib in GPUS_GIB.items()}

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


def _squeezed(name: str) -> str:
    """A GPU name without case, spaces, dashes or underscores: `RTX 4090 24GB`, `rtx4090-24gb` and `RTX_4090`
    compare alike."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def gpu_key(name: str) -> str:
    """The `GPUS` key a user's GPU name means: its whole name in any spelling (`RTX 4090 24GB`), or its model
    without the size (`t4`, `L4`, `h200`) where one card has that model; one clear error naming the candidates
    when the model has several sizes (`h100`) or the name is unknown. No prefix matching: `RTX 6000` is not the
    RTX 6000 Ada, and `L4` is not the L40S."""
    wanted = _squeezed(name)
    exact = [key for key in GPUS if _squeezed(key) == wanted]
    matches = exact or [key for key in GPUS if _squeezed(key.rsplit("-", 1)[0]) == wanted]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise BenchError(f"--gpu {name!r} means several GPUs: {', '.join(matches)}; name one")
    raise BenchError(f"--gpu {name!r}: unknown GPU; known: {', '.join(GPUS)} (or give --memory SIZE)")


def gpu_memory(name: str) -> tuple[int, str]:
    """(bytes usable by a trial, a line saying where the figure comes from) of a GPU named as in `GPUS`."""
    key = gpu_key(name)
    total = GPUS[key] * MiB
    usable = total - CUDA_CONTEXT_BYTES
    return usable, (f"{key}: {GPUS_GIB[key]:.2f} GiB as CUDA reports it, less {CUDA_CONTEXT_BYTES // MiB} MiB for "
                    f"the CUDA context = {usable / GiB:.2f} GiB for the trial")
