"""How close the pre-flight's memory prediction comes to what the trials measured, per method.

    bench run --suite layer-7b --methods full,lora,sgc --out runs/layer-7b
    python benchmarks/prediction_check.py --suite layer-7b --methods full,lora,sgc --run runs/layer-7b

For each method variant of the run, it prints the prediction made on the meta device (weights, gradients,
optimizer state, workspace) beside the row's exact accounting (the same three columns, counted from the
real tensors after training) and the measured training peak (peak RSS on a CPU, the allocator's peak on a
GPU), so the exact parts can be checked (they should agree within a few percent; the tests require
equality on small models) and the rest of the peak (activations, workspace, the allocator) is visible.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="tiny")
    parser.add_argument("--methods", required=True, help="comma-separated, as given to bench run")
    parser.add_argument("--run", type=Path, required=True, help="the run directory bench run wrote")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="as bench run's --set")
    args = parser.parse_args()

    from tabulate import tabulate

    from memft_bench.harness.results.rows import read_rows, results_path
    from memft_bench.harness.run import planning
    from memft_bench.harness.run.preflight import run_preflight
    from memft_bench.harness.spec.config import apply_overrides, load_suite
    from memft_bench.harness.spec.sweeps import split_overrides

    plain, sweeps = split_overrides(args.overrides)
    suite = load_suite(args.suite)
    if plain:
        suite = apply_overrides(suite, plain)
    plan = planning.plan(suite, args.methods.split(","), args.run, "cpu", sweeps=sweeps)
    checked = run_preflight(plan, plan.variants)
    rows = {(r["method"], r.get("variant") or ""): r for r in read_rows(results_path(args.run))
            if r["status"] == "ok"}
    table = []
    for key, check in checked.checks.items():
        row = rows.get(key)
        if check.estimate is None or row is None:
            continue
        predicted = check.estimate.columns()
        cells = [check.label]
        for column in ("mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb"):
            p, m = predicted[column], row.get(column)
            ratio = f"{p / m:.3f}" if p is not None and m else "–"
            cells.append(f"{p:.1f} / {m:.1f} ({ratio})" if p is not None and m is not None else "–")
        peak = row.get("peak_mem_allocated_mb") or row.get("peak_mem_rss_mb")
        exact = check.estimate.exact
        cells += [f"{check.estimate.workspace / 2**20:.1f}", f"{exact / 2**20:.1f}" if exact else "–",
                  f"{peak:.1f}" if peak else "–"]
        table.append(cells)
    print(tabulate(table, headers=["method", "weights MiB pred / measured (ratio)", "gradients", "optimizer",
                                   "workspace pred", "exact total pred", "measured peak MiB"], tablefmt="github"))


if __name__ == "__main__":
    main()
