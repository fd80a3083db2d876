"""The estimate before a long CPU run: the probe trial's spec, and the line it prints."""

from __future__ import annotations

import pytest

from memft_bench.harness.run import estimate


@pytest.fixture
def commonsense_plan(tmp_path, monkeypatch):
    from memft_bench.harness.run import planning
    from memft_bench.harness.spec.config import load_suite

    monkeypatch.setattr(planning, "preflight_data", lambda suite: None)  # no data needed to plan
    suite = load_suite("commonsense")
    suite.tasks[0].data_dir = str(tmp_path)
    return planning.plan(suite, ["sgc", "lora", "galore"], tmp_path / "run", "cpu")


def test_probe_spec_trains_a_few_steps_and_scores_one_item(commonsense_plan):
    from memft_bench.harness.spec.config import suite_from_data

    spec = commonsense_plan.trials[0].spec
    probe = estimate.probe_spec(spec)
    suite = suite_from_data(probe["suite"], "probe")  # still a valid suite
    assert suite.budget.steps == 1 + estimate.PROBE_STEPS and suite.budget.timing_warmup_steps == 1
    assert suite.tasks[0].limit_eval == 1 and len(suite.tasks[0].eval_tasks) == 1
    assert suite.tasks[0].limit_train == suite.budget.steps * suite.budget.batch_size
    assert not suite.evaluation.before_training and "predictions_file" not in probe
    assert spec["suite"]["budget"]["steps"] == 31875  # the trial's own spec is untouched


def test_announce_prints_the_estimate_and_the_cpu_preset(commonsense_plan, monkeypatch):
    seen = {}

    def fake_probe(trial, out_dir, timeout_s):
        seen["spec"] = trial.spec
        return {"status": "ok", "step_time_ms_median": 10_000.0}

    monkeypatch.setattr(estimate, "run_probe", fake_probe)
    lines: list[str] = []
    total = estimate.announce(commonsense_plan, lines.append)
    assert total == pytest.approx(31875 * 10.0 * 3)
    assert seen["spec"]["suite"]["budget"]["steps"] == 1 + estimate.PROBE_STEPS
    assert "3.7 days per trial" in lines[-1] and "--suite commonsense-cpu" in lines[-1]


def test_short_or_gpu_runs_get_no_probe(commonsense_plan, monkeypatch):
    monkeypatch.setattr(estimate, "run_probe", lambda *a: pytest.fail("probed"))
    commonsense_plan.device = "cuda:0"
    assert estimate.announce(commonsense_plan, print) is None
    commonsense_plan.device = "cpu"
    commonsense_plan.suite.budget.steps = 80
    assert estimate.announce(commonsense_plan, print) is None


def test_describe_units():
    assert estimate.describe(90) == "2 min"
    assert estimate.describe(3 * 3600) == "3.0 h"
    assert estimate.describe(3 * 86400) == "3.0 days"
