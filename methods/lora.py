"""`lora` and `dora` through peft: frozen base weights, trainable low-rank adapters.

LoRA (Hu et al. 2021) adds B (m x r) A (r x n) beside each targeted weight W (m x n), scaled by
alpha / r; DoRA (Liu et al. 2024) also learns a magnitude vector per output feature and renormalises
the direction W + (alpha / r) B A column-wise. Defaults are the LoRA/DoRA papers' commonsense setting
for LLaMA-7B (r=32, alpha=64, dropout 0.05, q/k/v/up/down; lr 1e-4 for LoRA, 2e-4 for DoRA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import AdamOptions, OptimizerMethod, adamw, register

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


@dataclass
class LoraOptions(AdamOptions):
    lr: float = option(1e-4, "peak learning rate", min=0.0)
    r: int = option(32, "adapter rank", min=1)
    alpha: float = option(64.0, "LoRA scaling numerator: the update is scaled by alpha / r", gt=0.0)
    dropout: float = option(0.05, "dropout on the adapter's input", min=0.0, max=0.999)
    target_modules: list[str] = option(
        default_factory=lambda: list(DEFAULT_TARGETS), help="names of the Linear modules to adapt"
    )

    def validate(self, where: str) -> None:
        if not self.target_modules:
            raise ConfigError(f"{where}.target_modules: name at least one module, e.g. q_proj,v_proj")


@dataclass
class DoraOptions(LoraOptions):
    lr: float = option(2e-4, "peak learning rate", min=0.0)


@register("lora")
class Lora(OptimizerMethod):
    """LoRA adapters through peft (`LoraConfig`, `get_peft_model`); only adapter weights train."""

    Options = LoraOptions
    options: LoraOptions
    use_dora = False

    def prepare(self, model: torch.nn.Module) -> None:
        from peft import LoraConfig, get_peft_model

        o = self.options
        config = LoraConfig(
            r=o.r,
            lora_alpha=o.alpha,
            lora_dropout=o.dropout,
            target_modules=list(o.target_modules),
            bias="none",
            use_dora=self.use_dora,
        )
        try:
            self.model = get_peft_model(model, config)
        except ValueError as exc:  # peft's message for target modules that match nothing
            raise ConfigError(f"methods.{self.name}.target_modules: {exc}".splitlines()[0]) from None
        self.optimizer = self.build_optimizer()

    def build_optimizer(self) -> torch.optim.Optimizer:
        return adamw([p for _, p in self.trainable_parameters()], self.options)


@register("dora")
class Dora(Lora):
    """DoRA (weight-decomposed LoRA) through peft's `use_dora=True`."""

    Options = DoraOptions
    use_dora = True
