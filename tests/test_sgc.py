"""SGC, MESGC, CESGC: the step against an unbatched reference of the paper's equations, against dense AdamW
where compressed sensing recovers the moments exactly, and the state against its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp

from harness.errors import ConfigError
from methods.base import Batch, create
from tests.toy import Toy, quadratic_loss, reference_grads, toy_batch


def _method(name: str, **options):
    values = {"k": 20, "s": 3, "lr": 0.01, "target_modules": ["q_proj"], "store_projection": True, **options}
    return create(name, values, quadratic_loss, seed=0)


def test_step_matches_an_unbatched_reference_of_the_equations():
    """Two steps: top-s sparsification, p/q moments in R^k, OMP (scikit-learn) for m^, least squares for v^."""
    model = Toy()
    w = model.q_proj.weight.detach().double().numpy().reshape(-1).copy()
    method = _method("sgc")
    method.prepare(model)
    A = method.projection(48, torch.device("cpu")).double().numpy()
    b1, b2, eps, lr, s = 0.9, 0.999, 1e-8, 0.01, 3
    p = np.zeros(20)
    q = np.zeros(20)
    for t in (1, 2):
        batch = toy_batch(seed=t)
        g = reference_grads(model, batch)["q_proj.weight"].double().numpy().reshape(-1)
        keep = np.argsort(-np.abs(g))[:s]
        g_s = np.zeros_like(g)
        g_s[keep] = g[keep]
        p = b1 * p + (1 - b1) * A @ g_s
        q = b2 * q + (1 - b2) * A @ (g_s * g_s)
        p_hat, q_hat = p / (1 - b1**t), q / (1 - b2**t)
        m_hat = orthogonal_mp(A, p_hat, n_nonzero_coefs=s)
        support = np.flatnonzero(m_hat)
        v_s = np.linalg.lstsq(A[:, support], q_hat, rcond=None)[0]
        update = np.zeros_like(g)
        ok = v_s > 0
        update[support[ok]] = m_hat[support[ok]] / (np.sqrt(v_s[ok]) + eps)
        w = w - lr * update
        method.step(batch)
        np.testing.assert_allclose(model.q_proj.weight.detach().double().numpy().reshape(-1), w, rtol=1e-4, atol=1e-6)
    assert model.norm.requires_grad is False  # not a target: frozen


def _sparse_problem(weight: torch.nn.Parameter, coords: list[int], targets: torch.Tensor):
    """A loss that only touches `coords` of the weight: its gradients, and so Adam's moments, stay s-sparse."""

    def loss_fn(model, mb):
        w = model.q_proj.weight.reshape(-1)
        return 0.5 * ((w[coords] - targets) ** 2).sum(), 1

    mb = {"labels": torch.zeros(1, 1, dtype=torch.long), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
    return loss_fn, Batch([mb])


def test_equals_dense_adamw_when_the_moments_are_recoverable():
    coords, targets = [3, 17, 40], torch.tensor([1.0, -2.0, 0.5])
    dense_model, sgc_model = Toy(), Toy()
    loss_fn, batch = _sparse_problem(dense_model.q_proj.weight, coords, targets)
    dense = torch.optim.AdamW([dense_model.q_proj.weight], lr=0.05, weight_decay=0.0, eps=1e-8)
    sgc = create("sgc", {"k": 24, "s": 3, "lr": 0.05, "target_modules": ["q_proj"]}, loss_fn, seed=1)
    sgc.prepare(sgc_model)
    for _ in range(10):
        loss_fn(dense_model, None)[0].backward()
        dense.step()
        dense.zero_grad()
        sgc.step(batch)
    torch.testing.assert_close(sgc_model.q_proj.weight, dense_model.q_proj.weight, rtol=1e-4, atol=1e-5)
    assert sgc.metrics["relative_recovery_error"] < 1e-4


def test_state_elements_match_the_formula():
    m, n, k, s = 8, 6, 20, 3
    sgc = _method("sgc", k=k, s=s)
    sgc.prepare(Toy(n_in=n, n_out=m))
    assert sgc.state_elements() == {"trainable_params": m * n, "gradients": m * n, "exp_avg": k, "exp_avg_sq": k,
                                    "projection": k * m * n}
    sgc = _method("sgc", k=k, s=s, store_projection=False)
    sgc.prepare(Toy(n_in=n, n_out=m))
    assert "projection" not in sgc.state_elements()  # regenerated from its seed, never kept

    mesgc = _method("mesgc", k=8, s=2, chunk_size=10)  # 48 entries -> 5 chunks sharing one 8 x 10 A
    mesgc.prepare(Toy(n_in=n, n_out=m))
    state = mesgc.state_elements()
    assert state["exp_avg"] == state["exp_avg_sq"] == 5 * 8 and state["projection"] == 8 * 10

    r = 2
    cesgc = _method("cesgc", k=10, s=2, rank=r)
    cesgc.prepare(Toy(n_in=n, n_out=m))
    cesgc.step(toy_batch())
    state = cesgc.state_elements()  # m >= n: P is n x r, R is m x r
    assert state["exp_avg"] == 10 and state["projector"] == n * r and state["projection"] == 10 * m * r


def test_mesgc_updates_chunks_in_place():
    model = Toy()
    before = model.q_proj.weight.detach().clone()
    mesgc = _method("mesgc", k=8, s=2, chunk_size=10, lr=0.1)
    mesgc.prepare(model)
    mesgc.step(toy_batch())
    changed = (model.q_proj.weight.detach() != before).reshape(-1)
    assert 0 < int(changed.sum()) <= 5 * 2  # at most s per chunk


def test_cesgc_update_lies_in_the_projected_subspace():
    model = Toy(n_in=6, n_out=8)
    before = model.q_proj.weight.detach().clone()
    cesgc = _method("cesgc", k=10, s=3, rank=2, lr=0.1)
    cesgc.prepare(model)
    cesgc.step(toy_batch())
    delta = model.q_proj.weight.detach() - before
    P = cesgc.blocks[0].projector  # right projection: n x r
    assert delta.abs().sum() > 0
    torch.testing.assert_close(delta - delta @ P @ P.T, torch.zeros_like(delta), atol=1e-6, rtol=0)


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="s: must be smaller than k"):
        _method("sgc", k=4, s=4)
    with pytest.raises(ConfigError, match="need s < k <= 48"):
        _method("sgc", k=64, s=3).prepare(Toy())
    with pytest.raises(ConfigError, match="k: must not exceed chunk_size"):
        _method("mesgc", k=16, s=3, chunk_size=8)
