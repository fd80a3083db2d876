"""Resolving a suite's state budgets to SGC's k and s, from the model's shapes on the `meta` device.

The rule (the budget's syntax is in `spec/budgets.py`): SGC keeps 2k numbers (p and q) per adapted weight,
or per chunk (MESGC); CESGC adds its projectors, which do not depend on k. For a budget of B state elements
the resolved k is the largest with 2k * (blocks) + (projectors) <= B, and s = round(s_ratio * k) (at least
MIN_S, below k). Kept apart from the schema because it builds a model and creates methods: the suite's
loading must not need torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.spec.budgets import parse_budgets, parse_state

if TYPE_CHECKING:
    import torch

    from memft_bench.harness.spec.config import SuiteSpec

MIN_S = 4


@dataclass
class Resolution:
    """What a budget resolved to, and the figures behind it (for the run's log and tests)."""

    k: int
    s: int
    budget_elements: int
    state_elements: int  # SGC's optimizer state at this k
    note: str


def _no_loss(model: Any, batch: Any) -> Any:  # the probes below never run a step
    raise AssertionError("a shape probe does not train")


_META_MODELS: dict[str, Any] = {}


def _meta_model(suite: SuiteSpec) -> torch.nn.Module:
    """The suite's model on `meta`, built once per model spec (a plan resolves every variant from it)."""
    from memft_bench.harness.core.fingerprint import fingerprint
    from memft_bench.harness.core.options import to_dict
    from memft_bench.harness.trial.meta_model import CannotBuildOnMeta, build_meta_model

    key = fingerprint(to_dict(suite.model))
    if key not in _META_MODELS:
        try:
            _META_MODELS[key] = build_meta_model(suite.model)
        except CannotBuildOnMeta as exc:
            raise ConfigError(f"{suite.name}: state_budgets need the model's shapes, and the model cannot be built "
                              f"on the meta device ({exc}); give k and s instead") from None
    return _META_MODELS[key]


def _model_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reference_state_elements(suite: SuiteSpec, method: str, model: torch.nn.Module) -> int:
    """`method`'s optimizer state with this suite's options, in float32 elements (its bytes / 4, so an 8-bit
    optimizer's state counts at its real size against SGC's float32 moments), from the method's own
    prediction on the meta model (`Method.predicted_state_bytes`, the pre-flight's figure)."""
    from memft_bench.harness.core.errors import BenchError
    from memft_bench.harness.core.precision import Precision
    from memft_bench.methods.base import create

    where = f"{suite.name}: state_budgets (\"x {method}\")"
    try:
        probe = create(method, suite.methods.get(method) or {}, _no_loss, precision=Precision(suite.model.precision))
        probe.total_steps = suite.budget.steps
        probe.prepare(model)
        probe.apply_precision()
        predicted = probe.predicted_state_bytes(grad_accum=suite.budget.grad_accum)
    except BenchError:
        raise
    except Exception as exc:  # a method whose code cannot run on meta
        raise ConfigError(f"{where}: cannot count {method}'s state from the model's shapes "
                          f"({type(exc).__name__}: {exc}); use lora, dora, galore or full") from None
    if predicted is None:
        raise ConfigError(f"{where}: {method} does not predict its state from shapes; use lora, dora, galore or full")
    return sum(v for key, v in predicted.items() if key not in ("trainable_params", "gradients")) // 4


def resolve(suite: SuiteSpec, method: str, values: dict[str, Any], model: torch.nn.Module | None = None
            ) -> tuple[dict[str, Any], Resolution | None]:
    """`values` with k and s filled from the suite's budget for `method` (explicit ones kept)."""
    budgets = parse_budgets(suite.state_budgets, f"{suite.name}: state_budgets")
    budget = budgets.get(method)
    if budget is None or ("k" in values and "s" in values):
        return values, None
    from memft_bench.methods.base import create, get_method_class
    from memft_bench.methods.sgc import Cesgc, Sgc

    where = f"{suite.name}: state_budgets.{method}"
    if not issubclass(get_method_class(method), Sgc):
        raise ConfigError(f"{where}: only the SGC methods (sgc, mesgc, cesgc) take a state budget")
    base = model if model is not None else _meta_model(suite)
    reference, factor = parse_state(budget.state, f"{where}.state")
    if reference == "%":
        budget_elements = int(factor * _model_parameters(base))
        source = f"{factor * 100:g}% of {_model_parameters(base)} parameters"
    else:
        ref_elements = reference_state_elements(suite, reference, copy.deepcopy(base))
        budget_elements = int(factor * ref_elements)
        source = f"{factor:g}x {reference}'s {ref_elements} state elements"
    # The adapted weights' blocks, from the method's own target matching and chunking (k=2, s=1 fit any).
    probe = create(method, {**values, "k": 2, "s": 1}, _no_loss)
    assert isinstance(probe, Sgc)
    probe.prepare(copy.deepcopy(base))
    blocks = sum(b.chunks for b in probe.blocks)
    fixed = 0
    if isinstance(probe, Cesgc):  # P (min(m, n) x r) per weight, whatever k is
        fixed = sum(min(probe.options.rank, *b.param.shape) * min(b.param.shape) for b in probe.blocks)
    shortest = min(b.length for b in probe.blocks)
    k = int(values["k"]) if "k" in values else (budget_elements - fixed) // (2 * blocks)
    if "k" not in values and k < 2:
        raise ConfigError(f"{where}.state: {budget.state!r} gives k={k} over {blocks} blocks; "
                          f"k >= 2 needs a budget of at least {4 * blocks + fixed} state elements")
    if k > shortest:
        raise ConfigError(f"{where}.state: {budget.state!r} gives k={k}, above the shortest block ({shortest} "
                          f"entries); k <= {shortest} fits (a budget of {2 * shortest * blocks + fixed} elements)")
    # At least MIN_S entries per block (s = 1 would keep one entry of a 2048-entry chunk: not SGC any more).
    s = int(values["s"]) if "s" in values else min(max(MIN_S, round(budget.s_ratio * k)), k - 1)
    state = 2 * k * blocks + fixed
    note = (f"{method}: state budget {budget.state} = {source} = {budget_elements} -> k={k}, s={s} "
            f"({state} state elements over {blocks} blocks)")
    return {**values, "k": k, "s": s}, Resolution(k, s, budget_elements, state, note)
