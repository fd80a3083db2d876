"""The pre-flight: every trial of a sweep checked, and its memory predicted, before any trial starts.

Options that only the model's shapes can check (LoRA's target modules, SGC's k against a block length,
SMT's block size, a peft tuner's divisibility) used to fail inside each trial's process, after the model
was loaded: minutes per trial on a GPU node, a queue wait on a cluster. Here the suite's model is built
on PyTorch's `meta` device (shapes and dtypes, no memory, no values) and each method variant runs its own
`prepare()` and the precision policy on it, so the whole sweep's problems are found at once, one line
each, and nothing starts.

The same meta model gives each trial's memory without allocating it: the weights (adapters included),
and the method's predicted gradients, optimizer state and step workspace (`Method.predicted_state_bytes`
and `predicted_workspace_bytes`), which are exact from shapes for the built-in methods and are checked
against the trials' measured accounting by the tests. The whole training peak, activations and every
transient included, is traced on fake tensors (`run.fit.traced_peak`: the method's own step at the
budget's full batch shape). `bench run --dry-run` prints all of it, and with `--memory SIZE` or `--gpu NAME`
answers for that device: whether each trial fits, by how much, and the largest micro-batch (or length) that
would. `bench run` refuses, as an `oom` row that never starts, a trial whose exact parts alone exceed the
memory the device has free, and warns of one whose traced peak does (real batches are often shorter than
the budget's full shape, so that one may still fit).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memft_bench.harness.core.errors import BenchError, ConfigError, describe_exception
from memft_bench.harness.results.rows import method_label
from memft_bench.harness.spec.memory_sizes import format_size
from memft_bench.harness.trial.meta_model import CannotBuildOnMeta, build_meta_model
from memft_bench.methods.base import backpropagates

if TYPE_CHECKING:
    import torch

    from memft_bench.harness.run.fit import Largest
    from memft_bench.harness.run.planning import RunPlan
    from memft_bench.harness.spec.config import SuiteSpec

MiB = 2**20
#: A predicted peak within this share of the memory is called tight, not a fit: the prediction counts tensor
#: storage, and a GPU's caching allocator reserves more than it allocates (fragmentation, cuBLAS workspaces).
TIGHT = 0.05


class PreflightError(ConfigError):
    """Every problem of a sweep, one line each (`problems`); the CLI prints each as its own error line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Estimate:
    """Predicted bytes of one trial's training phase. None: the method cannot predict that part."""

    weights: int
    gradients: int | None
    optimizer: int | None
    workspace: int
    #: the whole training peak, traced at the budget's full batch shape (None: `peak_note` says why)
    peak: int | None = None
    peak_note: str | None = None

    @property
    def exact(self) -> int | None:
        """Weights, gradients, optimizer state and workspace: the parts predicted from shapes."""
        if self.gradients is None or self.optimizer is None:
            return None
        return self.weights + self.gradients + self.optimizer + self.workspace

    def columns(self) -> dict[str, float | None]:
        """The row columns this estimate predicts, in the result schema's units (MiB)."""
        return {"mem_weights_mb": self.weights / MiB,
                "mem_grads_mb": None if self.gradients is None else self.gradients / MiB,
                "mem_optimizer_mb": None if self.optimizer is None else self.optimizer / MiB}


@dataclass
class VariantCheck:
    """The pre-flight of one method variant (every task and seed of it share the model and options)."""

    method: str
    variant: str
    estimate: Estimate | None = None
    note: str | None = None  # why there is no estimate
    warnings: list[str] = field(default_factory=list)
    largest: Largest | None = None  # the largest micro-batch (or length) that fits, when asked
    #: the largest that fits with TIGHT of the memory to spare (what the fits column calls a plain yes)
    largest_with_room: Largest | None = None

    def largest_cell(self) -> str:
        """`13 (28.6 MiB); 12 with 5 % to spare (27.1 MiB)`: the largest value that fits, and the largest the fits
        column would answer with a plain yes when they differ."""
        if self.largest is None:
            return "?"
        cell = self.largest.describe()
        room = self.largest_with_room
        if room is not None and self.largest.value is not None and room.value != self.largest.value:
            cell += f"; {room.describe()} with {TIGHT:.0%} to spare" if room.value is not None else \
                f"; none with {TIGHT:.0%} to spare"
        return cell

    @property
    def label(self) -> str:
        return method_label(self.method, self.variant)


