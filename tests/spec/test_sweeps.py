"""Sweeps expand into variants, each validated by the plan (unit level; the CLI paths are in tests/cli)."""

from __future__ import annotations

import pytest

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.run.planning import plan
from memft_bench.harness.spec.config import suite_from_data
from memft_bench.harness.spec.sweeps import split_overrides, variant_label, variants
from tests.conftest import small_suite_data


def test_scalar_options_sweep_and_list_options_keep_commas():
    plain, sweeps = split_overrides(["lora.r=4,8", "lora.target_modules=q_proj,v_proj", "budget.steps=3",
                                     "sgc.k=64,128", "sgc.s=8,16"])
    assert plain == ["lora.target_modules=q_proj,v_proj", "budget.steps=3"]
    assert sweeps == {"lora": {"r": ["4", "8"]}, "sgc": {"k": ["64", "128"], "s": ["8", "16"]}}
    assert [variant_label(v) for v in variants(sweeps, "sgc")] == ["k=64,s=8", "k=64,s=16", "k=128,s=8",
                                                                  "k=128,s=16"]
    assert variants(sweeps, "full") == [{}]
    with pytest.raises(ConfigError, match="none empty"):
        split_overrides(["lora.r=4,,8"])


@pytest.mark.parametrize("text", ["budget.cutoff_len=64,128,64", "budget.gradient_checkpointing=true,True",
                                  "lora.r=8,8"])
def test_a_value_given_twice_in_a_sweep_is_one_clear_error(text):
    """Each value would be a trial with the same id: both would run and write a row."""
    with pytest.raises(ConfigError, match="given twice"):
        split_overrides([text])


def test_plan_expands_suite_sweeps_and_validates_every_variant(tmp_path):
    data = small_suite_data()
    data["sweeps"] = {"lora": {"r": [2, 4]}}
    suite = suite_from_data(data, "s")
    trials = plan(suite, ["full", "lora"], tmp_path, "cpu").trials
    assert [(t.method, t.variant) for t in trials] == [("full", ""), ("lora", "r=2"), ("lora", "r=4")]
    assert len({t.trial_id for t in trials}) == 3 and trials[1].spec["method_params"]["r"] == 2
    with pytest.raises(ConfigError, match=r"methods.lora \[r=0\].*r"):
        plan(suite, ["lora"], tmp_path, "cpu", sweeps={"lora": {"r": ["0"]}})
    with pytest.raises(ConfigError, match="swept but not run"):
        plan(suite, ["full"], tmp_path, "cpu", sweeps={"lora": {"r": ["2"]}})
    data["sweeps"] = {"lora": {"r": []}}
    with pytest.raises(ConfigError, match="sweeps.lora"):
        suite_from_data(data, "s")


def test_a_budget_field_sweeps_every_method_once_per_value(tmp_path):
    """`--set budget.cutoff_len=32,64`: one row per length for each method, each trial with its own budget."""
    import pytest

    from memft_bench.harness.core.errors import ConfigError
    from memft_bench.harness.run import planning
    from memft_bench.harness.spec.config import suite_from_data
    from memft_bench.harness.spec.sweeps import split_overrides
    from tests.conftest import small_suite_data

    plain, sweeps = split_overrides(["budget.cutoff_len=32,64", "budget.gradient_checkpointing=false,true",
                                     "budget.steps=2"])
    assert plain == ["budget.steps=2"]
    assert sweeps == {"budget": {"cutoff_len": ["32", "64"], "gradient_checkpointing": ["false", "true"]}}
    with pytest.raises(ConfigError, match="the budget has no field 'cutof_len'"):
        split_overrides(["budget.cutof_len=32,64"])
    suite = suite_from_data(small_suite_data(), "s")
    plan = planning.plan(suite, ["full", "lora"], tmp_path, "cpu", sweeps=sweeps)
    assert len(plan.trials) == 8 and len({t.trial_id for t in plan.trials}) == 8
    assert plan.trials[0].variant == "cutoff_len=32,gradient_checkpointing=false"
    budgets = {(t.method, t.variant): t.spec["suite"]["budget"] for t in plan.trials}
    assert budgets[("lora", "cutoff_len=64,gradient_checkpointing=true")]["cutoff_len"] == 64
    assert budgets[("lora", "cutoff_len=64,gradient_checkpointing=true")]["gradient_checkpointing"] is True
    assert plan.suite_of("full", "cutoff_len=64,gradient_checkpointing=false").budget.cutoff_len == 64
    data = small_suite_data()
    data["sweeps"] = {"budget": {"micro_batch_size": [2, 4]}}
    from_file = planning.plan(suite_from_data(data, "s"), ["full"], tmp_path, "cpu")
    assert [t.spec["suite"]["budget"]["micro_batch_size"] for t in from_file.trials] == [2, 4]
    data["sweeps"] = {"budget": {"batch": [2, 4]}}
    with pytest.raises(ConfigError, match="sweeps.budget.batch: the budget has no field 'batch'"):
        suite_from_data(data, "s")
