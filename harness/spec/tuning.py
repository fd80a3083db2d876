"""The tuning protocol's settings: which knobs to search, over which values, on what budget, chosen how.

A suite's `tuning:` section (or `bench run --tune`, which uses `DEFAULT_TUNING` when the suite has none) asks for
an equal-budget search per method before the final run: every method gets the same number of configurations,
each trained for `steps` on the task's training data minus a seeded validation split and scored on that
validation split only; the configuration with the best validation accuracy (ties: the lower validation loss)
is then trained at the suite's full budget over its seeds and scored once on the test sets
(`harness/run/tuning.py`). A knob's values are written three ways:

- a list of values, the same for every method: `lr: [1.0e-4, 3.0e-4, 1.0e-3]`;
- a log-spaced range: `lr: {log_range: [1.0e-5, 1.0e-2], points: 4}`;
- factors of each method's own configured value: `lr: {scale: [0.1, 0.3, 1, 3, 10]}` (a learning rate that
  suits MeZO is a thousand times smaller than full fine-tuning's; factors give each method a grid around its
  own while the number of configurations stays equal).

`methods:` replaces a knob's values for one method, in the same forms. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option

#: `--tune` on a suite without a `tuning:` section: the learning rate, five factors around each method's own.
DEFAULT_TUNING: dict[str, Any] = {"knobs": {"lr": {"scale": [0.1, 0.3, 1.0, 3.0, 10.0]}}}


@dataclass
class TuningSpec:
    knobs: dict = option(default_factory=dict, help="knob -> values: a list, {log_range: [low, high], points: n} or "
                         "{scale: [factors of the method's own value]}; every method searches every knob")
    methods: dict = option(default_factory=dict, help="method -> knob -> values: replaces a knob's values for that "
                           "method (the number of configurations must stay the same for every method)")
    steps: int = option(0, "steps of each search trial (0: the suite's budget.steps); at least the timing warm-up "
                        "plus one", min=0)
    validation_size: int = option(200, "records held out of each task's training data for the search, when the task "
                                  "sets no validation_size of its own", min=1)
    seed: int | None = option(None, "the seed of the search trials (default: the suite's first seed)")

    def validate(self, where: str) -> None:
        if not self.knobs:
            raise ConfigError(f"{where}.knobs: name at least one knob to search (e.g. lr: {{scale: [0.3, 1, 3]}})")
        for knob, values in self.knobs.items():
            check_values(values, f"{where}.knobs.{knob}")
        for method, knobs in self.methods.items():
            if not isinstance(knobs, dict) or not knobs:
                raise ConfigError(f"{where}.methods.{method}: expected knob: values, got {knobs!r}")
            for knob, values in knobs.items():
                if knob not in self.knobs:
                    raise ConfigError(f"{where}.methods.{method}.{knob}: not a knob of the search (knobs: "
                                      f"{', '.join(self.knobs)}); add it to knobs first")
                check_values(values, f"{where}.methods.{method}.{knob}")

    def search_steps(self, budget_steps: int) -> int:
        return self.steps or budget_steps


def check_values(values: Any, where: str) -> None:
    """A knob's values in one of the three forms, non-empty (an empty grid would search nothing)."""
    if isinstance(values, list):
        if not values:
            raise ConfigError(f"{where}: an empty grid searches nothing; list at least one value")
        return
    if not isinstance(values, dict) or len(values) != (2 if "log_range" in values else 1):
        raise ConfigError(f"{where}: expected a list of values, {{log_range: [low, high], points: n}} or "
                          f"{{scale: [factors]}}; got {values!r}")
    if "scale" in values:
        factors = values["scale"]
        if not isinstance(factors, list) or not factors or not all(_positive(f) for f in factors):
            raise ConfigError(f"{where}.scale: expected a non-empty list of positive factors, got {factors!r}")
        return
    bounds, points = values.get("log_range"), values.get("points")
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_positive(b) for b in bounds)
            and bounds[0] < bounds[1]):
        raise ConfigError(f"{where}.log_range: expected [low, high] with 0 < low < high, got {bounds!r}")
    if not isinstance(points, int) or isinstance(points, bool) or points < 2:
        raise ConfigError(f"{where}.points: expected an integer >= 2, got {points!r}")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def knob_values(values: Any, own: Any, where: str) -> list[Any]:
    """The values one method searches for one knob; `own` is the method's configured value (for `scale`)."""
    if isinstance(values, list):
        return list(values)
    if "scale" in values:
        if not _positive(own):
            raise ConfigError(f"{where}: scale needs the method's own value to be a positive number; it is {own!r} "
                              "(give a list of values for this method under tuning.methods)")
        return [_round(own * f) for f in values["scale"]]
    low, high = values["log_range"]
    n = values["points"]
    return [_round(math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1))) for i in range(n)]


def _round(value: float) -> float:
    """Four significant digits: 3e-4 x 3 is 9e-4, not 0.0009000000000000001, in trial ids and reports."""
    return float(f"{value:.4g}")


def method_grid(tuning: TuningSpec, method: str, own_options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configuration `method` is searched at: the product of its knobs' values, knobs in order."""
    import itertools

    overrides = tuning.methods.get(method) or {}
    names = list(tuning.knobs)
    axes = [knob_values(overrides.get(k, tuning.knobs[k]), own_options.get(k), f"tuning: {method}.{k}")
            for k in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*axes)]
