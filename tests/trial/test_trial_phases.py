"""Each phase of a trial reports its own peaks: evaluation runs after the method freed its gradients and
optimizer state, so its peak does not include them (run in this process, on the CPU's resident set)."""

from __future__ import annotations

import pytest

from memft_bench.harness.measure.memory import reset_rss_peak
from memft_bench.harness.run.planning import plan
from memft_bench.harness.spec.config import suite_from_data
from memft_bench.harness.trial.worker import run_trial
from tests.conftest import small_suite_data


@pytest.mark.skipif(not reset_rss_peak(), reason="this kernel cannot reset the peak RSS")
def test_evaluation_peak_excludes_the_optimizer_state_and_gradients(tmp_path):
    data = small_suite_data(steps=2)
    data["model"].update(hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=8)
    suite = suite_from_data(data, "phases")
    (trial,) = plan(suite, ["full"], tmp_path, "cpu").trials
    row = run_trial(trial.spec)
    assert row["status"] == "ok", row["reason"]
    freed = row["mem_grads_mb"] + row["mem_optimizer_mb"]  # 12 bytes per weight: ~70 MiB here
    assert freed > 50
    assert row["peak_mem_rss_mb"] - row["peak_mem_rss_eval_mb"] > 0.75 * freed, (
        row["peak_mem_rss_mb"], row["peak_mem_rss_eval_mb"], freed)
    assert row["precision"] == "fp32" and row["device"] == "cpu"


def test_release_frees_gradients_and_optimizer_state(small_suite):
    from memft_bench.harness.trial.data import encode_example, load_task, training_batches
    from memft_bench.harness.trial.models import build_model, build_tokenizer, causal_lm_loss
    from memft_bench.methods.base import create

    tokenizer = build_tokenizer(small_suite.model)
    model = build_model(small_suite.model, tokenizer, seed=0, device="cpu")
    task = load_task(small_suite.tasks[0], small_suite)
    examples = [encode_example(tokenizer, r, 64) for r in task.train[:8]]
    batches = training_batches(examples, 4, 1, 0, tokenizer.pad_token_id, "cpu")
    for name in ("full", "sgc", "subzero"):
        method = create(name, {"k": 32, "s": 4} if name == "sgc" else {}, causal_lm_loss)
        method.prepare(build_model(small_suite.model, tokenizer, seed=0, device="cpu"))
        method.step(next(batches))
        method.forward_backward(next(batches)) if method.uses_backward else None  # leave gradients behind
        method.release_training_state()
        assert all(p.grad is None for p in method.model.parameters())
        if name == "full":
            assert not method.optimizer.state
        if name == "sgc":
            assert all(b.exp_avg.numel() == 0 and b.exp_avg_sq.numel() == 0 for b in method.blocks)
        if name == "subzero":
            assert not method.factors
    del model
