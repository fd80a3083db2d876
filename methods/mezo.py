"""`mezo`: zeroth-order SPSA with the seed trick (Malladi et al. 2023, "Fine-Tuning Language Models
with Just Forward Passes").

Per step, with a fresh seed s and z ~ N(0, I) drawn from s parameter by parameter:
    L+ = L(theta + eps z);  L- = L(theta - eps z)
    g = (L+ - L-) / (2 eps)
    regenerate z from s;  theta -= lr (g z + wd theta)   (no weight decay on biases and norms)
z is never stored, no backward pass runs and no `.grad` is ever allocated: memory is inference
memory plus, transiently, one z and one perturbed copy of the current module's own weights. The
forward passes run in eval mode (no dropout), on the whole batch (MeZO uses no gradient accumulation:
micro-batches are only a way to bound activation memory). Defaults: the paper's eps 1e-3 and lr 1e-6, constant schedule.

One departure from the authors' code, for exactness: they perturb the weights in place (+eps z, -2 eps z,
+eps z), which in floating point does not return to theta (in bf16 the drift exceeds the update itself).
Here the weights are never written by the probes: each module's own parameters are swapped for
theta + eps z just for its forward call (forward hooks) and swapped back after it, so theta is restored
bit for bit, in every precision, and only the update changes it. z of each parameter is drawn from its
own generator, seeded from (s, the parameter's index), so it is the same whichever order, and however
often (tied embeddings), the forward pass reaches the parameter.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from memft_bench.harness.core.options import option
from memft_bench.methods.base import Batch, Method, MethodOptions, StepResult, register


@dataclass
class MezoOptions(MethodOptions):
    lr: float = option(1e-6, "learning rate of the SPSA step", min=0.0)
    eps: float = option(1e-3, "perturbation scale epsilon", gt=0.0)


def parameter_seed(step_seed: int, index: int) -> int:
    """The seed of parameter `index`'s z at a step: distinct per (step, parameter), below 2**63."""
    return (step_seed * 1_000_003 + index * 7_919 + 1) % (2**63 - 1)


def _decays(name: str) -> bool:
    """MeZO's rule: weight decay on every parameter except biases and layer norms."""
    lowered = name.lower()
    return "bias" not in lowered and "norm" not in lowered


