"""`full`: AdamW on every weight, the baseline every ratio in a report is taken against.

`layerwise: true` fuses the update into backward (one AdamW per parameter, stepped from its
post-accumulate-grad hook, `methods/fused.py`): the same update, with one gradient held instead of all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memft_bench.harness.core.options import option
from memft_bench.methods.base import AdamOptions, adamw, register
from memft_bench.methods.fused import LayerwiseOptimizerMethod


@dataclass
class FullOptions(AdamOptions):
    lr: float = option(2e-5, "peak learning rate", min=0.0)
    layerwise: bool = option(
        False, "step each parameter's AdamW inside backward as soon as its gradient is complete (one gradient "
        "held instead of all; the same update, gradient accumulation included)")


@register("full")
class FullFineTuning(LayerwiseOptimizerMethod):
    """AdamW (torch.optim.AdamW) on all parameters; state 2 elements per weight."""

    Options = FullOptions
    options: FullOptions

    def prepare(self, model: torch.nn.Module) -> None:
        self.train_every_weight(model)
        self.finish_prepare()

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return adamw(params, self.options)
