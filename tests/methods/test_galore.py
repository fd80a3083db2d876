"""GaLore: the first update equals Adam on the SVD-projected gradient, projected back and scaled."""

from __future__ import annotations

import torch

from memft_bench.methods.base import create
from tests.toy import Toy, quadratic_loss, reference_grads, toy_batch


def _adam_first_step(g: torch.Tensor, lr: float, b1: float, b2: float, eps: float) -> torch.Tensor:
    """HF-style AdamW first step (the form GaLoreAdamW uses): bias correction folded into the step size."""
    m, v = (1 - b1) * g, (1 - b2) * g * g
    step_size = lr * (1 - b2) ** 0.5 / (1 - b1)
    return -step_size * m / (v.sqrt() + eps)


def _galore_first_step(grad: torch.Tensor, rank: int, scale: float, lr: float, b1: float, b2: float, eps: float):
    """Reference from the paper (Zhao et al. 2024, Alg. 1) with the projection side chosen as galore-torch's
    `std` does: project on the right singular vectors when m >= n, else on the left ones."""
    u, _, vh = torch.linalg.svd(grad, full_matrices=False)
    if grad.shape[0] >= grad.shape[1]:
        p = vh[:rank]  # r x n
        low = grad @ p.T
        return scale * _adam_first_step(low, lr, b1, b2, eps) @ p
    p = u[:, :rank]  # m x r
    low = p.T @ grad
    return scale * p @ _adam_first_step(low, lr, b1, b2, eps)


def test_first_step_matches_projected_adam():
    lr, b1, b2, eps, rank, scale = 0.01, 0.9, 0.999, 1e-6, 2, 0.25
    for n_in, n_out in ((6, 8), (8, 6)):  # both projection sides
        model, batch = Toy(n_in=n_in, n_out=n_out), toy_batch(n_in=n_in, n_out=n_out)
        before = model.q_proj.weight.detach().clone()
        norm_before = model.norm.detach().clone()
        grads = reference_grads(model, batch)
        method = create("galore", {"lr": lr, "rank": rank, "scale": scale, "beta1": b1, "beta2": b2, "eps": eps,
                                   "target_modules": ["q_proj"]}, quadratic_loss)
        method.prepare(model)
        method.step(batch)
        expected = before + _galore_first_step(grads["q_proj.weight"], rank, scale, lr, b1, b2, eps)
        torch.testing.assert_close(model.q_proj.weight.detach(), expected, rtol=1e-4, atol=1e-6)
        # the 1-D weight is not projected: plain Adam
        torch.testing.assert_close(model.norm.detach(), norm_before + _adam_first_step(grads["norm"], lr, b1, b2, eps),
                                   rtol=1e-4, atol=1e-6)


def test_state_is_low_rank_moments_plus_projector():
    m, n, r = 8, 6, 2
    model = Toy(n_in=n, n_out=m)
    method = create("galore", {"rank": r, "target_modules": ["q_proj"]}, quadratic_loss)
    method.prepare(model)
    method.step(toy_batch(n_in=n, n_out=m))
    state = method.state_elements()
    # q_proj (m >= n): moments of the m x r projected gradient, projector r x n; norm: full moments of m
    assert state["exp_avg"] == state["exp_avg_sq"] == m * r + m
    assert state["projector"] == r * n
    assert state["trainable_params"] == m * n + m


def test_projector_refreshes_every_update_proj_gap_steps():
    model = Toy()
    method = create("galore", {"rank": 2, "update_proj_gap": 2, "target_modules": ["q_proj"]}, quadratic_loss)
    method.prepare(model)
    seen = []
    for seed in range(4):
        method.step(toy_batch(seed=seed + 1))
        state = method.optimizer.state[model.q_proj.weight]
        seen.append(state["projector"].ortho_matrix.clone())
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2]) and torch.equal(seen[2], seen[3])
