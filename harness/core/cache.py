"""Where the harness keeps what it builds once and reuses: converted models, the pre-trained tiny model.

Kept in a module of its own that imports neither torch nor the model code, so that `harness.spec.config`
(read by `bench list` and `--help`, which must answer fast) and `harness.sources.pretrained` can ask for it
without importing `harness.trial.models`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$BENCH_CACHE_DIR, else the user's cache directory ($XDG_CACHE_HOME or ~/.cache) / memft-bench."""
    root = os.environ.get("BENCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "memft-bench"
    )
    return Path(root)
