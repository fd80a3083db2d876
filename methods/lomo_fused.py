"""`lomo` and `adalomo` through lomo-optim: the update is fused into the backward pass (Lv et al. 2023).

LOMO is SGD whose update of each weight runs inside the backward pass, from a hook that fires as soon as
the next weight's gradient arrives: the gradient of the previous weight is applied and freed at once, so
at most about two weights' gradients exist at any moment instead of all of them, and there is no optimizer
state. AdaLomo adds Adafactor's factored second moment (row and column means of squared gradients) and
scales each weight's step by its own RMS, with a grouped update normalisation.

These methods own their backward pass: `step()` computes the loss and calls the package's
`fused_backward(loss, lr)`, which runs backward and updates the weights. They cannot accumulate gradients
over micro-batches (a gradient is gone as soon as it is applied): `budget.grad_accum` must be 1.
Gradients are counted as LOMO really holds them: a hook registered before the package's measures, at
every gradient's arrival, the gradients still held plus the arriving one; the row reports the peak.

lomo-optim's AdaLomo creates its state with a hard-coded `.cuda()`: it runs on a CUDA GPU only and is
refused on a CPU with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import Batch, Method, MethodOptions, StepResult, register, tensor_counts
from memft_bench.methods.package_check import require


@dataclass
class LomoOptions(MethodOptions):
    lr: float = option(1e-3, "peak learning rate of the fused SGD step", min=0.0)
    clip_grad_norm: float = option(0.0, "clip the global gradient norm to this (0: off; on costs a second "
                                        "backward pass, as in the package)", min=0.0)
    clip_grad_value: float = option(0.0, "clamp each gradient entry to +-this (0: off)", min=0.0)

    def validate(self, where: str) -> None:
        require("lomo", where)


@dataclass
class AdaLomoOptions(LomoOptions):
    lr: float = option(1e-3, "peak learning rate, relative to each weight's RMS", min=0.0)
    loss_scale: float = option(1024.0, "constant loss scale of the package (its default 2^10)", gt=0.0)
    decay_rate: float = option(-0.8, "second-moment decay 1 - t^decay_rate", max=0.0)
    clip_threshold: float = option(1.0, "clipping threshold of the update's RMS", gt=0.0)


@register("lomo")
class Lomo(Method):
    """LOMO (lomo-optim `Lomo`): SGD fused into the backward pass, no gradients kept, no optimizer state."""

    Options = LomoOptions
    options: LomoOptions

    def prepare(self, model: torch.nn.Module) -> None:
        self.train_every_weight(model)
        self.grad_peak = (0, 0)
        self._step_peak = (0, 0)
        self._hooks = [p.register_hook(self._measure) for p in model.parameters()]  # before the package's
        if next(model.parameters()).device.type == "meta":  # the pre-flight: shapes only, no package state
            self.optimizer = None
            return
        self.optimizer = self.build_optimizer()

    def build_optimizer(self) -> Any:
        from lomo_optim import Lomo as PackageLomo

        o = self.options
        return PackageLomo(self.model, lr=o.lr, clip_grad_norm=o.clip_grad_norm or None,
                           clip_grad_value=o.clip_grad_value or None, weight_decay=o.weight_decay)

    def _measure(self, grad: torch.Tensor) -> torch.Tensor:
        held = [p.grad for p in self.model.parameters() if p.grad is not None]
        elements = grad.numel() + sum(g.numel() for g in held)
        nbytes = grad.numel() * grad.element_size() + sum(g.numel() * g.element_size() for g in held)
        if nbytes > self._step_peak[1]:
            self._step_peak = (elements, nbytes)
        return grad

    def step(self, batch: Batch) -> StepResult:
        if len(batch.micro_batches) != 1:
            raise ConfigError(f"methods.{self.name}: the update is fused into the backward pass, so gradients "
                              "cannot be accumulated over micro-batches; set budget.grad_accum: 1")
        total = max(batch.target_tokens, 1)
        loss_sum, _ = self.loss_fn(self.model, batch.micro_batches[0])
        loss = loss_sum / total
        if self.options.clip_grad_norm:
            self.optimizer.grad_norm(loss)
        self._step_peak = (0, 0)
        self.optimizer.fused_backward(loss, self.options.lr * self.lr_scale)
        if self._step_peak[1] > self.grad_peak[1]:
            self.grad_peak = self._step_peak
        return StepResult(float(loss_sum.detach()) / total)

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        assert self.model is not None
        return list(self.model.parameters())

    def _state(self) -> dict[str, tuple[int, int]]:
        return {}

    def state_elements(self) -> dict[str, int]:
        n, _ = tensor_counts(self.model.parameters())
        return {"trainable_params": n, "gradients": self.grad_peak[0], **{k: v[0] for k, v in self._state().items()}}

    def state_bytes(self) -> dict[str, int]:
        _, nbytes = tensor_counts(self.model.parameters())
        return {"trainable_params": nbytes, "gradients": self.grad_peak[1],
                **{k: v[1] for k, v in self._state().items()}}

    def release_training_state(self) -> None:
        super().release_training_state()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """Gradients: an upper bound, the two largest weights' gradients (one still held, one arriving; which
        two meet depends on the backward order, which shapes alone do not give); state: none for LOMO."""
        sizes = sorted((p.numel() * p.element_size() for p in self.model.parameters()), reverse=True)
        return {"trainable_params": sum(sizes), "gradients": sum(sizes[:2]),
                **{k: v[1] for k, v in self._predicted_state().items()}}

    def _predicted_state(self) -> dict[str, tuple[int, int]]:
        return {}


@register("adalomo")
class AdaLomo(Lomo):
    """AdaLomo (lomo-optim `AdaLomo`): LOMO with factored adaptive rates; CUDA only (the package calls .cuda())."""

    Options = AdaLomoOptions
    options: AdaLomoOptions

    def prepare(self, model: torch.nn.Module) -> None:
        device = next(model.parameters()).device
        if device.type not in ("cuda", "meta"):
            raise ConfigError("methods.adalomo: lomo-optim's AdaLomo creates its state with .cuda() and runs on a "
                              "CUDA GPU only; on a CPU use lomo or adafactor")
        super().prepare(model)

    def build_optimizer(self) -> Any:
        from lomo_optim import AdaLomo as PackageAdaLomo

        o = self.options
        return PackageAdaLomo(self.model, lr=o.lr, loss_scale=o.loss_scale, clip_threshold=o.clip_threshold,
                              decay_rate=o.decay_rate, clip_grad_norm=o.clip_grad_norm or None,
                              clip_grad_value=o.clip_grad_value or None, weight_decay=o.weight_decay)

    def _state(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for kind in ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"):
            tensors = list(getattr(self.optimizer, kind, {}).values())
            if tensors:
                out[kind] = tensor_counts(tensors)
        return out

    def _predicted_state(self) -> dict[str, tuple[int, int]]:
        rows = sum(p.shape[0] for p in self.model.parameters() if p.dim() > 1)
        cols = sum(p.shape[1] for p in self.model.parameters() if p.dim() > 1)
        vecs = sum(p.shape[0] for p in self.model.parameters() if p.dim() == 1)
        out = {"exp_avg_sq": (vecs, 4 * vecs), "exp_avg_sq_row": (rows, 4 * rows), "exp_avg_sq_col": (cols, 4 * cols)}
        return {k: v for k, v in out.items() if v[0]}

    def release_training_state(self) -> None:
        super().release_training_state()
        for kind in ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"):
            getattr(self.optimizer, kind, {}).clear()
