"""The report's Markdown about uncertainty: how intervals were made, paired differences, a ranking with ties.

Kept apart from `report.py` (the tables of figures) and `uncertainty.py` (the computations), so
each stays one job: this module only words and lays out what `uncertainty.py` computed.
"""

from __future__ import annotations

import pandas as pd

from memft_bench.harness.analysis.uncertainty import Analysis, MethodAccuracy

SIGNIFICANCE = 0.05


def interval_note(intervals: dict[str, MethodAccuracy]) -> str:
    """One paragraph under the accuracy table: which interval each cell shows."""
    kinds = sorted({a.interval_kind for a in intervals.values()})
    multi = any(a.seeds > 1 for a in intervals.values())
    text = ("Brackets: 95% intervals. A per-task cell of one seed gives the Wilson score interval of its "
            "proportion (items right of items scored); the average gives "
            + "; ".join(kinds) + " (for the average over tasks, items are resampled within each task).")
    if multi:
        text += (" Over several seeds a cell is mean ± std over seeds, and its interval the Student-t interval "
                 "of the mean over seeds (it measures seed-to-seed variation, not item sampling).")
    return text


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def comparison_table(analysis: Analysis) -> str | None:
    reference = analysis.reference
    rows = []
    for c in analysis.comparisons:
        d = c.difference
        flagged = [f"{t} (p={p:.3f})" for t, (_, _, p) in c.mcnemar.items() if p < SIGNIFICANCE]
        rows.append({
            "method": c.name,
            f"Δ average vs {reference}": _signed(d.difference),
            "95% interval": f"[{_signed(d.low)}, {_signed(d.high)}]",
            "significant": "**yes**" if d.significant else "no (tied)",
            "interval": d.method + (f", {d.items} item pairs" if d.method == "paired bootstrap" else ""),
            "McNemar p < 0.05": ", ".join(flagged) if c.mcnemar else "– (no per-item records)",
        })
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else None


def ranking_table(analysis: Analysis) -> str | None:
    ranked = analysis.ranking
    if len(ranked) < 2:
        return None
    rows, rank = [], 0
    for i, (name, average, tied) in enumerate(ranked):
        previous = ranked[i - 1][0] if i else None
        if previous is None or previous not in tied:
            rank = i + 1
        rows.append({"rank": rank, "method": name, "average": f"{average:.3f}",
                     "tied with (no significant paired difference)": ", ".join(tied) or "–"})
    return pd.DataFrame(rows).to_markdown(index=False)


def sections(frame: pd.DataFrame, analysis: Analysis) -> list[str]:
    """The report's "Paired comparison" and "Ranking" sections (nothing when fewer than two methods)."""
    reference = analysis.reference
    lines: list[str] = []
    table = comparison_table(analysis)
    if table:
        lines += [f"### Paired comparison against `{reference}`", "",
                  "Every method of a run is scored on the same test items, so differences are paired item by "
                  "item: Δ is the method's average minus the reference's, with a 95% paired bootstrap interval "
                  "(item pairs resampled within each task and seed); *significant* means the interval excludes 0. "
                  "The McNemar column names the tasks where the exact McNemar test on the items only one of the "
                  "two got right gives p < 0.05. Rows without per-item records fall back to an unpaired normal "
                  "interval, which overstates the noise.", "", table, ""]
    elif reference not in analysis.accuracies:
        lines += [f"(No paired comparison: the reference method `{reference}` is not in these results; "
                  "choose one with `--reference`.)", ""]
    ranked = ranking_table(analysis)
    if ranked:
        lines += ["### Ranking", "",
                  "By average accuracy. Methods share a rank with the one above them when their paired "
                  "difference is not significant: such methods are tied within the sampling noise of these items.",
                  "", ranked, ""]
    return lines
