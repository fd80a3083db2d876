"""Markdown comparison reports from result rows (pandas in, Markdown tables out).

One table per task: each method's accuracy, peak memory, the exact memory of what it keeps (weights,
gradients, optimizer state), throughput, and ratios to the `full` fine-tuning baseline measured in the
same run. Seeds are averaged; accuracy shows mean ± std over seeds. Failed trials are listed with their
reasons instead of being dropped silently.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd

BASELINE = "full"


def _peak_column(frame: pd.DataFrame) -> tuple[str, str]:
    """The peak-memory meter that applies: CUDA allocator on a GPU, process RSS on a CPU."""
    if frame["peak_mem_allocated_mb"].notna().any():
        return "peak_mem_allocated_mb", "peak allocated (MB)"
    return "peak_mem_rss_mb", "peak RSS (MB)"


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return format(value, spec)


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (task, method) of the successful rows, plus accuracy std and seed count."""
    ok = frame[frame["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["method_mem_mb"] = ok[["mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb"]].sum(axis=1, min_count=3)
    numeric = ["accuracy", "peak_mem_rss_mb", "peak_mem_allocated_mb", "peak_mem_nvml_mb", "method_mem_mb",
               "mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb", "trainable_params",
               "tokens_per_s", "step_time_ms_median", "loss_last"]
    for col in numeric:
        ok[col] = pd.to_numeric(ok[col], errors="coerce")
    grouped = ok.groupby(["task", "method"], sort=False)
    out = grouped[numeric].mean()
    out["accuracy_std"] = grouped["accuracy"].std(ddof=1)
    out["seeds"] = grouped["seed"].nunique()
    return out.reset_index()


def _with_ratios(table: pd.DataFrame, peak_col: str) -> pd.DataFrame:
    """Ratios to the baseline method of the same task; NaN when the baseline did not run."""
    table = table.copy()
    for col, ratio in ((peak_col, "peak_ratio"), ("method_mem_mb", "mem_ratio"), ("mem_optimizer_mb", "opt_ratio"),
                       ("tokens_per_s", "speed_ratio")):
        base = table.loc[table["method"] == BASELINE, col]
        table[ratio] = table[col] / base.iloc[0] if len(base) and base.iloc[0] else float("nan")
    return table


def task_table(table: pd.DataFrame, peak_col: str, peak_label: str) -> str:
    table = _with_ratios(table, peak_col)
    rows = []
    for _, r in table.iterrows():
        acc = _fmt(r["accuracy"], ".3f")
        if r["seeds"] > 1:
            acc += f" ± {_fmt(r['accuracy_std'], '.3f')}"
        rows.append({
            "method": r["method"],
            "accuracy": acc,
            peak_label: _fmt(r[peak_col], ".1f"),
            "weights+grads+opt (MB)": _fmt(r["method_mem_mb"], ".2f"),
            "optimizer state (MB)": _fmt(r["mem_optimizer_mb"], ".3f"),
            "trainable params": _fmt(r["trainable_params"], ",.0f"),
            "tokens/s": _fmt(r["tokens_per_s"], ",.0f"),
            "step (ms)": _fmt(r["step_time_ms_median"], ".1f"),
            f"× {BASELINE}: memory": _fmt(r["mem_ratio"], ".3f"),
            f"× {BASELINE}: opt state": _fmt(r["opt_ratio"], ".3f"),
            f"× {BASELINE}: tokens/s": _fmt(r["speed_ratio"], ".2f"),
        })
    return pd.DataFrame(rows).to_markdown(index=False)


def average_table(summary: pd.DataFrame) -> str:
    """Accuracy per task as columns and their mean, one row per method (methods that ran every task)."""
    pivot = summary.pivot(index="method", columns="task", values="accuracy")
    pivot = pivot[[t for t in summary["task"].unique()]]
    pivot["average"] = pivot.mean(axis=1, skipna=False)
    pivot = pivot.reindex(summary["method"].unique())
    return pivot.to_markdown(floatfmt=".3f")


def method_metrics_table(frame: pd.DataFrame) -> str | None:
    """What methods measure about themselves (SGC: OMP time and share of the step, recovery error, density)."""
    rows = []
    for _, r in frame[frame["status"] == "ok"].iterrows():
        metrics = r.get("method_metrics")
        if isinstance(metrics, dict) and metrics:
            rows.append({"task": r["task"], "method": r["method"], "seed": r["seed"],
                         **{k: round(v, 6) if isinstance(v, float) else v for k, v in sorted(metrics.items())}})
    return pd.DataFrame(rows).to_markdown(index=False) if rows else None


def failures_table(frame: pd.DataFrame) -> str | None:
    failed = frame[frame["status"] != "ok"]
    if failed.empty:
        return None
    return failed[["task", "method", "seed", "status", "reason"]].to_markdown(index=False)


def render(frame: pd.DataFrame, title: str | None = None) -> str:
    """The Markdown report of a frame of result rows."""
    if frame.empty:
        return "# Benchmark report\n\nNo results.\n"
    suites = ", ".join(sorted(frame["suite"].dropna().astype(str).unique()))
    models = sorted(frame["model"].dropna().astype(str).unique())
    devices = ", ".join(sorted(frame["device"].dropna().astype(str).unique()))
    env = next((e for e in frame["env"] if isinstance(e, dict)), {}) or {}
    lines = [f"# {title or f'Benchmark report: {suites}'}", ""]
    lines += [f"- model: {', '.join(models) or '–'}", f"- device: {devices}"]
    if env:
        hw = env.get("gpu_name") or f"{env.get('cpu', '')} ({env.get('torch_threads', '?')} torch threads)"
        pk = env.get("packages", {})
        versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
        lines += [f"- hardware: {hw}", f"- software: {versions}", f"- commit: {env.get('git_commit', '–')}"]
    budget = frame[frame["status"] == "ok"][["steps", "batch_size"]].dropna()
    if not budget.empty:
        lines.append(f"- budget: {int(budget['steps'].max())} steps × batch {int(budget['batch_size'].max())} "
                     "for every method")
    lines.append(f"- trials: {len(frame)} ({int((frame['status'] == 'ok').sum())} ok); generated "
                 f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    lines.append("")
    summary = summarise(frame)
    peak_col, peak_label = _peak_column(frame)
    if not summary.empty:
        if summary["task"].nunique() > 1:
            lines += ["## Accuracy by task", "", average_table(summary), ""]
        for task, table in summary.groupby("task", sort=False):
            lines += [f"## {task}", "", task_table(table, peak_col, peak_label), ""]
    metrics = method_metrics_table(frame)
    if metrics:
        lines += ["## Method measurements (means over steps)", "", metrics, ""]
    failures = failures_table(frame)
    if failures:
        lines += ["## Failed trials", "", failures, ""]
    lines += [
        "Columns: *weights+grads+opt* is the exact size of the trained model's weights, the gradients held at the "
        "step's peak and the optimizer state, counted tensor by tensor; *peak* is the measured process peak "
        f"(it includes the runtime itself). Ratios are to `{BASELINE}` on the same task in the same run.",
        "",
    ]
    return "\n".join(lines)


def write_report(run_dirs: list[str | Path], out: Path | None = None, title: str | None = None) -> Path:
    from harness.errors import BenchError
    from harness.results import RESULTS_FILE, load_frame, results_path

    for d in run_dirs:
        if not results_path(d).is_file():
            raise BenchError(f"{d}: no {RESULTS_FILE} here (give a run directory written by `bench run`)")
    frame = load_frame(list(run_dirs))
    target = out or (Path(run_dirs[0]) if Path(run_dirs[0]).is_dir() else Path(run_dirs[0]).parent) / "report.md"
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(render(frame, title), encoding="utf-8")
    tmp.replace(target)
    return target
