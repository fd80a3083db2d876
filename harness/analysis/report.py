"""Markdown comparison reports (and their PNG figures) from result rows: one DataFrame, one source.

Tables: accuracy (method x task, with the average; mean ± std over seeds), memory (each meter that
applied, the exact breakdown, ratios to `full`), speed (step time, tokens/s, ratios to `full` measured
in the same run), a per-task detail table, what methods measured about themselves, and the failed
trials with their reasons. Figures (`harness/analysis/figures.py`) are drawn from the same summary.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd

from memft_bench.harness.analysis.uncertainty import Analysis, MethodAccuracy

BASELINE = "full"
NUMERIC = [
    "accuracy", "accuracy_before", "peak_mem_rss_mb", "peak_mem_rss_eval_mb", "peak_mem_allocated_mb",
    "peak_mem_reserved_mb", "peak_mem_allocated_eval_mb", "peak_mem_nvml_mb", "peak_mem_nvml_process_mb",
    "peak_mem_nvml_eval_mb", "method_mem_mb", "mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb", "mem_other_mb",
    "trainable_params", "optimizer_state_elements", "tokens_per_s", "step_time_ms_median", "step_time_ms_p90",
    "loss_last", "train_time_s", "mem_predicted_peak_mb", "peak_mem_training_mb",
]
PEAK_METERS = [("peak_mem_nvml_mb", "NVML device (MB)"), ("peak_mem_nvml_process_mb", "NVML process (MB)"),
               ("peak_mem_allocated_mb", "allocated (MB)"), ("peak_mem_reserved_mb", "reserved (MB)"),
               ("peak_mem_rss_mb", "RSS train (MB)"), ("peak_mem_rss_eval_mb", "RSS eval (MB)")]


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return format(value, spec)


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    if "variant" not in frame.columns:
        frame["variant"] = None
    frame["variant"] = frame["variant"].fillna("").astype(str)
    frame["name"] = [m + (f" ({v})" if v else "") for m, v in zip(frame["method"], frame["variant"])]
    return frame


def expand_test_sets(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per scored test set: a commonsense trial scores 8 test sets after training on one mix."""
    rows = []
    for _, r in frame.iterrows():
        per = r.get("accuracy_per_task")
        before = r.get("accuracy_per_task_before")
        if r.get("status") == "ok" and isinstance(per, dict) and len(per) > 1:
            for test_name, accuracy in per.items():
                rows.append({**r.to_dict(), "task": test_name, "accuracy": accuracy,
                             "accuracy_before": before.get(test_name) if isinstance(before, dict) else None})
        else:
            rows.append(r.to_dict())
    return pd.DataFrame(rows, columns=frame.columns)


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (task, method, variant) of the successful rows, plus accuracy std and seed count."""
    ok = expand_test_sets(prepare(frame))
    ok = ok[ok["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    for col in NUMERIC:
        if col not in ok.columns:
            ok[col] = None
        if col != "method_mem_mb":
            ok[col] = pd.to_numeric(ok[col], errors="coerce")
    ok["method_mem_mb"] = ok[["mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb"]].sum(axis=1, min_count=3)
    grouped = ok.groupby(["task", "method", "variant", "name"], sort=False)
    out = grouped[NUMERIC].mean()
    out["accuracy_std"] = grouped["accuracy"].std(ddof=1)
    out["seeds"] = grouped["seed"].nunique()
    return out.reset_index()


def _ratio(table: pd.DataFrame, col: str | None) -> pd.Series:
    if col is None:  # no meter measured anything (rows without peaks): no ratio to give
        return pd.Series(float("nan"), index=table.index)
    base = table.loc[(table["method"] == BASELINE) & (table["variant"] == ""), col]
    if not len(base) or not base.iloc[0] or pd.isna(base.iloc[0]):
        return pd.Series(float("nan"), index=table.index)
    return table[col] / base.iloc[0]


def _interval(value: float, low: float, high: float, std: float | None = None) -> str:
    """`0.342 [0.190, 0.530]`, or `0.342 ± 0.010 [0.320, 0.360]` over seeds."""
    cell = _fmt(value, ".3f")
    if std is not None and not pd.isna(std):
        cell += f" ± {_fmt(std, '.3f')}"
    if not (pd.isna(low) or pd.isna(high)):
        cell += f" [{low:.3f}, {high:.3f}]"
    return cell


def test_set_families(frame: pd.DataFrame) -> dict[str, str]:
    """test set -> the family reports group it under: the row's `task_family`; rows recorded before families
    existed: commonsense for LLM-Adapters' task names, synthetic for generated data, else the task's name."""
    from memft_bench.harness.sources.commonsense import TASKS

    families: dict[str, str] = {}
    for _, r in frame.iterrows():
        per = r.get("accuracy_per_task")
        names = list(per) if isinstance(per, dict) and per else [r.get("task")]
        for name in names:
            family = r.get("task_family") if isinstance(r.get("task_family"), str) else None
            if not family:
                synthetic = str(r.get("data_source") or "").startswith("synthetic")
                family = "commonsense" if name in TASKS else "synthetic" if synthetic else str(r.get("task"))
            families.setdefault(str(name), family)
    return families


def accuracy_table(summary: pd.DataFrame, intervals: dict[str, MethodAccuracy] | None = None,
                   families: dict[str, str] | None = None) -> str:
    """Method x task accuracies with their 95% intervals (`intervals`, from `harness.analysis.uncertainty`),
    the tasks grouped by family (`families`: test set -> family) with an average per family when there are
    several, and the average over every task."""
    families = families or {}
    seen = list(summary["task"].unique())
    order = list(dict.fromkeys(families.get(t, "") for t in seen))
    tasks = [t for family in order for t in seen if families.get(t, "") == family]
    several = len(order) > 1
    intervals = intervals or {}
    rows = []
    for name, group in summary.groupby("name", sort=False):
        row = {"method": name}
        by_task = group.set_index("task")
        acc = intervals.get(name)
        for family in order:
            members = [t for t in tasks if families.get(t, "") == family]
            for task in members:
                if task not in by_task.index:
                    row[task] = "–"
                    continue
                r = by_task.loc[task]
                if acc is not None and task in acc.per_task_interval:
                    row[task] = _interval(r["accuracy"], *acc.per_task_interval[task], acc.per_task_std.get(task))
                    continue
                cell = _fmt(r["accuracy"], ".3f")
                if r["seeds"] > 1:
                    cell += f" ± {_fmt(r['accuracy_std'], '.3f')}"
                row[task] = cell
            if several and len(members) > 1:  # a family of one test set: its average is that set's cell
                done = all(t in by_task.index for t in members)
                row[f"{family} average"] = _fmt(by_task.loc[members, "accuracy"].mean(), ".3f") if done else "–"
        complete = all(t in by_task.index for t in tasks)
        if complete and acc is not None:
            row["average"] = _interval(by_task["accuracy"].mean(), *acc.average_interval,
                                       acc.average_std if acc.seeds > 1 else None)
        else:
            row["average"] = _fmt(by_task["accuracy"].mean(), ".3f") if complete else "–"
        if group["accuracy_before"].notna().any():
            row["untrained"] = _fmt(by_task["accuracy_before"].mean(), ".3f")
        row["seeds"] = int(group["seeds"].max())
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False)


def average_note(summary: pd.DataFrame, families: dict[str, str]) -> str:
    """What each average is taken over: a reader must not compare an average of 8 tasks with one of 2."""
    seen = list(summary["task"].unique())
    groups: dict[str, list[str]] = {}
    for task in seen:
        groups.setdefault(families.get(task, "") or "tasks", []).append(task)
    listing = "; ".join(f"{family}: {', '.join(members)}" for family, members in groups.items())
    note = f"*average* is the unweighted mean of the {len(seen)} test sets' accuracies ({listing})"
    if len(groups) > 1:
        note += "; a *family average* is the mean over that family's test sets only"
    return note + "."


def scoring_note(frame: pd.DataFrame) -> str | None:
    """How each test set was scored (the rule, and the decoding and its length for generations), one sentence per
    rule with the test sets it applies to; None for rows recorded before rows said it."""
    described: dict[str, str] = {}
    for value in frame.get("scoring", pd.Series(dtype=object)).dropna():
        if isinstance(value, dict):
            for test_set, how in value.items():
                described.setdefault(str(test_set), str(how))
    if not described:
        return None
    by_rule: dict[str, list[str]] = {}
    for test_set, how in described.items():
        by_rule.setdefault(how, []).append(test_set)
    return "How test sets were scored: " + " ".join(f"{', '.join(sets)}: {how}." for how, sets in by_rule.items())


def _per_method(summary: pd.DataFrame) -> pd.DataFrame:
    """Means over tasks (memory and speed do not depend on the task much)."""
    keep = ["method", "variant", "name"]
    return summary.groupby(keep, sort=False)[NUMERIC].mean().reset_index()


def memory_table(summary: pd.DataFrame) -> str:
    table = _per_method(summary)
    meters = [(c, label) for c, label in PEAK_METERS if table[c].notna().any()]
    main_peak = meters[0][0] if meters else None
    rows = []
    mem_ratio, peak_ratio, opt_ratio = _ratio(table, "method_mem_mb"), _ratio(table, main_peak), \
        _ratio(table, "mem_optimizer_mb")
    for i, r in table.iterrows():
        row = {"method": r["name"]}
        for col, label in meters:
            row[label] = _fmt(r[col], ".1f")
        if table["mem_predicted_peak_mb"].notna().any():  # harness/trial/predicted_peak.py
            row["training peak: predicted / measured (MB, error)"] = _predicted_cell(r)
        row.update({
            "weights (MB)": _fmt(r["mem_weights_mb"], ".3f"),
            "gradients (MB)": _fmt(r["mem_grads_mb"], ".3f"),
            "optimizer state (MB)": _fmt(r["mem_optimizer_mb"], ".4f"),
            "other (MB)": _fmt(r["mem_other_mb"], ".1f"),
            "trainable params": _fmt(r["trainable_params"], ",.0f"),
            f"× {BASELINE}: w+g+opt": _fmt(mem_ratio[i], ".3f"),
            f"× {BASELINE}: opt state": _fmt(opt_ratio[i], ".3f"),
        })
        if main_peak:
            row[f"× {BASELINE}: {dict(meters)[main_peak].split(' (')[0]}"] = _fmt(peak_ratio[i], ".3f")
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False)


def _predicted_cell(r: pd.Series) -> str:
    """`412.0 / 430.5 (-4 %)`: the prediction made before training, the measured training peak, the error."""
    predicted, measured = r["mem_predicted_peak_mb"], r["peak_mem_training_mb"]
    tail = "" if pd.isna(predicted) or pd.isna(measured) or not measured else \
        f" ({100 * (predicted - measured) / measured:+.0f} %)"
    return f"{_fmt(r['mem_predicted_peak_mb'], '.1f')} / {_fmt(r['peak_mem_training_mb'], '.1f')}{tail}"


def speed_table(summary: pd.DataFrame) -> str:
    table = _per_method(summary)
    step_ratio, tps_ratio = _ratio(table, "step_time_ms_median"), _ratio(table, "tokens_per_s")
    rows = [{
        "method": r["name"],
        "step median (ms)": _fmt(r["step_time_ms_median"], ".1f"),
        "step p90 (ms)": _fmt(r["step_time_ms_p90"], ".1f"),
        "tokens/s": _fmt(r["tokens_per_s"], ",.0f"),
        f"step time × {BASELINE}": _fmt(step_ratio[i], ".2f"),
        f"tokens/s × {BASELINE}": _fmt(tps_ratio[i], ".2f"),
    } for i, r in table.iterrows()]
    return pd.DataFrame(rows).to_markdown(index=False)


def method_metrics_table(frame: pd.DataFrame) -> str | None:
    """What methods measure about themselves (SGC: OMP time and share of the step, recovery error, density)."""
    rows = []
    for _, r in prepare(frame)[lambda f: f["status"] == "ok"].iterrows():
        metrics = r.get("method_metrics")
        if isinstance(metrics, dict) and metrics:
            rows.append({"task": r["task"], "method": r["name"], "seed": r["seed"],
                         **{k: round(v, 6) if isinstance(v, float) else v for k, v in sorted(metrics.items())}})
    return pd.DataFrame(rows).to_markdown(index=False) if rows else None


def run_notes_table(frame: pd.DataFrame) -> str | None:
    """How trials actually ran where it matters to read a figure: a meter that did not apply and why
    (`meter_notes`), a method's runtime facts such as the OMP backend that ran (`method_info`)."""
    rows = []
    for _, r in prepare(frame).iterrows():
        notes = {}
        for column in ("method_info", "meter_notes"):
            value = r.get(column)
            if isinstance(value, dict):
                notes.update({k: v for k, v in value.items() if v is not None})
        if notes:
            rows.append({"task": r["task"], "method": r["name"], "seed": r["seed"],
                         "notes": "; ".join(f"{k}: {v}" for k, v in sorted(notes.items()))})
    return pd.DataFrame(rows).to_markdown(index=False) if rows else None


