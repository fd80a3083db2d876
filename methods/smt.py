"""SMT: sparse matrix tuning (He et al. 2024, arXiv 2405.15525; authors' code HectorHHZ/Sparse_Matrix_Tuning).

Three phases, as the authors' code runs them (docs/methods.md has our reading of it):

1. Warm-up: `warmup_steps` steps of real full fine-tuning (AdamW on every weight), summing the gradients of
   the target projections in fp32 (signed, and their absolute values).
2. Selection: split each summed gradient into `block_size` x `block_size` blocks and score each block:
   `score: signed_mean` is |mean(block)| of the summed signed gradient (the authors' code), `abs_mean` the
   mean of the summed absolute gradient (the paper's wording). Keep the global top blocks under the budget
   (`budget_ratio` x the number of blocks of the target weights, or `num_blocks`); some matrices get none.
3. Training: freeze everything; every selected block is one trainable parameter; a custom autograd function
   computes the dense output and, in backward, the dense input gradient plus only the selected blocks'
   gradients (output-gradient rows x input column slice, the slice copied so it does not keep the whole
   input alive). Adam (betas 0.9, 0.95 by default) keeps state for those blocks alone.

The warm-up steps count towards the trial's step budget (the same budget as every method) and use full
fine-tuning memory; the peak meters show it, and `state_elements()` reports the sparse phase's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import (
    AdamOptions,
    Batch,
    Method,
    StepResult,
    adamw,
    compute_dtype,
    register,
    split_inventory,
    target_linears,
    tensor_counts,
)


@dataclass
class SmtOptions(AdamOptions):
    lr: float = option(1e-4, "learning rate of the selected blocks (and of the warm-up)", min=0.0)
    block_size: int = option(256, "side of the square sub-matrix blocks", min=1)
    budget_ratio: float = option(0.0084, "share of all target blocks to train (authors' attention default)",
                                 gt=0.0, max=1.0)
    num_blocks: int = option(0, "train exactly this many blocks instead of budget_ratio (0: use the ratio)", min=0)
    warmup_steps: int = option(100, "full fine-tuning steps that accumulate gradients for the selection", min=1)
    score: str = option("signed_mean", "block score: |mean of summed signed gradient| or mean |gradient|",
                        choices=("signed_mean", "abs_mean"))
    target_modules: list[str] = option(default_factory=lambda: ["q_proj", "k_proj", "v_proj"],
                                       help="2-D weights scored for blocks (add up_proj, gate_proj, down_proj for MLP)")
    beta2: float = option(0.95, "Adam's second-moment decay (authors' default 0.95)", min=0.0, max=0.999999)


class _BlockSparseLinearFunction(torch.autograd.Function):
    """y = x W^T with W dense; backward computes dx densely and dW only on the selected blocks.

    The block coordinates come as Python lists (fixed when the layer is built), so neither pass reads a
    device tensor back to the host (no synchronisation per layer per step). Matmuls run in the forward's
    compute dtype (autocast's under bf16 precision), and each gradient is returned in its input's dtype.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, blocks: torch.Tensor, rows: list[int],
                cols: list[int], block_size: int) -> torch.Tensor:
        dtype = compute_dtype(x)
        flat = x.reshape(-1, x.shape[-1]).to(dtype)
        # Save only the input columns the selected blocks need, copied (a view would keep x alive).
        col_ids = sorted(set(cols))
        slices = torch.stack([flat[:, c * block_size:(c + 1) * block_size].clone() for c in col_ids])
        ctx.save_for_backward(weight, slices)
        ctx.col_index = {c: i for i, c in enumerate(col_ids)}
        ctx.rows, ctx.cols, ctx.block_size, ctx.dtype = rows, cols, block_size, dtype
        ctx.x_dtype, ctx.blocks_dtype = x.dtype, blocks.dtype
        return x.to(dtype) @ weight.to(dtype).T

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        weight, slices = ctx.saved_tensors
        bs = ctx.block_size
        grad_out = grad_out.to(ctx.dtype)
        grad_x = (grad_out @ weight.to(ctx.dtype)).to(ctx.x_dtype)
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grads = [g[:, r * bs:(r + 1) * bs].T @ slices[ctx.col_index[c]] for r, c in zip(ctx.rows, ctx.cols)]
        return grad_x, None, torch.stack(grads).to(ctx.blocks_dtype), None, None, None


