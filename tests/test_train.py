"""The training loop: schedules, callbacks, and divergence detection."""

from __future__ import annotations

import itertools

import pytest

from harness.config import BudgetSpec
from harness.train import Diverged, LossRecorder, lr_scale, train
from methods.base import create
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
