"""The command lines tests start, in one place (the import name is `memft_bench`, not the folder names)."""

import sys
from pathlib import Path

BENCH_CLI = [sys.executable, "-m", "memft_bench.harness.cli"]
"""`bench` as a subprocess, from whatever interpreter runs the tests (no PATH lookup of a console script)."""

TRIAL_MODULE = "memft_bench.harness.trial"
"""The worker module every trial process runs (`python -m memft_bench.harness.trial SPEC RESULT`)."""

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository's root, wherever a test module sits under tests/."""


def default_sigint() -> None:
    """`preexec_fn` for a command a test interrupts with SIGINT: a process started from a background job of a
    non-interactive shell inherits SIGINT ignored, and Python then keeps it ignored (no KeyboardInterrupt), so the
    test would see the command run to its end; the child gets the default disposition back."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
