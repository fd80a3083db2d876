"""glibc's heap policy for CPU trials: the mmap threshold fixed so freed activations leave the resident set."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.measure.glibc_heap import (
    ENV_VAR,
    MMAP_THRESHOLD_BYTES,
    apply_heap_policy,
    requested_threshold,
)

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is a Linux matter")


def test_requested_threshold_reads_the_variable():
    assert requested_threshold({}) == MMAP_THRESHOLD_BYTES
    assert requested_threshold({ENV_VAR: "65536"}) == 65536
    assert requested_threshold({ENV_VAR: " Dynamic "}) is None
    for bad in ("-1", "0", "64k", str(64 * 2**20)):
        with pytest.raises(BenchError, match=ENV_VAR):
            requested_threshold({ENV_VAR: bad})


def test_dynamic_leaves_glibc_alone():
    assert apply_heap_policy({ENV_VAR: "dynamic"}) == "glibc default (dynamic mmap threshold)"


@glibc
def test_fixed_threshold_returns_a_freed_block_to_the_system():
    """The policy's point, in a fresh process: under glibc's default, freeing a 32 MiB block raises the threshold,
    so the next 8 MiB blocks come from the heap and a freed one stays resident as slack; with the threshold fixed,
    every such block is its own mapping and leaves the resident set when freed."""
    script = textwrap.dedent("""
        import ctypes, sys
        from memft_bench.harness.measure.glibc_heap import apply_heap_policy
        from memft_bench.harness.measure.memory import status_bytes
        policy = apply_heap_policy()
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        def touched(n):
            p = libc.malloc(n)
            ctypes.memset(p, 1, n)
            return p
        libc.free(touched(16 << 20))                  # a mapped block freed: glibc raises its threshold
        blocks = [touched(8 << 20) for _ in range(4)]  # 32 MiB more
        low = libc.malloc(64)                          # a small block above them keeps the heap from shrinking
        before = status_bytes("VmRSS")
        for p in blocks[:3]:
            libc.free(p)
        print(policy, "|", (before - status_bytes("VmRSS")) >> 20)
    """)

    def freed_mib(env_value: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             env={"PATH": "/usr/bin:/bin", ENV_VAR: env_value, "PYTHONPATH": ":".join(sys.path)})
        policy, freed = out.stdout.strip().rsplit("|", 1)
        return policy.strip(), int(freed)

    policy, freed = freed_mib("")
    assert policy == "glibc mmap threshold fixed at 128 KiB"
    assert freed >= 23  # three 8 MiB blocks returned
    policy, freed = freed_mib("dynamic")
    assert policy.startswith("glibc default")
    assert freed <= 8  # they stay on the heap: glibc's default, which the policy exists to avoid
