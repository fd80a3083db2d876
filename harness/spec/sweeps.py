"""Sweeps over a method's size knob: `--set lora.r=4,8,16` or a `sweeps:` block in the suite file.

A sweep turns one method into variants, one trial each (per task and seed), so the memory/accuracy
frontier (LoRA's rank, GaLore's rank, SGC's k, ...) comes from one command. Several swept options of
one method combine as a grid. A comma in the value of a list-typed option (`target_modules`) keeps its
meaning of a list; only scalar options sweep.
"""

from __future__ import annotations

import itertools
import typing
from typing import Any

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.spec.config import SUITE_SECTIONS, check_budget_field, check_override_section, parse_override

Sweeps = dict[str, dict[str, list[Any]]]


def _is_list_option(method: str, option: str) -> bool:
    from memft_bench.methods.base import get_method_class

    hints = typing.get_type_hints(get_method_class(method).Options)
    if option not in hints:
        return False  # the options schema reports the unknown name when the value is built
    return typing.get_origin(hints[option]) in (list, tuple)


def sweep_values(value: str, text: str) -> list[str]:
    """The values of a comma-separated sweep, each once: a value given twice (`64,64`, `true,True`) would plan two
    trials with one trial id, and both would run and write a row."""
    values = [v.strip() for v in value.split(",")]
    if any(not v for v in values):
        raise ConfigError(f"--set {text!r}: a sweep lists values separated by commas, with none empty")
    seen: set[str] = set()
    for v in values:
        if v.lower() in seen:
            raise ConfigError(f"--set {text!r}: {v!r} is given twice; list each value of a sweep once")
        seen.add(v.lower())
    return values


def split_overrides(overrides: list[str]) -> tuple[list[str], Sweeps]:
    """(plain overrides, sweeps) from `--set` texts: `lora.r=4,8,16` is a sweep, `lora.r=8` is not."""
    plain: list[str] = []
    sweeps: Sweeps = {}
    for text in overrides:
        (section, field), value = parse_override(text)
        check_override_section(section, text)
        if section == BUDGET and "," in value:  # a budget field: one variant of the whole suite per value
            check_budget_field(field, text)
            sweeps.setdefault(BUDGET, {})[field] = sweep_values(value, text)
        elif section not in SUITE_SECTIONS and "," in value and not _is_list_option(section, field):
            sweeps.setdefault(section, {})[field] = sweep_values(value, text)
        else:
            plain.append(text)
    return plain, sweeps


#: The sweep key of the suite's budget: `--set budget.cutoff_len=128,256` or `sweeps: {budget: {cutoff_len: [...]}}`
#: runs every method once per value (sequence length, micro-batch size, gradient checkpointing: memory's knobs).
BUDGET = "budget"


def merge(base: Sweeps, extra: Sweeps) -> Sweeps:
    out = {m: dict(opts) for m, opts in base.items()}
    for method, options in extra.items():
        out.setdefault(method, {}).update(options)
    return out


def variants(sweeps: Sweeps, method: str) -> list[dict[str, Any]]:
    """The option values of each variant of `method` ([{}] when it is not swept)."""
    options = sweeps.get(method) or {}
    if not options:
        return [{}]
    for name, values in options.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweeps.{method}.{name}: expected a non-empty list of values, got {values!r}")
    names = list(options)
    return [dict(zip(names, combo)) for combo in itertools.product(*(options[n] for n in names))]


def variant_label(values: dict[str, Any]) -> str:
    """`r=4` or `k=64,s=8`: how reports and trial ids name a variant."""
    return ",".join(f"{k}={v}" for k, v in values.items())
