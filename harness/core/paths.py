"""Where the project's own files are: the repository root of a checkout (editable install).

One definition, because a module that computed it from its own `__file__` breaks when it moves one folder
deeper (the lock and the commit would silently stop being found). In a wheel install this is the installed
`memft_bench` folder, which holds no lock, no `.git` and no COMMIT file: the callers then record none.
"""

from __future__ import annotations

from pathlib import Path

#: harness/core/paths.py -> the repository root (parents: core, harness, root).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
