"""`badam` through the authors' package: block coordinate descent with Adam (Luo et al. 2024).

The model's decoder layers are the blocks (the package infers them from the `layers.<i>.` names, plus the
embeddings and the head when asked). Only one block trains at a time: `badam.BlockOptimizer` wraps a torch
AdamW, keeps float32 master copies of the active block's weights (the model itself stays in its storage
dtype), converts their gradients to float32, steps, copies the result back, and every `switch_every` (K)
steps moves to the next block (`descending` from the last layer by default, as in the paper), dropping the
Adam state and the master copies of the block it leaves.

Accounting: `trainable_params` are the active block's model weights; `master_weights` the package's float32
copies (under fp32 a second copy of the block, which BAdam warns about: it is designed for bf16 weights);
`gradients` the peak while the package converts each gradient to its float32 copy (the model's gradients of
the block, then float32 ones replacing them one by one); Adam's moments of the active block.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import AdamOptions, OptimizerMethod, adamw, register
from memft_bench.methods.package_check import require
from memft_bench.methods.state_inventory import state_inventory


@dataclass
class BadamOptions(AdamOptions):
    lr: float = option(1e-5, "peak learning rate (the paper's fine-tuning rate)", min=0.0)
    switch_every: int = option(100, "K: steps before the next block trains (the paper's default)", min=1)
    switch_mode: str = option("descending", "order of the blocks", choices=("descending", "ascending", "random"))
    include_embedding: bool = option(False, "also make the embeddings a block")
    include_lm_head: bool = option(False, "also make the head and every weight outside the layers a block")

    def validate(self, where: str) -> None:
        require("badam", where)


def conversion_peak(params: list[torch.Tensor]) -> int:
    """Bytes of gradients alive at once while the package replaces the block's gradients, in order, by
    float32 ones (`lp.grad.float()` is the same tensor when the weight is float32: nothing is added)."""
    remaining = sum(p.numel() * p.element_size() for p in params)
    peak, converted = remaining, 0
    for p in params:
        low = p.numel() * p.element_size()
        high = p.numel() * 4 if p.dtype != torch.float32 else 0
        peak = max(peak, converted + high + remaining)
        converted += high or low
        remaining -= low
    return peak


@register("badam")
class Badam(OptimizerMethod):
    """BAdam (`badam.BlockOptimizer` around AdamW): one block of layers trains at a time, switched every K steps."""

    Options = BadamOptions
    options: BadamOptions

    def build_optimizer(self) -> torch.optim.Optimizer:
        from badam import BlockOptimizer

        o = self.options
        named = list(self.model.named_parameters())
        base = adamw([p for _, p in named], o)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # its float32-weights warning: the precision policy decides that
            optimizer = BlockOptimizer(base_optimizer=base, named_parameters_list=named,
                                       switch_block_every=o.switch_every, switch_mode=o.switch_mode,
                                       include_embedding=o.include_embedding, include_lm_head=o.include_lm_head,
                                       verbose=0)
        if not optimizer.block_prefix_list:
            raise ConfigError("methods.badam: no block found (the package looks for `layers.<i>.` in weight names)")
        return optimizer

    def step(self, batch: Any) -> Any:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints every block switch
            return super().step(batch)

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """The package's float32 master copies: the model's own weights stay in the storage dtype."""
        return list(self.optimizer.param_idx2hp.values())

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.optimizer.param_idx2lp.values(), self.optimizer.param_idx2hp.values()))

    def _gradient_peak(self) -> tuple[int, int]:
        params = [lp for lp, _ in self._pairs()]
        return sum(p.numel() for p in params), conversion_peak(params)

    def _counts(self) -> dict[str, tuple[int, int]]:
        pairs = self._pairs()
        inventory = {
            "trainable_params": (sum(lp.numel() for lp, _ in pairs), sum(lp.numel() * lp.element_size()
                                                                          for lp, _ in pairs)),
            "gradients": self._gradient_peak(),
            "master_weights": (sum(hp.numel() for _, hp in pairs), sum(hp.numel() * hp.element_size()
                                                                        for _, hp in pairs)),
        }
        inventory.update(state_inventory(self.optimizer.base_optimizer.state.values()))
        return inventory

    def state_elements(self) -> dict[str, int]:
        return {k: v[0] for k, v in self._counts().items()}

    def state_bytes(self) -> dict[str, int]:
        return {k: v[1] for k, v in self._counts().items()}

    def release_training_state(self) -> None:
        super().release_training_state()
        self.optimizer.base_optimizer.state.clear()
        self.optimizer.param_idx2hp = {}
        self.optimizer.param_idx2lp = {}

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """The largest block's figures, as if its Adam state exists (exact when the blocks are equal, as a
        decoder's layers are, and training did not end on a switch, which drops the state)."""
        sizes = []
        for prefixes in self.optimizer.block_prefix_list:
            params = [p for n, p in self.model.named_parameters() if any(x in n for x in prefixes)]
            low = sum(p.numel() * p.element_size() for p in params)
            n = sum(p.numel() for p in params)
            grads = conversion_peak(params)
            sizes.append({"trainable_params": low, "gradients": grads, "master_weights": 4 * n,
                          "exp_avg": 4 * n, "exp_avg_sq": 4 * n})
        return max(sizes, key=lambda s: s["trainable_params"], default=None)
