"""glibc's heap policy in a CPU trial: the mmap threshold fixed at one page, so the resident set follows the tensors.

By default glibc raises its mmap threshold (from 128 KiB up to 32 MiB) each time a block it had mapped is freed.
From then on, blocks under the new threshold come from the heap, and a freed activation stays resident as heap
slack until the top of the heap is trimmed. A CPU trial's peak RSS then depends on the order of earlier frees, not
only on what is alive: on smollm2-135m at 256 tokens it exceeded the tensors alive at the peak by 0.3-0.65 GiB
(LoRA with checkpointing 48 % above them). With the threshold fixed, every block from the threshold up is a
mapping of its own, returned to the system when freed, and the peak RSS follows the tensors alive (see
`reports/memory-prediction-cpu/`).

Why one page (4 KiB) and not glibc's starting 128 KiB: at 128 KiB, a small model's weights, gradients and
activations (tiny's 128 x 128 weights are 64 KiB) still came from the heap, whose freed chunks stay resident in an
order that varies with each batch's shape: the resident set between two steps of the same trial wandered by 1.5 MiB,
and the default suite's peaks came out 7 to 14 % above the tensors alive (full fine-tuning and GaLore at 8 x 128
tokens, 60 steps: -9.3 % and -9.0 %; -14 % at 40 steps on another draw). At one page the same trials are within 3 %
(`reports/memory-prediction-cpu/held-out/`). Only objects under a page (Python's, norms' weights) stay in the heap.
A mapping is whole pages: a 64 KiB tensor holds 68 KiB (torch's 64-byte alignment and glibc's header need part of
one more page) and a 4 KiB one 8 KiB, bytes the prediction, which counts tensors, leaves out: within 3 % on tiny,
nothing on larger models. (4096 is the page on x86-64; on a kernel with larger pages the threshold still maps every
block from 4 KiB up, each rounded to that larger page.)

The price is a system call and page faults per block of a page or more, the same policy for every method of a run,
paid in proportion to the blocks a step allocates, so it slows some methods more than others
(`benchmarks/cpu_heap_cost.py` measures it on a suite's own trials against glibc's dynamic default:
`reports/cpu-heap-cost/`).

glibc makes at most 65536 mappings (`M_MMAP_MAX`) and the kernel allows a process 65530 by default
(`vm.max_map_count`, thread stacks and libraries included); past either, blocks come from the heap again and the
peak may carry slack, though the run goes on. A trial holds far fewer live blocks of a page or more: a few per
weight (weight, gradient, moments) plus a step's activations, about 1,500 for a 7B model's 291 weights. The variable
is inherited by processes a trial starts (torch.compile's workers).

`BENCH_CPU_MMAP_THRESHOLD` (bytes, or `dynamic` for glibc's own behaviour) overrides the policy; the row's `env`
records the one in force (`cpu_heap`). The runner starts a CPU trial with `MALLOC_MMAP_THRESHOLD_` set
(`heap_environment`), so the policy holds from the process's first allocation; the trial applies it again with
`mallopt` (`apply_heap_policy`) for a trial started any other way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping

from memft_bench.harness.core.errors import BenchError

#: `mallopt`'s parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: one page: every block of a page or more (any tensor but the smallest) is a mapping of its own; Python's and
#: autograd's small objects stay on the heap
MMAP_THRESHOLD_BYTES = 4096
#: glibc's largest mmap threshold (HEAP_MAX / 2 on 64-bit): `mallopt` refuses more; under a page, every small
#: object would be a mapping of its own
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
MMAP_THRESHOLD_MIN = 4096
#: allocators that replace glibc's malloc when preloaded: glibc's mallopt then accepts and changes nothing
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
ENV_VAR = "BENCH_CPU_MMAP_THRESHOLD"
DYNAMIC = "dynamic"


def requested_threshold(environ: Mapping[str, str] = os.environ) -> int | None:
    """The threshold to fix (bytes), or None for glibc's dynamic default; a bad value names the variable."""
    text = environ.get(ENV_VAR, "").strip().lower()
    if not text:
        return MMAP_THRESHOLD_BYTES
    if text == DYNAMIC:
        return None
    if not (text.isascii() and text.isdigit()) or not MMAP_THRESHOLD_MIN <= int(text) <= MMAP_THRESHOLD_MAX:
        raise BenchError(f"{ENV_VAR}={environ[ENV_VAR]!r}: give a number of bytes from {MMAP_THRESHOLD_MIN} to "
                         f"{MMAP_THRESHOLD_MAX} or {DYNAMIC!r}")
    return int(text)


def heap_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables a CPU trial's process starts with, so glibc follows the policy from its first allocation
    (`apply_heap_policy` inside the trial then finds it in force): empty for `dynamic`."""
    threshold = requested_threshold(environ)
    return {} if threshold is None else {"MALLOC_MMAP_THRESHOLD_": str(threshold)}


def apply_heap_policy(environ: Mapping[str, str] = os.environ) -> str:
    """Fix glibc's mmap threshold for the rest of this process (call before the model is built); returns the
    policy in force, as the row's `env.cpu_heap` records it."""
    threshold = requested_threshold(environ)
    if threshold is None:
        return "glibc default (dynamic mmap threshold)"
    preloaded = next((name for name in OTHER_ALLOCATORS if name in environ.get("LD_PRELOAD", "")), None)
    if preloaded:
        return f"unchanged: {preloaded} is preloaded in place of glibc's malloc"
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name)
        # Both thresholds: glibc raises the trim threshold with the mmap one, and a raised trim threshold would
        # keep freed blocks at the heap's top resident; then what the heap already holds free is given back.
        applied = libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1 and libc.mallopt(M_TRIM_THRESHOLD, threshold) == 1
        if applied:
            libc.malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): no mallopt, or a different one
        applied = False
    if not applied:
        return f"unchanged: mallopt(M_MMAP_THRESHOLD) is not available in {libc_name or 'this C library'}"
    return f"glibc mmap threshold fixed at {threshold // 1024} KiB" if threshold % 1024 == 0 else \
        f"glibc mmap threshold fixed at {threshold} bytes"