@dataclass
class Preflight:
    """The whole sweep's pre-flight: one check per method variant, the device's free memory, notes."""

    checks: dict[tuple[str, str], VariantCheck]
    free_bytes: int | None
    device: str
    notes: list[str] = field(default_factory=list)
    #: the memory a dry run answers for (--memory, --gpu), and where its figure comes from; None: free_bytes
    target_bytes: int | None = None
    target_label: str | None = None
    #: whose optimizer kernels the traces followed (`memory_trace.optimizers_as_on`): "cuda" or "cpu"
    optimizers_device: str = "cpu"

    @property
    def memory(self) -> int | None:
        """The memory each trial must fit in: the target's, else what the device has free."""
        return self.target_bytes if self.target_bytes is not None else self.free_bytes

    def peak_warning(self, method: str, variant: str) -> str | None:
        """A trial whose traced peak exceeds the free memory (its exact parts do not: else it is refused)."""
        check = self.checks.get((method, variant))
        e = check.estimate if check else None
        if e is None or e.peak is None or self.free_bytes is None or e.peak <= self.free_bytes \
                or self.refusal(method, variant):
            return None
        return (f"{check.label}: its predicted training peak {format_size(e.peak)} at full-length batches exceeds the "
                f"{format_size(self.free_bytes)} free on {self.device}; it may run out of memory (shorter records need "
                "less)")

    def refusal(self, method: str, variant: str) -> str | None:
        """Why the trials of this variant cannot fit, or None."""
        check = self.checks.get((method, variant))
        if check is None or check.estimate is None or check.estimate.exact is None or self.free_bytes is None:
            return None
        need = check.estimate.exact
        if need <= self.free_bytes:
            return None
        e = check.estimate
        return (f"pre-flight: predicted {format_size(need)} (weights {format_size(e.weights)}, gradients "
                f"{format_size(e.gradients)}, optimizer {format_size(e.optimizer)}, workspace "
                f"{format_size(e.workspace)}; activations not counted) exceeds the "
                f"{format_size(self.free_bytes)} free on {self.device}, so the trial was not started; it needs "
                f"{format_size(need - self.free_bytes)} more: a method option that shrinks its state, a smaller model, "
                "model.precision=bf16-mixed, or a device with more memory would fit (--no-fit-check runs it anyway)")


# -- checking a sweep -------------------------------------------------------------------------------
def check_variant(model: torch.nn.Module, suite: SuiteSpec, method: str, variant: str,
                  params: dict[str, Any]) -> tuple[VariantCheck, str | None]:
    """Prepare `method` on the meta `model` (consumed: methods patch it) and predict its memory.

    Returns the check and a problem line (the options do not fit the model), or None. An exception that is
    not a refusal of the options (a method whose code cannot run on meta) becomes a note, never a problem:
    the trial itself will tell.
    """
    from memft_bench.harness.core.precision import Precision
    from memft_bench.harness.core.tensor_bytes import model_bytes
    from memft_bench.harness.trial.models import causal_lm_loss
    from memft_bench.methods.base import create

    check = VariantCheck(method, variant)
    where = f"{suite.name}: {check.label}"
    precision = Precision(suite.model.precision)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            instance = create(method, params, causal_lm_loss, seed=0, precision=precision)
            instance.total_steps = suite.budget.steps  # as the trial sets it (peft's AdaLoRA schedule reads it)
            instance.prepare(model)
            instance.apply_precision()
        except (BenchError, ValueError) as exc:  # ValueError: what peft and torch say of impossible options
            return check, f"{where}: {describe_exception(exc)}"
        except Exception as exc:
            check.note = f"not checked on the meta device ({describe_exception(exc)}); its trial will check it"
            return check, None
        try:
            state = instance.predicted_state_bytes(grad_accum=suite.budget.grad_accum)
            workspace = int(instance.predicted_workspace_bytes())
            weights = instance.predicted_weight_bytes()
        except Exception as exc:
            state, workspace, weights = None, 0, None
            check.note = f"no memory prediction ({describe_exception(exc)})"
    check.warnings = sorted({f"{where}: {w.message}" for w in caught if _is_users_concern(w)})
    assert instance.model is not None
    optimizer_keys = [k for k in (state or {}) if k not in ("trainable_params", "gradients")]
    check.estimate = Estimate(
        weights=model_bytes(instance.model) if weights is None else int(weights),
        gradients=None if state is None else int(state.get("gradients", 0)),
        optimizer=None if state is None else int(sum(state[k] for k in optimizer_keys)),
        workspace=workspace,
    )
    if state is None and check.note is None:
        check.note = f"{method} does not predict its gradients and optimizer state"
    return check, None


def _is_users_concern(warning: warnings.WarningMessage) -> bool:
    """Warnings a method raises about the user's options (UserWarning from our code or peft), not library
    deprecation chatter."""
    return issubclass(warning.category, UserWarning) and not issubclass(
        warning.category, (DeprecationWarning, FutureWarning))


