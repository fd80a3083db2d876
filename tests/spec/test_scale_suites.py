"""The shape-only scale suites (scale-1b, scale-3b, scale-7b): the real models' exact shapes on the meta device,
their pre-flight without materialising a weight, and a shrunken copy trained end to end through the CLI, with and
without gradient checkpointing, on the CPU."""

from __future__ import annotations

import json
import subprocess

import pytest

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.spec.config import apply_overrides, load_suite, suite_from_data
from tests.commands import BENCH_CLI

#: Parameter counts of the published models (embedding and output projection counted once when tied).
PARAMETERS = {"scale-1b": 1_235_814_400, "scale-3b": 3_212_749_824, "scale-7b": 6_738_415_616}

#: scale-1b shrunk to a CPU test's size: the same kind, task, precision and methods, 2 steps.
SHRINK = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_hidden_layers=2",
          "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.vocab_size=512",
          "budget.cutoff_len=32", "budget.steps=2", "budget.timing_warmup_steps=1"]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH_CLI, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_meta_model_has_the_published_parameter_count(name):
    from memft_bench.harness.trial.meta_model import build_meta_model

    suite = load_suite(name)
    model = build_meta_model(suite.model)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
    assert all(p.is_meta for p in model.parameters())  # shapes only: nothing allocated
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == suite.model.tie_word_embeddings == (name != "scale-7b")


def test_preflight_of_scale_7b_allocates_no_weight():
    """Building Llama-2-7B on meta and preparing full fine-tuning on it (what --dry-run does) must not grow the
    process by anything near the model's 13 GB of bf16 weights."""
    import psutil

    from memft_bench.harness.run.preflight import check_variant
    from memft_bench.harness.trial.meta_model import build_meta_model

    suite = load_suite("scale-7b")
    before = psutil.Process().memory_info().rss
    check, problem = check_variant(build_meta_model(suite.model), suite, "full", "", {"lr": 1e-5})
    grown = psutil.Process().memory_info().rss - before
    assert problem is None and check.estimate is not None
    assert check.estimate.gradients == PARAMETERS["scale-7b"] * 4  # full trains every weight in float32
    assert 0 <= check.estimate.weights - check.estimate.gradients < 2**20  # the weights, plus rotary buffers
    assert grown < 2**30, f"the pre-flight grew the process by {grown / 2**30:.1f} GiB"


def test_dry_run_predicts_every_default_trial():
    """Every default method of the scale suites (they share one list) gets its exact parts and a traced peak. On
    scale-1b: the same code paths as 7B's in a quarter of the time (16 layers, not 32; 7B's own trace is the test
    below), for CI's time."""
    assert {tuple(load_suite(name).default_methods) for name in ("scale-1b", "scale-3b", "scale-7b")} == \
        {tuple(load_suite("scale-1b").default_methods)}
    result = bench("run", "--suite", "scale-1b", "--dry-run")
    assert result.returncode == 0, result.stderr
    suite = load_suite("scale-1b")
    labels = [*(m for m in suite.default_methods if m != "galore"), "galore[layerwise=False]",
              "galore[layerwise=True]"]
    for label in labels:
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"| {label} "))
        assert "?" not in "".join(line.split("|")[2:9]), line  # the exact parts, their total and the traced peak


def test_the_traced_peak_of_7b_full_fine_tuning_is_its_state_and_backward():
    """Llama-2-7B, full fine-tuning in bf16-mixed at 4 x 512: the traced peak holds at least the exact parts
    (bf16 weights, float32 gradients and AdamW's two float32 moments) and less than twice them."""
    from memft_bench.harness.run.fit import traced_peak
    from memft_bench.harness.run.preflight import check_variant
    from memft_bench.harness.trial.meta_model import build_meta_model

    suite = load_suite("scale-7b")
    check, _ = check_variant(build_meta_model(suite.model), suite, "full", "", {"lr": 1e-5})
    exact = check.estimate.exact
    peak = traced_peak(suite, "full", {"lr": 1e-5})
    assert exact < peak < 2 * exact, (exact, peak)


