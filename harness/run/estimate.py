"""Before a long run on a CPU: how long it will take here, from a few timed steps, and what to run instead.

The papers' budget (`--suite commonsense`: 31,875 steps of batch 16 per trial) is GPU work; on a CPU it
runs for weeks. Before such a run starts, `announce` times a few steps of its first trial in a probe trial
(the same model, method, batch and precision, with a training subset just large enough, one test item per
test set and no untrained score), multiplies the median step time by the budget, and prints one line with
the estimate and the CPU preset to use instead. The run then goes on as asked: the user decides. A probe
that fails says so in one line and changes nothing.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from typing import Any

#: A CPU run with more steps per trial than this gets an estimate first.
LONG_RUN_STEPS = 1000
PROBE_STEPS = 3
CPU_PRESET = "commonsense-cpu"


def probe_spec(spec: dict[str, Any], timed_steps: int = PROBE_STEPS) -> dict[str, Any]:
    """A copy of a trial's spec that trains warm-up + `timed_steps` steps and scores almost nothing."""
    probe = copy.deepcopy(spec)
    suite = probe["suite"]
    budget = suite["budget"]
    budget["timing_warmup_steps"] = 1
    budget["steps"] = 1 + timed_steps
    examples = budget["steps"] * int(budget.get("micro_batch_size", 1)) * int(budget.get("grad_accum", 1))
    for task in suite.get("tasks", []):
        if task.get("source") == "commonsense":
            task["limit_train"] = examples
            task["limit_eval"] = 1
            task["eval_tasks"] = task.get("eval_tasks", [])[:1] or task.get("eval_tasks", [])
        else:
            task["test_size"] = 1
    suite["evaluation"]["before_training"] = False
    probe.pop("predictions_file", None)
    probe.pop("untrained_score_file", None)
    probe["trial_id"] = "estimate/" + str(spec["trial_id"])
    return probe


def describe(seconds: float) -> str:
    """`3.2 h`, `11.5 days`: the unit a person would use."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def run_probe(probe: Any, out_dir: Any, timeout_s: float) -> dict[str, Any]:
    """The probe trial's row, run in its own process as every trial is."""
    import shutil

    from memft_bench.harness.run.trial_process import start_local

    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    process, tmp = start_local(probe, out_dir, timeout_s)
    try:
        return process.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def announce(run_plan: Any, echo: Callable[[str], None], timeout_s: float = 900) -> float | None:
    """Print the estimate line for a long CPU run (None and no output for any other run)."""
    from memft_bench.harness.run.planning import Trial

    steps = run_plan.suite.budget.steps
    if not run_plan.trials or not str(run_plan.device).startswith("cpu") or steps <= LONG_RUN_STEPS:
        return None
    first = run_plan.trials[0]
    echo(f"bench: {steps:,} steps per trial on a CPU: timing {PROBE_STEPS} steps of {first.method} first ...")
    run_plan.out_dir.mkdir(parents=True, exist_ok=True)
    probe = Trial(f"estimate-{first.task}", first.method, first.seed, probe_spec(first.spec), first.variant)
    row = run_probe(probe, run_plan.out_dir, timeout_s)
    step_ms = row.get("step_time_ms_median")
    if row.get("status") != "ok" or not step_ms:
        echo(f"bench: could not time a step ({row.get('status')}: {row.get('reason')}); going on without an estimate")
        return None
    per_trial = steps * step_ms / 1000
    total = per_trial * len(run_plan.trials)
    finish = dt.datetime.now() + dt.timedelta(seconds=total)
    echo(f"bench: estimate on {run_plan.device}: {steps:,} steps x {step_ms / 1000:.2f} s/step ({first.method}) = "
         f"{describe(per_trial)} per trial, {describe(total)} for {len(run_plan.trials)} trials (training only; "
         f"other methods differ), until about {finish:%Y-%m-%d %H:%M}. On a CPU, run the preset instead: "
         f"bench run --suite {CPU_PRESET} --methods {','.join(run_plan.methods)}")
    return total
