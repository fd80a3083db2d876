"""The `bench` command line.

Answers fast: this module imports neither torch nor transformers; each command imports what it needs
when it runs. Bad input ends in one line `bench: error: ...` on stderr (one per problem when the
pre-flight finds several) and exit status 2, never a traceback.

`bench run`'s exit status says what happened: 0 when at least one trial is ok and none hit a harness
error (status `error`); 1 when none succeeded, or a trial hit a harness error, or with `--strict` any
trial did not finish ok; 2 for bad input (nothing started); 130 when interrupted.
"""

from __future__ import annotations

import functools
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.run.execution import Execution, execution_options

USAGE_ERROR = 2
TRIALS_FAILED = 1
INTERRUPTED = 130


def _fail(message: str) -> None:
    for line in message.splitlines() or [""]:
        click.echo(f"bench: error: {line}", err=True)
    sys.exit(USAGE_ERROR)


def _warn(message: str) -> None:
    click.echo(f"bench: warning: {message}", err=True)


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the harness's input errors into one line and exit status 2, and each damaged line a results
    file reader meets into one `bench: warning:` line (not Python's two-line warning format)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from memft_bench.harness.results.rows import ResultsWarning

        with warnings.catch_warnings():
            original = warnings.showwarning

            def show(message: Any, category: type[Warning], *rest: Any, **kw: Any) -> None:
                if issubclass(category, ResultsWarning):
                    _warn(str(message))
                else:
                    original(message, category, *rest, **kw)

            warnings.showwarning = show
            warnings.simplefilter("always", ResultsWarning)
            try:
                return func(*args, **kwargs)
            except BenchError as exc:
                _fail(str(exc))
            except KeyboardInterrupt:  # before or after the sweep (planning, a download, the pre-flight)
                click.echo("bench: interrupted (Ctrl-C); nothing was lost", err=True)
                sys.exit(INTERRUPTED)

    return wrapper


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memft-bench")
def main() -> None:
    """Compare memory-efficient fine-tuning methods on identical models, data and budgets."""


@main.command()
@click.option("--suite", default="tiny", show_default=True, help="Built-in suite name or path of a suite .yaml file.")
@click.option("--methods", help="Comma-separated method names (default: the suite's default_methods).")
@click.option("--model", help="Replace the suite's model: a local directory or Hugging Face id (pretrained).")
@click.option("--steps", type=int, help="Override the budget's optimisation steps (same for every method).")
@click.option("--seeds", help="Comma-separated seeds (default: the suite's seeds).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (default: runs/<suite>). Rerunning into it skips recorded trials.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override an option: METHOD.OPTION=VALUE (lora.r=16) or model/budget/evaluation.FIELD=VALUE.")
@click.option("--retry-failed", is_flag=True, help="Run again the recorded trials that failed (oom, error, ...).")
@click.option("--trial-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop a trial that runs longer (default: the suite's trial_timeout_s).")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow a --model directory's own Python code to run (off by default: it is arbitrary code).")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import MODULE first: methods it registers with @register become available (repeatable).")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="Data of commonsense tasks, DIR/<task>/{train,test}.json, and of math tasks, DIR/gsm8k/"
                   "{train,test}.jsonl (default: $BENCH_DATA_DIR, else fetched once).")
@click.option("--limit-train", type=click.IntRange(min=1),
              help="Train on a seeded subset of N records (commonsense, math and file tasks).")
@click.option("--limit-eval", type=click.IntRange(min=1),
              help="Score a seeded subset of N items per test set (commonsense, math and file tasks).")
@click.option("--eval-mode", type=click.Choice(["loglik", "generate", "llm-adapters"]),
              help="Override the suite's evaluation mode (llm-adapters: their prompts and 4-beam decoding, slow).")
@click.option("--tune", is_flag=True,
              help="Tune first: an equal-budget search per method on a validation split held out of the training "
                   "data, then each method at its best values (the suite's tuning: section, else the learning rate "
                   "at 0.1x-10x each method's own).")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any trial did not finish ok.")
@click.option("--dry-run", is_flag=True,
              help="Check every trial on the meta device and print its predicted memory; start nothing.")
@click.option("--memory", "memory_size", metavar="SIZE",
              help="With --dry-run: answer for a device with this much memory free for the trial (24GiB or "
                   "24G: binary; 80GB: decimal; 512MiB; nothing is subtracted): which trials fit, by how much, and "
                   "the largest micro_batch_size that would.")
