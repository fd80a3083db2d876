"""Result rows: appended durably, torn lines skipped, last row per trial wins, NaN stored as null."""

from __future__ import annotations

import json

import pytest

from memft_bench.harness.results.rows import COLUMNS, append_row, empty_row, load_frame, read_rows


def test_append_and_read_back(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, empty_row(trial_id="a", method="m", task="t", seed=0, status="ok", accuracy=0.5))
    append_row(path, empty_row(trial_id="b", method="m", task="t", seed=0, status="error", loss_last=float("nan")))
    rows = read_rows(path)
    assert [r["trial_id"] for r in rows] == ["a", "b"]
    assert rows[1]["loss_last"] is None
    assert set(rows[0]) == set(COLUMNS)


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, empty_row(trial_id="a", method="m", task="t", seed=0, status="ok", accuracy=0.5))
    with open(path, "a") as f:
        f.write(json.dumps(empty_row(trial_id="b"))[:40])  # a crash in the middle of a write
    with pytest.warns(UserWarning, match="torn last line"):
        rows = read_rows(path)
    assert [r["trial_id"] for r in rows] == ["a"]


def test_last_row_of_a_trial_wins(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, empty_row(trial_id="a", method="m", task="t", seed=0, status="oom"))
    append_row(path, empty_row(trial_id="a", method="m", task="t", seed=0, status="ok", accuracy=0.5))
    assert [r["status"] for r in read_rows(path)] == ["ok"]
    frame = load_frame([tmp_path])
    assert list(frame["status"]) == ["ok"] and set(COLUMNS) <= set(frame.columns)
