"""Per-layer updates: the optimizer step fused into backward, so one gradient is held instead of all.

Full fine-tuning and GaLore normally run one optimizer step after the whole backward, so every
trainable weight's gradient is alive at once at the step's peak. With `layerwise: true` each
parameter gets its own optimizer, stepped from `Tensor.register_post_accumulate_grad_hook` as soon as
that parameter's gradient is complete, and the gradient is freed right away (the PyTorch tutorial
"How to save memory by fusing the optimizer step into the backward pass", and galore-torch's
layer-wise mode, which builds one `GaLoreAdamW` per parameter the same way).

Gradient accumulation: with several micro-batches per step the hooks stay idle until the last
micro-batch's backward, so the update is that of the accumulated gradient, as without fusing. Between
micro-batches every gradient is then held, as it is unfused; only `grad_accum == 1` saves gradient
memory, which `gradients_held` says in the accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from memft_bench.methods.base import Batch, OptimizerMethod, StepResult, optimizer_state_inventory


class LayerwiseOptimizers:
    """One optimizer per parameter, each stepped from its parameter's post-accumulate-grad hook.

    `armed` decides whether a hook steps: the method arms the hooks for the last micro-batch of a step
    only. Each hook applies the current learning-rate factor, steps and frees the gradient.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter],
                 make_optimizer: Callable[[torch.nn.Parameter], torch.optim.Optimizer]) -> None:
        self.optimizers: dict[torch.nn.Parameter, torch.optim.Optimizer] = {p: make_optimizer(p) for p in params}
        self.armed = False
        self.lr_scale = 1.0
        self.max_micro_batches = 1  # the most micro-batches a step has had: >1 holds every gradient
        self._handles = [p.register_post_accumulate_grad_hook(self.step_on_gradient) for p in self.optimizers]

    def step_on_gradient(self, p: torch.Tensor) -> None:
        if not self.armed or p.grad is None:
            return
        optimizer = self.optimizers[p]  # type: ignore[index]
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * self.lr_scale
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def run_step(self, micro_batches: int, forward_backward: Callable[[Callable[[int], None]], float]) -> float:
        """Run `forward_backward` with the hooks armed for the last of `micro_batches` backward passes only.

        `forward_backward(before_backward)` calls `before_backward(i)` before micro-batch i's backward.
        """
        self.max_micro_batches = max(self.max_micro_batches, micro_batches)

        def before_backward(i: int) -> None:
            self.armed = i == micro_batches - 1

        try:
            return forward_backward(before_backward)
        finally:
            self.armed = False

    def gradients_held(self) -> tuple[int, int]:
        """(elements, bytes) of gradient held at the step's peak.

        One step's gradients are freed one by one as their hooks run, so with one micro-batch per step the
        peak holds the largest single parameter's gradient (autograd's own buffer for a gradient becomes
        `.grad` and is freed by the hook; tests/methods/test_layerwise.py measures the `.grad` tensors alive during
        backward). With accumulation every gradient lives across micro-batches, as unfused.
        """
        params = list(self.optimizers)
        if not params:
            return 0, 0
        if self.max_micro_batches > 1:
            return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)
        largest = max(params, key=lambda p: p.numel() * p.element_size())
        return largest.numel(), largest.numel() * largest.element_size()

    def state_inventory(self) -> tuple[dict[str, int], dict[str, int]]:
        """(elements, bytes) by state key over every per-parameter optimizer."""
        elements: dict[str, int] = {}
        nbytes: dict[str, int] = {}
        for optimizer in self.optimizers.values():
            e, b = optimizer_state_inventory(optimizer)
            for key in e:
                elements[key] = elements.get(key, 0) + e[key]
                nbytes[key] = nbytes.get(key, 0) + b[key]
        return elements, nbytes

    def clear_state(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.state.clear()

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class LayerwiseOptimizerMethod(OptimizerMethod):
    """An `OptimizerMethod` with a `layerwise` option: one optimizer for all parameters stepped after
    backward (default), or one per parameter stepped inside backward (`LayerwiseOptimizers`).

    Subclasses give `make_optimizer(params)` for a list of parameters; `build_optimizer` and the
    per-parameter optimizers both come from it, so the update rule is the same in both modes.
    """

    layerwise: LayerwiseOptimizers | None = None

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The method's optimizer over `params` (every trainable one, or a single one when layer-wise)."""
        raise NotImplementedError

    def build_optimizer(self) -> torch.optim.Optimizer:
        return self.make_optimizer([p for _, p in self.trainable_parameters()])

    def finish_prepare(self) -> None:
        """Build the optimizer(s) once the trainable parameters are set (the end of `prepare()`)."""
        if getattr(self.options, "layerwise", False):
            params = [p for _, p in self.trainable_parameters()]
            self.layerwise = LayerwiseOptimizers(params, lambda p: self.make_optimizer([p]))
        else:
            self.optimizer = self.build_optimizer()

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.layerwise.optimizers.values()) if self.layerwise else [self.optimizer]

    def step(self, batch: Batch) -> StepResult:
        if self.layerwise is None:
            return super().step(batch)
        self.layerwise.lr_scale = self.lr_scale
        loss = self.layerwise.run_step(len(batch.micro_batches), lambda hook: self.forward_backward(batch, hook))
        return StepResult(loss)

    def _inventory(self) -> tuple[dict[str, int], dict[str, int]]:
        n_trainable, trainable_bytes = self._trainable_inventory()
        if self.layerwise is None:
            elements, nbytes = optimizer_state_inventory(self.optimizer)
            grads = (n_trainable, trainable_bytes)
        else:
            elements, nbytes = self.layerwise.state_inventory()
            grads = self.layerwise.gradients_held()
        return ({"trainable_params": n_trainable, "gradients": grads[0], **elements},
                {"trainable_params": trainable_bytes, "gradients": grads[1], **nbytes})

    def state_elements(self) -> dict[str, int]:
        return self._inventory()[0]

    def state_bytes(self) -> dict[str, int]:
        return self._inventory()[1]

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """`state_bytes()` after training, predicted on a model whose parameters are on `meta`: every
        optimizer steps once on meta gradients (no memory, no data), the state is read, then cleared.

        Layer-wise with `grad_accum` > 1 every gradient is held until the last micro-batch, as unfused.
        None off `meta` (a real step would
        move the weights) or when the optimizer cannot step on meta tensors.
        """
        params = [p for _, p in self.trainable_parameters()]
        if not params or any(p.device.type != "meta" for p in params):
            return None
        try:
            for p in params:
                p.grad = torch.zeros_like(p)
            for optimizer in self._optimizers():
                optimizer.step()
            predicted = self.state_bytes()
            if grad_accum > 1:  # the hooks act after the last micro-batch: every gradient is held until then
                predicted["gradients"] = sum(p.numel() * p.element_size() for p in params)
            return predicted
        except Exception:  # an optimizer without meta kernels: no prediction rather than a wrong one
            return None
        finally:
            for p in params:
                p.grad = None
            for optimizer in self._optimizers():
                optimizer.state.clear()

    def predicted_workspace_bytes(self) -> int:
        return 0

    def release_training_state(self) -> None:
        super().release_training_state()
        if self.layerwise is not None:
            self.layerwise.clear_state()
