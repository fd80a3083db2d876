"""The one training loop: every method runs through it, with meters and progress as callbacks.

Like transformers' `Trainer` callbacks, hooks observe the loop instead of forking it, so no method
can get a different budget or schedule. The loop stops early when the loss is not finite
(`Diverged`), which the trial records as status `diverged`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from memft_bench.harness.measure.step_hooks import Callback
from memft_bench.harness.spec.config import BudgetSpec
from memft_bench.methods.base import Batch, Method, StepResult


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def lr_scale(step: int, budget: BudgetSpec) -> float:
    """The schedule's factor on the methods' peak learning rates at `step` (0-based)."""
    total, warmup = budget.steps, budget.lr_warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    if budget.lr_schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if budget.lr_schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))  # cosine


@dataclass
class LossRecorder(Callback):
    losses: list[float] = field(default_factory=list)

    def on_step_end(self, step: int, batch: Batch, result: StepResult) -> None:
        self.losses.append(result.loss)


@dataclass
class ExtrasRecorder(Callback):
    """Means over steps of what a method reports in `StepResult.extras` (SGC's OMP time, errors...).

    The first `warmup` steps are left out, as they are from the step times (lazy initialisation, allocator
    growth). A value may be a number, a 0-d tensor or a zero-argument callable: methods hand over figures
    still on the device, and they are read here, after the step timer stopped (it must come before this
    recorder in the callback list), so reading them is not timed as the method's cost.
    """

    warmup: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def on_step_end(self, step: int, batch: Batch, result: StepResult) -> None:
        if step < self.warmup:
            return
        for key, value in result.extras.items():
            if callable(value):
                value = value()
            if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:
                value = value.item()
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
                self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


@dataclass
class ProgressLog(Callback):
    """A line every `every` steps into the trial's log, so a long trial can be followed (`tail -f`)."""

    total: int
    every: int = 0

    def on_step_end(self, step: int, batch: Batch, result: StepResult) -> None:
        every = self.every or max(1, self.total // 20)
        if (step + 1) % every == 0 or step + 1 == self.total:
            print(f"step {step + 1}/{self.total} loss {result.loss:.4f}", flush=True)


def train(method: Method, batches: Iterator[Batch], budget: BudgetSpec, callbacks: Sequence[Callback]) -> int:
    """Run `budget.steps` steps of `method`, or with `budget.time_s`, the steps that fit in that much training
    wall-clock (at most `budget.steps`); returns the number of steps completed.

    The clock covers the whole loop, data and step alike, as a user's budget would; it is read between steps, so
    the last step may end a little past the budget (never a half step)."""
    assert method.model is not None
    method.model.train()
    started = time.perf_counter()
    for step in range(budget.steps):
        if budget.time_s and step and time.perf_counter() - started >= budget.time_s:
            return step
        batch = next(batches)
        method.set_lr_scale(lr_scale(step, budget))
        for cb in callbacks:
            cb.on_step_start(step, batch)
        result = method.step(batch)
        for cb in callbacks:
            cb.on_step_end(step, batch, result)
        if not math.isfinite(result.loss):
            raise Diverged(f"loss became {result.loss} at step {step}")
    return budget.steps
