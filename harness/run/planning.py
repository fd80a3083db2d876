"""Planning a run: (suite, methods, seeds) -> one trial per task x method x seed x variant.

Each trial has an id made of its names and a fingerprint of everything that determines its result (model,
task, budget, evaluation, method options, seed, device), so rerunning the same command skips what is
recorded and changing any option makes a new trial instead of silently reusing an old one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.fingerprint import fingerprint
from memft_bench.harness.results.rows import trial_label
from memft_bench.harness.spec.config import SuiteSpec


@dataclass
class Trial:
    task: str
    method: str
    seed: int
    spec: dict[str, Any]
    variant: str = ""

    @property
    def trial_id(self) -> str:
        return self.spec["trial_id"]

    @property
    def label(self) -> str:
        return trial_label(self.task, self.method, self.variant, self.seed)


@dataclass
class RunPlan:
    suite: SuiteSpec
    methods: list[str]
    out_dir: Path
    device: str
    trials: list[Trial] = field(default_factory=list)
    #: every (method, variant label, validated options) of the run, once: what the pre-flight checks.
    variants: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the plan resolved (state budgets), for the log
    #: (method, variant label) -> its budget section, for the variants of a budget sweep (others: the suite's)
    budgets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def suite_of(self, method: str, variant: str) -> SuiteSpec:
        """The suite as a variant's trials run it: the suite's own, or with its budget sweep's values."""
        budget = self.budgets.get((method, variant))
        if budget is None:
            return self.suite
        from memft_bench.harness.spec.config import suite_from_data

        return suite_from_data({**self.suite.to_data(), "budget": budget}, self.suite.name)


def _method_module(name: str) -> str | None:
    """The module a child process must import to find `name` (None for built-ins and entry points)."""
    from memft_bench.methods.base import get_method_class, plugin_entry_points
    from memft_bench.methods.builtin import BUILTIN_METHODS

    cls = get_method_class(name)
    if name in BUILTIN_METHODS or name in plugin_entry_points():
        return None
    if cls.__module__ == "__main__":
        raise ConfigError(
            f"method {name!r} is registered in __main__; trials run in their own process, so define it in an "
            "importable module or publish it through the `bench.methods` entry-point group"
        )
    return cls.__module__


#: (task, method, variant label, validated options) -> the configurations to run: (variant label, option values
#: to merge into the method's, extra fields of the trial spec) each.
Configurations = Callable[[str, str, str, dict[str, Any]], list[tuple[str, dict[str, Any], dict[str, Any]]]]


@dataclass
class Stage:
    """One stage of a tuned run (harness/run/tuning.py): the search, or the final trials at the chosen values."""

    phase: str  # "search" or "final" (rows.PHASES): part of every trial's fingerprint and row
    configurations: Configurations
    seeds: list[int] | None = None  # None: the suite's
    #: suite section -> field -> value for this stage's trials (the search's own step budget, no untrained score)
    suite_changes: dict[str, dict[str, Any]] = field(default_factory=dict)


def plan(
    suite: SuiteSpec,
    methods: list[str],
    out_dir: Path,
    device: str,
    sweeps: dict[str, dict[str, list[Any]]] | None = None,
    command: str | None = None,
    stage: Stage | None = None,
) -> RunPlan:
    """Validate every method, variant and option, then list the trials (task-major, as reports read); a `stage`
    turns each method variant into the configurations it gives, and marks the trials as that stage's."""
    from memft_bench.harness.core.options import to_dict
    from memft_bench.harness.run.budget_resolution import resolve as resolve_budget
    from memft_bench.harness.spec.sweeps import BUDGET, merge, variant_label, variants
    from memft_bench.methods.base import build_options

    if not methods:
        raise ConfigError(f"suite {suite.name} names no default_methods; pass --methods a,b,c")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise ConfigError(f"--methods lists {', '.join(duplicates)} more than once")
    modules = {m: _method_module(m) for m in methods}
    preflight_data(suite)
    all_sweeps = merge(suite.sweeps, sweeps or {})
    budget_values = variants(all_sweeps, BUDGET) if BUDGET in all_sweeps else [{}]
    all_sweeps.pop(BUDGET, None)
    for swept in sweeps or {}:
        if swept != BUDGET and swept not in methods:
            raise ConfigError(f"--set {swept}.…: {swept} is swept but not run (add it to --methods)")
    instances: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []  # (method, label, params, raw options)
    run_plan_notes: list[str] = []
    for m in methods:
        for values in variants(all_sweeps, m):
            label = variant_label(values)
            where = f"{suite.name}: methods.{m}" + (f" [{label}]" if label else "")
            merged = {**(suite.methods.get(m) or {}), **values}
            if m in suite.state_budgets:  # SGC's k and s from a state budget and the model's shapes
                merged, resolution = resolve_budget(suite, m, merged)
                if resolution is not None:
                    run_plan_notes.append(resolution.note)
            params = to_dict(build_options(m, merged, where))
            instances.append((m, label, params, merged))
    marked = {"phase": stage.phase} if stage else {}  # a stage's trials never share an id with a plain run's
    run_plan = RunPlan(suite, methods, out_dir, device, notes=run_plan_notes)
    for budget_change in budget_values:
        _add_trials(run_plan, suite, budget_change, instances, stage, modules, command, marked)
    return run_plan


