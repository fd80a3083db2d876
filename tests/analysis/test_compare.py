"""`bench compare` flags regressions by rule (unit level; the CLI paths are in tests/cli)."""

from __future__ import annotations

import pandas as pd

from memft_bench.harness.analysis.compare import Tolerance, compare


def _row(method="full", **values):
    row = {"task": "t", "method": method, "variant": "", "seed": 0, "status": "ok", "reason": None,
           "accuracy": 0.8, "trainable_params": 10, "optimizer_state_elements": 20, "mem_weights_mb": 1.0,
           "mem_grads_mb": 1.0, "mem_optimizer_mb": 2.0, "peak_mem_rss_mb": 500.0, "peak_mem_allocated_mb": None,
           "peak_mem_nvml_mb": None, "step_time_ms_median": 10.0}
    row.update(values)
    return row


def _verdicts(baseline, current, **tolerance):
    result = compare(pd.DataFrame(baseline), pd.DataFrame(current), Tolerance(**tolerance))
    return {(f.trial, f.metric): f.verdict for f in result.findings}


def test_compare_rules():
    base = [_row(), _row("lora", step_time_ms_median=20.0)]
    assert "regression" not in _verdicts(base, base).values()
    # accuracy within the margin is fine, beyond it is not
    assert _verdicts(base, [_row(accuracy=0.79), base[1]], accuracy_abs=0.02)[("t/full/0", "accuracy")] == "same"
    assert _verdicts(base, [_row(accuracy=0.7), base[1]], accuracy_abs=0.02)[("t/full/0", "accuracy")] == "regression"
    # exact accounting: any increase
    v = _verdicts(base, [_row(optimizer_state_elements=21), base[1]])
    assert v[("t/full/0", "optimizer_state_elements")] == "regression"
    # peaks: relative margin
    assert _verdicts(base, [_row(peak_mem_rss_mb=600.0), base[1]], peak_rel=0.25)[("t/full/0", "peak_mem_rss_mb")] \
        == "same"
    assert _verdicts(base, [_row(peak_mem_rss_mb=700.0), base[1]], peak_rel=0.25)[("t/full/0", "peak_mem_rss_mb")] \
        == "regression"
    # speed as a ratio to full in the same run: both twice as slow is no regression, lora alone is
    slower = [_row(step_time_ms_median=20.0), _row("lora", step_time_ms_median=40.0)]
    assert _verdicts(base, slower)[("lora", "step_time / full")] == "same"
    lora_slower = [_row(), _row("lora", step_time_ms_median=40.0)]
    assert _verdicts(base, lora_slower, time_ratio_rel=0.5)[("lora", "step_time / full")] == "regression"
    # speed is judged per method over its trials: one slow task in two is noise, both slow is not
    two = [_row(), _row(task="u"), _row("lora", step_time_ms_median=20.0),
           _row("lora", task="u", step_time_ms_median=20.0)]
    one_task_slow = two[:2] + [_row("lora", step_time_ms_median=50.0), two[3]]
    metric = "step_time / full (geomean of 2 trials)"
    assert _verdicts(two, one_task_slow, time_ratio_rel=1.0)[("lora", metric)] == "same"
    both_slow = two[:2] + [_row("lora", step_time_ms_median=50.0), _row("lora", task="u", step_time_ms_median=50.0)]
    assert _verdicts(two, both_slow, time_ratio_rel=1.0)[("lora", metric)] == "regression"
    # missing or failed trials
    assert _verdicts(base, [_row()])[("t/lora/0", "trial")] == "regression"
    failed = [_row(), _row("lora", status="oom", reason="CUDA OOM")]
    assert _verdicts(base, failed)[("t/lora/0", "status")] == "regression"


def test_compare_notes_runs_measured_under_different_heap_policies():
    """The CPU trials' glibc heap policy changes peak RSS and step times: runs under different ones are noted."""
    def env(heap):
        return {"packages": {}, **({"cpu_heap": heap} if heap else {})}

    fixed, dynamic = "glibc mmap threshold fixed at 128 KiB", "glibc default (dynamic mmap threshold)"
    base = pd.DataFrame([_row(env=env(fixed))])
    assert not any("heap" in n for n in compare(base, pd.DataFrame([_row(env=env(fixed))]), Tolerance()).notes)
    notes = compare(base, pd.DataFrame([_row(env=env(dynamic))]), Tolerance()).notes
    assert any(f"baseline {fixed}; current {dynamic}" in n for n in notes)
    older = compare(pd.DataFrame([_row(env=env(None))]), base, Tolerance()).notes
    assert any("baseline not recorded" in n for n in older)
