"""Model construction: identical starts per seed, cached pre-training, and loading a local model directory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from memft_bench.harness.core.cache import cache_dir
from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.spec.config import ModelSpec
from memft_bench.harness.trial.models import build_model, build_tokenizer


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_same_seed_same_initial_weights(small_suite):
    tok = build_tokenizer(small_suite.model)
    a, b = (build_model(small_suite.model, tok, seed=0, device="cpu") for _ in range(2))
    c = build_model(small_suite.model, tok, seed=1, device="cpu")
    assert torch.equal(_weights(a), _weights(b)) and not torch.equal(_weights(a), _weights(c))


def test_pretraining_is_cached_and_deterministic(small_suite, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    spec = dataclasses.replace(small_suite.model, pretrain_steps=2, pretrain_batch_size=4)
    tok = build_tokenizer(spec)
    first = build_model(spec, tok, seed=0, device="cpu")
    cached = list((cache_dir() / "tiny-llama").glob("*.safetensors"))
    assert len(cached) == 1
    second = build_model(spec, tok, seed=0, device="cpu")
    assert torch.equal(_weights(first), _weights(second))
    assert not torch.equal(_weights(first), _weights(build_model(small_suite.model, tok, seed=0, device="cpu")))


def test_local_pretrained_directory_loads_with_safetensors(small_suite, tmp_path):
    tok = build_tokenizer(small_suite.model)
    model = build_model(small_suite.model, tok, seed=0, device="cpu")
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    spec = ModelSpec(kind="pretrained", path=str(tmp_path))
    loaded = build_model(spec, build_tokenizer(spec), seed=0, device="cpu")
    assert torch.equal(_weights(model), _weights(loaded))


def test_missing_model_directory_is_one_clear_error(tmp_path):
    spec = ModelSpec(kind="pretrained", path=str(tmp_path / "nope"))
    with pytest.raises(BenchError, match="cannot load"):
        build_tokenizer(spec)