def _add_trials(run_plan: RunPlan, suite: SuiteSpec, budget_change: dict[str, Any],
                instances: list[tuple[str, str, dict[str, Any], dict[str, Any]]], stage: Stage | None,
                modules: dict[str, str | None], command: str | None, marked: dict[str, str]) -> None:
    """The trials of one budget variant (the suite's own budget when nothing is swept), task-major."""
    from memft_bench.harness.core.options import to_dict
    from memft_bench.harness.results import predictions
    from memft_bench.harness.spec.config import suite_from_data
    from memft_bench.harness.spec.sweeps import variant_label
    from memft_bench.methods.base import build_options

    out_dir, device = run_plan.out_dir, run_plan.device
    suite_data = suite.to_data()
    if budget_change:  # validated as the suite would be (a time budget with a decaying schedule, ...)
        suite_data["budget"] = {**suite_data["budget"], **budget_change}
        budget_suite = suite_from_data(suite_data, f"{suite.name} [{variant_label(budget_change)}]")
        suite_data["budget"] = budget_suite.to_data()["budget"]
    budget_label = variant_label(budget_change)
    for section, changes in (stage.suite_changes if stage else {}).items():
        suite_data[section] = {**suite_data[section], **changes}
    shared = {k: suite_data[k] for k in ("model", "budget", "evaluation", "data_seed")}
    for task in suite.tasks:
        # a file task's rows depend on its files' bytes, not only their paths: edited data is a new trial
        data = {"data": _file_digest(task)} if task.source == "file" else {}
        for method, label, params, merged in instances:
            base = ",".join(part for part in (budget_label, label) if part)  # the budget's and the method's
            configurations = stage.configurations(task.name, method, base, params) if stage else [(base, {}, {})]
            for config_label, values, extra in configurations:
                where = f"{suite.name}: methods.{method}" + (f" [{config_label}]" if config_label else "")
                config_params = to_dict(build_options(method, {**merged, **values}, where)) if values else params
                if (method, config_label, config_params) not in run_plan.variants:
                    run_plan.variants.append((method, config_label, config_params))
                    if budget_change:
                        run_plan.budgets[(method, config_label)] = suite_data["budget"]
                for seed in (stage.seeds if stage and stage.seeds else suite.seeds):
                    key = fingerprint({**shared, "task": to_dict(task), "method": method, "params": config_params,
                                       "seed": seed, "device": device, **marked, **data})
                    untrained = fingerprint({**shared, "task": to_dict(task), "seed": seed, "device": device, **data})
                    label_id = trial_label(task.name, method, config_label, seed)
                    spec = {
                        "untrained_score_file": str(out_dir / "untrained" /
                                                    f"{task.name}-seed{seed}-{untrained}.json"),
                        "suite": suite_data, "task": task.name, "method": method, "variant": config_label,
                        "method_module": modules[method], "method_params": config_params, "seed": seed,
                        "device": device, "run_id": out_dir.name, "command": command,
                        "trial_id": f"{label_id}/{stage.phase}/{key}" if stage else f"{label_id}/{key}",
                        **marked, **extra,
                    }
                    spec["predictions_file"] = str(out_dir / predictions.relative_path(spec["trial_id"]))
                    run_plan.trials.append(Trial(task.name, method, seed, spec, config_label))


def _file_digest(task: Any) -> str:
    from memft_bench.harness.sources.user_files import content_digest

    return content_digest(task.train_file, task.test_file)


def preflight_data(suite: SuiteSpec) -> None:
    """Read every data file the trials will read, so a missing or malformed one stops the run before training."""
    from memft_bench.harness.sources import commonsense

    for task in suite.tasks:
        if task.source == "math":
            from memft_bench.harness.sources import math_data

            root = math_data.resolve_math_dir(task.data_dir)
            if task.data_dir is None:
                task.data_dir = str(root)
            math_data.load_gsm8k_split(root, "train")
            for name in task.eval_tasks:
                math_data.load_math_test_items(root, name, None, 0)
        if task.source == "file":  # every row checked: a bad one is named before any trial starts
            from memft_bench.harness.sources import user_files

            user_files.load_file_task(task.train_file, task.test_file, task.columns, task.scoring, task.options,
                                      task.answer_regex, task.test_fraction, suite.data_seed)
        if task.validation_size:  # the split as the trials make it: a size the data cannot give stops here
            from memft_bench.harness.trial.data import load_task

            if task.source == "commonsense" and task.data_dir is None:
                task.data_dir = str(commonsense.resolve_data_dir(None))
            load_task(task, suite, 0)
        if task.source == "commonsense":
            data_dir = commonsense.resolve_data_dir(task.data_dir)
            if task.data_dir is None:
                task.data_dir = str(data_dir)  # trials see the same directory, whatever their environment
            commonsense.training_mix(data_dir, seed=0)  # the same files, chosen the same way, as the trials
            for name in task.eval_tasks:
                commonsense.load_test_set(data_dir, name)