def free_memory_bytes(device: str) -> int | None:
    """Memory a trial will have free on the device: MemAvailable on a CPU less what a trial's process holds
    before its model (`CPU_TRIAL_PROCESS_BYTES`), NVML's free figure on a GPU (found by UUID, as the meters find
    it; no CUDA context is created here) less the context the trial will create (`CUDA_CONTEXT_BYTES`): the
    prediction counts the trial's tensors, not those. None when it cannot be read."""
    from memft_bench.harness.spec.memory_sizes import CPU_TRIAL_PROCESS_BYTES, CUDA_CONTEXT_BYTES

    if device == "cpu":
        import psutil

        return max(0, int(psutil.virtual_memory().available) - CPU_TRIAL_PROCESS_BYTES)
    try:
        import pynvml

        from memft_bench.harness.measure.memory import nvml_handle

        pynvml.nvmlInit()
        try:
            handle, _ = nvml_handle(pynvml, int(device.partition(":")[2] or 0))
            return max(0, int(pynvml.nvmlDeviceGetMemoryInfo(handle).free) - CUDA_CONTEXT_BYTES)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def free_per_cpu_trial(free_bytes: int, trials: int) -> int:
    """What each of `trials` CPU trials running at once has free, from `free_memory_bytes("cpu")` (which left
    out one trial's own process): each trial is a process of its own."""
    from memft_bench.harness.spec.memory_sizes import CPU_TRIAL_PROCESS_BYTES

    own = CPU_TRIAL_PROCESS_BYTES
    return max(0, (free_bytes + own) // trials - own)


def free_label(device: str) -> str:
    """Where the default answer's figure comes from, and what was taken off it."""
    from memft_bench.harness.spec.memory_sizes import CPU_TRIAL_PROCESS_BYTES, CUDA_CONTEXT_BYTES

    if device == "cpu":
        return f"MemAvailable on cpu less {CPU_TRIAL_PROCESS_BYTES // MiB} MiB for the trial's own process"
    return f"NVML's free memory on {device} less {CUDA_CONTEXT_BYTES // MiB} MiB for the trial's CUDA context"


def run_preflight(run_plan: RunPlan, variants: Iterable[tuple[str, str, dict[str, Any]]],
                  progress: bool = False) -> Preflight:
    """Check every (method, variant label, options) of the plan and trace its training peak; raise
    PreflightError listing every problem."""
    suite = run_plan.suite
    result = Preflight({}, free_memory_bytes(run_plan.device), run_plan.device)
    problems: list[str] = []
    for method, variant, params in _bar(list(variants), "pre-flight", progress):
        try:
            model = build_meta_model(suite.model)
        except CannotBuildOnMeta as exc:
            result.notes.append(f"pre-flight skipped: the model cannot be built on the meta device ({exc}); "
                                "each trial checks its own options when it starts")
            return result
        variant_suite = run_plan.suite_of(method, variant)
        check, problem = check_variant(model, variant_suite, method, variant, params)
        result.checks[(method, variant)] = check
        if problem:
            problems.append(problem)
        elif check.estimate is not None:
            trace_peak(check.estimate, variant_suite, method, params)
    if problems:
        raise PreflightError(problems)
    return result


def trace_peak(estimate: Estimate, suite: SuiteSpec, method: str, params: dict[str, Any]) -> None:
    """Fill `estimate.peak` by tracing the method's step (`run.fit.traced_peak`), or say why it cannot."""
    from memft_bench.harness.run.fit import traced_peak
    from memft_bench.harness.trial.memory_trace import CannotTrace

    try:
        estimate.peak = traced_peak(suite, method, params)
    except CannotTrace as exc:
        estimate.peak_note = str(exc)
    except Exception as exc:  # the trial will tell; the pre-flight never fails on a trace
        estimate.peak_note = f"the trace failed ({describe_exception(exc)})"


def find_largest(checked: Preflight, run_plan: RunPlan, axis: str, progress: bool = False) -> None:
    """Each checked variant's largest `axis` value (micro_batch_size or cutoff_len) that fits `checked.memory`."""
    from memft_bench.harness.run.fit import largest_fitting
    from memft_bench.harness.trial.memory_trace import CannotTrace

    memory = checked.memory
    if memory is None:
        return
    params_of = {(m, v): p for m, v, p in run_plan.variants}
    for key, check in _bar(list(checked.checks.items()), f"largest {axis}", progress):
        if check.estimate is None or check.estimate.peak is None:
            continue
        suite = run_plan.suite_of(*key)
        traced: dict[int, int] = {}  # both searches share their traces
        with contextlib.suppress(CannotTrace):
            check.largest = largest = largest_fitting(suite, key[0], params_of.get(key), memory, axis,
                                                      check.estimate.peak, known=traced)
            room = int(memory * (1 - TIGHT))
            if largest.value is None or (largest.peak_bytes or 0) <= room:  # nothing to add, or the same answer
                continue
            check.largest_with_room = largest_fitting(suite, key[0], params_of.get(key), room, axis,
                                                      check.estimate.peak, known=traced)


def _bar(items: list, what: str, progress: bool) -> Any:
    """A progress bar over the variants on stderr (traces of a 7B model take seconds each)."""
    if not progress or len(items) < 2:
        return items
    import sys

    from tqdm import tqdm

    return tqdm(items, desc=what, unit="method", file=sys.stderr, leave=False)


def render_estimates(checked: Preflight, run_plan: RunPlan) -> str:
    """`bench run --dry-run`'s table: per method variant, the predicted training memory, whether it fits the
    memory asked about (or the device's free memory) and by how much, and the largest value that would fit."""
    from tabulate import tabulate

    memory = checked.memory
    where = checked.target_label or free_label(checked.device)
    axis = next((c.largest.axis for c in checked.checks.values() if c.largest), None)
    rows = []
    for method, variant, _ in run_plan.variants:
        check = checked.checks.get((method, variant))
        label = check.label if check else method_label(method, variant)
        if run_plan.suite_of(method, variant).budget.gradient_checkpointing and not backpropagates(method):
            label += " (checkpointing does not apply: forward passes only)"
        e = check.estimate if check else None
        if e is None:
            rows.append([label, *["?"] * 7, (check.note if check else None) or "not checked"])
            continue
        fits = _fits(e, memory)
        if check.note:
            fits = f"{fits} ({check.note})"
        row = [label, *(format_size(n) for n in (e.weights, e.gradients, e.optimizer, e.workspace, e.exact)),
               format_size(e.peak) if e.peak is not None else f"? ({e.peak_note})", fits]
        if axis:
            row.append(check.largest_cell())
        rows.append(row)
    headers = ["method", "weights", "gradients", "optimizer", "workspace", "exact parts", "predicted peak",
               f"fits in {format_size(memory)}" if memory is not None else "fits"]
    if axis:
        headers.append(f"largest {axis} that fits")
    table = tabulate(rows, headers=headers, tablefmt="github")
    shapes = {batch_shape(run_plan.suite_of(m, v).budget) for m, v, _ in run_plan.variants}
    shape = shapes.pop() if len(shapes) == 1 else \
        f"each variant's own, its swept setting in its label; the suite's is {batch_shape(run_plan.suite.budget)}"
    lines = [table, "",
             f"memory: {format_size(memory) if memory is not None else 'unknown'} ({where}). "
             f"{len(run_plan.trials)} trials: every task and seed of a method shares its row.",
             "Weights, gradients, optimizer state and workspace are exact from the model's shapes (meta device). The "
             f"predicted peak is the method's own training step traced on fake tensors at the budget's full batch "
             f"shape ({shape}): activations and transients included; batches of shorter records need less."]
    if checked.target_bytes is not None and run_plan.suite.model.precision != "fp32" \
            and not run_plan.device.startswith("cuda"):
        lines.append(f"Traced with this machine's CPU kernels: under {run_plan.suite.model.precision} a GPU's "
                     "autocast casts a different list of operations, so its peak can differ by a few percent.")
    if checked.optimizers_device == "cuda" and not run_plan.device.startswith("cuda"):
        lines.append("torch's optimizers are traced as they run on a GPU (their multi-tensor `foreach` path, whose "
                     "temporaries a CPU's per-tensor loop does not make); add --device cpu for a CPU's figure.")
    lines.append("Nothing was started.")
    return "\n".join(lines)


def batch_shape(budget: Any) -> str:
    """`4 x 256 tokens, every token a target, gradient checkpointing on`: the shape a budget's trace runs at."""
    return (f"{budget.micro_batch_size} x {budget.cutoff_len} tokens, every token a target"
            f"{', gradient checkpointing on' if budget.gradient_checkpointing else ''}")


def _fits(e: Estimate, memory: int | None) -> str:
    """`yes, 3.10 GiB spare` / `no, 1.20 GiB short` from the traced peak (the exact parts when untraced)."""
    if memory is None:
        return "?"
    need = e.peak if e.peak is not None else e.exact
    if need is None:
        return "?"
    basis = "" if e.peak is not None else " (exact parts only: not traced)"
    if need <= memory * (1 - TIGHT):
        return f"yes, {format_size(memory - need)} spare{basis}"
    if need <= memory:  # a GPU's caching allocator reserves more than it allocates; kernels' workspaces
        return f"tight: {format_size(memory - need)} spare{basis}, within {TIGHT:.0%} of the memory"
    return f"no, {format_size(need - memory)} short{basis}"
