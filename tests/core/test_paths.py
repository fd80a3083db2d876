"""The project root every module uses: found from any depth of the layout, in a checkout."""

from __future__ import annotations

import inspect

from memft_bench.harness.core.paths import PROJECT_ROOT
from memft_bench.harness.measure.env import git_commit
from memft_bench.harness.measure.stack import LOCK_NAME, lock_file
from tests.commands import REPO_ROOT


def test_the_project_root_is_the_checkouts_root():
    assert PROJECT_ROOT == REPO_ROOT
    assert (PROJECT_ROOT / "pyproject.toml").is_file()


def test_the_lock_is_found_in_a_checkout():
    assert lock_file() == REPO_ROOT / LOCK_NAME


def test_the_commit_is_read_at_the_root_by_default():
    """Where there is no .git (a lent GPU machine), the commit comes from ROOT/COMMIT, which .ci/gpu-prepare
    writes at the repository root: the default root must be that one."""
    assert inspect.signature(git_commit).parameters["root"].default == REPO_ROOT
