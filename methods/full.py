"""`full`: AdamW on every weight, the baseline every ratio in a report is taken against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.options import option
from methods.base import MethodOptions, OptimizerMethod, register


@dataclass
class FullOptions(MethodOptions):
    lr: float = option(2e-5, "peak learning rate", gt=0.0)
    beta1: float = option(0.9, "Adam's first-moment decay", min=0.0, max=0.999999)
    beta2: float = option(0.999, "Adam's second-moment decay", min=0.0, max=0.999999)
    eps: float = option(1e-8, "Adam's epsilon", gt=0.0)


@register("full")
class FullFineTuning(OptimizerMethod):
    """AdamW (torch.optim.AdamW) on all parameters; state 2 elements per weight."""

    Options = FullOptions
    options: FullOptions

    def prepare(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        self.model = model
        self.optimizer = self.build_optimizer()

    def build_optimizer(self) -> torch.optim.Optimizer:
        o = self.options
        return torch.optim.AdamW(
            [p for _, p in self.trainable_parameters()],
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
