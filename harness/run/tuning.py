"""A tuned run: an equal-budget search per method on a validation split, then the final trials at the chosen values.

Fair by protocol rather than by hand: a method that looks weak at the learning rate someone wrote into a suite may
only be mis-tuned. With a `tuning:` section (or `bench run --tune`) the run has two stages, planned by
`harness/run/planning.py` as any sweep (resumable, `--jobs`, `--devices`, Slurm):

1. the search: every method at every configuration of its grid (the same number of configurations for every
   method, each trained for the same `tuning.steps`, on one seed), scored on the task's validation split, a
   seeded part of its *training* data held out of training (`harness/trial/data.py: hold_out`); no test item is
   scored or even loaded into a choice;
2. the choice (`choose`): per task and method, the configuration with the best validation accuracy, ties broken
   by the lower validation loss, then by the grid's order; a value on the edge of its grid is flagged, since the
   best may lie beyond it;
3. the final trials: the chosen configuration at the suite's full budget over its seeds, scored once on the tests.
   Their rows carry the whole search (`tuning`): every searched value with its validation scores, and the choice.

`DIR/tuning.json` records the protocol and the choices. Reports show the final rows in their tables and the
search in a section of its own (`harness/analysis/tuning_report.py`); they never mix the two.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.records_io import write_json_atomic
from memft_bench.harness.run.planning import RunPlan, Stage
from memft_bench.harness.spec.config import SuiteSpec
from memft_bench.harness.spec.sweeps import variant_label
from memft_bench.harness.spec.tuning import TuningSpec, method_grid

SUMMARY_FILE = "tuning.json"


@dataclass
class Choice:
    """What the search chose for one task, method and variant (or why it chose nothing)."""

    task: str
    method: str
    variant: str
    knobs: list[str]
    #: every configuration searched, in grid order: its values, status, validation accuracy and loss
    searched: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Any] | None = None  # None: no configuration finished the search
    on_edge: list[str] = field(default_factory=list)  # knobs whose chosen value is the grid's smallest or largest
    reason: str | None = None  # why nothing was chosen

    def record(self, steps: int, validation_size: int) -> dict[str, Any]:
        """The `tuning` field of the final trials' rows."""
        return {"knobs": self.knobs, "searched": self.searched, "chosen": self.values, "on_edge": self.on_edge,
                "search_steps": steps, "validation_size": validation_size, "unresolved": self.reason}


def prepare(suite: SuiteSpec, tuning: TuningSpec) -> None:
    """Give every task without a validation split of its own the tuning's size (before planning: it is part of
    every trial's fingerprint, since the final trials then train without those records)."""
    for task in suite.tasks:
        if not task.validation_size:
            task.validation_size = tuning.validation_size


def config_label(base: str, values: dict[str, Any]) -> str:
    return ",".join(part for part in (base, variant_label(values)) if part)


def search_stage(suite: SuiteSpec, tuning: TuningSpec, methods: list[str]) -> Stage:
    """Every method's grid, on one seed, at the search's step budget, scored on the validation split only."""
    sizes: dict[str, int] = {}

    def configurations(task: str, method: str, label: str, params: dict[str, Any]):
        missing = [k for k in tuning.knobs if k not in params]
        if missing:
            raise ConfigError(f"{suite.name}.tuning.knobs.{missing[0]}: method {method} has no option {missing[0]!r} "
                              f"(its options: {', '.join(sorted(params))}); search it only for the methods that have "
                              "it, in a run of those methods")
        grid = method_grid(tuning, method, params)
        sizes[method] = len(grid)
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{m} {n}" for m, n in sizes.items())
            raise ConfigError(f"{suite.name}.tuning: every method must search the same number of configurations "
                              f"(equal budget); got {listing}")
        return [(config_label(label, values), values,
                 {"search_values": values, "base_variant": label, "tuning": {"search": values}}) for values in grid]

    seed = tuning.seed if tuning.seed is not None else suite.seeds[0]
    steps = tuning.search_steps(suite.budget.steps)
    return Stage("search", configurations, [seed], {"budget": {"steps": steps},
                                                     "evaluation": {"before_training": False}})


def _loss_key(row: dict[str, Any]) -> float:
    loss = row.get("validation_loss")
    return loss if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf


def choose(search: RunPlan, rows: list[dict[str, Any]], tuning: TuningSpec) -> dict[tuple[str, str, str], Choice]:
    """(task, method, variant) -> the choice: best validation accuracy, then lowest validation loss, then the
    grid's order. Only search rows of this plan count (a trial id is its configuration's fingerprint)."""
    by_id = {row["trial_id"]: row for row in rows}
    choices: dict[tuple[str, str, str], Choice] = {}
    for trial in search.trials:
        base = trial.spec["base_variant"]
        key = (trial.task, trial.method, base)
        choice = choices.setdefault(key, Choice(trial.task, trial.method, base, list(tuning.knobs)))
        row = by_id.get(trial.trial_id) or {}
        choice.searched.append({
            "values": trial.spec["search_values"], "status": row.get("status", "missing"),
            "validation_accuracy": row.get("validation_accuracy"), "validation_loss": row.get("validation_loss"),
            "reason": row.get("reason"), "trial_id": trial.trial_id})
    for choice in choices.values():
        finished = [(i, s) for i, s in enumerate(choice.searched)
                    if s["status"] == "ok" and s["validation_accuracy"] is not None]
        if not finished:
            reasons = "; ".join(f"{variant_label(s['values'])}: {s['status']}" for s in choice.searched)
            choice.reason = f"tuning: no configuration of the search finished ok ({reasons})"
            continue
        _, best = min(finished, key=lambda pair: (-pair[1]["validation_accuracy"], _loss_key(pair[1]), pair[0]))
        choice.values = dict(best["values"])
        choice.on_edge = edge_knobs(choice)
    return choices


def edge_knobs(choice: Choice) -> list[str]:
    """Knobs whose chosen value is the smallest or the largest of more than two searched: the best may lie beyond."""
    out = []
    for knob in choice.knobs:
        values = sorted({s["values"][knob] for s in choice.searched if isinstance(s["values"][knob], (int, float))})
        if len(values) > 2 and choice.values and choice.values[knob] in (values[0], values[-1]):
            out.append(knob)
    return out


def final_stage(choices: dict[tuple[str, str, str], Choice], tuning: TuningSpec, suite: SuiteSpec) -> Stage:
    """Each method variant at its chosen values, over the suite's seeds at its full budget. A method with nothing
    chosen still gets its final trials, which end at once as error rows saying why."""
    steps = tuning.search_steps(suite.budget.steps)

    def configurations(task: str, method: str, label: str, params: dict[str, Any]):
        choice = choices[(task, method, label)]
        size = suite.task(task).validation_size
        return [(label, choice.values or {}, {"tuning": choice.record(steps, size)})]

    return Stage("final", configurations)


def write_summary(out_dir: Path, suite: SuiteSpec, tuning: TuningSpec, choices: dict[tuple[str, str, str], Choice],
                  ) -> Path:
    """DIR/tuning.json: the protocol (knobs, budget, validation sizes) and every choice with its search."""
    path = out_dir / SUMMARY_FILE
    write_json_atomic(path, {
        "knobs": tuning.knobs, "methods": tuning.methods, "search_steps": tuning.search_steps(suite.budget.steps),
        "final_steps": suite.budget.steps, "validation_size": {t.name: t.validation_size for t in suite.tasks},
        "selection": "best validation accuracy; ties: lower validation loss, then grid order",
        "choices": [asdict(c) for c in choices.values()],
    })
    return path


def read_summary(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / SUMMARY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
