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


@register("fault-balloon")
class BalloonsThenIsKilled(FullFineTuning):
    """In its first real step it holds 256 MiB more than any prediction of it, long enough for the runner to see
    its resident set, then dies by SIGKILL as under the kernel's out-of-memory killer. On fake tensors (the
    pre-flight's and the trial's own trace) it is plain full fine-tuning."""

    def step(self, batch: Batch) -> StepResult:
        from torch._subclasses.fake_tensor import FakeTensor

        if not isinstance(next(self.model.parameters()), FakeTensor):
            ballast = torch.ones(256 * 2**20, dtype=torch.uint8)  # ones: every page resident
            time.sleep(1.5)  # the runner samples the resident set every 0.2 s
            del ballast
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(batch)


@register("fault-slow")
class Slow(FullFineTuning):
    """Takes a second per step: long enough to interrupt a sweep in the middle."""

    memory_traceable = False  # its step must not run in the sweep's process (the memory trace)

    def step(self, batch: Batch) -> StepResult:
        time.sleep(1.0)
        return super().step(batch)
