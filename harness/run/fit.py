"""Will it fit: a trial's whole training peak, traced before it runs, against a memory size, and the largest
micro-batch (or length) that fits in it.

The peak is `memory_trace.predict_training_peak` on batches of the budget's full shape (micro_batch_size rows of
cutoff_len tokens, every position a target): the largest batch the budget allows, so a task whose records are
shorter than cutoff_len needs less. The pre-flight traces on the CPU, whatever device the trials will use: a trace
on fake CUDA tensors would create a CUDA context in the sweep's own process, which holds GPU memory for the whole
sweep. A GPU's fused attention kernels keep the same one number per row for backward as the CPU's, so the figure
predicts the CUDA allocator's allocated peak (what it reserves is larger: cached segments, library workspaces);
under bf16-mixed the CPU's autocast casts a different list of operations than CUDA's, which the answer notes.

The largest value of an axis (`micro_batch_size` or `cutoff_len`) is searched, not extrapolated: the peak is
traced at the budget's value, then at values a fitted line or parabola (or a bisection) proposes, until the
search holds a value that fits next to one that does not, or the axis's limit; when `MAX_TRACES` run out first,
the answer is the range still open.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memft_bench.harness.spec.config import apply_overrides
from memft_bench.harness.spec.memory_sizes import format_size

if TYPE_CHECKING:
    from memft_bench.harness.spec.config import SuiteSpec

#: The axes a fit search can move, and the largest value it tries for micro_batch_size (cutoff_len's limit is the
#: model's max_position_embeddings).
AXES = ("micro_batch_size", "cutoff_len")
MICRO_BATCH_LIMIT = 4096
#: A trace longer than this is abandoned (a 7B model's takes a few seconds): it runs a method's own code.
TRACE_TIME_LIMIT_S = 300.0
#: The smallest value of each axis (the budget's own bounds).
AXIS_MINIMUM = {"micro_batch_size": 1, "cutoff_len": 8}
#: Traces one search may spend (each takes from a fraction of a second for tiny to several for a 7B model).
MAX_TRACES = 10


@dataclass
class Largest:
    """The largest value of `axis` whose predicted peak fits in `memory`: None when even the smallest does not."""

    axis: str
    value: int | None
    peak_bytes: int | None  # the predicted peak at `value` (at the smallest value tried when none fits)
    #: the smallest value known not to fit, less one: equal to `value` when the search ended on the boundary
    upper: int
    at_limit: bool  # `value` is the axis's limit (the model's max_position_embeddings, or MICRO_BATCH_LIMIT)
    traces: int

    @property
    def exact(self) -> bool:
        """The search ended on a value that fits next to one that does not (or on the axis's limit)."""
        return self.at_limit or (self.value or AXIS_MINIMUM[self.axis] - 1) == self.upper

    def describe(self) -> str:
        if self.value is None:
            smallest = AXIS_MINIMUM[self.axis]
            return f"none ({smallest} needs {format_size(self.peak_bytes)})" if self.exact else \
                f"none found in {self.traces} traces (the least traced needs {format_size(self.peak_bytes)})"
        if self.at_limit and self.axis == "cutoff_len":
            return f"{self.value}, the model's context length ({format_size(self.peak_bytes)})"
        if self.at_limit:
            return f"≥ {self.value}, the most searched ({format_size(self.peak_bytes)})"
        if not self.exact:  # the traces ran out inside a bracket
            return f"{self.value} to {self.upper} ({format_size(self.peak_bytes)} at {self.value})"
        return f"{self.value} ({format_size(self.peak_bytes)})"


def traced_peak(suite: SuiteSpec, method: str, params: dict[str, Any] | None) -> int:
    """The predicted training peak (bytes) of `method` at the budget's full batch shape, traced on the CPU."""
    from memft_bench.harness.trial.memory_trace import predict_training_peak

    return predict_training_peak(suite, method, params, device="cpu", time_limit_s=TRACE_TIME_LIMIT_S).peak_bytes


def axis_limit(suite: SuiteSpec, axis: str) -> int:
    """The largest value a search tries: the model's context length for cutoff_len."""
    if axis == "micro_batch_size":
        return MICRO_BATCH_LIMIT
    from memft_bench.harness.trial.meta_model import build_meta_model

    config = build_meta_model(suite.model).config
    return int(getattr(config, "max_position_embeddings", 0) or 131072)


def largest_fitting(suite: SuiteSpec, method: str, params: dict[str, Any] | None, memory: int, axis: str,
                    peak_at_budget: int | None = None,
                    peak_of: Callable[[SuiteSpec], int] | None = None,
                    known: dict[int, int] | None = None) -> Largest:
    """The largest `axis` value at which `method`'s predicted peak is at most `memory` bytes, every other budget
    setting as the suite has it. `peak_at_budget`: the peak already traced at the suite's own value.

    The search keeps the largest value known to fit and the smallest known not to. Each next value solves the
    parabola (or line) through the traces nearest the boundary (`_model_guess`: exact in one step where the peak
    is affine in the axis, as in the micro-batch, or quadratic, as in the length under an attention kernel that
    keeps the square matrix); a bisection of the bracket follows two steps that did not halve it. `known`: the
    peaks already traced at values of the axis (a search for another memory size), filled in as this one traces."""
    if axis not in AXES:
        raise ValueError(f"axis {axis!r}: expected one of {', '.join(AXES)}")
    measure = peak_of or (lambda s: traced_peak(s, method, params))
    smallest, limit = AXIS_MINIMUM[axis], axis_limit(suite, axis)
    own = getattr(suite.budget, axis)
    traced: dict[int, int] = {} if known is None else known
    spent = len(traced)

    def peak(value: int) -> int:
        if value not in traced:
            traced[value] = peak_at_budget if value == own and peak_at_budget \
                else measure(apply_overrides(suite, [f"budget.{axis}={value}"]))
        return traced[value]

    # the largest value known to fit, the smallest known not to (the peak grows with either axis)
    fits = max((v for v, p in traced.items() if p <= memory), default=smallest - 1)
    fails = min((v for v, p in traced.items() if p > memory), default=limit + 1)
    candidate, width, stalls = max(smallest, min(own, limit)), None, 0
    if traced:
        candidate = _model_guess(traced, memory, fits, fails, smallest, limit)
    for _ in range(MAX_TRACES):
        if fails == fits + 1 or fits == limit:
            break
        if peak(candidate) <= memory:
            fits = max(fits, candidate)
        else:
            fails = min(fails, candidate)
        if fails == fits + 1 or fits == limit:
            break
        bracketed = fits >= smallest and fails <= limit
        stalls = stalls + 1 if width is not None and fails - fits > width / 2 else 0
        candidate = _model_guess(traced, memory, fits, fails, smallest, limit)
        if bracketed and stalls >= 2:  # the model keeps missing (a step in the peak): bisect
            candidate, stalls = (fits + fails) // 2, 0
        width = fails - fits if bracketed else None
    if fits < smallest:
        return Largest(axis, None, traced.get(smallest, min(traced.values())), fails - 1, False,
                       len(traced) - spent)
    return Largest(axis, fits, traced[fits], fails - 1 if fails <= limit else limit, fits == limit,
                   len(traced) - spent)


def _model_guess(traced: dict[int, int], memory: int, fits: int, fails: int, smallest: int, limit: int) -> int:
    """The next value to trace, kept strictly inside (fits, fails). The peak is a polynomial of degree at most
    two in either axis (activations grow with the batch, an attention matrix with the square of the length), so
    with three traces the parabola through the three nearest the boundary is solved for `memory` (a line, when
    they are collinear); with two, the line; with one, the value doubles or halves."""
    import numpy as np

    points = sorted(traced.items(), key=lambda kv: abs(kv[1] - memory))[:3]
    guess: float | None = None
    if len(points) >= 2:
        xs = np.array([float(v) for v, _ in points])
        ys = np.array([float(p) - memory for _, p in points])
        coefficients = np.polyfit(xs, ys, min(2, len(points) - 1))
        roots = [r.real for r in np.roots(coefficients) if abs(r.imag) < 1e-9 and r.real > 0] \
            if np.any(coefficients[:-1]) else []
        if roots:  # the root nearest the traces: the parabola's other root lies on its far side
            guess = min(roots, key=lambda r: abs(r - xs[0]))
    if guess is None and points[0][1] <= memory:  # one trace, or a peak the traces say is flat: double
        guess = max(fits, smallest) * 2
    elif guess is None:  # with two traces or more, no positive root: by the line even the least would not fit
        guess = smallest if len(points) >= 2 else fails // 2
    low, high = max(fits + 1, smallest), min(fails - 1, limit)
    return max(low, min(high, math.floor(guess)))


__all__ = ["AXES", "AXIS_MINIMUM", "Largest", "axis_limit", "largest_fitting", "traced_peak"]