class BlockSparseLinear(nn.Module):
    """A frozen Linear whose selected (row, col) blocks are one trainable parameter, written back into W."""

    def __init__(self, base: nn.Linear, blocks: list[tuple[int, int]], block_size: int) -> None:
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        self.block_size = block_size
        self.rows = [r for r, _ in blocks]
        self.cols = [c for _, c in blocks]
        bs = block_size
        self.blocks = nn.Parameter(torch.stack([base.weight.detach()[r * bs:(r + 1) * bs, c * bs:(c + 1) * bs].clone()
                                                for r, c in blocks]))

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained blocks into W (in W's dtype), which the forward reads."""
        bs = self.block_size
        for i, (r, c) in enumerate(zip(self.rows, self.cols)):
            self.base.weight[r * bs:(r + 1) * bs, c * bs:(c + 1) * bs] = self.blocks[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _BlockSparseLinearFunction.apply(x, self.base.weight, self.blocks, self.rows, self.cols, self.block_size)
        return y + self.base.bias if self.base.bias is not None else y


@register("smt")
class Smt(Method):
    """SMT: full fine-tuning warm-up, then Adam on the top-scored 256x256 weight blocks only (He et al. 2024)."""

    Options = SmtOptions
    options: SmtOptions

    def prepare(self, model: torch.nn.Module) -> None:
        o = self.options
        self.targets: dict[str, tuple[nn.Module, str, nn.Linear]] = {}
        for name, parent, attribute, linear in target_linears(model, o.target_modules):
            m, n = linear.weight.shape
            if m % o.block_size or n % o.block_size:
                raise ConfigError(
                    f"methods.smt.block_size: {o.block_size} must divide both sides of {name} ({m} x {n})"
                )
            self.targets[name] = (parent, attribute, linear)
        if not self.targets:
            raise ConfigError(f"methods.smt.target_modules: no Linear module matches {o.target_modules}")
        model.requires_grad_(True)
        self.model = model
        self.signed = {name: torch.zeros_like(lin.weight, dtype=torch.float32)
                       for name, (_, _, lin) in self.targets.items()}
        self.absolute = {name: torch.zeros_like(t) for name, t in self.signed.items()}
        self.optimizer = adamw(model.parameters(), o)
        self.steps_done = 0
        self.sparse_layers: list[BlockSparseLinear] = []
        self.selected: dict[str, list[tuple[int, int]]] = {}
        self.warmup_state_bytes = 0

    # -- phase 1: warm-up ---------------------------------------------------------------------
    def warmup_step(self, batch: Batch) -> float:
        loss = self.forward_backward(batch)
        for name, (_, _, lin) in self.targets.items():
            grad = lin.weight.grad.float()
            self.signed[name].add_(grad)
            self.absolute[name].add_(grad.abs())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    # -- phase 2: selection -------------------------------------------------------------------
    def block_scores(self) -> list[tuple[float, str, int, int]]:
        bs = self.options.block_size
        scores = []
        for name, summed in (self.signed if self.options.score == "signed_mean" else self.absolute).items():
            m, n = summed.shape
            means = summed.reshape(m // bs, bs, n // bs, bs).mean(dim=(1, 3))
            if self.options.score == "signed_mean":
                means = means.abs()
            for r in range(m // bs):
                for c in range(n // bs):
                    scores.append((float(means[r, c]), name, r, c))
        return scores

    def select(self) -> dict[str, list[tuple[int, int]]]:
        scores = self.block_scores()
        budget = self.options.num_blocks or max(1, math.floor(self.options.budget_ratio * len(scores)))
        chosen: dict[str, list[tuple[int, int]]] = {}
        for _, name, r, c in sorted(scores, key=lambda s: (-s[0], s[1], s[2], s[3]))[: min(budget, len(scores))]:
            chosen.setdefault(name, []).append((r, c))
        return chosen

    def start_sparse_phase(self) -> None:
        assert self.model is not None
        self.warmup_state_bytes = sum(b for kind, (_, b) in self._inventory().items() if kind != "trainable_params")
        self.selected = self.select()
        self.model.requires_grad_(False)
        self.optimizer = None  # the warm-up's full Adam state is freed here
        for name, blocks in self.selected.items():
            parent, child_name, linear = self.targets[name]
            layer = BlockSparseLinear(linear, sorted(blocks), self.options.block_size)
            setattr(parent, child_name, layer)
            self.sparse_layers.append(layer)
        self.optimizer = adamw([layer.blocks for layer in self.sparse_layers], self.options)
        self.signed = self.absolute = {}
        self.apply_precision()  # the weights frozen now go to the storage dtype; the blocks stay trained

    # -- phase 3: sparse training ---------------------------------------------------------------
    def step(self, batch: Batch) -> StepResult:
        self.apply_lr_scale(self.optimizer)
        if self.steps_done < self.options.warmup_steps:
            loss = self.warmup_step(batch)
            self.steps_done += 1
            if self.steps_done == self.options.warmup_steps:
                self.start_sparse_phase()
            return StepResult(loss)
        loss = self.forward_backward(batch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for layer in self.sparse_layers:
            layer.write_back()
        self.steps_done += 1
        return StepResult(loss)

    def _trained(self) -> list[torch.nn.Parameter]:
        """Every weight while warming up (full fine-tuning), the selected blocks after."""
        assert self.model is not None
        if not self.sparse_layers:
            return list(self.model.parameters())
        return [layer.blocks for layer in self.sparse_layers]

    def _inventory(self) -> dict[str, tuple[int, int]]:
        """The current phase's state: full fine-tuning's plus the summed gradients while warming up, the
        selected blocks' after (what the trial reads at its end; `info()` says what the warm-up held).
        Gradients and Adam's moments are in their weights' dtype (torch.optim.AdamW)."""
        trained = tensor_counts(self._trained())
        inventory = {"trainable_params": trained, "gradients": trained, "exp_avg": trained, "exp_avg_sq": trained}
        if not self.sparse_layers:
            inventory["gradient_sums"] = tensor_counts([*self.signed.values(), *self.absolute.values()])
        return inventory

    def state_elements(self) -> dict[str, int]:
        return split_inventory(self._inventory(), 0)

    def state_bytes(self) -> dict[str, int]:
        return split_inventory(self._inventory(), 1)

    def _predicted_blocks(self) -> int:
        bs = self.options.block_size
        total = sum((lin.weight.shape[0] // bs) * (lin.weight.shape[1] // bs) for _, _, lin in self.targets.values())
        budget = self.options.num_blocks or max(1, math.floor(self.options.budget_ratio * total))
        return min(budget, total)

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """The sparse phase's state (what the trial reads at its end): the selected blocks, their gradients and
        AdamW's two moments, in the trained dtype. Which blocks are chosen depends on the data; how many does
        not."""
        element = self.precision.trained_dtype.itemsize
        block = self._predicted_blocks() * self.options.block_size ** 2 * element
        return {"trainable_params": block, "gradients": block, "exp_avg": block, "exp_avg_sq": block}

    def predicted_weight_bytes(self) -> int | None:
        """After the switch every weight is frozen (storage dtype) and the selected blocks are trained copies."""
        from memft_bench.harness.core.tensor_bytes import model_bytes

        assert self.model is not None
        storage, trained = self.precision.storage_dtype.itemsize, self.precision.trained_dtype.itemsize
        floating = sum(p.numel() for p in self.model.parameters() if p.is_floating_point())
        as_warm_up = model_bytes(self.model)
        blocks = self._predicted_blocks() * self.options.block_size ** 2
        return as_warm_up - floating * trained + floating * storage + blocks * trained

    def predicted_workspace_bytes(self) -> int:
        """The warm-up's full fine-tuning state, transient: every weight's gradient and two AdamW moments, and
        the two float32 gradient sums of the target weights, beyond the sparse phase's state and weights (the
        warm-up holds every weight in the trained dtype)."""
        from memft_bench.harness.core.tensor_bytes import model_bytes

        assert self.model is not None
        weights = sum(p.numel() * self.precision.trained_dtype.itemsize for p in self.model.parameters())
        sums = 2 * 4 * sum(lin.weight.numel() for _, _, lin in self.targets.values())
        sparse = self.predicted_state_bytes() or {}
        warm_up_weights = model_bytes(self.model) - (self.predicted_weight_bytes() or 0)
        return max(0, 3 * weights + sums + warm_up_weights
                   - sum(v for k, v in sparse.items() if k != "trainable_params"))

    def info(self) -> dict:
        """The accounting is of the phase the trial ended in; the warm-up's full fine-tuning state (gradients,
        Adam moments, gradient sums) is in the measured training peak, and its size is given here."""
        if not self.sparse_layers:
            return {"accounting_phase": "warm-up (full fine-tuning)"}
        return {"accounting_phase": "sparse", "warmup_state_mb": round(self.warmup_state_bytes / 2**20, 3)}

    def hyperparameters(self) -> dict:
        params = super().hyperparameters()
        params["selected_blocks"] = {name: len(blocks) for name, blocks in self.selected.items()}
        return params
