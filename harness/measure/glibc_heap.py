"""glibc's heap policy in a CPU trial: its mmap threshold fixed, so the resident set follows the tensors alive.

By default glibc raises its mmap threshold (from 128 KiB up to 32 MiB) each time a block it had mapped is freed.
From then on, blocks under the new threshold come from the heap, and a freed activation stays resident as heap
slack until the top of the heap is trimmed. A CPU trial's peak RSS then depends on the order of earlier frees, not
only on what is alive: on smollm2-135m at 256 tokens it exceeded the tensors alive at the peak by 0.3-0.65 GiB
(LoRA with checkpointing 48 % above them). With the threshold fixed, every block from 128 KiB up is a mapping of
its own, returned to the system when freed, and the peak RSS exceeds the tensors by a few MiB (see
`reports/memory-prediction-cpu/`). The price is a page fault per fresh page of a large block, the same for every
method of a run; `benchmarks/cpu_heap_cost.py` measures it.

`BENCH_CPU_MMAP_THRESHOLD` (bytes, or `dynamic` for glibc's own behaviour) overrides the policy; the row's `env`
records the one in force (`cpu_heap`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping

from memft_bench.harness.core.errors import BenchError

#: `mallopt`'s parameter number for the mmap threshold (glibc's malloc.h: M_MMAP_THRESHOLD)
M_MMAP_THRESHOLD = -3
#: glibc's own starting value, kept fixed: large enough that small Python and autograd objects stay on the heap
MMAP_THRESHOLD_BYTES = 128 * 1024
#: glibc's largest mmap threshold (HEAP_MAX / 2 on 64-bit): `mallopt` refuses more
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
ENV_VAR = "BENCH_CPU_MMAP_THRESHOLD"
DYNAMIC = "dynamic"


def requested_threshold(environ: Mapping[str, str] = os.environ) -> int | None:
    """The threshold to fix (bytes), or None for glibc's dynamic default; a bad value names the variable."""
    text = environ.get(ENV_VAR, "").strip().lower()
    if not text:
        return MMAP_THRESHOLD_BYTES
    if text == DYNAMIC:
        return None
    if not text.isdigit() or not 0 < int(text) <= MMAP_THRESHOLD_MAX:
        raise BenchError(f"{ENV_VAR}={environ[ENV_VAR]!r}: give a number of bytes from 1 to {MMAP_THRESHOLD_MAX} "
                         f"or {DYNAMIC!r}")
    return int(text)


def apply_heap_policy(environ: Mapping[str, str] = os.environ) -> str:
    """Fix glibc's mmap threshold for the rest of this process (call before the model is built); returns the
    policy in force, as the row's `env.cpu_heap` records it."""
    threshold = requested_threshold(environ)
    if threshold is None:
        return "glibc default (dynamic mmap threshold)"
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name)
        applied = libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): no mallopt, or a different one
        applied = False
    if not applied:
        return f"unchanged: mallopt(M_MMAP_THRESHOLD) is not available in {libc_name or 'this C library'}"
    return f"glibc mmap threshold fixed at {threshold // 1024} KiB" if threshold % 1024 == 0 else \
        f"glibc mmap threshold fixed at {threshold} bytes"
