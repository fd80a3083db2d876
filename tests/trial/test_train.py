"""The training loop: schedules, callbacks, and divergence detection."""

from __future__ import annotations

import itertools

import pytest

from memft_bench.harness.spec.config import BudgetSpec
from memft_bench.harness.trial.train import Diverged, LossRecorder, lr_scale, train
from memft_bench.methods.base import create
from tests.toy import Toy, quadratic_loss, toy_batch


def test_schedules():
    b = BudgetSpec(steps=10, lr_schedule="linear", lr_warmup_steps=2)
    assert [lr_scale(s, b) for s in (0, 1)] == [0.5, 1.0]
    assert lr_scale(2, b) == 1.0 and lr_scale(9, b) == pytest.approx(1 / 8)
    c = BudgetSpec(steps=10, lr_schedule="cosine")
    assert lr_scale(0, c) == 1.0 and lr_scale(5, c) == pytest.approx(0.5)
    assert lr_scale(7, BudgetSpec(steps=10)) == 1.0


def test_loop_runs_the_budget_and_applies_the_schedule():
    method = create("full", {"lr": 0.1}, quadratic_loss)
    method.prepare(Toy())
    recorder = LossRecorder()
    budget = BudgetSpec(steps=4, lr_schedule="linear")
    train(method, itertools.repeat(toy_batch()), budget, [recorder])
    assert len(recorder.losses) == 4
    assert method.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * lr_scale(3, budget))


def test_divergence_stops_training():
    method = create("full", {"lr": 1e30}, quadratic_loss)
    method.prepare(Toy())
    recorder = LossRecorder()
    with pytest.raises(Diverged, match="loss became"):
        train(method, itertools.repeat(toy_batch()), BudgetSpec(steps=50), [recorder])
    assert len(recorder.losses) < 50


def test_method_measurements_leave_out_the_warmup_steps_and_are_read_after_the_timer():
    """Extras of warm-up steps are not averaged (as step times are not), and lazy values are read only
    when the recorder runs, which is after the step timer in the trial's callback order."""
    import torch

    from memft_bench.harness.trial.train import ExtrasRecorder
    from memft_bench.methods.base import StepResult

    reads = []
    recorder = ExtrasRecorder(warmup=2)
    for step, value in enumerate([100.0, 50.0, 1.0, 3.0]):
        extras = {"plain": value, "tensor": torch.tensor(value), "lazy": lambda v=value: reads.append(v) or v}
        recorder.on_step_end(step, toy_batch(), StepResult(0.0, extras))
    assert recorder.means() == {"plain": 2.0, "tensor": 2.0, "lazy": 2.0}
    assert reads == [1.0, 3.0]  # warm-up steps' lazy values are never even read


def test_sgc_step_reports_its_diagnostics_lazily():
    method = create("sgc", {"k": 24, "s": 3, "target_modules": ["q_proj"]}, quadratic_loss)
    method.prepare(Toy())
    extras = method.step(toy_batch()).extras
    assert set(extras) == {"omp_time_ms", "relative_recovery_error", "update_density"}
    assert all(callable(v) for v in extras.values())
    values = {k: v() for k, v in extras.items()}
    assert values["omp_time_ms"] > 0 and 0 < values["update_density"] <= 3 / 48
    assert method.info() == {"omp_backend": "torch", "omp_fallback_reason": None}


def test_smt_layers_never_read_device_tensors_back_in_forward_or_backward(monkeypatch):
    """Block coordinates are Python lists: no `.tolist()`/`.item()` (a device-host synchronisation on a GPU)
    per layer per step."""
    import torch

    method = create("smt", {"block_size": 2, "warmup_steps": 1, "num_blocks": 3, "target_modules": ["q_proj"]},
                    quadratic_loss)
    method.prepare(Toy())
    method.step(toy_batch())  # warm-up, then the switch to sparse layers
    assert method.sparse_layers

    def forbidden(*_args, **_kwargs):
        raise AssertionError("a device tensor was read back to the host")

    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    loss = method.forward_backward(toy_batch())
    assert loss > 0 and method.sparse_layers[0].blocks.grad is not None


def test_a_wall_clock_budget_stops_between_steps_once_spent(monkeypatch):
    """budget.time_s: the steps that fit in the time, at most budget.steps, never a half step."""
    import itertools

    from memft_bench.harness.spec.config import BudgetSpec
    from memft_bench.harness.trial import train as train_module

    clock = itertools.count(0.0, 1.0)  # each read of the clock is one second later
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: next(clock))

    class Counting:
        model = type("M", (), {"train": lambda self: None})()

        def __init__(self):
            self.steps = 0

        def set_lr_scale(self, scale):
            pass

        def step(self, batch):
            self.steps += 1
            return type("R", (), {"loss": 1.0, "extras": {}})()

    method = Counting()
    taken = train_module.train(method, itertools.repeat(None), BudgetSpec(steps=100, time_s=5.0), [])
    assert taken == method.steps == 5  # clock reads 1..5 s before steps 1..5 (step 0 always runs), 5 s >= 5 s
    method = Counting()
    assert train_module.train(method, itertools.repeat(None), BudgetSpec(steps=3, time_s=50.0), []) == 3


def test_a_wall_clock_budget_needs_the_constant_schedule():
    import pytest

    from memft_bench.harness.core.errors import ConfigError
    from memft_bench.harness.core.options import build
    from memft_bench.harness.spec.config import BudgetSpec

    with pytest.raises(ConfigError, match="budget.lr_schedule: linear decays over `steps`"):
        build(BudgetSpec, {"time_s": 10, "lr_schedule": "linear"}, "s.budget")
