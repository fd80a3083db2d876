"""Will it fit: a trial's whole training peak, traced before it runs, against a memory size, and the largest
micro-batch (or length) that fits in it.

The peak is `memory_trace.predict_training_peak` on batches of the budget's full shape (micro_batch_size rows of
cutoff_len tokens, every position a target): the largest batch the budget allows, so a task whose records are
shorter than cutoff_len needs less. The pre-flight traces on the CPU, whatever device the trials will use: a trace
on fake CUDA tensors would create a CUDA context in the sweep's own process, which holds GPU memory for the whole
sweep. A GPU's fused attention kernels keep the same one number per row for backward as the CPU's, so the figures
agree to within the allocator's rounding; under bf16-mixed the CPU's autocast casts a different list of operations
than CUDA's, which the answer notes.

The largest value of an axis (`micro_batch_size` or `cutoff_len`) is searched, not extrapolated: the peak is
traced at the budget's value and one more, a secant through the last two traces proposes the next, and the search
ends when it holds a value that fits next to one that does not (or the axis's limit), within `MAX_TRACES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memft_bench.harness.spec.config import apply_overrides

if TYPE_CHECKING:
    from memft_bench.harness.spec.config import SuiteSpec

#: The axes a fit search can move, and the largest value it tries for micro_batch_size (cutoff_len's limit is the
#: model's max_position_embeddings).
AXES = ("micro_batch_size", "cutoff_len")
MICRO_BATCH_LIMIT = 4096
#: Traces one search may spend (each takes from a fraction of a second for tiny to several for a 7B model).
MAX_TRACES = 7
GiB = 2**30
MiB = 2**20


@dataclass
class Largest:
    """The largest value of `axis` whose predicted peak fits in `memory`: None when even 1 does not fit."""

    axis: str
    value: int | None
    peak_bytes: int | None  # the predicted peak at `value`
    exact: bool  # False: the search ran out of traces; `value` fits, a larger one might too
    at_limit: bool  # `value` is the axis's limit (the model's max_position_embeddings, or MICRO_BATCH_LIMIT)
    traces: int

    def describe(self) -> str:
        if self.value is None:
            return f"none (1 needs {_size(self.peak_bytes)})" if self.exact else \
                f"none found in {self.traces} traces ({_size(self.peak_bytes)} the least)"
        if self.at_limit and self.axis == "cutoff_len":
            return f"{self.value}, the model's context length ({_size(self.peak_bytes)})"
        if self.at_limit:
            return f"≥ {self.value}, the most searched ({_size(self.peak_bytes)})"
        return f"{'' if self.exact else '≥ '}{self.value} ({_size(self.peak_bytes)})"


def traced_peak(suite: SuiteSpec, method: str, params: dict[str, Any] | None) -> int:
    """The predicted training peak (bytes) of `method` at the budget's full batch shape, traced on the CPU."""
    from memft_bench.harness.trial.memory_trace import predict_training_peak

    return predict_training_peak(suite, method, params, device="cpu").peak_bytes


def axis_limit(suite: SuiteSpec, axis: str) -> int:
    """The largest value a search tries: the model's context length for cutoff_len."""
    if axis == "micro_batch_size":
        return MICRO_BATCH_LIMIT
    from memft_bench.harness.trial.meta_model import build_meta_model

    config = build_meta_model(suite.model).config
    return int(getattr(config, "max_position_embeddings", 0) or 131072)


def largest_fitting(suite: SuiteSpec, method: str, params: dict[str, Any] | None, memory: int, axis: str,
                    peak_at_budget: int | None = None,
                    peak_of: Callable[[SuiteSpec], int] | None = None) -> Largest:
    """The largest `axis` value at which `method`'s predicted peak is at most `memory` bytes, every other budget
    setting as the suite has it. `peak_at_budget`: the peak already traced at the suite's own value."""
    if axis not in AXES:
        raise ValueError(f"axis {axis!r}: expected one of {', '.join(AXES)}")
    measure = peak_of or (lambda s: traced_peak(s, method, params))
    limit = axis_limit(suite, axis)
    traced: dict[int, int] = {}

    def peak(value: int) -> int:
        if value not in traced:
            traced[value] = peak_at_budget if (value == getattr(suite.budget, axis) and peak_at_budget) \
                else measure(apply_overrides(suite, [f"budget.{axis}={value}"]))
        return traced[value]

    start = min(getattr(suite.budget, axis), limit)
    fits, fails = 0, limit + 1  # the largest value known to fit, the smallest known not to
    candidate = start
    for _ in range(MAX_TRACES):
        p = peak(candidate)
        if p <= memory:
            fits = max(fits, candidate)
        else:
            fails = min(fails, candidate)
        if fails == fits + 1 or fits == limit:
            break
        candidate = _next_candidate(traced, memory, fits, fails, limit)
    if fits == 0:  # nothing traced fits: 1 itself when it was traced, else the search ran out first
        return Largest(axis, None, traced.get(1, min(traced.values())), 1 in traced, False, len(traced))
    return Largest(axis, fits, traced[fits], fails == fits + 1 or fits == limit, fits == limit, len(traced))


def _next_candidate(traced: dict[int, int], memory: int, fits: int, fails: int, limit: int) -> int:
    """A secant through the two traces nearest the boundary, kept strictly inside (fits, fails)."""
    if fits in traced and fails in traced:  # a bracket: interpolate inside it
        points = [(fits, traced[fits]), (fails, traced[fails])]
    else:
        points = sorted(traced.items(), key=lambda kv: abs(kv[1] - memory))[:2]
    if len(points) < 2:  # one trace so far: double or halve
        value, p = points[0]
        guess = value * 2 if p <= memory else value // 2
    else:
        (a, pa), (b, pb) = sorted(points)
        slope = (pb - pa) / (b - a) if b != a else 0
        guess = math.floor(a + (memory - pa) / slope) if slope > 0 else (fits * 2 if fits else fails // 2)
    low, high = fits + 1, min(fails - 1, limit)
    if fails > limit and guess >= high:
        return high
    return max(low, min(high, guess))


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / MiB:.1f} MiB"


__all__ = ["AXES", "Largest", "axis_limit", "largest_fitting", "traced_peak"]
