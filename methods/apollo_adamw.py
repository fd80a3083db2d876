"""`apollo` and `apollo-mini` through apollo-torch: AdamW's per-element scaling from low-rank moments.

APOLLO (Zhu et al. 2024): for each projected 2-D weight, the gradient G is projected by a seeded Gaussian
matrix P (r x n, entries N(0, 1/r), redrawn every `update_proj_gap` steps) to R = G P^T; Adam's moments
live in that r-dimensional space, and the ratio of norms ||Adam(R)|| / ||R|| per channel (or for the
whole tensor) rescales the *raw* gradient: the update is `scale * s * G`, limited in growth by Fira's
norm-growth limiter (at most 1.01x the last update's norm). State per projected m x n weight (m >= n):
P (r x n) plus 2 m r moments; no SVD. APOLLO-Mini is rank 1 with one tensor-wise factor and scale 128.
Every other weight (embeddings, norms, head) trains with plain AdamW in the same `APOLLOAdamW`, as in the
authors' pre-training script. Defaults: the authors' scripts (APOLLO: channel-wise, scale 1; Mini: rank 1,
tensor-wise, scale 128; both random projection, T = 200, no weight decay) and `APOLLOAdamW`'s eps 1e-6.

apollo-torch is licensed CC BY-NC 4.0 (non-commercial); `bench list methods` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import AdamOptions, OptimizerMethod, register
from memft_bench.methods.package_check import require

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ApolloOptions(AdamOptions):
    lr: float = option(1e-5, "peak learning rate", min=0.0)
    rank: int = option(256, "r: dimension of the random projection (at most a projected weight's smaller side)",
                       min=1)
    scale_type: str = option("channel", "one scaling factor per channel or per tensor", choices=("channel", "tensor"))
    scale: float = option(1.0, "alpha: the update is multiplied by sqrt(scale)", gt=0.0)
    update_proj_gap: int = option(200, "T: steps between redraws of the projection", min=1)
    proj: str = option("random", "projection: seeded Gaussian (APOLLO) or SVD (GaLore's)", choices=("random", "svd"))
    proj_type: str = option("std", "which side to project", choices=("std", "reverse_std", "left", "right"))
    target_modules: list[str] = option(default_factory=lambda: list(DEFAULT_TARGETS),
                                       help="2-D weights (by module name) whose moments are projected")
    eps: float = option(1e-6, "Adam's epsilon (APOLLOAdamW's default)", gt=0.0)

    def validate(self, where: str) -> None:
        require("apollo", where)


@dataclass
class ApolloMiniOptions(ApolloOptions):
    rank: int = option(1, "r: dimension of the random projection (1 for APOLLO-Mini)", min=1)
    scale_type: str = option("tensor", "one scaling factor per channel or per tensor", choices=("channel", "tensor"))
    scale: float = option(128.0, "alpha: the update is multiplied by sqrt(scale) (128 for APOLLO-Mini)", gt=0.0)


def _moment_shape(shape: torch.Size, rank: int, proj_type: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(moments' shape, projection's shape) of an m x n weight, as apollo-torch's GradientProjector chooses."""
    m, n = shape
    right = {"std": m >= n, "reverse_std": m < n, "right": True, "left": False}[proj_type]
    return ((m, rank), (rank, n)) if right else ((rank, n), (m, rank))


@register("apollo")
class Apollo(OptimizerMethod):
    """APOLLO (apollo-torch `APOLLOAdamW`): projected weights in a param group carrying rank/proj/scale."""

    Options = ApolloOptions
    options: ApolloOptions

    def prepare(self, model: torch.nn.Module) -> None:
        self.train_every_weight(model)
        projected = self.projected_parameters()
        if not projected:
            targets = self.options.target_modules
            raise ConfigError(f"methods.{self.name}.target_modules: no 2-D weight matches {targets}")
        smallest = min(min(p.shape) for _, p in projected)
        if self.options.rank > smallest:
            raise ConfigError(f"methods.{self.name}.rank: {self.options.rank} exceeds the smallest side ({smallest}) "
                              f"of a projected weight; use rank <= {smallest}")
        self.optimizer = self.build_optimizer()

    def projected_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        targets = tuple(self.options.target_modules)
        return [(n, p) for n, p in self.trainable_parameters()
                if p.dim() == 2 and n.rsplit(".", 1)[0].split(".")[-1] in targets]

    def build_optimizer(self) -> torch.optim.Optimizer:
        from apollo_torch import APOLLOAdamW

        o = self.options
        projected = {id(p) for _, p in self.projected_parameters()}
        groups = [
            {"params": [p for _, p in self.trainable_parameters() if id(p) not in projected]},
            {"params": [p for _, p in self.trainable_parameters() if id(p) in projected], "rank": o.rank,
             "proj": o.proj, "scale_type": o.scale_type, "scale": o.scale, "update_proj_gap": o.update_proj_gap,
             "proj_type": o.proj_type},
        ]
        return APOLLOAdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """Moments in the projected space and the projection per projected weight; full moments elsewhere."""
        if self.options.proj != "random":
            return None
        projected = {id(p) for _, p in self.projected_parameters()}
        predicted = {"trainable_params": 0, "gradients": 0, "exp_avg": 0, "exp_avg_sq": 0, "projector": 0}
        for _, p in self.trainable_parameters():
            size = p.element_size()
            predicted["trainable_params"] += p.numel() * size
            if id(p) in projected:
                (a, b), (c, d) = _moment_shape(p.shape, self.options.rank, self.options.proj_type)
                predicted["exp_avg"] += a * b * size
                predicted["exp_avg_sq"] += a * b * size
                predicted["projector"] += c * d * size
            else:
                predicted["exp_avg"] += p.numel() * size
                predicted["exp_avg_sq"] += p.numel() * size
        predicted["gradients"] = predicted["trainable_params"]
        return predicted


@register("apollo-mini")
class ApolloMini(Apollo):
    """APOLLO-Mini (apollo-torch `APOLLOAdamW`): rank-1 projection, tensor-wise scaling, scale 128."""

    Options = ApolloMiniOptions
    options: ApolloMiniOptions
