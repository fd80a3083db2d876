"""Step-time micro-benchmarks of every built-in method on the tiny suite's model (pytest-benchmark).

    python -m pytest benchmarks/test_step_bench.py --benchmark-enable --benchmark-save=steps
    python -m pytest benchmarks/test_step_bench.py --benchmark-enable --benchmark-compare

One optimisation step on one fixed micro-batch of 16 examples, after two warm-up steps. Absolute times
depend on the machine: compare methods within one run, or a run against a saved one on the same machine.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("BENCH_CACHE_DIR", tempfile.mkdtemp(prefix="bench-bench-cache-"))

METHODS = ["full", "lora", "dora", "galore", "mezo", "sgc", "mesgc", "cesgc", "subzero", "rso", "smt"]


@pytest.fixture(scope="module")
def setup():
    from memft_bench.harness.spec.config import load_suite
    from memft_bench.harness.trial.data import encode_example, load_task, training_batches
    from memft_bench.harness.trial.models import build_tokenizer

    suite = load_suite("tiny")
    tokenizer = build_tokenizer(suite.model)
    task = load_task(suite.tasks[0], suite)
    examples = [encode_example(tokenizer, r, suite.budget.cutoff_len) for r in task.train[:64]]
    batch = next(training_batches(examples, 16, 1, 0, tokenizer.pad_token_id, "cpu"))
    return suite, tokenizer, batch


@pytest.mark.parametrize("method_name", METHODS)
def test_step(benchmark, setup, method_name):
    from memft_bench.harness.trial.models import build_model, causal_lm_loss
    from memft_bench.methods.base import create

    suite, tokenizer, batch = setup
    model = build_model(suite.model, tokenizer, seed=0, device="cpu")
    params = dict(suite.methods.get(method_name) or {})
    if method_name == "smt":
        params["warmup_steps"] = 1  # time the sparse phase, not full fine-tuning's warm-up
    method = create(method_name, params, causal_lm_loss, seed=0)
    method.prepare(model)
    for _ in range(2):
        method.step(batch)
    benchmark(method.step, batch)
