"""The trials' own predictions against their own measurements, from `bench run` rows: the check of the memory
prediction at settings the committed table (`reports/memory-prediction-cpu/`) does not hold.

    bench run --suite reports/memory-prediction-cpu/suites/tiny-tokens.yaml --methods full,lora,sgc \\
        --set budget.cutoff_len=100 --set budget.micro_batch_size=3 --set budget.grad_accum=2 \\
        --set budget.gradient_checkpointing=false,true --out runs/held-out-tiny --quiet --no-report
    python benchmarks/held_out.py runs/held-out-tiny [more run folders] > held-out.md

Every row a trial writes carries `mem_predicted_peak_mb` (the trace of its own batches, made before it trained)
beside `peak_mem_training_mb` (on a CPU: the training phase's peak resident set above the warmed process's idle
baseline, less the library code it paged in; on a GPU: the allocator's peak), so nothing here is measured again:
the table reads the rows. Error = (predicted - measured) / measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TOLERANCE = 0.10


def load_rows(runs: list[Path]) -> list[dict[str, Any]]:
    """The rows of each run folder's results.jsonl, or of a rows file itself (the committed `*.jsonl`)."""
    rows = []
    for run in runs:
        path = run if run.is_file() else run / "results.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _checkpointing(row: dict[str, Any]) -> str:
    value = row.get("gradient_checkpointing")
    return "n/a (forward only)" if value is None else ("on" if value else "off")


def render(rows: list[dict[str, Any]]) -> str:
    lines = ["| suite | method | batch (micro x accumulation x tokens) | checkpointing | predicted MiB | "
             "measured MiB | error % | off by MiB |", "|---|---|---|---|---|---|---|---|"]
    judged = within = within_mib = 0
    unpredicted = []
    for r in rows:
        label = r["method"]
        predicted, measured = r.get("mem_predicted_peak_mb"), r.get("peak_mem_training_mb")
        if r.get("status") != "ok" or not predicted or not measured:
            reason = r.get("reason") or (r.get("notes") or {}).get("memory_prediction") or "no prediction"
            unpredicted.append(f"- {r.get('suite')} {label} ({_checkpointing(r)}): {r.get('status')}, {reason}")
            continue
        micro, rows = r.get("micro_batch_size"), r.get("batch_size")
        batch = f"{micro} x {rows // micro if micro and rows else '?'} x {r.get('cutoff_len')}"
        error = (predicted - measured) / measured
        judged += 1
        within += abs(error) <= TOLERANCE
        within_mib += abs(predicted - measured) <= 1.0
        lines.append(f"| {r.get('suite')} | {label} | {batch} | {_checkpointing(r)} | {predicted:.1f} | "
                     f"{measured:.1f} | {100 * error:+.1f} | {predicted - measured:+.1f} |")
    head = [f"{within} of {judged} rows within {TOLERANCE:.0%} of the measured training peak; {within_mib} of "
            f"{judged} within 1 MiB.", ""]
    tail = ["", "Rows without a prediction or a measurement:", *unpredicted] if unpredicted else []
    return "\n".join(head + lines + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="bench run output folders (each holds results.jsonl), or rows files")
    args = parser.parse_args()
    print(render(load_rows(args.runs)))


if __name__ == "__main__":
    main()
