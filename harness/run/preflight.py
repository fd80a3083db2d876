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
against the trials' measured accounting by the tests. Activations are an order-of-magnitude estimate
(`activation_bytes`), shown apart and never used to refuse a trial. `bench run --dry-run` prints all of
it; `bench run` refuses, as an `oom` row that never starts, a trial whose exact parts alone exceed the
memory the device has free.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memft_bench.harness.core.errors import BenchError, ConfigError, describe_exception
from memft_bench.harness.results.rows import method_label
from memft_bench.harness.trial.meta_model import CannotBuildOnMeta, build_meta_model

if TYPE_CHECKING:
    import torch

    from memft_bench.harness.run.planning import RunPlan
    from memft_bench.harness.spec.config import SuiteSpec

GiB = 2**30
MiB = 2**20


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
    activations: int

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

    def refusal(self, method: str, variant: str) -> str | None:
        """Why the trials of this variant cannot fit, or None."""
        check = self.checks.get((method, variant))
        if check is None or check.estimate is None or check.estimate.exact is None or self.free_bytes is None:
            return None
        need = check.estimate.exact
        if need <= self.free_bytes:
            return None
        e = check.estimate
        return (f"pre-flight: predicted {gib(need)} (weights {gib(e.weights)}, gradients {gib(e.gradients)}, "
                f"optimizer {gib(e.optimizer)}, workspace {gib(e.workspace)}; activations not counted) exceeds the "
                f"{gib(self.free_bytes)} free on {self.device}, so the trial was not started; it needs "
                f"{gib(need - self.free_bytes)} more: a method option that shrinks its state, a smaller model, "
                "model.precision=bf16-mixed, or a device with more memory would fit (--no-fit-check runs it anyway)")


def gib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / MiB:.1f} MiB"


def activation_bytes(model: torch.nn.Module, suite: SuiteSpec, uses_backward: bool, compute_bytes: int) -> int:
    """An order-of-magnitude estimate of the activations one micro-batch keeps for backward (Llama-shaped
    decoder: per token and layer about 10 hidden + 4 MLP-width values and the attention row), plus the
    logits and their float32 loss copy. A forward-only method keeps about one layer's worth. With
    `budget.gradient_checkpointing`, backward keeps each layer's input (one hidden vector per token) and one
    layer's worth being recomputed. Shown apart from the exact parts and never used to refuse a trial:
    kernels (SDPA, fused losses) change it."""
    config = model.config
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    width = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    seq = suite.budget.cutoff_len
    tokens = suite.budget.micro_batch_size * seq
    per_layer = tokens * (10 * hidden + 4 * width + heads * seq) * compute_bytes
    logits = tokens * vocab * (compute_bytes + 4) * (2 if uses_backward else 1)
    if not uses_backward:
        return per_layer + logits
    if suite.budget.gradient_checkpointing:
        return tokens * hidden * compute_bytes * layers + per_layer + logits
    return per_layer * layers + logits


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
    compute_bytes = 2 if precision.autocast_dtype is not None else instance.precision.storage_dtype.itemsize
    check.estimate = Estimate(
        weights=model_bytes(instance.model) if weights is None else int(weights),
        gradients=None if state is None else int(state.get("gradients", 0)),
        optimizer=None if state is None else int(sum(state[k] for k in optimizer_keys)),
        workspace=workspace,
        activations=activation_bytes(instance.model, suite, instance.uses_backward, compute_bytes),
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
    """Memory the device has free now: MemAvailable on a CPU, NVML's free figure on a GPU (found by UUID, as
    the meters find it; no CUDA context is created here). None when it cannot be read."""
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    try:
        import pynvml

        from memft_bench.harness.measure.memory import nvml_handle

        pynvml.nvmlInit()
        try:
            handle, _ = nvml_handle(pynvml, int(device.partition(":")[2] or 0))
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def run_preflight(run_plan: RunPlan, variants: Iterable[tuple[str, str, dict[str, Any]]]) -> Preflight:
    """Check every (method, variant label, options) of the plan; raise PreflightError listing every problem."""
    suite = run_plan.suite
    result = Preflight({}, free_memory_bytes(run_plan.device), run_plan.device)
    problems: list[str] = []
    for method, variant, params in variants:
        try:
            model = build_meta_model(suite.model)
        except CannotBuildOnMeta as exc:
            result.notes.append(f"pre-flight skipped: the model cannot be built on the meta device ({exc}); "
                                "each trial checks its own options when it starts")
            return result
        check, problem = check_variant(model, run_plan.suite_of(method, variant), method, variant, params)
        result.checks[(method, variant)] = check
        if problem:
            problems.append(problem)
    if problems:
        raise PreflightError(problems)
    return result


def render_estimates(checked: Preflight, run_plan: RunPlan) -> str:
    """`bench run --dry-run`'s table: per trial, the predicted training memory and whether it fits."""
    from tabulate import tabulate

    rows = []
    for trial in run_plan.trials:
        check = checked.checks.get((trial.method, trial.variant))
        e = check.estimate if check else None
        if e is None:
            rows.append([trial.label, *["?"] * 6, (check.note if check else None) or "not checked"])
            continue
        refusal = checked.refusal(trial.method, trial.variant)
        fits = "no: refused" if refusal else ("?" if checked.free_bytes is None or e.exact is None else "yes")
        if not refusal and e.exact is not None and checked.free_bytes is not None \
                and e.exact + e.activations > checked.free_bytes:
            fits = "maybe (with activations)"
        rows.append([trial.label, gib(e.weights), gib(e.gradients), gib(e.optimizer), gib(e.workspace),
                     gib(e.exact), f"~{gib(e.activations)}", fits if not check or not check.note else
                     f"{fits} ({check.note})"])
    table = tabulate(rows, headers=["trial", "weights", "gradients", "optimizer", "workspace", "exact total",
                                    "activations", "fits"], tablefmt="github")
    free = gib(checked.free_bytes) if checked.free_bytes is not None else "unknown"
    return (f"{table}\n\nfree memory on {checked.device}: {free}. Weights, gradients, optimizer state and workspace "
            "are predicted from the model's shapes on the meta device; activations are a rough estimate, not used "
            "to refuse a trial. Nothing was started.")
