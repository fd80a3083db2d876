"""Trial ids (names plus a fingerprint of the whole configuration) stay stable as the schema grows: a run
directory recorded before a field existed resumes instead of running every trial again."""

from __future__ import annotations

import json

from memft_bench.harness.core.fingerprint import fingerprint
from memft_bench.harness.run import planning
from memft_bench.harness.spec.config import load_suite
from tests.commands import REPO_ROOT

ROOT = REPO_ROOT


def test_the_tiny_plan_has_the_trial_ids_of_the_committed_baseline(tmp_path):
    rows = [json.loads(line) for line in (ROOT / "reports/baselines/tiny/results.jsonl").read_text().splitlines()]
    spec = load_suite("tiny")
    plan = planning.plan(spec, list(spec.default_methods), tmp_path / "run", "cpu")
    assert sorted(t.spec["trial_id"] for t in plan.trials) == sorted(r["trial_id"] for r in rows)


def test_a_later_field_counts_once_it_leaves_its_default():
    before = {"budget": {"steps": 3}}
    assert fingerprint({"budget": {"steps": 3, "gradient_checkpointing": False}}) == fingerprint(before)
    assert fingerprint({"budget": {"steps": 3, "gradient_checkpointing": True}}) != fingerprint(before)
    assert fingerprint({"budget": {"steps": 3, "gradient_checkpointing": 0}}) != fingerprint(before)
