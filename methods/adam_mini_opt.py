"""`adam-mini` through the authors' package: Adam with one second-moment value per parameter block.

Adam-mini (Zhang et al. 2024) partitions the weights by the Hessian's block structure and keeps one
learning rate (one running mean of the squared gradient, averaged over the block) per block: per head for
queries and keys, per output neuron for values, attention output, MLP, embeddings and head, one for a
whole vector otherwise; biases keep Adam's full second moment. The first moment stays whole. State: m
(every entry) plus one value per block, about half of AdamW's.

The package groups weights by substrings of their names (`q_proj`, `embed`, `mlp`, ...) and needs the
model's width and head counts to cut queries and keys into heads. `prepare()` reads those from the model's
config and checks the grouping before training: a 2-D weight the package would not recognise (it would get
a single learning rate for the whole matrix, which the paper warns destabilises training) or a model
without recognised queries and keys is refused with one line naming the weight. 0-d second moments (one
per norm vector) are left out of the accounting like step counters, one number per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import AdamOptions, register, tensor_counts
from memft_bench.methods.package_check import require
from memft_bench.methods.state_inventory import InventoriedOptimizerMethod

RENAME = {"m": "exp_avg", "vmean": "exp_avg_sq", "v": "exp_avg_sq"}


@dataclass
class AdamMiniOptions(AdamOptions):
    lr: float = option(2e-5, "peak learning rate (full's default)", min=0.0)

    def validate(self, where: str) -> None:
        require("adam-mini", where)


@register("adam-mini")
class AdamMini(InventoriedOptimizerMethod):
    """Adam-mini (`adam_mini.Adam_mini`) on every weight, its blocks checked against the model's names."""

    RENAME = RENAME

    Options = AdamMiniOptions
    options: AdamMiniOptions

    def prepare(self, model: torch.nn.Module) -> None:
        super().prepare(model)
        self.blocks = self.check_grouping()

    def _shape(self) -> tuple[int, int, int]:
        config = getattr(self.model, "config", None)
        try:
            dim, heads = int(config.hidden_size), int(config.num_attention_heads)
        except (AttributeError, TypeError):
            raise ConfigError("methods.adam-mini: the model has no transformer config (hidden_size, "
                              "num_attention_heads) to cut queries and keys into heads") from None
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        return dim, heads, kv_heads

    def build_optimizer(self) -> torch.optim.Optimizer:
        from adam_mini import Adam_mini

        o = self.options
        dim, heads, kv_heads = self._shape()
        return Adam_mini(named_parameters=list(self.trainable_parameters()), lr=o.lr, betas=(o.beta1, o.beta2),
                         eps=o.eps, weight_decay=o.weight_decay, dim=dim, n_heads=heads, n_kv_heads=kv_heads,
                         verbose=False)

    def block_kind(self, name: str) -> str:
        """Which of the package's partitions a weight falls into, by the same name rules its step applies."""
        opt, name = self.optimizer, name.lower()
        if any(k in name for k in opt.adam_block_names):
            return "adam"
        if any(k in name for k in opt.wqk_names):
            return "head"
        if any(any(k in name for k in names) for names in
               (opt.embd_names, opt.output_names, opt.wv_names, opt.mlp_names, opt.attn_proj_names)):
            return "neuron"
        return "whole"

    def check_grouping(self) -> dict[str, str]:
        """name -> partition of every trainable weight; refuses names the package would mis-group."""
        blocks = {n: self.block_kind(n) for n, _ in self.trainable_parameters()}
        head_numel = self.optimizer.head_numel
        for n, p in self.trainable_parameters():
            if p.dim() >= 2 and blocks[n] == "whole":
                raise ConfigError(f"methods.adam-mini: the package does not recognise the weight {n!r} (no "
                                  "embedding/attention/MLP/head name) and would give it one learning rate")
            if blocks[n] == "head" and p.numel() % head_numel:
                raise ConfigError(f"methods.adam-mini: {n!r} ({tuple(p.shape)}) does not split into heads of "
                                  f"{head_numel} entries (hidden_size^2 / num_attention_heads)")
        if "head" not in blocks.values():
            raise ConfigError("methods.adam-mini: no query/key weight (q_proj, k_proj, wq, wk, query, key) found")
        return blocks

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """m for every entry; one second moment per head, per output neuron or per bias entry."""
        head_numel = self.optimizer.head_numel
        _, nbytes = tensor_counts(p for _, p in self.trainable_parameters())
        predicted = {"trainable_params": nbytes, "gradients": nbytes, "exp_avg": 0, "exp_avg_sq": 0}
        for n, p in self.trainable_parameters():
            size = p.element_size()
            predicted["exp_avg"] += p.numel() * size
            per_block = {"adam": p.numel(), "head": p.numel() // head_numel,
                         "neuron": p.shape[0] if p.dim() >= 2 else 0, "whole": 0}[self.blocks[n]]
            predicted["exp_avg_sq"] += per_block * size
        return predicted
