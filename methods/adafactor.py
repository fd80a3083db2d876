"""`adafactor`: every weight trains with torch's Adafactor (Shazeer & Stern 2018), no first moment.

The second moment of an m x n weight is kept factored as a row and a column running mean (m + n values
instead of m n); vectors keep it whole. The update is the gradient over the root of that estimate, clipped
to RMS `d`, scaled by `lr` times the weight's own RMS (at least eps2), with the decay
beta2_t = 1 - t^beta2_decay. torch.optim.Adafactor is the well-kept implementation (transformers' has
the same algorithm with relative steps); its defaults are kept, except the learning rate, which the
suite sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memft_bench.harness.core.options import option
from memft_bench.methods.base import MethodOptions, OptimizerMethod, register


@dataclass
class AdafactorOptions(MethodOptions):
    lr: float = option(1e-2, "step size relative to each weight's RMS (torch's default)", min=0.0)
    beta2_decay: float = option(-0.8, "the second-moment decay is 1 - t^beta2_decay", max=0.0)
    eps1: float = option(0.0, "added to squared gradients (0: torch's default, the dtype's eps)", min=0.0)
    eps2: float = option(1e-3, "smallest weight RMS the step is scaled by", gt=0.0)
    d: float = option(1.0, "clipping threshold of the update's RMS", gt=0.0)


@register("adafactor")
class Adafactor(OptimizerMethod):
    """Adafactor (torch.optim.Adafactor) on every weight: factored second moment, no momentum."""

    Options = AdafactorOptions
    options: AdafactorOptions

    def build_optimizer(self) -> torch.optim.Optimizer:
        o = self.options
        return torch.optim.Adafactor([p for _, p in self.trainable_parameters()], lr=o.lr,
                                     beta2_decay=o.beta2_decay, eps=(o.eps1 or None, o.eps2), d=o.d,
                                     weight_decay=o.weight_decay)

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """Row and column means for matrices, a whole second moment for vectors, in each weight's dtype."""
        predicted = {"trainable_params": 0, "gradients": 0, "row_var": 0, "col_var": 0, "variance": 0}
        for _, p in self.trainable_parameters():
            size = p.element_size()
            predicted["trainable_params"] += p.numel() * size
            if p.dim() >= 2:
                predicted["row_var"] += p.numel() // p.shape[-1] * size
                predicted["col_var"] += p.numel() // p.shape[-2] * size
            else:
                predicted["variance"] += p.numel() * size
        predicted["gradients"] = predicted["trainable_params"]
        return {k: v for k, v in predicted.items() if v or k in ("trainable_params", "gradients")}
