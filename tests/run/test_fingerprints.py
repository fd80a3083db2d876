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


def test_a_file_tasks_trials_change_when_its_data_does(tmp_path):
    """Resuming after the user edited the data file must not reuse rows of the old data."""
    import json

    from memft_bench.harness.run.planning import plan
    from memft_bench.harness.spec.config import suite_from_data
    from tests.conftest import small_suite_data

    path = tmp_path / "qa.jsonl"
    rows = [{"q": f"is {i} even?", "a": "yes" if i % 2 == 0 else "no"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = small_suite_data()
    data["tasks"] = [{"name": "own", "source": "file", "train_file": str(path), "scoring": "choice",
                      "options": ["yes", "no"], "columns": {"prompt": "q", "answer": "a"}}]
    first = plan(suite_from_data(data, "s"), ["full"], tmp_path / "run", "cpu").trials[0].trial_id
    assert plan(suite_from_data(data, "s"), ["full"], tmp_path / "run", "cpu").trials[0].trial_id == first
    path.write_text(path.read_text() + json.dumps({"q": "is 20 even?", "a": "yes"}) + "\n", encoding="utf-8")
    assert plan(suite_from_data(data, "s"), ["full"], tmp_path / "run", "cpu").trials[0].trial_id != first
