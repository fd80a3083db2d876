"""A trial's own prediction of its training peak, made before it trains, and the measured figure it is set beside.

Every row carries `mem_predicted_peak_mb` (`memory_trace.predict_training_peak` on the trial's own first batch and
the largest batch its budget's steps take, on the trial's device) beside `peak_mem_training_mb`, the measured peak
it predicts, and `mem_prediction_error_pct`, (predicted - measured) / measured:

- on a GPU, the measured peak is the CUDA allocator's (`peak_mem_allocated_mb`): the same thing the trace counts,
  tensor storage, with the allocator's 512-byte rounding;
- on a CPU, it is the peak RSS above the non-tensor resident set of the warmed process just before training,
  less the library code training paged in (`measure.memory.CpuTrainingPeak`), with glibc's mmap threshold fixed
  (`measure.glibc_heap`) so that freed activations leave the resident set: the tensors alive at the peak, plus
  whatever anonymous memory the steps hold that is not a tensor (a library's workspace or buffers outside torch's
  allocator), which the trace does not see.

The trace runs inside the trial's process before its training phase: its fake tensors hold no memory, and every
random number generator is restored afterwards, so the trial trains exactly as it would without it. A method
whose step cannot be traced gets no prediction and a note saying why; the trial goes on.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch

from memft_bench.harness.core.errors import describe_exception

if TYPE_CHECKING:
    from memft_bench.harness.spec.config import SuiteSpec
    from memft_bench.harness.trial.memory_trace import PeakPrediction
    from memft_bench.methods.base import Batch

MiB = 2**20
#: At most this many of the budget's steps are scanned for the largest batch (collating is cheap; a time-limited
#: budget's step count is only a cap).
SCAN_STEPS = 5000
#: A trace longer than this is abandoned and the trial trains without a prediction.
TRACE_TIME_LIMIT_S = 300.0


def predict_trial_peak(suite: SuiteSpec, method: str, params: dict[str, Any], batches: Iterator[Batch],
                       device: torch.device, seed: int, notes: dict[str, str]) -> PeakPrediction | None:
    """The trial's predicted training peak from its own batch stream (`batches`: a fresh copy of the stream it
    trains on, on the CPU), or None with `notes["memory_prediction"]` saying why."""
    from memft_bench.harness.trial.memory_trace import (
        CannotTrace,
        optimizers_as_on,
        pick_peak_batches,
        predict_training_peak,
    )

    trace_devices = ["cuda", "cpu"] if device.type == "cuda" else ["cpu"]
    failures: list[str] = []
    with preserved_random_state(device), optimizers_as_on(device.type):  # the trial's kernels, on either fake device
        steps = pick_peak_batches(islice(batches, max(1, min(suite.budget.steps, SCAN_STEPS))))
        for trace_device in trace_devices:  # on a GPU, the CPU's kernels when fake CUDA tensors fail
            try:
                prediction = predict_training_peak(suite, method, params, batches=steps, steps=len(steps),
                                                   device=trace_device,
                                                   seed=seed, time_limit_s=TRACE_TIME_LIMIT_S)
            except Exception as exc:  # never the trial's failure: it goes on without a prediction
                failures.append(f"{trace_device}: {exc if isinstance(exc, CannotTrace) else describe_exception(exc)}")
                continue
            fallback = f" after {failures[0]}" if failures else ""
            notes["memory_prediction"] = (f"traced in {prediction.seconds:.1f}s on fake {trace_device} tensors"
                                          f"{fallback}; peak in {prediction.peak_phase} of traced step "
                                          f"{prediction.peak_step + 1}")
            return prediction
    notes["memory_prediction"] = f"none: the trace failed ({'; '.join(failures)})"
    return None


@contextlib.contextmanager
def preserved_random_state(device: torch.device) -> Iterator[None]:
    """Python's, NumPy's and torch's generators (the CPU's and the trial's GPU's) as they were on entry, again
    on exit: the trace creates the method (which may seed or draw) without moving the trial's randomness."""
    import numpy as np

    python, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def prediction_columns(prediction: PeakPrediction | None, measured_mb: float | None) -> dict[str, float | None]:
    """The row's prediction columns: the predicted peak, the measured one, and the error in % of the measured."""
    predicted = None if prediction is None else prediction.peak_bytes / MiB
    error = None
    if predicted is not None and measured_mb:
        error = 100.0 * (predicted - measured_mb) / measured_mb
    return {"mem_predicted_peak_mb": predicted, "peak_mem_training_mb": measured_mb,
            "mem_prediction_error_pct": error}


def out_of_memory_shortfall(prediction: PeakPrediction | None, device: torch.device,
                            measured_peak_mb: float | None, exc: BaseException) -> str | None:
    """For an `oom` row: how far off the prediction was. The trial needed at least the training peak measured
    so far (`measured_peak_mb`: the allocator's on a GPU, the resident set's above the idle process on a CPU)
    plus the allocation that failed (torch's message says how much); the prediction is compared with that lower
    bound. None without a prediction."""
    if prediction is None:
        return None
    predicted = prediction.peak_bytes / MiB
    text = f"predicted peak {_mib(predicted)}"
    if measured_peak_mb is None:
        return f"{text}; the device ran out before training's peak could be measured"
    what = "allocator peak" if device.type == "cuda" else "training's resident peak"
    needed = measured_peak_mb + _failed_allocation_mb(str(exc))
    if predicted >= needed:
        return (f"{text}, at least {_mib(needed)} needed when it failed ({what} {_mib(measured_peak_mb)} "
                f"plus the failed allocation): the device had less than predicted free")
    return (f"{text}, but at least {_mib(needed)} was needed when it failed ({what} "
            f"{_mib(measured_peak_mb)} plus the failed allocation): the prediction was at least "
            f"{_mib(needed - predicted)} ({100 * (needed - predicted) / needed:.0f} %) short")


def _failed_allocation_mb(message: str) -> float:
    """The size in torch's out-of-memory message: CUDA's 'Tried to allocate 2.00 GiB', the CPU allocator's 'you
    tried to allocate 2147483648 bytes'; 0 when absent."""
    import re

    match = re.search(r"[Tt]ried to allocate ([0-9.]+) (B|KiB|MiB|GiB|TiB|bytes)", message)
    if not match:
        return 0.0
    scale = {"B": 1 / MiB, "bytes": 1 / MiB, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "TiB": 1024.0**2}
    return float(match.group(1)) * scale[match.group(2)]


def _mib(mb: float) -> str:
    return f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.1f} MiB"


__all__ = ["SCAN_STEPS", "out_of_memory_shortfall", "predict_trial_peak", "prediction_columns",
           "preserved_random_state"]
