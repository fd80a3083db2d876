"""Every row carries the training peak predicted before training beside the measured one; the prediction does
not change what the trial computes; an out-of-memory row says how far off the prediction was."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from memft_bench.harness.run.planning import plan
from memft_bench.harness.spec.config import suite_from_data
from memft_bench.harness.trial import predicted_peak
from memft_bench.harness.trial.memory_trace import pick_peak_batches, predict_training_peak
from memft_bench.harness.trial.worker import run_trial
from tests.conftest import small_suite_data

MiB = 2**20
PARAMS = {"lora": {"lr": 1e-3, "r": 2, "dropout": 0.1}, "full": {"lr": 1e-3}, "sgc": {"lr": 1e-3, "k": 16, "s": 4},
          "mesgc": {"lr": 1e-3, "k": 16, "s": 4, "chunk_size": 256}, "cesgc": {"lr": 1e-3, "k": 16, "s": 4, "rank": 2}}


def _trial(tmp_path: Path, method: str, run: str) -> dict[str, Any]:
    data = small_suite_data(steps=4)
    data["methods"] = {method: PARAMS[method]}
    suite = suite_from_data(data, "predicted")
    (trial, *_) = plan(suite, [method], tmp_path / run, "cpu").trials
    return run_trial(trial.spec)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_row_carries_its_prediction_beside_its_measurement(tmp_path, method):
    row = _trial(tmp_path, method, "a")
    assert row["status"] == "ok", row["reason"]
    predicted, measured = row["mem_predicted_peak_mb"], row["peak_mem_training_mb"]
    assert predicted > row["mem_weights_mb"] and measured > 0
    assert row["mem_prediction_error_pct"] == pytest.approx(100 * (predicted - measured) / measured)
    assert "traced in" in row["meter_notes"]["memory_prediction"]


def test_the_rows_prediction_is_the_trace_of_the_trials_own_batches(tmp_path):
    from memft_bench.harness.trial.memory_trace import task_batches

    row = _trial(tmp_path, "full", "a")
    data = small_suite_data(steps=4)
    data["methods"] = {"full": PARAMS["full"]}
    suite = suite_from_data(data, "predicted")
    batches = pick_peak_batches(task_batches(suite, suite.budget.steps, row["task"], row["seed"]))
    assert row["mem_predicted_peak_mb"] == predict_training_peak(suite, "full", PARAMS["full"], batches=batches,
                                                                 steps=len(batches)).peak_bytes / MiB


def _batch(rows: int, length: int, answer: int):
    """One micro-batch, left-padded as `collate` makes them: each row's last `answer` positions are targets."""
    from memft_bench.methods.base import Batch

    labels = torch.full((rows, length), -100)
    labels[:, length - answer:] = 1
    return Batch([{"input_ids": torch.ones(rows, length, dtype=torch.long), "labels": labels,
                   "attention_mask": torch.ones(rows, length, dtype=torch.long)}])


def test_the_batch_with_the_most_logit_positions_is_traced_too():
    """`causal_lm_loss` projects every position from a micro-batch's first target on onto the vocabulary: a
    batch with fewer tokens but longer answers can set the peak, so it is traced beside the largest one."""
    first, most_tokens, longest_answers = _batch(4, 40, 2), _batch(4, 60, 3), _batch(4, 50, 30)
    picked = pick_peak_batches([first, most_tokens, longest_answers, _batch(4, 20, 1)])
    assert picked == [first, most_tokens, longest_answers]
    assert pick_peak_batches([first, _batch(4, 60, 30), longest_answers])[2:] == []  # the largest is also the widest


@pytest.mark.parametrize("method", ["lora", "full"])  # LoRA's dropout draws random numbers every step
def test_predicting_does_not_change_what_the_trial_computes(tmp_path, monkeypatch, method):
    with_prediction = _trial(tmp_path, method, "a")
    monkeypatch.setattr(predicted_peak, "predict_trial_peak", lambda *args, **kwargs: None)
    without = _trial(tmp_path, method, "b")
    assert without["mem_predicted_peak_mb"] is None
    assert with_prediction["loss_curve"] == without["loss_curve"]
    assert with_prediction["accuracy"] == without["accuracy"]


def test_a_trace_that_fails_leaves_a_note_and_the_trial_goes_on(tmp_path, monkeypatch):
    from memft_bench.harness.trial import memory_trace

    def broken(*args: Any, **kwargs: Any) -> None:
        raise memory_trace.CannotTrace("a kernel outside torch")

    monkeypatch.setattr(memory_trace, "predict_training_peak", broken)
    row = _trial(tmp_path, "full", "a")
    assert row["status"] == "ok" and row["mem_predicted_peak_mb"] is None
    assert row["meter_notes"]["memory_prediction"] == "none: the trace failed (cpu: a kernel outside torch)"


def test_random_state_is_restored():
    import random

    import numpy as np

    torch.manual_seed(3)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with predicted_peak.preserved_random_state(torch.device("cpu")):
        random.random(), np.random.rand(), torch.rand(3)
        torch.manual_seed(99)
    assert random.getstate() == before[0] and (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.get_rng_state(), before[2])


def _prediction(mb: float) -> Any:
    return SimpleNamespace(peak_bytes=int(mb * MiB))


