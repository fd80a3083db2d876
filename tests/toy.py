"""Toy models and batches for checking update rules against independent references."""

from __future__ import annotations

import torch
from torch import nn

from memft_bench.methods.base import Batch


class Toy(nn.Module):
    """A layer named like a Llama projection (so peft/GaLore target it) plus a 1-D norm weight."""

    def __init__(self, n_in: int = 6, n_out: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.q_proj = nn.Linear(n_in, n_out, bias=False)
        self.norm = nn.Parameter(torch.ones(n_out) + 0.1 * torch.randn(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x) * self.norm


def quadratic_loss(model: nn.Module, mb: dict) -> tuple[torch.Tensor, int]:
    """Sum of squared errors: (loss_sum, n_targets) as the harness's loss functions return it."""
    pred = model(mb["x"])
    return 0.5 * ((pred - mb["y"]) ** 2).sum(), int(mb["labels"].numel())


def toy_batch(seed: int = 1, n: int = 5, n_in: int = 6, n_out: int = 8) -> Batch:
    """One micro-batch with a single 'target token', so the step's mean loss is the plain loss."""
    g = torch.Generator().manual_seed(seed)
    mb = {"x": torch.randn(n, n_in, generator=g), "y": torch.randn(n, n_out, generator=g),
          "labels": torch.zeros(1, 1, dtype=torch.long), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
    return Batch([mb])


def reference_grads(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """Autograd gradients of the batch loss on a copy of the model (the independent reference)."""
    import copy

    clone = copy.deepcopy(model)
    clone.requires_grad_(True)
    loss = sum(quadratic_loss(clone, mb)[0] for mb in batch.micro_batches)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in clone.named_parameters()}
