"""The accuracy table groups test sets by task family and says what each average is taken over."""

from __future__ import annotations

import pandas as pd

from memft_bench.harness.analysis import report
from memft_bench.harness.results.rows import empty_row


def _row(method: str, task: str, family: str | None, per_task: dict[str, float], **extra) -> dict:
    return empty_row(run_id="r", trial_id=f"{task}/{method}/seed0/x", suite="mixed", task=task, method=method,
                     seed=0, status="ok", accuracy=sum(per_task.values()) / len(per_task),
                     accuracy_per_task=per_task, eval_items=dict.fromkeys(per_task, 10), task_family=family,
                     batch_size=4, steps=10, **extra)


def test_families_group_columns_and_each_has_its_average():
    rows = [_row(m, "commonsense", "commonsense", {"boolq": 0.5 + d, "piqa": 0.7 + d}) for m, d in
            (("full", 0.0), ("lora", 0.1))]
    rows += [_row(m, "gsm8k", "math", {"gsm8k": 0.1 + d, "SVAMP": 0.3 + d},
                  scoring={"gsm8k": "final number (rule)", "SVAMP": "final number (rule)"})
             for m, d in (("full", 0.0), ("lora", 0.1))]
    frame = pd.DataFrame(rows)
    families = report.test_set_families(frame)
    assert families == {"boolq": "commonsense", "piqa": "commonsense", "gsm8k": "math", "SVAMP": "math"}
    summary = report.summarise(frame)
    table = report.accuracy_table(summary, None, families)
    header = table.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][:8] == [
        "method", "boolq", "piqa", "commonsense average", "gsm8k", "SVAMP", "math average", "average"]
    full = table.splitlines()[2]
    cells = [c.strip() for c in full.strip("|").split("|")]
    assert (float(cells[3]), float(cells[6]), float(cells[7])) == (0.6, 0.2, 0.4)
    note = report.average_note(summary, families)
    assert "mean of the 4 test sets' accuracies (commonsense: boolq, piqa; math: gsm8k, SVAMP)" in note
    assert "family average" in note
    text = report.render(frame)
    assert "math average" in text and "gsm8k, SVAMP: final number (rule)." in text


def test_one_family_has_no_family_column_and_old_rows_get_one():
    rows = [_row("full", "kind", None, {"kind": 0.9}, data_source="synthetic generator 'kind'"),
            _row("full", "alive", None, {"alive": 0.8}, data_source="synthetic generator 'alive'")]
    frame = pd.DataFrame(rows)
    families = report.test_set_families(frame)
    assert families == {"kind": "synthetic", "alive": "synthetic"}
    summary = report.summarise(frame)
    header = report.accuracy_table(summary, None, families).splitlines()[0]
    assert "average" in header and "synthetic average" not in header
    assert "(synthetic: kind, alive)" in report.average_note(summary, families)
