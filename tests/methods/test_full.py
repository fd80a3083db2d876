"""Full fine-tuning: the first AdamW step matches Adam's formula computed by hand."""

from __future__ import annotations

import copy

import torch

from memft_bench.methods.base import create
from tests.toy import Toy, quadratic_loss, reference_grads, toy_batch


def test_first_step_is_adamw():
    model, batch = Toy(), toy_batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = reference_grads(model, batch)
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
    method = create("full", {"lr": lr, "weight_decay": wd, "beta1": b1, "beta2": b2, "eps": eps}, quadratic_loss)
    method.prepare(model)
    method.step(batch)
    for name, p in model.named_parameters():
        g = grads[name]
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g * g / (1 - b2)
        expected = before[name] * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
        assert p.grad is None  # gradients are freed after every step


def test_state_counts_two_moments_per_weight():
    model = Toy()
    method = create("full", {}, quadratic_loss)
    method.prepare(model)
    method.step(toy_batch())
    n = sum(p.numel() for p in model.parameters())
    assert method.state_elements() == {"trainable_params": n, "gradients": n, "exp_avg": n, "exp_avg_sq": n}
    assert method.state_bytes()["exp_avg"] == 4 * n


def test_training_reduces_the_loss():
    model, batch = Toy(), toy_batch()
    method = create("full", {"lr": 0.05}, quadratic_loss)
    method.prepare(copy.deepcopy(model))
    losses = [method.step(batch).loss for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
