"""MeZO: SPSA with the seed trick, checked against the directional derivative and the true gradient."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from memft_bench.methods.base import create
from memft_bench.methods.mezo import parameter_seed
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
    z = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(parameter_seed(step_seed, i)))
         for i, (n, p) in enumerate(before.items())}
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
    assert not any(hasattr(m, "_mezo_saved") for m in model.modules())
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


@pytest.mark.parametrize("name", ["mezo", "subzero"])
@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "bf16"])
def test_lr_zero_leaves_the_weights_bit_identical(name, precision, small_suite):
    """The probes (theta + eps z, theta - eps z) must not drift theta, whatever the precision: with lr 0,
    any number of steps leaves every weight bit for bit as it was (in-place +eps/-2eps/+eps does not)."""
    from memft_bench.harness.core.precision import Precision
    from memft_bench.harness.trial.data import encode_example, load_task, training_batches
    from memft_bench.harness.trial.models import build_model, build_tokenizer, causal_lm_loss

    spec = dataclasses.replace(small_suite.model, precision=precision)
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer, seed=0, device="cpu")
    method = create(name, {"lr": 0.0, "eps": 1e-3}, causal_lm_loss, seed=5, precision=Precision(precision))
    method.prepare(model)
    method.apply_precision()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = load_task(small_suite.tasks[0], small_suite)
    examples = [encode_example(tokenizer, r, 64) for r in task.train[:16]]
    batches = training_batches(examples, 4, 1, 0, tokenizer.pad_token_id, "cpu")
    losses = [method.step(next(batches)).loss for _ in range(4)]
    assert all(math.isfinite(loss) for loss in losses)
    assert method.last_projected_grad != 0  # the probes did see different weights
    for n, p in model.named_parameters():
        assert p.dtype == before[n].dtype
        assert torch.equal(p.detach().view(torch.uint8), before[n].view(torch.uint8)), n


def test_probe_equals_an_in_place_perturbation_with_tied_embeddings(small_suite):
    """The hooks show the forward exactly theta + eps z, tied input/output embeddings included (smollm2 ties
    them): the loss equals that of a copy perturbed in place, and every parameter was perturbed."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from memft_bench.harness.trial.data import collate, encode_example, load_task
    from memft_bench.harness.trial.models import build_tokenizer, causal_lm_loss

    tokenizer = build_tokenizer(small_suite.model)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    task = load_task(small_suite.tasks[0], small_suite)
    mb = collate([encode_example(tokenizer, r, 64) for r in task.train[:4]], tokenizer.pad_token_id, "cpu")
    reference = copy.deepcopy(model)
    method = create("mezo", {"eps": 1e-2}, causal_lm_loss, seed=1)
    method.prepare(model)
    with torch.no_grad():
        for i, (name, p) in enumerate(reference.named_parameters()):
            p.add_(method.z(i, name, p, seed=123), alpha=1e-2)
        expected = causal_lm_loss(reference.eval(), mb)[0]
        with method.perturbed(123, 1e-2):
            got = method.loss_fn(model.eval(), mb)[0]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    method._probed = True
    assert method.info() == {}  # every parameter, the tied one included, was perturbed
