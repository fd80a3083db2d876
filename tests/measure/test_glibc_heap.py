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
    heap_environment,
    requested_threshold,
)

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is a Linux matter")


def test_requested_threshold_reads_the_variable():
    assert requested_threshold({}) == MMAP_THRESHOLD_BYTES
    assert requested_threshold({ENV_VAR: "65536"}) == 65536
    assert requested_threshold({ENV_VAR: " Dynamic "}) is None
    for bad in ("-1", "0", "100", "64k", "\u00b2", str(64 * 2**20)):
        with pytest.raises(BenchError, match=ENV_VAR):
            requested_threshold({ENV_VAR: bad})


def test_dynamic_leaves_glibc_alone():
    assert apply_heap_policy({ENV_VAR: "dynamic"}) == "glibc default (dynamic mmap threshold)"
    assert heap_environment({ENV_VAR: "dynamic"}) == {}
    assert heap_environment({}) == {"MALLOC_MMAP_THRESHOLD_": "4096"}


def test_a_preloaded_allocator_is_not_claimed_as_fixed():
    """jemalloc or tcmalloc in LD_PRELOAD replace malloc: glibc's mallopt would accept the call and change nothing."""
    assert apply_heap_policy({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == \
        "unchanged: jemalloc is preloaded in place of glibc's malloc"


def test_a_cpu_trial_process_starts_with_the_policy(tmp_path):
    """The runner sets MALLOC_MMAP_THRESHOLD_ for a CPU trial's process, so glibc never raises its threshold, not
    even while Python imports torch; a GPU trial's host process is left as it is."""
    from memft_bench.harness.run import trial_process

    seen = {}

    class Recorder:
        def __init__(self, command, env, **kwargs):
            seen[env.get("BENCH_TEST_DEVICE")] = env.get("MALLOC_MMAP_THRESHOLD_")

    spec = {"run_id": "r", "trial_id": "t", "suite": {"name": "s"}, "task": "k", "method": "m", "method_params": {},
            "seed": 0}
    original = trial_process.subprocess.Popen
    trial_process.subprocess.Popen = Recorder
    try:
        for device in ("cpu", "cuda:0"):
            trial_process.TrialProcess({**spec, "device": device}, tmp_path / "spec.json", tmp_path / "row.json",
                                       tmp_path / "log", env={"BENCH_TEST_DEVICE": device})
    finally:
        trial_process.subprocess.Popen = original
    assert seen == {"cpu": "4096", "cuda:0": None}


def _run_fresh(script: str, env_value: str, *args: str) -> str:
    """What `script` prints, run in a fresh Python process with only the policy's variable set to `env_value`."""
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", ENV_VAR: env_value, "PYTHONPATH": ":".join(sys.path)})
    return out.stdout.strip()


@glibc
def test_fixed_threshold_returns_a_freed_block_to_the_system():
    """The policy's point, in a fresh process: under glibc's default, freeing a 32 MiB block raises the threshold,
    so the next 8 MiB blocks come from the heap and a freed one stays resident as slack; with the threshold fixed,
    every such block is its own mapping and leaves the resident set when freed."""
    script = textwrap.dedent("""
        import ctypes, sys
        from memft_bench.harness.measure.glibc_heap import apply_heap_policy
        from memft_bench.harness.measure.memory import status_bytes
        late = sys.argv[1] == "late"
        policy = None if late else apply_heap_policy()
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        def touched(n):
            p = libc.malloc(n)
            ctypes.memset(p, 1, n)
            return p
        libc.free(touched(16 << 20))                  # a mapped block freed: glibc raises its threshold
        if late:                                       # as in a trial: the policy comes after the imports
            policy = apply_heap_policy()
        blocks = [touched(8 << 20) for _ in range(4)]  # 32 MiB more
        low = libc.malloc(64)                          # a small block above them keeps the heap from shrinking
        before = status_bytes("VmRSS")
        for p in blocks[:3]:
            libc.free(p)
        print(policy, "|", (before - status_bytes("VmRSS")) >> 20)
    """)

    def freed_mib(env_value: str, when: str = "early") -> tuple[str, int]:
        policy, freed = _run_fresh(script, env_value, when).rsplit("|", 1)
        return policy.strip(), int(freed)

    policy, freed = freed_mib("")
    assert policy == "glibc mmap threshold fixed at 4 KiB"
    assert freed >= 23  # three 8 MiB blocks returned
    policy, freed = freed_mib("", "late")  # glibc had raised both thresholds already: the policy lowers both
    assert policy == "glibc mmap threshold fixed at 4 KiB" and freed >= 23
    policy, freed = freed_mib("dynamic")
    assert policy.startswith("glibc default")
    assert freed <= 8  # they stay on the heap: glibc's default, which the policy exists to avoid


@glibc
def test_a_small_models_blocks_leave_the_resident_set_when_freed():
    """Why the threshold is one page: tiny's weights, gradients and activations are 4 to 128 KiB blocks. At glibc's
    starting 128 KiB they came from the heap, and freed ones stayed resident in an order that varied with each
    batch's shape (the training peak wandered by about 1.5 MiB); under the policy each is a mapping of its own."""
    script = textwrap.dedent("""
        import ctypes
        from memft_bench.harness.measure.glibc_heap import apply_heap_policy
        from memft_bench.harness.measure.memory import status_bytes
        apply_heap_policy()
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        blocks = []
        for _ in range(256):                            # 16 MiB of 64 KiB blocks
            p = libc.malloc(64 << 10)
            ctypes.memset(p, 1, 64 << 10)
            blocks.append(p)
        before = status_bytes("VmRSS")
        for p in blocks[0::2]:                          # every other one: on a heap, none can merge into its top
            libc.free(p)
        print((before - status_bytes("VmRSS")) >> 20)
    """)

    assert int(_run_fresh(script, "")) >= 7  # the default policy: each 64 KiB block was a mapping, given back
    assert int(_run_fresh(script, str(128 << 10))) <= 1  # glibc's starting threshold: they stayed as heap slack
