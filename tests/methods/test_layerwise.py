"""Per-layer updates (`layerwise: true`) for full fine-tuning and GaLore: the same weights as the unfused
update after several steps (gradient accumulation included), one gradient held, and the accounting."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from memft_bench.harness.trial.models import causal_lm_loss
from memft_bench.methods.base import Batch, create
from memft_bench.methods.fused import LayerwiseOptimizers

CONFIG = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False)

OPTIONS = {
    "full": {"lr": 1e-2, "weight_decay": 0.1},
    # a projector refresh every 2 steps, so the 4 steps cover a refresh; rank below every side
    "galore": {"lr": 1e-2, "rank": 2, "update_proj_gap": 2, "scale": 0.5, "weight_decay": 0.1},
}


def _model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(CONFIG)


def _batch(step: int, micro_batches: int) -> Batch:
    g = torch.Generator().manual_seed(100 + step)
    mbs = []
    for _ in range(micro_batches):
        ids = torch.randint(4, CONFIG.vocab_size, (2, 10), generator=g)
        labels = ids.clone()
        labels[:, :4] = -100  # prompt tokens out of the loss, as the harness does
        mbs.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return Batch(mbs)


def _train(name: str, layerwise: bool, micro_batches: int, steps: int = 4):
    model = _model()
    method = create(name, {**OPTIONS[name], "layerwise": layerwise}, causal_lm_loss)
    method.prepare(model)
    losses = []
    for step in range(steps):
        method.set_lr_scale(1.0 - 0.2 * step)  # the schedule's factor reaches the per-parameter optimizers
        losses.append(method.step(_batch(step, micro_batches)).loss)
    return model, method, losses


@pytest.mark.parametrize("name", ["full", "galore"])
@pytest.mark.parametrize("micro_batches", [1, 3])
def test_layerwise_update_equals_the_unfused_update(name, micro_batches):
    reference, _, ref_losses = _train(name, False, micro_batches)
    fused, method, losses = _train(name, True, micro_batches)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    start = _model()
    for (n, p), (_, q), (_, p0) in zip(reference.named_parameters(), fused.named_parameters(),
                                       start.named_parameters()):
        assert not torch.equal(p, p0), n  # every parameter moved
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)
        assert q.grad is None  # every gradient was freed by its hook


def test_hooks_stepping_every_micro_batch_would_differ():
    """The check above can fail: an update per micro-batch (hooks always armed) gives other weights."""
    reference, _, _ = _train("full", False, 3, steps=1)
    model = _model()
    method = create("full", {**OPTIONS["full"], "layerwise": True}, causal_lm_loss)
    method.prepare(model)
    method.layerwise.run_step(1, lambda hook: method.forward_backward(_batch(0, 3), lambda i: hook(0)))
    assert not torch.allclose(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)


@pytest.mark.parametrize("name", ["full", "galore"])
def test_one_gradient_is_held_at_a_time(name, monkeypatch):
    """Measured: the `.grad` tensors alive whenever a hook runs never exceed the largest parameter's."""
    live_max = [0]
    original = LayerwiseOptimizers.step_on_gradient

    def measuring(self, p):
        if self.armed:
            live = sum(q.grad.numel() * q.grad.element_size() for q in self.optimizers if q.grad is not None)
            live_max[0] = max(live_max[0], live)
        original(self, p)

    monkeypatch.setattr(LayerwiseOptimizers, "step_on_gradient", measuring)
    _, method, _ = _train(name, True, 1, steps=1)
    held = method.state_bytes()["gradients"]
    largest = max(p.numel() * p.element_size() for p in method.model.parameters())
    assert live_max[0] == held == largest
    _, unfused, _ = _train(name, False, 1, steps=1)
    assert unfused.state_bytes()["gradients"] == sum(p.numel() * 4 for p in unfused.model.parameters()) > held
    # with accumulation every gradient lives across micro-batches: the accounting says so
    _, accumulated, _ = _train(name, True, 2, steps=1)
    assert accumulated.state_bytes()["gradients"] == unfused.state_bytes()["gradients"]


@pytest.mark.parametrize("name", ["full", "galore"])
def test_layerwise_state_equals_the_unfused_state(name):
    _, fused, _ = _train(name, True, 1, steps=2)
    _, unfused, _ = _train(name, False, 1, steps=2)
    a, b = fused.state_bytes(), unfused.state_bytes()
    a.pop("gradients"), b.pop("gradients")
    assert a == b
    fused.release_training_state()
    assert all(not opt.state for opt in fused.layerwise.optimizers.values())


@pytest.mark.parametrize("name", ["full", "galore"])
@pytest.mark.parametrize("layerwise", [False, True])
def test_prediction_on_meta_equals_the_real_accounting(name, layerwise):
    with torch.device("meta"):
        meta_model = LlamaForCausalLM(CONFIG)
    predictor = create(name, {**OPTIONS[name], "layerwise": layerwise}, causal_lm_loss)
    predictor.prepare(meta_model)
    predictor.apply_precision()
    predicted = predictor.predicted_state_bytes()
    assert predictor.predicted_workspace_bytes() == 0
    _, method, _ = _train(name, layerwise, 1, steps=1)
    assert predicted == method.state_bytes()
    assert all(p.grad is None for p in meta_model.parameters())  # the prediction leaves nothing behind


def test_prediction_refuses_a_real_model():
    method = create("full", {"layerwise": True}, causal_lm_loss)
    model = _model()
    before = copy.deepcopy(model.state_dict())
    method.prepare(model)
    assert method.predicted_state_bytes() is None  # a step on real weights would move them
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
