"""Shared fixtures: a very small suite, and a private model cache so tests never touch the user's."""

from __future__ import annotations

import os
import tempfile

import pytest

# Set before any test imports harness.trial.models, and inherited by the trial processes the CLI tests start.
os.environ.setdefault("BENCH_CACHE_DIR", tempfile.mkdtemp(prefix="bench-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("BENCH_OFFLINE", "1")  # never download the commonsense data (tests/sources/test_fetch.py)


def small_suite_data(**budget) -> dict:
    """A suite small enough for unit tests: 1 task, a 2-layer width-32 model, a handful of steps."""
    return {
        "name": "unit",
        "model": {"kind": "tiny-llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128},
        "tasks": [{"name": "kind", "generator": "kind", "train_size": 64, "test_size": 16}],
        "budget": {"steps": 3, "micro_batch_size": 4, "cutoff_len": 96, "timing_warmup_steps": 1, **budget},
        "evaluation": {"batch_size": 16},
        "seeds": [0],
        "default_methods": ["full", "lora"],
    }


@pytest.fixture
def suite_data() -> dict:
    return small_suite_data()


@pytest.fixture
def small_suite():
    from memft_bench.harness.spec.config import suite_from_data

    return suite_from_data(small_suite_data(), "test suite")


@pytest.fixture
def tiny_model_and_batch(small_suite):
    """(model, tokenizer, one micro-batch) of the small suite, deterministic."""
    from memft_bench.harness.trial.data import collate, encode_example, load_task
    from memft_bench.harness.trial.models import build_model, build_tokenizer

    tokenizer = build_tokenizer(small_suite.model)
    task = load_task(small_suite.tasks[0], small_suite)
    model = build_model(small_suite.model, tokenizer, seed=0, device="cpu")
    examples = [encode_example(tokenizer, r, 96) for r in task.train[:4]]
    return model, tokenizer, collate(examples, tokenizer.pad_token_id, "cpu")
