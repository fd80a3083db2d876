"""LoRA and DoRA through peft: what trains, how much state, and DoRA's forward against its formula."""

from __future__ import annotations

import torch

from memft_bench.methods.base import create
from tests.toy import Toy, quadratic_loss, toy_batch


def _prepared(name: str, **options):
    model = Toy(n_in=6, n_out=8)
    base_weight = model.q_proj.weight.detach().clone()
    method = create(name, {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"], **options},
                    quadratic_loss)
    method.prepare(model)
    return method, base_weight


def test_lora_trains_only_the_adapters():
    method, base_weight = _prepared("lora", lr=0.1)
    trainable = dict(method.trainable_parameters())
    assert all("lora_" in n for n in trainable)
    assert method.state_elements()["trainable_params"] == 2 * (6 + 8)  # r (in + out)
    for _ in range(3):
        method.step(toy_batch())
    layer = method.model.base_model.model.q_proj
    torch.testing.assert_close(layer.base_layer.weight, base_weight, rtol=0, atol=0)  # frozen
    assert layer.lora_B["default"].weight.abs().sum() > 0  # B starts at zero and has moved


def test_lora_state_is_adam_over_adapters_only():
    method, _ = _prepared("lora")
    method.step(toy_batch())
    state = method.state_elements()
    assert state["exp_avg"] == state["exp_avg_sq"] == state["trainable_params"] == 28


def test_lora_forward_is_base_plus_scaled_low_rank():
    method, base_weight = _prepared("lora")
    layer = method.model.base_model.model.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(3, 6)
    expected = x @ (base_weight + (4 / 2) * b @ a).T
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_dora_forward_matches_the_weight_decomposition():
    """DoRA (Liu et al. 2024, eq. 5): W' = m * (W + s BA) / ||W + s BA||_c, the norm per output feature."""
    method, base_weight = _prepared("dora")
    layer = method.model.base_model.model.q_proj
    magnitude = layer.lora_magnitude_vector["default"].weight
    torch.testing.assert_close(magnitude, base_weight.norm(dim=1), rtol=1e-6, atol=1e-6)  # m starts at ||W||_c
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        magnitude.mul_(torch.linspace(0.5, 1.5, magnitude.numel()))
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    directional = base_weight + (4 / 2) * b @ a
    merged = magnitude[:, None] * directional / directional.norm(dim=1, keepdim=True)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ merged.T, rtol=1e-4, atol=1e-5)
    # the magnitude vector trains too: r (in + out) + out
    assert method.state_elements()["trainable_params"] == 2 * (6 + 8) + 8


def test_bad_target_modules_is_a_config_error():
    import pytest

    from memft_bench.harness.core.errors import ConfigError

    with pytest.raises(ConfigError, match="target_modules"):
        _prepared("lora", target_modules=["nonexistent_proj"])
