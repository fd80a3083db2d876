"""MeZO: SPSA with the seed trick, checked against the directional derivative and the true gradient."""

from __future__ import annotations

import random

import torch

from methods.base import create
from tests.toy import Toy, quadratic_loss, reference_grads, toy_batch


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def test_one_step_is_the_seeded_spsa_update():
    """theta' = theta - lr * ((L(theta+eps z) - L(theta-eps z)) / 2 eps) * z, z regenerated from the step seed."""
    model, batch = Toy(), toy_batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = reference_grads(model, batch)
    lr, eps = 1e-3, 1e-3
    method = create("mezo", {"lr": lr, "eps": eps}, quadratic_loss, seed=7)
    method.prepare(model)
    method.step(batch)
    step_seed = random.Random(7).randrange(2**31)
    gen = torch.Generator().manual_seed(step_seed)
    z = {n: torch.randn(p.shape, generator=gen) for n, p in before.items()}
    directional = sum((grads[n] * z[n]).sum() for n in before)  # central difference is exact on a quadratic
    assert abs(method.last_projected_grad - float(directional)) < 1e-2 * abs(float(directional)) + 1e-3
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] - lr * method.last_projected_grad * z[name],
                                   rtol=1e-4, atol=1e-5)
        assert p.grad is None


def test_averaged_update_follows_the_true_gradient():
    model, batch = Toy(), toy_batch()
    before = _flat(p.detach().clone() for p in model.parameters())
    true_grad = _flat(reference_grads(model, batch).values())
    lr, steps = 1e-7, 3000  # small enough that the gradient barely changes over the run
    method = create("mezo", {"lr": lr, "eps": 1e-3}, quadratic_loss, seed=0)
    method.prepare(model)
    for _ in range(steps):
        method.step(batch)
    estimate = (before - _flat(p.detach() for p in model.parameters())) / (lr * steps)
    cosine = torch.nn.functional.cosine_similarity(estimate, true_grad, dim=0)
    assert cosine > 0.98, cosine


def test_perturbations_are_undone_and_no_gradient_memory():
    model, batch = Toy(), toy_batch()
    before = _flat(p.detach().clone() for p in model.parameters())
    method = create("mezo", {"lr": 1e-30, "eps": 1e-2}, quadratic_loss, seed=3)
    method.prepare(model)
    for _ in range(5):
        method.step(batch)
    torch.testing.assert_close(_flat(p.detach() for p in model.parameters()), before, rtol=0, atol=1e-6)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    state = method.state_elements()
    assert state["gradients"] == 0 and set(state) == {"trainable_params", "gradients"}


def test_same_seed_same_trajectory():
    runs = []
    for _ in range(2):
        model = Toy()
        method = create("mezo", {"lr": 1e-3}, quadratic_loss, seed=11)
        method.prepare(model)
        for _ in range(3):
            method.step(toy_batch())
        runs.append(_flat(p.detach() for p in model.parameters()))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
