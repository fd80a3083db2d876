"""SubZero: zeroth-order fine-tuning in random subspaces (Yu et al. 2024, arXiv 2410.08989).

MeZO's SPSA step with a low-rank perturbation of every 2-D weight W (m x n):

    Z = c * U Z0 V^T,   c = sqrt(m n) / r,

where U (m x r) and V (n x r) are the Q factors of QR decompositions of Gaussian matrices, drawn every
`update_subspace_gap` steps and kept (lazy subspace update), and Z0 (r x r) is a full Gaussian matrix drawn
every step from the step's seed. c keeps eps and the learning rate on MeZO's scale (E||Z||_F^2 = m n, as
for a Gaussian z). Parameters that are not 2-D (norms, biases) get MeZO's plain Gaussian perturbation.
One scalar g = (L(theta + eps Z) - L(theta - eps Z)) / 2 eps serves every layer; Z is regenerated from the
seed for the update W <- W - lr g Z (plain SGD, no weight decay, as the authors' code). The forwards run
in eval mode (no dropout), with no backward pass and no `.grad`. This follows the authors' code
(zimingyy/SubZero, large_models/trainer.py; docs/methods.md summarises it). As for MeZO, the probes never
write the weights (see `methods.mezo`), so they are restored exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from memft_bench.harness.core.options import option
from memft_bench.methods.base import Batch, StepResult, register
from memft_bench.methods.mezo import Mezo, MezoOptions, parameter_seed


@dataclass
class SubzeroOptions(MezoOptions):
    lr: float = option(1e-6, "learning rate of the SPSA step", min=0.0)
    rank: int = option(8, "rank r of each weight's perturbation subspace", min=1)
    update_subspace_gap: int = option(2000, "T: steps between redraws of the subspace factors U, V", min=1)


@register("subzero")
class Subzero(Mezo):
    """SubZero: SPSA with low-rank perturbations U Z0 V^T in lazily refreshed random subspaces (Yu et al. 2024)."""

    Options = SubzeroOptions
    options: SubzeroOptions

    def prepare(self, model: torch.nn.Module) -> None:
        super().prepare(model)
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.steps_done = 0
        self.subspace_rng = random.Random(f"subzero-subspace:{self.seed}")

    def refresh_subspaces(self) -> None:
        """Draw U, V for every 2-D weight: Q factors of Gaussian matrices, rank clamped to the smaller side."""
        generator_seed = self.subspace_rng.randrange(2**31)
        device = self.parameters[0][1].device
        generator = torch.Generator(device=device).manual_seed(generator_seed)
        self.factors = {}
        for name, p in self.parameters:
            if p.dim() == 2:
                m, n = p.shape
                r = min(self.options.rank, m, n)
                u, _ = torch.linalg.qr(torch.randn(m, r, generator=generator, device=device))
                v, _ = torch.linalg.qr(torch.randn(n, r, generator=generator, device=device))
                self.factors[name] = (u, v)

    def z(self, index: int, name: str, p: torch.Tensor, seed: int) -> torch.Tensor:
        """c U Z0 V^T for a 2-D weight with a subspace (Z0 r x r drawn from the parameter's own seed), else
        MeZO's Gaussian z. Computed in float32 with autocast off: the probes draw z inside the forward (a
        module's pre-hook, under the precision policy's autocast) and the update draws it again outside, and
        both must be the same z, as SPSA assumes; under bf16 autocast the product would be rounded in one only."""
        if name not in self.factors:
            return super().z(index, name, p, seed)
        u, v = self.factors[name]
        r = u.shape[1]
        generator = torch.Generator(device=u.device).manual_seed(parameter_seed(seed, index))
        z0 = torch.randn(r, r, generator=generator, device=u.device, dtype=u.dtype)
        scale = math.sqrt(p.shape[0] * p.shape[1]) / r
        with torch.autocast(device_type=u.device.type, enabled=False):
            return (scale * (u @ z0 @ v.T)).to(p.dtype)

    def step(self, batch: Batch) -> StepResult:
        if self.steps_done % self.options.update_subspace_gap == 0:
            self.refresh_subspaces()
        self.steps_done += 1
        return super().step(batch)

    def state_elements(self) -> dict[str, int]:
        state = super().state_elements()
        state["subspace_factors"] = sum(u.numel() + v.numel() for u, v in self.factors.values())
        return state

    def release_training_state(self) -> None:
        super().release_training_state()
        self.factors = {}

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """U (m x r) and V (n x r) of every 2-D weight, float32 as `refresh_subspaces` draws them."""
        nbytes = super().state_bytes()
        nbytes["subspace_factors"] = 4 * sum(
            (p.shape[0] + p.shape[1]) * min(self.options.rank, *p.shape) for _, p in self.parameters if p.dim() == 2
        )
        return nbytes

    def state_bytes(self) -> dict[str, int]:
        nbytes = super().state_bytes()
        nbytes["subspace_factors"] = sum(
            u.numel() * u.element_size() + v.numel() * v.element_size() for u, v in self.factors.values()
        )
        return nbytes
