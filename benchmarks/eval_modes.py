"""Cost of the three evaluation modes on the same items and model, in one process: seconds per item and
the ratio to `loglik`. The figure docs/suites.md gives for `--eval-mode llm-adapters`.

    python benchmarks/eval_modes.py [--model smollm2-135m] [--items 3] [--device cpu] [--data-dir DIR]
        [--tasks boolq,piqa] [--clock wall|cpu]

Items: the first N of a seeded subset of each of the 8 test sets (the commonsense-cpu suite's seed). Each
mode runs as its suite settings say (loglik and generate batched by 16, generate greedy with 32 new tokens;
llm-adapters at batch 1 with 4 beams and 32 new tokens), on the untrained model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from memft_bench.harness.sources import commonsense
from memft_bench.harness.spec.config import ModelSpec
from memft_bench.harness.trial import llm_adapters
from memft_bench.harness.trial.evaluate import evaluate_generate, evaluate_loglik
from memft_bench.harness.trial.models import build_model, build_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--items", type=int, default=3, help="items per test set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tasks", default=",".join(commonsense.TASKS), help="comma-separated test sets")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU time (all its threads), robust on a shared machine")
    args = parser.parse_args()
    data_dir = commonsense.resolve_data_dir(args.data_dir)
    spec = ModelSpec(kind="pretrained", path=args.model, precision="fp32")
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer, 0, args.device)
    tests = {t: commonsense.load_test_set(Path(data_dir), t, args.items, 0) for t in args.tasks.split(",")}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    modes = {
        "loglik": lambda t, r: evaluate_loglik(model, tokenizer, r, lambda rec, t=t: commonsense.record_options(t, rec),
                                               16, 256),
        "generate": lambda t, r: evaluate_generate(model, tokenizer, r, lambda rec, _o, t=t:
                                                   commonsense.extract_answer(t, _o), 16, 256, 32),
        "llm-adapters": lambda t, r: llm_adapters.evaluate(model, tokenizer, r, lambda rec, _o, t=t:
                                                           commonsense.extract_answer(t, _o)),
    }
    n = sum(len(r) for r in tests.values())
    print(f"{args.model} on {args.device} ({torch.get_num_threads()} torch threads), {n} items "
          f"({args.items} per test set), {args.clock} time\n", flush=True)
    print("| mode | s/item | × loglik |\n|---|---:|---:|", flush=True)
    seconds = {}
    for mode, run in modes.items():  # each line as soon as its mode is done
        t0 = clock()
        for task, records in tests.items():
            run(task, records)
        seconds[mode] = clock() - t0
        print(f"| {mode} | {seconds[mode] / n:.3f} | {seconds[mode] / seconds['loglik']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
