"""PNG figures of a report, drawn with matplotlib's Agg backend (no display) from the report's DataFrame.

- accuracy against measured peak memory, and against optimizer-state size (the memory/accuracy
  frontier; the variants of one swept method are joined by a line, in order of size; error bars are the
  average's 95% interval, as the report's accuracy table gives it);
- loss curves per method (one panel per task);
- a stacked bar per method of the exact memory breakdown (weights, gradients, optimizer state, other).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

BREAKDOWN = [("mem_weights_mb", "weights"), ("mem_grads_mb", "gradients"), ("mem_optimizer_mb", "optimizer state"),
             ("mem_other_mb", "other (activations, workspace)")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lay out, write the PNG and free the figure (pyplot keeps every open figure alive otherwise)."""
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label_axes(ax, xlabel: str, ylabel: str, legend_size: int) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def frontier(summary: pd.DataFrame, x: str, xlabel: str, path: Path,
             intervals: dict[str, tuple[float, float]] | None = None) -> Path:
    """Accuracy (mean over tasks) against `x`; variants of a method joined by a line; error bars from
    `intervals` (report name -> the average's 95% interval) where given."""
    plt = _pyplot()
    per_method = summary.groupby(["method", "variant", "name"], sort=False).agg(
        accuracy=("accuracy", "mean"), x=(x, "mean")).reset_index()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, points in per_method.groupby("method", sort=False):
        points = points.sort_values("x")
        line = ax.plot(points["x"], points["accuracy"], marker="o", label=method)[0]
        bounds = [(intervals or {}).get(n, (float("nan"), float("nan"))) for n in points["name"]]
        if intervals and any(not pd.isna(lo) for lo, _ in bounds):
            below = [max(0.0, a - lo) if not pd.isna(lo) else 0.0 for a, (lo, _) in zip(points["accuracy"], bounds)]
            above = [max(0.0, hi - a) if not pd.isna(hi) else 0.0 for a, (_, hi) in zip(points["accuracy"], bounds)]
            ax.errorbar(points["x"], points["accuracy"], yerr=[below, above], fmt="none", ecolor=line.get_color(),
                        capsize=3, alpha=0.7)
        for _, p in points.iterrows():
            if p["variant"]:
                ax.annotate(p["variant"], (p["x"], p["accuracy"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    positive = per_method["x"][per_method["x"] > 0]
    if len(positive) and positive.max() / positive.min() > 20:
        if (per_method["x"] > 0).all():
            ax.set_xscale("log")
        else:  # zero-state methods (MeZO) stay on the axis
            ax.set_xscale("symlog", linthresh=float(positive.min()))
    ylabel = "accuracy (mean over tasks" + ("; bars: 95% interval)" if intervals else ")")
    _label_axes(ax, xlabel, ylabel, legend_size=8)
    return _save(fig, path)


def loss_curves(frame: pd.DataFrame, path: Path) -> Path:
    plt = _pyplot()
    ok = frame[(frame["status"] == "ok") & frame["loss_curve"].notna()]
    tasks = list(ok["task"].unique())
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.5 * max(1, len(tasks)), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for _, row in ok[ok["task"] == task].iterrows():
            curve = list(row["loss_curve"])
            stride = max(1, int(row["steps"] or len(curve)) // max(1, len(curve)))
            label = row["method"] + (f" ({row['variant']})" if row.get("variant") else "")
            if len(ok[(ok["task"] == task) & (ok["method"] == row["method"])]) > 1 and not row.get("variant"):
                label += f" s{row['seed']}"
            ax.plot([i * stride for i in range(len(curve))], curve, label=label, linewidth=1)
        ax.set_title(task)
        ax.set_yscale("log")
        _label_axes(ax, "step", "training loss", legend_size=7)
    return _save(fig, path)


def memory_breakdown(summary: pd.DataFrame, path: Path) -> Path:
    plt = _pyplot()
    per_method = summary.groupby(["method", "variant"], sort=False)[[c for c, _ in BREAKDOWN]].mean().reset_index()
    labels = [m + (f"\n({v})" if v else "") for m, v in zip(per_method["method"], per_method["variant"])]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(labels) + 2), 4.5))
    bottom = [0.0] * len(labels)
    for column, name in BREAKDOWN:
        values = per_method[column].fillna(0.0).tolist()
        if not any(values):
            continue
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("MB (exact accounting)")
    ax.set_title("memory held by each method")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    return _save(fig, path)


def validation_curves(points: pd.DataFrame, path: Path) -> Path:
    """A tuning search: validation accuracy against the searched knob's value, one line per method, one panel per
    task (`points`: task, method, knob, value, accuracy); a log axis when the values span a factor of ten."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(points["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        of_task = points[points["task"] == task]
        for method, line in of_task.groupby("method", sort=False):
            line = line.sort_values("value")
            ax.plot(line["value"], line["accuracy"], marker="o", label=method)
        values = of_task["value"]
        if (values > 0).all() and values.max() >= 10 * values.min():
            ax.set_xscale("log")
        ax.set_title(task)
        _label_axes(ax, str(of_task["knob"].iloc[0]), "validation accuracy", 7)
    return _save(fig, path)
