"""RSO: randomized subspace optimization (Chen et al. 2025, arXiv 2502.07222).

Each adapted Linear weight W0 (out x in) is trained in a random subspace: for `inner_steps` steps the
layer computes y = x W0^T + (x P) B^T with a random P (in x r) and a small trainable B (out x r) that
starts at zero, and Adam updates B only (approximately solving min_B f(W0 + B P^T) + ||B||^2 / (2 eta)).
Then B P^T is merged into W0, a new P is drawn, B returns to zero and Adam's moments are reset (a new
subspace is a new subproblem). Only B carries a gradient and Adam state (out * r each), and a custom
autograd function saves the projected activations x P (r per token) instead of x for the backward pass:

    dB = G^T (x P) = (dL/dW) P,     dx = G W0 + (G B) P^T.

Choices the harness makes where our notes could not check the paper (no public code was found): P has
orthonormal columns (QR of a Gaussian matrix, scaled by sqrt(in / r) so that x P keeps the scale of x),
drawn from a seed and kept (in * r per layer, counted as state); the proximal term is an option
(`proximal` = 1 / eta, off by default); Adam's moments are reset at every new subspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import (
    AdamOptions,
    Batch,
    Method,
    StepResult,
    compute_dtype,
    register,
    split_inventory,
    target_linears,
    tensor_counts,
)
from memft_bench.methods.lora import DEFAULT_TARGETS


@dataclass
class RsoOptions(AdamOptions):
    lr: float = option(1e-3, "Adam's learning rate for the subspace factors B", min=0.0)
    rank: int = option(8, "rank r of each random subspace", min=1)
    inner_steps: int = option(50, "Adam steps on B before merging into W0 and drawing a new subspace", min=1)
    proximal: float = option(0.0, "1 / eta: weight of ||B||^2 / 2 in each subproblem (0: off)", min=0.0)
    target_modules: list[str] = option(
        default_factory=lambda: list(DEFAULT_TARGETS), help="names of the Linear modules trained in subspaces"
    )


class _SubspaceLinearFunction(torch.autograd.Function):
    """y = x W0^T + (x P) B^T, saving x P (not x) for backward.

    Matmuls run in the forward's compute dtype (autocast's under bf16 precision), the backward too, and
    each gradient is returned in its input's dtype.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, projection: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        xc = x.to(dtype)
        xp = xc @ projection.to(dtype)
        ctx.save_for_backward(xp, weight, projection, b)
        ctx.dtype, ctx.x_dtype = dtype, x.dtype
        return xc @ weight.to(dtype).T + xp @ b.to(dtype).T

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        xp, weight, projection, b = ctx.saved_tensors
        dtype = ctx.dtype
        grad_out = grad_out.to(dtype)
        grad_x = grad_out @ weight.to(dtype) + (grad_out @ b.to(dtype)) @ projection.to(dtype).T
        grad_b = grad_out.reshape(-1, grad_out.shape[-1]).T @ xp.reshape(-1, xp.shape[-1])
        return grad_x.to(ctx.x_dtype), None, None, grad_b.to(b.dtype)


class SubspaceLinear(nn.Module):
    """A Linear layer whose frozen weight W0 is trained through B in the subspace spanned by P."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.rank = min(rank, base.in_features)
        self.b = nn.Parameter(torch.zeros(base.out_features, self.rank, device=base.weight.device,
                                          dtype=base.weight.dtype))
        # A plain tensor, not a buffer: it is method state (counted under `subspace`), not model weights.
        # float32 until the precision policy says otherwise (`Rso.apply_precision`).
        self.projection = torch.zeros(base.in_features, self.rank, device=base.weight.device, dtype=torch.float32)

    def draw(self, generator: torch.Generator) -> None:
        gaussian = torch.randn(self.base.in_features, self.rank, generator=generator, device=self.b.device)
        q, _ = torch.linalg.qr(gaussian)
        self.projection.copy_(q * math.sqrt(self.base.in_features / self.rank))

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + B P^T; B <- 0 (the function is unchanged)."""
        self.base.weight.add_((self.b.float() @ self.projection.float().T).to(self.base.weight.dtype))
        self.b.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _SubspaceLinearFunction.apply(x, self.base.weight, self.projection, self.b)
        return y + self.base.bias if self.base.bias is not None else y


@register("rso")
class Rso(Method):
    """RSO: Adam on small factors B in random subspaces W0 + B P^T, merged and redrawn (Chen et al. 2025)."""

    Options = RsoOptions
    options: RsoOptions

    def prepare(self, model: torch.nn.Module) -> None:
        model.requires_grad_(False)
        targets = tuple(self.options.target_modules)
        self.layers: list[SubspaceLinear] = []
        for _, parent, attribute, linear in target_linears(model, targets):
            wrapped = SubspaceLinear(linear, self.options.rank)
            setattr(parent, attribute, wrapped)
            self.layers.append(wrapped)
        if not self.layers:
            raise ConfigError(f"methods.rso.target_modules: no Linear module matches {list(targets)}")
        self.model = model
        device = self.layers[0].b.device
        # A meta model (the pre-flight) has no values to draw: a CPU generator stands in, unused.
        generator_device = "cpu" if device.type == "meta" else device
        self.generator = torch.Generator(device=generator_device).manual_seed(self.seed + 7919)
        self.inner = 0
        self.new_subspace()

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """B of every layer, and W0 too: each merge writes B P^T into it, so it is kept in the trained dtype
        (in bf16 most of a merged update would round away)."""
        return [p for layer in self.layers for p in (layer.b, layer.base.weight)]

    def apply_precision(self) -> None:
        """P is method state, like optimizer state: it follows the trained dtype."""
        super().apply_precision()
        for layer in self.layers:
            layer.projection = layer.projection.to(self.precision.trained_dtype)

    def new_subspace(self) -> None:
        for layer in self.layers:
            if layer.b.device.type != "meta":
                layer.draw(self.generator)
        o = self.options
        self.optimizer = torch.optim.Adam([layer.b for layer in self.layers], lr=o.lr, betas=(o.beta1, o.beta2),
                                          eps=o.eps)

    def step(self, batch: Batch) -> StepResult:
        self.apply_lr_scale(self.optimizer)
        loss = self.forward_backward(batch)
        if self.options.proximal:
            for layer in self.layers:
                layer.b.grad.add_(layer.b.detach(), alpha=self.options.proximal)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.inner += 1
        if self.inner % self.options.inner_steps == 0:
            for layer in self.layers:
                layer.merge()
            self.new_subspace()
        return StepResult(loss)

    def _inventory(self) -> dict[str, tuple[int, int]]:
        """Adam's moments and B's gradient are in B's dtype; P in its own."""
        b = tensor_counts(layer.b for layer in self.layers)
        return {"trainable_params": b, "gradients": b, "exp_avg": b, "exp_avg_sq": b,
                "subspace": tensor_counts(layer.projection for layer in self.layers)}

    def state_elements(self) -> dict[str, int]:
        return split_inventory(self._inventory(), 0)

    def state_bytes(self) -> dict[str, int]:
        return split_inventory(self._inventory(), 1)

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """Every tensor of the inventory exists from `prepare()` on, at its shape and dtype."""
        return self.state_bytes()
