"""SubZero, RSO and SMT: each one's defining behaviour against an independent reference."""

from __future__ import annotations

import copy

import pytest
import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.methods.base import create
from tests.toy import Toy, quadratic_loss, reference_grads, toy_batch


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# -- SubZero ----------------------------------------------------------------------------------
def test_subzero_update_lies_in_the_subspace_and_is_unbiased_there():
    """E[g Z] = c^2 U U^T grad V V^T for a quadratic: average many SPSA steps with a fixed subspace."""
    model, batch = Toy(n_in=10, n_out=12), toy_batch(n_in=10, n_out=12)
    w0 = model.q_proj.weight.detach().clone()
    grad = reference_grads(model, batch)["q_proj.weight"]
    lr, steps, r = 1e-8, 3000, 3
    method = create("subzero", {"lr": lr, "eps": 1e-3, "rank": r, "update_subspace_gap": 10**6}, quadratic_loss)
    method.prepare(model)
    for _ in range(steps):
        method.step(batch)
    u, v = method.factors["q_proj.weight"]
    torch.testing.assert_close(u.T @ u, torch.eye(r), atol=1e-5, rtol=0)  # orthonormal factors
    delta = w0 - model.q_proj.weight.detach()
    # in the subspace: nothing outside span(U) x span(V) but float32 round-off of the in-place
    # perturb/restore cycles (~1e-3 of the update after 3000 steps; a full-rank update would give ~1)
    outside = delta - u @ u.T @ delta @ v @ v.T
    assert outside.norm() < 1e-2 * delta.norm()
    c2 = (12 * 10) / r**2
    expected = c2 * u @ u.T @ grad @ v @ v.T * lr * steps
    cosine = torch.nn.functional.cosine_similarity(delta.reshape(-1), expected.reshape(-1), dim=0)
    assert cosine > 0.98, cosine
    assert delta.norm() / expected.norm() == pytest.approx(1.0, rel=0.15)


def test_subzero_keeps_no_gradients_and_counts_its_factors():
    model = Toy(n_in=6, n_out=8)
    method = create("subzero", {"rank": 2, "update_subspace_gap": 3}, quadratic_loss)
    method.prepare(model)
    seen = []
    for _ in range(4):
        method.step(toy_batch())
        seen.append(method.factors["q_proj.weight"][0].clone())
    assert torch.equal(seen[0], seen[2]) and not torch.equal(seen[2], seen[3])  # lazy refresh every T steps
    assert all(p.grad is None for p in model.parameters())
    state = method.state_elements()
    assert state["gradients"] == 0 and state["subspace_factors"] == 2 * (8 + 6)


def test_subzero_probes_and_updates_with_the_same_z_under_bf16_autocast():
    """The probes draw z in a module's forward pre-hook, inside the precision policy's autocast; the update draws
    it again outside. SPSA needs the same z in both: under bf16 autocast U Z0 V^T must not be rounded to bf16."""
    model = Toy(n_in=64, n_out=48)
    method = create("subzero", {"rank": 4}, quadratic_loss)
    method.prepare(model)
    method.refresh_subspaces()
    index, (name, p) = next((i, np) for i, np in enumerate(method.parameters) if np[0] == "q_proj.weight")
    outside = method.z(index, name, p, seed=7)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = method.z(index, name, p, seed=7)
    assert inside.dtype == torch.float32 and torch.equal(inside, outside)


# -- RSO ---------------------------------------------------------------------------------------
def _rso(model, **options):
    method = create("rso", {"rank": 2, "lr": 0.05, "target_modules": ["q_proj"], **options}, quadratic_loss)
    method.prepare(model)
    return method


def test_rso_merge_leaves_the_function_unchanged():
    model = Toy(n_in=6, n_out=8)
    method = _rso(model, inner_steps=3)
    x = torch.randn(4, 6)
    for _ in range(2):
        method.step(toy_batch())
    layer = method.layers[0]
    assert layer.b.abs().sum() > 0
    before_merge = model(x).detach()
    weight_before = layer.base.weight.detach().clone()
    layer.merge()
    torch.testing.assert_close(model(x).detach(), before_merge, atol=1e-6, rtol=1e-6)
    assert layer.b.abs().sum() == 0 and not torch.equal(layer.base.weight, weight_before)