@click.option("--gpu", "gpu_name", metavar="NAME",
              help="With --dry-run: as --memory, for a common GPU by name (h100-80gb, a100-40gb, l4-24gb, ...: "
                   "the memory CUDA reports on it less a CUDA context).")
@click.option("--largest", type=click.Choice(["micro_batch_size", "cutoff_len"]),
              help="With --dry-run: the budget setting to search for the largest value that fits (default "
                   "micro_batch_size when --memory or --gpu is given).")
@click.option("--no-fit-check", is_flag=True,
              help="Start trials even when their predicted memory exceeds what the device has free.")
@click.option("--no-report", is_flag=True, help="Do not write DIR/report.md at the end.")
@click.option("--log-to", metavar="TRACKERS",
              help="Log every trial to experiment trackers: comma-separated mlflow, tensorboard, wandb (replaces the "
                   "suite's trackers.log_to; none: no tracker).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@execution_options
@friendly_errors
def run(suite: str, methods: str | None, model: str | None, steps: int | None, seeds: str | None, device: str,
        out: Path | None, overrides: tuple[str, ...], retry_failed: bool, trial_timeout: float | None,
        trust_remote_code: bool, plugins: tuple[str, ...], data_dir: Path | None, limit_train: int | None,
        limit_eval: int | None, eval_mode: str | None, tune: bool, strict: bool, dry_run: bool,
        memory_size: str | None, gpu_name: str | None, largest: str | None, no_fit_check: bool,
        no_report: bool, log_to: str | None, quiet: bool, execution: Execution) -> None:
    """Run every task x method x seed of a suite, each trial in its own process, into DIR/results.jsonl."""
    target = fit_target(memory_size, gpu_name, largest, dry_run)
    check_stack()
    import_plugins(plugins)
    from memft_bench.harness.spec.config import apply_overrides, load_suite
    from memft_bench.harness.spec.sweeps import split_overrides

    spec = load_suite(suite)
    plain, sweeps = split_overrides(list(overrides))
    extra = plain
    if model:
        extra = ["model.kind=pretrained", f"model.path={model}", *extra]
    if steps is not None:
        extra.append(f"budget.steps={steps}")
    if trust_remote_code:
        extra.append("model.trust_remote_code=true")
    if eval_mode:
        extra.append(f"evaluation.mode={eval_mode}")
    from memft_bench.harness.measure.glibc_heap import requested_threshold

    requested_threshold()  # a bad BENCH_CPU_MMAP_THRESHOLD stops the run here, not in every CPU trial
    if seeds is not None:
        try:
            seed_list = [int(s) for s in _csv(seeds) or []]
        except ValueError:
            raise BenchError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
        if not seed_list:
            raise BenchError("--seeds: give at least one seed")
    if extra:
        spec = apply_overrides(spec, extra)
    if seeds is not None:
        spec.seeds = seed_list
    for task in spec.tasks:
        if task.source in ("commonsense", "math"):
            task.data_dir = str(data_dir) if data_dir else task.data_dir
        if task.source in ("commonsense", "math", "file"):
            task.limit_train = limit_train or task.limit_train
            task.limit_eval = limit_eval or task.limit_eval

    from memft_bench.harness.run import planning, runner

    out_dir = out or Path("runs") / spec.name
    from memft_bench.harness.trackers.registry import select as select_trackers

    trackers = select_trackers(log_to, spec.trackers, out_dir, spec.name)  # a missing library: before any trial
    command = " ".join(["bench", *(shlex.quote(a) for a in sys.argv[1:])])
    executor, trial_device = execution.build(spec, device, trial_timeout)
    method_names = _csv(methods) or list(spec.default_methods)
    if tune and not spec.tuning:
        from memft_bench.harness.spec.tuning import DEFAULT_TUNING

        spec.tuning = dict(DEFAULT_TUNING)
    tuning_spec = spec.tuning_spec()

    def execute(run_plan: planning.RunPlan, stage: str) -> list[dict] | None:
        """Pre-flight, then run, one plan (the whole run, or one stage of a tuned run); None after --dry-run."""
        for note in run_plan.notes:
            click.echo(note)
        n_instances = len(run_plan.variants)
        seeds_of_stage = len({t.seed for t in run_plan.trials}) or 1
        click.echo(f"suite {spec.name}{stage}: {len(run_plan.trials)} trials ({len(spec.tasks)} tasks x "
                   f"{n_instances} methods/variants x {seeds_of_stage} seeds) on {run_plan.device}"
                   f"{executor.describe()} -> {out_dir}")
        from memft_bench.harness.run.preflight import run_preflight
        from memft_bench.harness.trial.memory_trace import optimizers_as_on

        # the optimizers' kernels of the device the trials will run on: a --gpu or --memory answer is for a GPU
        # unless --device cpu says otherwise
        gpu_answer = bool(gpu_name) or (bool(memory_size) and device != "cpu")
        optimizers_on = "cuda" if gpu_answer or run_plan.device.startswith("cuda") else "cpu"
        with optimizers_as_on(optimizers_on):
            checked = run_preflight(run_plan, run_plan.variants if dry_run else
                                    runner.pending_variants(run_plan, retry_failed), progress=not quiet)
        checked.optimizers_device = optimizers_on
        for line in checked.notes + [w for c in checked.checks.values() for w in c.warnings]:
            _warn(line)
        if dry_run:
            from memft_bench.harness.run.preflight import find_largest, render_estimates

            checked.target_bytes, checked.target_label = target
            if largest or checked.target_bytes is not None:
                with optimizers_as_on(optimizers_on):
                    find_largest(checked, run_plan, largest or "micro_batch_size", progress=not quiet)
            click.echo(render_estimates(checked, run_plan))
            return None
        # The fit check reads this machine's free memory: meaningless for trials that run on a cluster's nodes.
        fit_check = not no_fit_check and getattr(executor, "runs_here", True)
        for key in checked.checks if fit_check else ():
            if warning := checked.peak_warning(*key):
                _warn(warning)
        slots = getattr(executor, "slots", None) or []
        if fit_check and len(slots) > 1 and checked.free_bytes is not None:
            if run_plan.device == "cpu":  # N trials at once share this machine's memory, each its own process
                from memft_bench.harness.run.preflight import free_per_cpu_trial

                checked.free_bytes = free_per_cpu_trial(checked.free_bytes, len(slots))
            else:  # one trial per GPU: each must fit on the GPU with the least free memory
                from memft_bench.harness.run.preflight import free_memory_bytes

                frees = [free_memory_bytes(f"cuda:{i}") for i in execution.gpu_indices()]
                checked.free_bytes = None if None in frees else min(f for f in frees if f is not None)
        refusals = {} if not fit_check else {
            key: reason for key in checked.checks if (reason := checked.refusal(*key)) is not None}
        try:
            from memft_bench.harness.run.estimate import announce

            announce(run_plan, click.echo)  # a long run on a CPU: how long it will take here, and the CPU preset
            return runner.run(run_plan, retry_failed=retry_failed, timeout_s=trial_timeout, echo=click.echo,
                              progress=not quiet, refusals=refusals, executor=executor, trackers=trackers)
        except (KeyboardInterrupt, runner.Terminated) as exc:
            click.echo(f"bench: interrupted ({str(exc) or 'Ctrl-C'}); finished trials are in "
                       f"{out_dir / 'results.jsonl'}; run the same command again to resume", err=True)
            sys.exit(INTERRUPTED)

    stage = None
    if tuning_spec is not None:
        from memft_bench.harness.results.rows import method_label
        from memft_bench.harness.run import tuning
        from memft_bench.harness.spec.sweeps import variant_label

        tuning.prepare(spec, tuning_spec)
        search_plan = planning.plan(spec, method_names, out_dir, trial_device, sweeps=sweeps, command=command,
                                    stage=tuning.search_stage(spec, tuning_spec, method_names))
        _warn_unused_overrides(overrides, search_plan.methods)
        searched = execute(search_plan, " (tuning search on the validation split)")
        if searched is None:
            click.echo("then the final trials: each method at its chosen values, the suite's seeds and full budget")
            return
        choices = tuning.choose(search_plan, searched, tuning_spec)
        tuning.write_summary(out_dir, spec, tuning_spec, choices)
        for choice in choices.values():
            chosen = variant_label(choice.values) if choice.values else f"nothing ({choice.reason})"
            edge = f" (on the grid's edge: {', '.join(choice.on_edge)})" if choice.on_edge else ""
            click.echo(f"tuning: {choice.task}/{method_label(choice.method, choice.variant)}: chose {chosen}{edge}")
        stage = tuning.final_stage(choices, tuning_spec, spec)
    run_plan = planning.plan(spec, method_names, out_dir, trial_device, sweeps=sweeps, command=command, stage=stage)
    if stage is None:
        _warn_unused_overrides(overrides, run_plan.methods)
    rows = execute(run_plan, " (final trials at the chosen values)" if stage else "")
    if rows is None:
        return
    failed = [r for r in rows if r.get("status") != "ok"]
    pending = getattr(executor, "summary", lambda: None)()
    if pending:
        click.echo(pending)
    report = None
    if not no_report:
        from memft_bench.harness.analysis.report import write_report

        report = write_report([out_dir])
        click.echo(f"report: {report}")
    if trackers is not None:  # the report and its figures, as artifacts of the run that groups the sweep
        trackers.finish(report, _warn)
    click.echo(f"results: {out_dir / 'results.jsonl'} ({len(rows) - len(failed)} ok, {len(failed)} failed)")
    sys.exit(run_exit_status(rows, strict, jobs_in_flight=bool(pending)))


def _warn_unused_overrides(overrides: tuple[str, ...], methods: list[str]) -> None:
    """A `--set` for a method the run does not include changes nothing: say so rather than ignore it."""
    for section in sorted({text.partition(".")[0].strip() for text in overrides}):
        if section not in methods and section not in ("model", "budget", "evaluation"):
            _warn(f"--set {section}.…: {section} is not in this run's methods ({', '.join(methods)}); "
                  "the override does nothing")


ALLOW_UNSUPPORTED_STACK = "BENCH_ALLOW_UNSUPPORTED_STACK"


def check_stack() -> None:
    """Refuse a stack outside pyproject.toml's declared ranges, one line per package, before anything starts
    (those ranges are the ones tested: the oldest and the latest environments). With
    BENCH_ALLOW_UNSUPPORTED_STACK=1 the lines are warnings and the run goes on (rows record the versions)."""
    import os

    from memft_bench.harness.measure.stack import unsupported

    problems = unsupported()
    if not problems:
        return
    if os.environ.get(ALLOW_UNSUPPORTED_STACK, "") not in ("", "0"):
        for problem in problems:
            _warn(f"{problem}; going on ({ALLOW_UNSUPPORTED_STACK} is set)")
        return
    for problem in problems:
        click.echo(f"bench: error: {problem}", err=True)
    sys.exit(USAGE_ERROR)


def fit_target(memory_size: str | None, gpu_name: str | None, largest: str | None, dry_run: bool
               ) -> tuple[int | None, str | None]:
    """(bytes, where the figure comes from) of --memory or --gpu; (None, None) without either. Both belong to a
    dry run: a real run checks the memory its device really has free."""
    from memft_bench.harness.spec.memory_sizes import gpu_memory, parse_size

    given = [name for name, value in (("--memory", memory_size), ("--gpu", gpu_name), ("--largest", largest))
             if value is not None]  # an empty value is an error below, not a silent answer for this machine
    if given and not dry_run:
        raise BenchError(f"{', '.join(given)} go(es) with --dry-run: add --dry-run (a real run checks the memory "
                         "its device has free)")
    if memory_size is not None and gpu_name is not None:
        raise BenchError("give --memory or --gpu, not both")
    if gpu_name is not None:
        return gpu_memory(gpu_name)
    if memory_size is not None:
        size = parse_size(memory_size)
        return size, f"--memory {memory_size}"
    return None, None


def run_exit_status(rows: list[dict[str, Any]], strict: bool, jobs_in_flight: bool = False) -> int:
    """0: some trial ok (or, after a detached submission, jobs still in flight) and no harness error; 1: none
    ok, a harness error (`error` rows), or --strict and any trial not ok. oom, diverged and timeout rows are
    results about a method, not harness errors."""
    statuses = [row.get("status") for row in rows]
    if ("ok" not in statuses and not jobs_in_flight) or "error" in statuses \
            or (strict and any(s != "ok" for s in statuses)):
        return TRIALS_FAILED
    return 0


def import_plugins(modules: tuple[str, ...]) -> None:
    import importlib

    if modules and "" not in sys.path:
        sys.path.insert(0, "")  # a module in the working directory, as `python -m` would find it
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise BenchError(f"--plugin {module}: cannot import it ({exc})") from None


@main.group(name="list")
def list_group() -> None:
    """List what can be run."""


@list_group.command(name="methods")
@click.option("--verbose", "-v", is_flag=True, help="Also list each method's options, defaults and help.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import MODULE first (repeatable).")
@friendly_errors
def list_methods(verbose: bool, plugins: tuple[str, ...]) -> None:
    """Registered methods: built-ins and plugins (entry-point group bench.methods)."""
    import_plugins(plugins)
    from memft_bench.methods.base import available_methods

    methods = available_methods()
    width = max(map(len, methods), default=0)
    from memft_bench.methods.package_check import install_note

    for name, summary in sorted(methods.items()):
        click.echo(f"{name:<{width}}  {summary} {install_note(name)}".rstrip())
        if verbose:
            from memft_bench.harness.core.options import describe
            from memft_bench.methods.base import get_method_class

            for field, type_name, default, help_text in describe(get_method_class(name).Options):
                click.echo(f"    {field} ({type_name}, default {default!r}): {help_text}")


@list_group.command(name="suites")
@friendly_errors
def list_suites_command() -> None:
    """Built-in suites (suites/*.yaml)."""
    from memft_bench.harness.spec.config import list_suites

    suites = list_suites()
    width = max(map(len, suites), default=0)
    for name, description in suites.items():
        click.echo(f"{name:<{width}}  {description}")


@main.command()
@click.option("--lock", "lock", type=click.Path(dir_okay=False, path_type=Path),
              help="Compare the installed stack with this lock instead of the repository's requirements-lock.txt.")
@click.option("--constraints", "results", type=click.Path(path_type=Path), metavar="RESULTS",
              help="Print instead a pip constraints file of the stack a results file (or run directory) recorded: "
                   "pip install -c FILE -e . reinstalls it.")
@friendly_errors
def env(lock: Path | None, results: Path | None) -> None:
    """The environment results would record: versions, CPU/GPU, driver, commit; and whether the installed
    stack is the lock's (a note on standard error, so standard output stays JSON)."""
    import json

    if results is not None:
        from memft_bench.harness.analysis.stack_records import recorded_constraints

        click.echo(recorded_constraints(results), nl=False)
        return
    from memft_bench.harness.measure.env import environment
    from memft_bench.harness.measure.stack import (
        describe_differences,
        installed_stack,
        lock_differences,
        lock_file,
        read_lock,
    )
    from memft_bench.harness.run.devices import resolve_device

    device = resolve_device("auto")
    click.echo(json.dumps(environment(device), indent=2))
    path = lock or lock_file()
    if path is None:
        click.echo("bench: note: no lock to compare with (a wheel install carries none); pass --lock FILE", err=True)
        return
    try:
        pins = read_lock(path)
    except OSError as exc:
        raise BenchError(f"--lock {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    stack = installed_stack()
    differences = lock_differences(stack, pins)
    if differences:
        click.echo(f"bench: note: the installed stack differs from {path} in {len(differences)} package(s): "
                   + describe_differences(differences), err=True)
    else:
        click.echo(f"bench: note: the installed stack matches {path} ({len(stack) - 1} packages)", err=True)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="A directory (REPORT.md + PNG figures) or a .md file; default DIR/report.md.")
@click.option("--title", help="Report title.")
@click.option("--no-figures", is_flag=True, help="Tables only.")
@click.option("--reference", default="full", show_default=True,
              help="Method every other one is compared with, paired item by item (a variant as `lora (r=4)`).")
@click.option("--quiet", "-q", is_flag=True, help="Only write the file; do not print the report.")
@friendly_errors
def report(run_dirs: tuple[Path, ...], out: Path | None, title: str | None, no_figures: bool, reference: str,
           quiet: bool) -> None:
    """Print and write a Markdown comparison report of one or more runs, with figures."""
    from memft_bench.harness.analysis.report import write_report

    path = write_report(list(run_dirs), out, title, with_figures=not no_figures, reference=reference)
    if not quiet:
        click.echo(path.read_text(encoding="utf-8"))
    click.echo(f"report written to {path}")


@main.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("current", type=click.Path(path_type=Path))
@click.option("--tolerance", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML with accuracy_abs, peak_rel, time_ratio_rel, exact_rel (see harness/analysis/compare.py).")
@click.option("--all", "show_all", is_flag=True, help="Also list the checks that did not change.")
@friendly_errors
def compare(baseline: Path, current: Path, tolerance: Path | None, show_all: bool) -> None:
    """Compare CURRENT against BASELINE (run directories or results files); exit 1 on a regression."""
    from memft_bench.harness.analysis.compare import render, run_compare

    comparison = run_compare(baseline, current, tolerance)
    click.echo(render(comparison, show_all))
    if comparison.regressions:
        sys.exit(1)


if __name__ == "__main__":
    main()
