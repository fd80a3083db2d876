"""Methods that fail on purpose, for the reliability tests (imported by trial processes via --plugin)."""

from __future__ import annotations

import os
import signal
import time

import torch

from memft_bench.methods.base import Batch, StepResult, register
from memft_bench.methods.full import FullFineTuning


@register("fault-raise")
class RaisesInStep(FullFineTuning):
    """Raises an exception in its second step."""

    def step(self, batch: Batch) -> StepResult:
        if getattr(self, "_stepped", False):
            raise RuntimeError("injected failure in step")
        self._stepped = True
        return super().step(batch)


@register("fault-nan")
class NanLoss(FullFineTuning):
    """Its loss turns NaN at the second step."""

    def step(self, batch: Batch) -> StepResult:
        result = super().step(batch)
        self._n = getattr(self, "_n", 0) + 1
        return StepResult(float("nan")) if self._n >= 2 else result


@register("fault-hang")
class Hangs(FullFineTuning):
    """Never finishes its first step."""

    memory_traceable = False  # its step must not run in the sweep's process (the memory trace)

    def step(self, batch: Batch) -> StepResult:
        time.sleep(3600)
        return super().step(batch)


@register("fault-sigkill")
class KillsItself(FullFineTuning):
    """Its process dies by SIGKILL in the first step."""

    memory_traceable = False  # its step must not run in the sweep's process (the memory trace)

    def step(self, batch: Batch) -> StepResult:
        os.kill(os.getpid(), signal.SIGKILL)
        return super().step(batch)


@register("fault-oom")
class AllocatesTooMuch(FullFineTuning):
    """Asks for far more memory than any machine has."""

    def step(self, batch: Batch) -> StepResult:
        torch.empty(2**62, dtype=torch.uint8)
        return super().step(batch)


@register("fault-slow")
class Slow(FullFineTuning):
    """Takes a second per step: long enough to interrupt a sweep in the middle."""

    memory_traceable = False  # its step must not run in the sweep's process (the memory trace)

    def step(self, batch: Batch) -> StepResult:
        time.sleep(1.0)
        return super().step(batch)