def test_rso_gradient_is_the_projected_weight_gradient():
    """dB = (dL/dW) P: the subspace gradient equals the dense gradient projected onto P."""
    model = Toy(n_in=6, n_out=8)
    dense_grad = reference_grads(model, toy_batch())["q_proj.weight"]
    method = _rso(model)
    layer = method.layers[0]
    loss, _ = quadratic_loss(model, toy_batch().micro_batches[0])
    loss.backward()
    torch.testing.assert_close(layer.b.grad, dense_grad @ layer.projection, rtol=1e-5, atol=1e-6)


def test_rso_saves_projected_activations_and_small_state():
    model = Toy(n_in=6, n_out=8)
    method = _rso(model)
    saved = []
    x = torch.randn(5, 6, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        method.layers[0](x)
    assert (5, 2) in saved and (5, 6) not in saved  # x P is kept, x is not
    method.step(toy_batch())
    state = method.state_elements()
    assert state["trainable_params"] == state["exp_avg"] == state["exp_avg_sq"] == 8 * 2
    assert state["subspace"] == 6 * 2


def test_rso_redraws_the_subspace_after_inner_steps():
    model = Toy(n_in=6, n_out=8)
    method = _rso(model, inner_steps=2)
    first = method.layers[0].projection.clone()
    method.step(toy_batch())
    assert torch.equal(method.layers[0].projection, first)
    method.step(toy_batch())
    assert not torch.equal(method.layers[0].projection, first) and not method.optimizer.state


# -- SMT ---------------------------------------------------------------------------------------
class Wide(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q_proj = torch.nn.Linear(8, 8, bias=False)
        self.norm = torch.nn.Parameter(torch.ones(8))

    def forward(self, x):
        return self.q_proj(x) * self.norm


def _smt_batch(seed=1):
    return toy_batch(seed=seed, n_in=8, n_out=8)


def test_smt_selects_by_score_and_trains_only_selected_blocks():
    model = Wide()
    method = create("smt", {"block_size": 4, "num_blocks": 1, "warmup_steps": 2, "lr": 0.05,
                            "target_modules": ["q_proj"]}, quadratic_loss)
    method.prepare(model)
    grads = [reference_grads(model, _smt_batch(1))["q_proj.weight"]]
    method.step(_smt_batch(1))
    grads.append(reference_grads(model, _smt_batch(2))["q_proj.weight"])
    method.step(_smt_batch(2))  # the selection happens after this warm-up step
    summed = (grads[0] + grads[1]).reshape(2, 4, 2, 4).mean(dim=(1, 3)).abs()
    best = divmod(int(summed.argmax()), 2)
    assert method.selected == {"q_proj": [best]}
    weight = model.q_proj.base.weight
    before, norm_before = weight.detach().clone(), model.norm.detach().clone()
    for seed in range(3, 6):
        method.step(_smt_batch(seed))
    changed = (weight.detach() != before).reshape(2, 4, 2, 4).any(dim=3).any(dim=1)
    expected = torch.zeros(2, 2, dtype=torch.bool)
    expected[best] = True
    assert torch.equal(changed, expected)
    assert torch.equal(model.norm.detach(), norm_before)  # everything else frozen
    assert method.state_elements() == {"trainable_params": 16, "gradients": 16, "exp_avg": 16, "exp_avg_sq": 16}


def test_smt_block_gradient_equals_the_dense_gradient_sliced():
    model = Wide()
    method = create("smt", {"block_size": 4, "num_blocks": 2, "warmup_steps": 1, "target_modules": ["q_proj"]},
                    quadratic_loss)
    method.prepare(model)
    method.step(_smt_batch(1))
    layer = model.q_proj
    dense_model = copy.deepcopy(model)
    dense_weight = dense_model.q_proj.base.weight
    dense_weight.requires_grad_(True)
    x, y = _smt_batch(7).micro_batches[0]["x"], _smt_batch(7).micro_batches[0]["y"]
    (0.5 * (((x @ dense_weight.T) * dense_model.norm - y) ** 2).sum()).backward()
    loss, _ = quadratic_loss(model, _smt_batch(7).micro_batches[0])
    loss.backward()
    for i, (r, c) in enumerate(zip(layer.rows, layer.cols)):
        torch.testing.assert_close(layer.blocks.grad[i], dense_weight.grad[r * 4:(r + 1) * 4, c * 4:(c + 1) * 4])


def test_smt_block_size_must_divide_the_weight():
    method = create("smt", {"block_size": 3, "target_modules": ["q_proj"]}, quadratic_loss)
    with pytest.raises(ConfigError, match="block_size: 3 must divide"):
        method.prepare(Wide())
