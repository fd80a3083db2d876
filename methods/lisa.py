"""`lisa`: Layerwise Importance Sampled AdamW (Pan et al. 2024), written here (no package on PyPI).

Every `interval` (K) steps, `gamma` of the model's decoder layers are drawn uniformly at random without
replacement and unfrozen; every other layer is frozen. The embeddings, the head and every other weight
outside the decoder layers (the final norm) always train, as in the paper's Algorithm 1. One torch AdamW
holds the state; when a layer is frozen again its parameters' Adam state is dropped, so the state held is
always that of the active layers only (other implementations keep the state of every layer ever drawn,
which grows to full AdamW's). A layer drawn again at the next switch keeps its state. The draws come from a
generator seeded with the trial's seed, so a trial is reproducible.

Precision: every weight may train at some point, so all are `trained_parameters()` (float32 under
bf16-mixed), as in the paper's training, where the whole model sits in the training dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import AdamOptions, Batch, OptimizerMethod, StepResult, adamw, register


@dataclass
class LisaOptions(AdamOptions):
    lr: float = option(2e-5, "peak learning rate (full's default)", min=0.0)
    gamma: int = option(2, "number of decoder layers unfrozen at a time", min=1)
    interval: int = option(20, "K: steps between redraws of the active layers", min=1)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's stack of decoder layers: its longest `nn.ModuleList` (Llama's `model.layers`)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        return []
    return list(max(lists, key=len))


@register("lisa")
class Lisa(OptimizerMethod):
    """LISA: AdamW on gamma random decoder layers (redrawn every K steps) plus embeddings and head."""

    Options = LisaOptions
    options: LisaOptions

    def prepare(self, model: torch.nn.Module) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        if self.options.gamma > len(self.layers):
            raise ConfigError(f"methods.lisa.gamma: {self.options.gamma} exceeds the model's {len(self.layers)} "
                              f"decoder layers; use gamma <= {len(self.layers)}")
        in_layers = {id(p) for layer in self.layers for p in layer.parameters()}
        self.always = [p for p in model.parameters() if id(p) not in in_layers]
        self.generator = torch.Generator().manual_seed(self.seed)
        self.active: list[int] = []
        self.steps_done = 0
        self.history: list[list[int]] = []  # the active layers of each draw, for tests and `info()`
        self.optimizer = self.build_optimizer()
        self.switch()

    def build_optimizer(self) -> torch.optim.Optimizer:
        return adamw(list(self.model.parameters()), self.options)

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        assert self.model is not None
        return list(self.model.parameters())

    def switch(self) -> None:
        """Draw the next active layers, freeze the rest, and drop the state of layers frozen again."""
        draw = torch.randperm(len(self.layers), generator=self.generator)[: self.options.gamma]
        active = sorted(int(i) for i in draw)
        for i, layer in enumerate(self.layers):
            train = i in active
            for p in layer.parameters():
                p.requires_grad_(train)
                if not train:
                    p.grad = None
                    self.optimizer.state.pop(p, None)
        for p in self.always:
            p.requires_grad_(True)
        self.active = active
        self.history.append(active)

    def step(self, batch: Batch) -> StepResult:
        if self.steps_done and self.steps_done % self.options.interval == 0:
            self.switch()
        self.steps_done += 1
        return super().step(batch)

    def info(self) -> dict:
        return {"draws": len(self.history)}

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """gamma layers (all the same size in a decoder) plus the always-trained weights, AdamW's two moments."""
        sizes = sorted((sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in self.layers),
                       reverse=True)
        trained = sum(sizes[: self.options.gamma]) + sum(p.numel() * p.element_size() for p in self.always)
        return {"trainable_params": trained, "gradients": trained, "exp_avg": trained, "exp_avg_sq": trained}
