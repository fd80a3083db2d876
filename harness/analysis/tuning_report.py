"""The tuning protocol in a report: what each method searched, how each value scored on validation, what was
chosen, and what the choice scored on the tests.

A tuned run's rows are of two kinds (`phase`): search rows hold validation scores only, final rows the test
scores at the chosen values. The report's tables and figures read the final rows; this section reads the search
(`split_phases` keeps the two apart, so no table ever averages a search row with a final one).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from memft_bench.harness.analysis.uncertainty import MethodAccuracy


def split_phases(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every row but the search's, the search's rows)."""
    if frame.empty or "phase" not in frame.columns:
        return frame, frame.iloc[0:0]
    search = frame["phase"] == "search"
    return frame[~search].reset_index(drop=True), frame[search].reset_index(drop=True)


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _score(entry: dict[str, Any]) -> str:
    if entry.get("status") != "ok" or entry.get("validation_accuracy") is None:
        return str(entry.get("status", "missing"))
    loss = entry.get("validation_loss")
    tail = f" ({loss:.3f})" if isinstance(loss, (int, float)) and math.isfinite(loss) else ""
    return f"{entry['validation_accuracy']:.3f}{tail}"


def choices(final: pd.DataFrame) -> list[dict[str, Any]]:
    """One entry per task and method variant of the final rows: its `tuning` record (the same on every seed)."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for _, row in final.iterrows():
        record = row.get("tuning")
        if isinstance(record, dict):
            variant = row.get("variant")
            key = (str(row["task"]), str(row["method"]), "" if variant is None or pd.isna(variant) else str(variant))
            seen.setdefault(key, {"task": key[0], "method": key[1], "variant": key[2], **record})
    return list(seen.values())


def section(final: pd.DataFrame, intervals: dict[str, MethodAccuracy]) -> list[str]:
    """The report's "Tuning protocol" lines (empty for a run that was not tuned)."""
    entries = choices(final)
    if not entries:
        return []
    first = entries[0]
    sizes = sorted({(e["task"], e.get("validation_size")) for e in entries})
    lines = ["## Tuning protocol", "",
             f"Every method searched the same number of configurations ({len(first['searched'])}), each trained "
             f"{first.get('search_steps')} steps on one seed and scored on a validation split held out of the task's "
             "training data (" + ", ".join(f"{t}: {n} records" for t, n in sizes) + "); no test item was scored "
             "by the search. The configuration with the best validation accuracy (ties: the lower validation loss) "
             "was then trained at the full budget on every seed and scored once on the tests. Cells: validation "
             "accuracy (validation loss); ★ the chosen value; *edge*: the best value is the smallest or the largest "
             "searched, so a better one may lie beyond the grid.", ""]
    shared = sorted({str(r["task"]) for _, r in final.iterrows()
                     if "held out by record, not by question" in str(r.get("data_source") or "")})
    if shared:
        lines += [f"Caution: {', '.join(shared)} repeat{'s' if len(shared) == 1 else ''} a few questions by design, "
                  "so its validation records were held out by record, not by question: validation, test and "
                  "training share questions, and the choice measures fit to them (see each row's data_source).", ""]
    rows = []
    for e in entries:
        name = e["method"] + (f" ({e['variant']})" if e["variant"] else "")
        searched = "; ".join(
            f"{'★ ' if e.get('chosen') == s['values'] else ''}"
            + ", ".join(f"{k}={_value(v)}" for k, v in s["values"].items()) + f": {_score(s)}"
            for s in e["searched"])
        chosen = ", ".join(f"{k}={_value(v)}" for k, v in (e.get("chosen") or {}).items()) or "none"
        acc = intervals.get(name)
        test = "–"
        if acc is not None:
            low, high = acc.average_interval
            test = f"{acc.average:.3f}" + (f" [{low:.3f}, {high:.3f}]" if not (pd.isna(low) or pd.isna(high)) else "")
        rows.append({"task": e["task"], "method": name, "searched (validation)": searched, "chosen": chosen,
                     "edge": ", ".join(e.get("on_edge") or []) or "", "test accuracy (average)": test})
    lines += [pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]
    return lines


def validation_curves(search: pd.DataFrame, path: Path) -> Path | None:
    """Validation accuracy against the first searched knob (log scale when its values are positive numbers), one
    line per method, one panel per task: how sharply each method depends on it, and where its optimum lies."""
    points = []
    for _, row in search.iterrows():
        config = (row.get("tuning") or {}).get("search") if isinstance(row.get("tuning"), dict) else None
        if not config or row.get("status") != "ok" or row.get("validation_accuracy") is None:
            continue
        knob, value = next(iter(config.items()))
        if isinstance(value, (int, float)):
            points.append({"task": row["task"], "method": row["method"], "knob": knob, "value": float(value),
                           "accuracy": float(row["validation_accuracy"])})
    if not points:
        return None
    from memft_bench.harness.analysis.figures import validation_curves as draw

    return draw(pd.DataFrame(points), path)