def test_tokens_task_is_fixed_length_random_ids_with_every_token_a_target():
    from memft_bench.harness.trial.data import encode_example, load_task
    from memft_bench.harness.trial.models import build_tokenizer

    suite = apply_overrides(load_suite("scale-1b"), SHRINK)
    task = load_task(suite.tasks[0], suite)
    assert task.tokens and len(task.train) == suite.tasks[0].train_size
    assert {len(r["token_ids"]) for r in task.train + task.tests["tokens"]} == {32}
    assert max(max(r["token_ids"]) for r in task.train) < 512
    assert task.train == load_task(suite.tasks[0], suite).train  # deterministic in the data seed
    example = encode_example(build_tokenizer(suite.model), task.train[0], 32)
    assert example["labels"] == example["input_ids"] == task.train[0]["token_ids"]


def test_llama_shape_is_built_on_the_device_in_the_storage_dtype():
    import torch

    from memft_bench.harness.trial.models import build_model, build_tokenizer

    spec = apply_overrides(load_suite("scale-1b"), SHRINK).model
    model = build_model(spec, build_tokenizer(spec), seed=0, device="cpu")
    again = build_model(spec, build_tokenizer(spec), seed=0, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in model.buffers()} == {torch.float32}  # rotary frequencies, as from_pretrained leaves them
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_schema_refuses_what_a_shape_only_model_cannot_do():
    data = load_suite("scale-1b").to_data()
    with pytest.raises(ConfigError, match="pretrain_steps"):
        suite_from_data({**data, "model": {**data["model"], "pretrain_steps": 5}}, "t")
    with pytest.raises(ConfigError, match="vocab_size"):
        suite_from_data({**data, "model": {**data["model"], "kind": "tiny-llama"}}, "t")


@pytest.mark.slow  # the CLI end to end in subprocesses: left out of the stacks' fast tests
@pytest.mark.parametrize("checkpointing", [False, True])
def test_shrunken_scale_suite_trains_through_the_cli(tmp_path, checkpointing):
    out = tmp_path / "run"
    methods = "full,lora,mezo" if checkpointing else "full,lora"
    overrides = [a for s in SHRINK for a in ("--set", s)]
    result = bench("run", "--suite", "scale-1b", "--methods", methods, *overrides,
                   "--set", f"budget.gradient_checkpointing={str(checkpointing).lower()}", "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr
    rows = {r["method"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == sorted(methods.split(","))
    for method in ("full", "lora"):
        row = rows[method]
        assert row["status"] == "ok" and row["steps"] == 2 and row["batch_size"] == 4
        assert row["model"].startswith("llama-shape") and row["precision"] == "bf16-mixed"
        assert row["tokens_seen"] == 2 * 4 * 32  # fixed length: every step the same size, no padding
        assert "not meaningful" in row["meter_notes"]["accuracy"]
        assert row["gradient_checkpointing"] is checkpointing  # what reached the model, read back from it
    assert rows["full"]["loss_first"] == pytest.approx(rows["lora"]["loss_first"], abs=1e-3)  # same start
    logs = {path.name: path.read_text() for path in (out / "logs").glob("*.log")}
    on = [name for name, text in logs.items() if "gradient checkpointing: on: 2 decoder layers" in text]
    if checkpointing:
        assert sorted(on) == sorted(n for n in logs if "mezo" not in n) and len(on) == 2
        assert rows["mezo"]["status"] == "ok" and rows["mezo"]["gradient_checkpointing"] is None
        assert "does not apply" in rows["mezo"]["meter_notes"]["gradient_checkpointing"]
    else:
        assert on == []
        assert "gradient_checkpointing" not in (rows["full"]["meter_notes"] or {})