def test_an_out_of_memory_row_says_how_far_off_the_prediction_was():
    exc = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB")
    short = predicted_peak.out_of_memory_shortfall(_prediction(10_240), torch.device("cuda", 0), 9_216.0, exc)
    assert short == ("predicted peak 10.00 GiB, but at least 11.00 GiB was needed when it failed (allocator peak "
                     "9.00 GiB plus the failed allocation): the prediction was at least 1.00 GiB (9 %) short")
    enough = predicted_peak.out_of_memory_shortfall(_prediction(20_480), torch.device("cuda", 0), 9_216.0, exc)
    assert "the device had less than predicted free" in enough
    cpu = predicted_peak.out_of_memory_shortfall(_prediction(100), torch.device("cpu"), None, MemoryError())
    assert cpu == "predicted peak 100.0 MiB; the device ran out before training's peak could be measured"
    # a CPU trial: training's resident peak so far (above the idle process) plus the CPU allocator's failed request
    cpu_exc = RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 536870912 bytes. Error code 12 (Cannot allocate memory)")
    cpu_short = predicted_peak.out_of_memory_shortfall(_prediction(1_024), torch.device("cpu"), 1_024.0, cpu_exc)
    assert cpu_short == ("predicted peak 1.00 GiB, but at least 1.50 GiB was needed when it failed (training's "
                         "resident peak 1.00 GiB plus the failed allocation): the prediction was at least 512.0 MiB "
                         "(33 %) short")
    assert predicted_peak.out_of_memory_shortfall(None, torch.device("cpu"), None, MemoryError()) is None


@pytest.mark.parametrize("setting", ["", "dynamic"])
def test_a_cpu_trial_records_its_heap_policy_and_the_library_code_it_left_out(tmp_path, setting):
    """In its own process, as every trial runs: the row says which heap policy was in force and how much library
    code training paged in (left out of its measured peak)."""
    import json
    import os
    import subprocess
    import sys

    data = small_suite_data(steps=3)
    data["methods"] = {"lora": PARAMS["lora"]}
    (trial, *_) = plan(suite_from_data(data, "heap"), ["lora"], tmp_path / "run", "cpu").trials
    spec, result = tmp_path / "spec.json", tmp_path / "row.json"
    spec.write_text(json.dumps(trial.spec), encoding="utf-8")
    env = dict(os.environ, BENCH_CPU_MMAP_THRESHOLD=setting, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-m", "memft_bench.harness.trial", str(spec), str(result)], env=env, check=True,
                   capture_output=True, timeout=600)
    row = json.loads(result.read_text(encoding="utf-8"))
    assert row["status"] == "ok", row["reason"]
    assert row["peak_mem_training_mb"] > 0 and row["mem_cpu_library_pages_mb"] >= 0
    assert row["env"]["cpu_heap"] == ("glibc default (dynamic mmap threshold)" if setting == "dynamic" else
                                      "glibc mmap threshold fixed at 4 KiB")


# LoRA's dropout draws; SGC's hooks compress gradients, and the SGC family's update kernels run on throwaway data
@pytest.mark.parametrize("method", ["lora", "sgc", "mesgc", "cesgc"])
def test_the_warm_up_pass_changes_nothing_the_trial_computes(tmp_path, monkeypatch, method):
    """It runs before the baseline on the trial's model, forward and backward, restoring every generator and
    accumulating no gradient (so no post-accumulate hook runs): a trial without it trains to the same losses."""
    from memft_bench.harness.trial import worker

    with_it = _trial(tmp_path, method, "a")
    assert "cpu_warm_up" not in (with_it["meter_notes"] or {})
    monkeypatch.setattr(worker, "warm_up_pass", lambda *args: None)
    without = _trial(tmp_path, method, "b")
    assert with_it["loss_curve"] == without["loss_curve"]


def test_the_warm_up_pass_leaves_no_gradient_and_runs_no_hook():
    from memft_bench.harness.core.precision import Precision
    from memft_bench.harness.trial import worker
    from memft_bench.harness.trial.memory_trace import synthetic_batches
    from memft_bench.harness.trial.models import build_model, build_tokenizer, causal_lm_loss
    from memft_bench.methods.base import create

    suite = suite_from_data(small_suite_data(), "warm")
    model = build_model(suite.model, build_tokenizer(suite.model), seed=0, device="cpu")
    method = create("sgc", {"k": 16, "s": 4}, causal_lm_loss, seed=0, precision=Precision("fp32"))
    method.prepare(model)
    fired = []
    for p in method.model.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p: fired.append(p))
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    moments = [(b.exp_avg.clone(), b.exp_avg_sq.clone()) for b in method.blocks]
    warmed = []
    original = method.warm_up_kernels
    method.warm_up_kernels = lambda: (warmed.append(True), original())
    notes: dict[str, str] = {}
    worker.warm_up_pass(method, synthetic_batches(suite, 1)[0], torch.device("cpu"), notes)
    assert not notes and not fired and warmed == [True]  # the update's kernels ran, on throwaway data
    assert all(p.grad is None for p in method.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in method.model.state_dict().items())
    assert method.t == 0 and all(torch.equal(b.exp_avg, m) and torch.equal(b.exp_avg_sq, v)
                                 for b, (m, v) in zip(method.blocks, moments, strict=True))