@register("mezo")
class Mezo(Method):
    """MeZO: SPSA gradient estimate from two forward passes, the seed trick instead of storing z."""

    Options = MezoOptions
    options: MezoOptions
    forward_passes_per_step = 2
    uses_backward = False

    def prepare(self, model: torch.nn.Module) -> None:
        model.requires_grad_(False)  # no autograd graph, no .grad: the forward passes are inference
        self.model = model
        self.parameters = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        index = {id(p): i for i, (_, p) in enumerate(self.parameters)}
        # Every module that owns parameters directly, with the index of each: where the hooks go.
        self.owners = []
        for module in model.modules():
            own = [index[id(p)] for p in module.parameters(recurse=False) if id(p) in index]
            if own:
                self.owners.append((module, own))
        self.step_seeds = random.Random(self.seed)
        self.last_projected_grad = 0.0
        self._swapped: set[int] = set()  # indices of the parameters the probes have perturbed
        self._probed = False

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.parameters]

    def z(self, index: int, name: str, p: torch.Tensor, seed: int) -> torch.Tensor:
        """The perturbation direction of parameter `index` at step seed `seed`: N(0, I) in p's dtype."""
        generator = torch.Generator(device=p.device).manual_seed(parameter_seed(seed, index))
        return torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)

    @contextlib.contextmanager
    def perturbed(self, seed: int, scale: float) -> Iterator[None]:
        """Forward passes inside see theta + scale * z; theta itself is never written.

        Each module that owns parameters swaps them for theta + scale * z in a forward pre-hook and back in
        its forward hook; a parameter reached only by some other module's forward (not through its owner)
        would not be perturbed, so the ones never swapped are recorded (`info()`: `unperturbed`).
        """
        parameters = self.parameters

        def swap_in(module: torch.nn.Module, own: list[int]) -> None:
            if hasattr(module, "_mezo_saved"):
                raise RuntimeError(f"{type(module).__name__} was entered again before its forward ended; "
                                   "MeZO's perturbation hooks do not support re-entrant modules")
            saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
            module._mezo_saved = saved  # filled as it goes, so a failure midway is undone in `finally`
            for i in own:
                p = parameters[i][1]
                perturbed = torch.add(p.data, self.z(i, parameters[i][0], p.data, seed), alpha=scale)
                saved.append((p, p.data))
                p.data = perturbed
                self._swapped.add(i)

        def swap_out(module: torch.nn.Module, _args: Any, _output: Any) -> None:
            for p, original in module._mezo_saved:
                p.data = original
            del module._mezo_saved

        handles = []
        try:
            for module, own in self.owners:
                handles.append(module.register_forward_pre_hook(lambda m, _a, own=own: swap_in(m, own)))
                handles.append(module.register_forward_hook(swap_out))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module, _ in self.owners:  # a forward that raised midway: put theta back all the same
                for p, original in getattr(module, "_mezo_saved", []):
                    p.data = original
                if hasattr(module, "_mezo_saved"):
                    del module._mezo_saved

    def info(self) -> dict[str, Any]:
        """Parameters the probes never perturbed (none for Llama-style models: every weight belongs to a
        module whose forward uses it). Their update is noise; a model that needs this should say so."""
        if not getattr(self, "_probed", False):
            return {}
        missed = [name for i, (name, _) in enumerate(self.parameters) if i not in self._swapped]
        return {"unperturbed": ", ".join(missed[:10]) + (f" (+{len(missed) - 10} more)" if len(missed) > 10 else "")
                } if missed else {}

    @torch.no_grad()
    def batch_loss(self, batch: Batch) -> float:
        total = max(batch.target_tokens, 1)
        return sum(float(self.loss_fn(self.model, mb)[0]) for mb in batch.micro_batches) / total

    @torch.no_grad()
    def update(self, seed: int, projected_grad: float) -> None:
        """theta -= lr (g z + wd theta), z regenerated from the step seed; nothing is written when lr g and
        the decay are both zero (so lr 0 leaves theta bit-identical)."""
        lr = self.options.lr * self.lr_scale
        wd = self.options.weight_decay
        if lr == 0 or (projected_grad == 0 and wd == 0):
            return
        for i, (name, p) in enumerate(self.parameters):
            z = self.z(i, name, p, seed)
            if wd > 0 and _decays(name):
                p.sub_(lr * (projected_grad * z + wd * p))
            else:
                p.sub_(z, alpha=lr * projected_grad)

    @torch.no_grad()
    def step(self, batch: Batch) -> StepResult:
        assert self.model is not None
        self.model.eval()
        eps = self.options.eps
        seed = self.step_seeds.randrange(2**31)
        with self.perturbed(seed, +eps):
            loss_plus = self.batch_loss(batch)
        self._probed = True
        with self.perturbed(seed, -eps):
            loss_minus = self.batch_loss(batch)
        projected_grad = (loss_plus - loss_minus) / (2 * eps)
        self.last_projected_grad = projected_grad
        self.update(seed, projected_grad)
        # (L+ + L-) / 2 estimates L(theta) to second order in eps: the loss curve's figure.
        return StepResult((loss_plus + loss_minus) / 2)

    def state_elements(self) -> dict[str, int]:
        n = sum(p.numel() for _, p in self.parameters)
        return {"trainable_params": n, "gradients": 0}

    def state_bytes(self) -> dict[str, int]:
        return {"trainable_params": sum(p.numel() * p.element_size() for _, p in self.parameters), "gradients": 0}

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """MeZO keeps no state: the count is of the parameters' shapes and dtypes, which the meta model has."""
        return self.state_bytes()

    def predicted_workspace_bytes(self) -> int:
        """A probe holds one module's perturbed parameters and their z at a time: twice the largest parameter."""
        return 2 * max((p.numel() * p.element_size() for _, p in self.parameters), default=0)
