"""`full`: AdamW on every weight, the baseline every ratio in a report is taken against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.options import option
from methods.base import AdamOptions, OptimizerMethod, adamw, register


@dataclass
class FullOptions(AdamOptions):
    lr: float = option(2e-5, "peak learning rate", min=0.0)


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
        return adamw([p for _, p in self.trainable_parameters()], self.options)
