"""The command lines tests start, in one place (the import name is `memft_bench`, not the folder names)."""

import sys
from pathlib import Path

BENCH_CLI = [sys.executable, "-m", "memft_bench.harness.cli"]
"""`bench` as a subprocess, from whatever interpreter runs the tests (no PATH lookup of a console script)."""

TRIAL_MODULE = "memft_bench.harness.trial"
"""The worker module every trial process runs (`python -m memft_bench.harness.trial SPEC RESULT`)."""

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository's root, wherever a test module sits under tests/."""
