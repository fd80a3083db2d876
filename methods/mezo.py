"""`mezo`: zeroth-order SPSA with the seed trick (Malladi et al. 2023, "Fine-Tuning Language Models
with Just Forward Passes").

Per step, with a fresh seed s and z ~ N(0, I) drawn from s parameter by parameter:
    theta += eps z;  L+ = L(theta)
    theta -= 2 eps z; L- = L(theta)
    theta += eps z   (restored)
    g = (L+ - L-) / (2 eps)
    regenerate z from s;  theta -= lr (g z + wd theta)   (no weight decay on biases and norms)
z is never stored, no backward pass runs and no `.grad` is ever allocated: memory is inference
memory plus nothing. The forward passes run in eval mode (no dropout), on the whole batch (MeZO uses
no gradient accumulation: micro-batches are only a way to bound activation memory). Defaults:
the paper's eps 1e-3 and lr 1e-6, constant schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from harness.options import option
from methods.base import Batch, Method, MethodOptions, StepResult, register


@dataclass
class MezoOptions(MethodOptions):
    lr: float = option(1e-6, "learning rate of the SPSA step", gt=0.0)
    eps: float = option(1e-3, "perturbation scale epsilon", gt=0.0)


def _decays(name: str) -> bool:
    """MeZO's rule: weight decay on every parameter except biases and layer norms."""
    lowered = name.lower()
    return "bias" not in lowered and "norm" not in lowered


@register("mezo")
class Mezo(Method):
    """MeZO: SPSA gradient estimate from two forward passes, the seed trick instead of storing z."""

    Options = MezoOptions
    options: MezoOptions
    forward_passes_per_step = 2
    uses_backward = False

    def prepare(self, model: torch.nn.Module) -> None:
        model.requires_grad_(False)  # no autograd graph, no .grad: the forward passes are inference
        self.model = model
        self.parameters = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        self.step_seeds = random.Random(self.seed)
        self.last_projected_grad = 0.0

    def _z(self, seed: int):
        """Yield (name, parameter, z) with z regenerated from `seed` in the same order every time."""
        device = self.parameters[0][1].device
        generator = torch.Generator(device=device).manual_seed(seed)
        for name, p in self.parameters:
            z = torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
            yield name, p, z

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        for _, p, z in self._z(seed):
            p.add_(z, alpha=scale)

    @torch.no_grad()
    def batch_loss(self, batch: Batch) -> float:
        total = max(batch.target_tokens, 1)
        return sum(float(self.loss_fn(self.model, mb)[0]) for mb in batch.micro_batches) / total

    @torch.no_grad()
    def step(self, batch: Batch) -> StepResult:
        assert self.model is not None
        self.model.eval()
        eps = self.options.eps
        seed = self.step_seeds.randrange(2**31)
        self.perturb(seed, +eps)
        loss_plus = self.batch_loss(batch)
        self.perturb(seed, -2 * eps)
        loss_minus = self.batch_loss(batch)
        self.perturb(seed, +eps)
        projected_grad = (loss_plus - loss_minus) / (2 * eps)
        self.last_projected_grad = projected_grad
        lr = self.options.lr * self.lr_scale
        wd = self.options.weight_decay
        for name, p, z in self._z(seed):
            if wd > 0 and _decays(name):
                p.sub_(lr * (projected_grad * z + wd * p))
            else:
                p.sub_(z, alpha=lr * projected_grad)
        # (L+ + L-) / 2 estimates L(theta) to second order in eps: the loss curve's figure.
        return StepResult((loss_plus + loss_minus) / 2)

    def state_elements(self) -> dict[str, int]:
        n = sum(p.numel() for _, p in self.parameters)
        return {"trainable_params": n, "gradients": 0}

    def state_bytes(self) -> dict[str, int]:
        return {"trainable_params": sum(p.numel() * p.element_size() for _, p in self.parameters), "gradients": 0}
