"""8-bit and 4-bit AdamW: every weight trains, Adam's two moments are stored quantised.

- `adamw8bit`, `paged-adamw8bit`: bitsandbytes' `AdamW8bit` / `PagedAdamW8bit` (Dettmers et al. 2022,
  block-wise dynamic quantisation): each moment of a weight with at least `min_8bit_size` entries is kept
  as uint8 codes plus one float32 absmax per block of 256 and a 256-entry float32 quantisation map that
  all weights share; smaller tensors keep float32 moments. The paged variant allocates state of tensors
  with at least 1e5 entries in CUDA unified memory, which the driver pages to the host under pressure;
  bitsandbytes pages only on CUDA, so on a CPU it runs unpaged (the row's `method_info` says which).
- `ao-adamw8bit`, `ao-adamw4bit`: torchao's `AdamW8bit` / `AdamW4bit` (pure PyTorch, the step compiled
  with `torch.compile`): moments of tensors with at least 4096 entries divisible by the block size are
  tensor subclasses holding uint8 codes (two 4-bit codes per byte for AdamW4bit), one float32 scale per
  block (256 for 8-bit, 128 for 4-bit) and a float32 quantisation map per moment.

Accounting counts those real tensors (`methods.state_inventory`); the subclasses' own `element_size()`
would report 4 bytes per entry. Defaults are `full`'s: the same learning rate, betas, epsilon and no
weight decay (bitsandbytes' own default decay is 0.01), so the only difference to `full` is the
quantised state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import AdamOptions, register, tensor_counts
from memft_bench.methods.package_check import quiet_bitsandbytes_import, require
from memft_bench.methods.state_inventory import InventoriedOptimizerMethod, state_inventory

BNB_BLOCK = 256  # bitsandbytes' block size of blockwise 8-bit optimizer state (fixed in the package)
BNB_QMAP_ENTRIES = 256
BNB_PAGED_MIN = 100_000  # bitsandbytes pages state only for tensors at least this large (on CUDA)
AO_MIN_SIZE = 4096  # torchao quantises state of tensors with at least this many entries


@dataclass
class BnbOptions(AdamOptions):
    lr: float = option(2e-5, "peak learning rate (full's default)", min=0.0)
    min_8bit_size: int = option(4096, "weights with fewer entries keep float32 moments (bitsandbytes' default)",
                                min=1)

    def validate(self, where: str) -> None:
        require("adamw8bit", where)


@dataclass
class AoOptions(AdamOptions):
    lr: float = option(2e-5, "peak learning rate (full's default)", min=0.0)
    block_size: int = option(0, "entries per quantisation block (0: torchao's default, 256 for 8-bit, 128 for 4-bit)",
                             min=0)

    def validate(self, where: str) -> None:
        require("ao-adamw8bit", where)


def _quiet_bitsandbytes() -> Any:
    with quiet_bitsandbytes_import():
        import bitsandbytes
    return bitsandbytes


class _AllWeights(InventoriedOptimizerMethod):
    """Every weight trains, as in `full`; only the optimizer differs."""

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """What `state_bytes()` will report after training, from the shapes alone (works on `meta`)."""
        params = [p for _, p in self.trainable_parameters()]
        _, nbytes = tensor_counts(params)
        predicted = {"trainable_params": nbytes, "gradients": nbytes}
        for kind, size in self._predicted_moments(params).items():
            if size:
                predicted[kind] = size
        return predicted

    def _predicted_moments(self, params: list[torch.nn.Parameter]) -> dict[str, int]:
        raise NotImplementedError

    def predicted_workspace_bytes(self) -> int:
        """Each step dequantises one weight's moments at a time: float32 copies of the largest weight's two
        moments, plus its update."""
        largest = max((p.numel() for _, p in self.trainable_parameters()), default=0)
        return 3 * 4 * largest


@register("adamw8bit")
class AdamW8bit(_AllWeights):
    """AdamW with block-wise 8-bit moments (bitsandbytes `AdamW8bit`) on every weight."""

    Options = BnbOptions
    options: BnbOptions
    paged = False
    RENAME = {"state1": "exp_avg", "qmap1": "exp_avg", "absmax1": "exp_avg",
              "state2": "exp_avg_sq", "qmap2": "exp_avg_sq", "absmax2": "exp_avg_sq"}

    def _inventory(self) -> dict[str, tuple[int, int]]:
        """The state per weight, plus the two quantisation maps the optimizer creates when it is built (held
        even when no weight is large enough to use them); each storage once."""
        maps = self.optimizer.name2qmap
        shared = {"qmap1": maps["dynamic"], "qmap2": maps["udynamic"]} if "dynamic" in maps else {}
        return state_inventory([*self.optimizer.state.values(), shared], rename=self.RENAME)

    def build_optimizer(self) -> torch.optim.Optimizer:
        o = self.options
        bnb = _quiet_bitsandbytes()
        cls = bnb.optim.PagedAdamW8bit if self.paged else bnb.optim.AdamW8bit
        return cls([p for _, p in self.trainable_parameters()], lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                   weight_decay=o.weight_decay, min_8bit_size=o.min_8bit_size)

    def _predicted_moments(self, params: list[torch.nn.Parameter]) -> dict[str, int]:
        sizes = {"exp_avg": 0, "exp_avg_sq": 0, "exp_avg_paged": 0, "exp_avg_sq_paged": 0}
        for p in params:
            n = p.numel()
            suffix = "_paged" if self.paged and p.device.type == "cuda" and n >= BNB_PAGED_MIN else ""
            per_moment = 4 * n if n < self.options.min_8bit_size else n + 4 * math.ceil(n / BNB_BLOCK)
            sizes[f"exp_avg{suffix}"] += per_moment
            sizes[f"exp_avg_sq{suffix}"] += per_moment
        # one signed and one unsigned quantisation map, created with the optimizer and shared by every weight
        sizes["exp_avg"] += 4 * BNB_QMAP_ENTRIES
        sizes["exp_avg_sq"] += 4 * BNB_QMAP_ENTRIES
        return sizes

    def info(self) -> dict[str, Any]:
        if not self.paged:
            return {}
        paged = any(getattr(t, "is_paged", False) for s in self.optimizer.state.values() for t in s.values())
        note = ("state of tensors with >= 1e5 entries in CUDA unified memory" if paged else
                "ran unpaged: bitsandbytes pages only CUDA tensors with >= 1e5 entries")
        return {"paged": paged, "paging": note}


@register("paged-adamw8bit")
class PagedAdamW8bit(AdamW8bit):
    """Paged 8-bit AdamW (bitsandbytes `PagedAdamW8bit`): large state in CUDA unified memory; unpaged on a CPU."""

    paged = True


@register("ao-adamw8bit")
class AoAdamW8bit(_AllWeights):
    """AdamW with 8-bit block-quantised moments in pure PyTorch (torchao `AdamW8bit`) on every weight."""

    Options = AoOptions
    options: AoOptions
    bits = 8
    default_block = 256

    @property
    def block_size(self) -> int:
        return self.options.block_size or self.default_block

    def build_optimizer(self) -> torch.optim.Optimizer:
        import torchao.optim

        o = self.options
        cls = torchao.optim.AdamW8bit if self.bits == 8 else torchao.optim.AdamW4bit
        return cls([p for _, p in self.trainable_parameters()], lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                   weight_decay=o.weight_decay, block_size=self.block_size)

    def prepare(self, model: torch.nn.Module) -> None:
        super().prepare(model)
        if self.bits == 4 and self.block_size % 2:
            raise ConfigError(f"methods.{self.name}.block_size: 4-bit codes are packed in pairs; use an even size")

    def _predicted_moments(self, params: list[torch.nn.Parameter]) -> dict[str, int]:
        total = 0
        qmap_entries = 2**self.bits
        for p in params:
            n = p.numel()
            if n >= AO_MIN_SIZE and n % self.block_size == 0:
                codes = n if self.bits == 8 else n // 2
                total += codes + 4 * (n // self.block_size) + 4 * qmap_entries
            else:
                total += n * p.element_size()
        return {"exp_avg": total, "exp_avg_sq": total}


@register("ao-adamw4bit")
class AoAdamW4bit(AoAdamW8bit):
    """AdamW with 4-bit block-quantised moments in pure PyTorch (torchao `AdamW4bit`) on every weight."""

    bits = 4
    default_block = 128