def failures_table(frame: pd.DataFrame) -> str | None:
    failed = prepare(frame)[lambda f: f["status"] != "ok"]
    if failed.empty:
        return None
    return failed[["task", "name", "seed", "status", "reason"]].rename(columns={"name": "method"}).to_markdown(
        index=False)


def environment_lines(frame: pd.DataFrame) -> list[str]:
    models = sorted(frame["model"].dropna().astype(str).unique())
    devices = ", ".join(sorted(frame["device"].dropna().astype(str).unique()))
    env = next((e for e in frame["env"] if isinstance(e, dict)), {}) or {}
    lines = [f"- model: {', '.join(models) or '–'}", f"- device: {devices}"]
    precisions = sorted(frame["precision"].dropna().astype(str).unique()) if "precision" in frame else []
    if precisions:
        lines.append(f"- precision: {', '.join(precisions)} (the same policy for every method)")
    if "bf16" in precisions:
        lines.append("- **bf16 (pure): every weight and its optimizer state is stored in bf16, so small updates "
                     "round away; its figures are not comparable with fp32 or bf16-mixed ones**")
    if len(precisions) > 1:
        lines.append("- **several precisions in one report: compare methods only within one precision**")
    if env:
        gpu = f"{env['gpu_name']} ({env.get('gpu_uuid') or 'uuid unknown'})" if env.get("gpu_name") else None
        hw = gpu or f"{env.get('cpu', '')} ({env.get('torch_threads', '?')} torch threads)"
        driver = f", driver {env['driver']}, CUDA {env.get('cuda')}" if env.get("driver") else ""
        versions = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
        lines += [f"- hardware: {hw}{driver}", f"- software: Python {env.get('python', '?')}, {versions}",
                  f"- commit: {env.get('git_commit', '–')}"]
    commands = sorted({str(c) for c in frame.get("command", pd.Series(dtype=object)).dropna()})
    for command in commands:
        lines.append(f"- command: `{command}`")
    budget = frame[frame["status"] == "ok"][["steps", "batch_size"]].dropna()
    timed = frame["time_budget_s"].dropna() if "time_budget_s" in frame.columns else pd.Series(dtype=float)
    if not budget.empty and not timed.empty:  # equal wall-clock: the step counts differ by method
        steps = frame[frame["status"] == "ok"].groupby("method")["steps"].mean()
        listing = ", ".join(f"{m} {s:.0f}" for m, s in steps.items())
        lines.append(f"- budget: {timed.max():g} s of training wall-clock × batch {int(budget['batch_size'].max())} "
                     f"for every method (steps taken: {listing})")
    elif not budget.empty:
        lines.append(f"- budget: {int(budget['steps'].max())} steps × batch {int(budget['batch_size'].max())} "
                     "for every method")
    lines.append(f"- trials: {len(frame)} ({int((frame['status'] == 'ok').sum())} ok); report generated "
                 f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    return lines


def render(frame: pd.DataFrame, title: str | None = None, figures: dict[str, str] | None = None,
           reference: str = BASELINE, analysis: Analysis | None = None) -> str:
    """The Markdown report of a frame of result rows; `figures` maps captions to PNG file names; methods are
    compared, paired on their items, with `reference` (`analysis`: that comparison, when already computed)."""
    from memft_bench.harness.analysis import significance
    from memft_bench.harness.analysis.tuning_report import section as tuning_section
    from memft_bench.harness.analysis.tuning_report import split_phases
    from memft_bench.harness.analysis.uncertainty import analyse

    frame, _ = split_phases(frame)
    if frame.empty:
        return "# Benchmark report\n\nNo results.\n"
    suites = ", ".join(sorted(frame["suite"].dropna().astype(str).unique()))
    lines = [f"# {title or f'Benchmark report: {suites}'}", "", *environment_lines(frame), ""]
    summary = summarise(frame)
    if not summary.empty:
        analysis = analysis or analyse(frame, reference)
        intervals = analysis.accuracies
        families = test_set_families(frame)
        lines += ["## Accuracy", "", accuracy_table(summary, intervals, families), "", average_note(summary, families),
                  "", significance.interval_note(intervals), ""]
        scoring = scoring_note(frame)
        if scoring:
            lines += [scoring, ""]
        lines += tuning_section(frame, intervals)
        lines += significance.sections(frame, analysis)
        lines += ["## Memory", "",
                  "Peaks are measured (each meter that applied; RSS includes the Python runtime itself); "
                  "*weights, gradients, optimizer state* are the exact accounting from each method's "
                  "`state_bytes()` (the bytes of the tensors that hold it: 8-bit and 4-bit state with its "
                  "quantisation scales, not elements x 4); *other* is the allocator peak minus those (GPU only). "
                  "Means over tasks.", "",
                  memory_table(summary), ""]
        lines += ["## Speed", "", f"Ratios are to `{BASELINE}` measured in the same run. Means over tasks.", "",
                  speed_table(summary), ""]
        for caption, file in (figures or {}).items():
            lines += [f"![{caption}]({file})", ""]
    metrics = method_metrics_table(frame)
    if metrics:
        lines += ["## Method measurements (means over steps)", "", metrics, ""]
    notes = run_notes_table(frame)
    if notes:
        lines += ["## How the trials ran", "", notes, ""]
    failures = failures_table(frame)
    if failures:
        lines += ["## Failed trials", "", failures, ""]
    return "\n".join(lines)


def write_report(run_dirs: list[str | Path], out: Path | None = None, title: str | None = None,
                 with_figures: bool = True, reference: str = BASELINE) -> Path:
    """Write the report; `out` is a directory (REPORT.md + PNGs) or a .md file (figures beside it)."""
    from memft_bench.harness.core.errors import BenchError
    from memft_bench.harness.results.rows import RESULTS_FILE, load_frame, results_path

    for d in run_dirs:
        if not results_path(d).is_file():
            raise BenchError(f"{d}: no {RESULTS_FILE} here (give a run directory written by `bench run`)")
    from memft_bench.harness.analysis.tuning_report import split_phases, validation_curves

    frame, search = split_phases(load_frame(list(run_dirs)))  # a tuned run's search never enters the tables
    if out is None:
        first = Path(run_dirs[0])
        target = (first if first.is_dir() else first.parent) / "report.md"
    elif out.suffix == ".md":
        target = out
    else:
        target = out / "REPORT.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    from memft_bench.harness.analysis.uncertainty import analyse

    analysis = analyse(frame, reference) if not frame.empty else None
    figures = draw_figures(frame, target.parent, analysis) if with_figures else {}
    if with_figures and not search.empty:
        try:
            if validation_curves(search, target.parent / "tuning_validation.png"):
                figures["tuning search: validation accuracy against the searched value"] = "tuning_validation.png"
        except ImportError:  # no matplotlib: the tables say it all
            pass
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(render(frame, title, figures, reference, analysis), encoding="utf-8")
    tmp.replace(target)
    return target


def draw_figures(frame: pd.DataFrame, directory: Path, analysis: Analysis | None = None) -> dict[str, str]:
    """The report's PNGs; an empty dict when matplotlib is missing or nothing finished."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}
    from memft_bench.harness.analysis import figures

    summary = summarise(frame)
    if summary.empty:
        return {}
    from memft_bench.harness.analysis.uncertainty import accuracies

    made: dict[str, str] = {}
    intervals = analysis.accuracies if analysis else accuracies(frame)
    bars = {name: acc.average_interval for name, acc in intervals.items()}
    peak = next((c for c, _ in PEAK_METERS if summary[c].notna().any()), None)
    if peak:
        figures.frontier(summary, peak, f"peak memory, {dict(PEAK_METERS)[peak]}", directory / "accuracy_vs_peak.png",
                         bars)
        made["accuracy against peak memory"] = "accuracy_vs_peak.png"
    figures.frontier(summary, "mem_optimizer_mb", "optimizer state (MB, exact)", directory / "accuracy_vs_state.png",
                     bars)
    made["accuracy against optimizer-state size"] = "accuracy_vs_state.png"
    if summary["train_time_s"].notna().any():
        figures.frontier(summary, "train_time_s", "training wall-clock (s, this machine)",
                         directory / "accuracy_vs_time.png", bars)
        made["accuracy against training wall-clock"] = "accuracy_vs_time.png"
    figures.loss_curves(prepare(frame), directory / "loss_curves.png")
    made["training loss"] = "loss_curves.png"
    figures.memory_breakdown(summary, directory / "memory_breakdown.png")
    made["memory breakdown"] = "memory_breakdown.png"
    return made
