"""Step time and throughput, measured around the training loop (a training-loop callback).

Each step is timed with `time.perf_counter`, after `torch.cuda.synchronize()` on a GPU so queued
kernels are counted in the step that launched them. The first `warmup` steps (allocator growth,
lazy initialisation, GaLore's first SVD) are left out of the statistics. Absolute times are noisy on
shared machines; reports compare them as ratios to `full` measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from memft_bench.harness.measure.step_hooks import Callback
from memft_bench.methods.base import Batch, StepResult


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of a non-empty list."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class StepTimer(Callback):
    device: torch.device
    warmup: int = 3
    step_seconds: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    step_target_tokens: list[int] = field(default_factory=list)
    _start: float = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_step_start(self, step: int, batch: Batch) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, step: int, batch: Batch, result: StepResult) -> None:
        self._sync()
        self.step_seconds.append(time.perf_counter() - self._start)
        self.step_tokens.append(batch.input_tokens)
        self.step_target_tokens.append(batch.target_tokens)

    def summary(self) -> dict[str, float | int | None]:
        if not self.step_seconds:
            return {"step_time_ms_median": None, "step_time_ms_p90": None, "tokens_per_s": None,
                    "timed_steps": 0}
        skip = self.warmup if len(self.step_seconds) > self.warmup else 0
        seconds = self.step_seconds[skip:]
        tokens = self.step_tokens[skip:]
        return {
            "step_time_ms_median": statistics.median(seconds) * 1e3,
            "step_time_ms_p90": percentile(seconds, 90) * 1e3,
            "tokens_per_s": sum(tokens) / sum(seconds) if sum(seconds) > 0 else None,
            "timed_steps": len(seconds),
        }
