"""What the CPU trials' heap policy (`harness/measure/glibc_heap.py`) costs in step time, and what it changes in
the measured memory: the same trials run with glibc's mmap threshold fixed (the harness's default) and with
glibc's dynamic threshold (`BENCH_CPU_MMAP_THRESHOLD=dynamic`), alternately, through `bench run` itself.

    python benchmarks/cpu_heap_cost.py --out reports/cpu-heap-cost
    python benchmarks/cpu_heap_cost.py --out reports/cpu-heap-cost --suite tiny --methods full,lora,mezo --repeats 3

Each repeat runs both policies one after the other (which comes first alternates), so a load that drifts over the
run reaches both alike. Every trial is a fresh process, as in any run. The figures are the rows' own: the median
step time (warm-up steps excluded), the peak RSS and `peak_mem_training_mb`. Ratios are fixed / dynamic per
(method, repeat), then summarised by their median and range. Timings from a loaded or 2-core machine are noisy:
read the range, not only the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

POLICIES = {"fixed": {}, "dynamic": {"BENCH_CPU_MMAP_THRESHOLD": "dynamic"}}
FIGURES = ("step_time_ms_median", "peak_mem_rss_mb", "peak_mem_training_mb")


def run_policy(policy: str, suite: str, methods: str, overrides: list[str], out: Path) -> list[dict[str, Any]]:
    env = dict(os.environ, **POLICIES[policy])
    if policy == "fixed":
        env.pop("BENCH_CPU_MMAP_THRESHOLD", None)
    command = [sys.executable, "-m", "memft_bench.harness.cli", "run", "--suite", suite, "--methods", methods,
               "--device", "cpu", "--out", str(out)]
    for override in overrides:
        command += ["--set", override]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return [{"policy": policy, "method": r["method"], "status": r["status"], "cpu_heap": (r.get("env") or {}).get(
        "cpu_heap"), **{k: r.get(k) for k in FIGURES}} for r in rows]


def summarise(records: list[dict[str, Any]]) -> str:
    lines = ["| method | figure | fixed (median) | dynamic (median) | fixed / dynamic: median [min, max] of repeats |",
             "|---|---|---|---|---|"]
    methods = sorted({r["method"] for r in records})
    for method in methods:
        for figure in FIGURES:
            pairs = []
            for repeat in sorted({r["repeat"] for r in records}):
                by = {r["policy"]: r for r in records if r["method"] == method and r["repeat"] == repeat}
                a, b = (by.get("fixed") or {}).get(figure), (by.get("dynamic") or {}).get(figure)
                if a is not None and b:
                    pairs.append((a, b))
            if not pairs:
                continue
            ratios = [a / b for a, b in pairs]
            lines.append(f"| {method} | {figure} | {statistics.median(a for a, _ in pairs):.1f} | "
                         f"{statistics.median(b for _, b in pairs):.1f} | {statistics.median(ratios):.3f} "
                         f"[{min(ratios):.3f}, {max(ratios):.3f}] |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="tiny")
    parser.add_argument("--methods", default="full,lora,mezo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="as bench run's --set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("reports/cpu-heap-cost"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/cpu-heap-cost-work")
    records: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = ["fixed", "dynamic"] if repeat % 2 == 0 else ["dynamic", "fixed"]
        for policy in order:
            run_dir = work / f"{args.suite}-{policy}-{repeat}"
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            for row in run_policy(policy, args.suite, args.methods, args.overrides, run_dir):
                records.append({"repeat": repeat, "suite": args.suite, "overrides": args.overrides, **row})
                print(json.dumps(records[-1]), flush=True)
    name = f"{args.suite}{'-' + '-'.join(args.overrides) if args.overrides else ''}"
    (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    table = summarise(records)
    (args.out / f"{name}.md").write_text(
        f"# `{args.suite}` {' '.join(args.overrides)}: methods {args.methods}, {args.repeats} repeats\n\n"
        f"`python benchmarks/cpu_heap_cost.py --suite {args.suite} --methods {args.methods} --repeats {args.repeats}"
        + "".join(f" --set {o}" for o in args.overrides) + "`\n\n" + table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
