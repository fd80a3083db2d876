"""Device resolution: every GPU device string a trial gets is indexed (`cuda:N`), checked against the GPUs
torch sees, using a stand-in for `torch.cuda` so the logic is tested without a GPU."""

from __future__ import annotations

import pytest
import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.run.devices import resolve_device


def _gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    def no_context(*_args, **_kwargs):  # resolving must not create a CUDA context in the runner
        raise AssertionError("resolve_device initialised CUDA")

    monkeypatch.setattr(torch.cuda, "current_device", no_context)
    monkeypatch.setattr(torch.cuda, "init", no_context)


@pytest.mark.parametrize("count", [1, 2])
def test_auto_and_bare_cuda_resolve_to_an_index(monkeypatch, count):
    _gpus(monkeypatch, count)
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("cuda:0") == "cuda:0"
    torch.device(resolve_device("auto"))  # a valid torch device with an index
    assert torch.device(resolve_device("auto")).index == 0


def test_a_second_gpu_is_accepted_only_when_there_is_one(monkeypatch):
    _gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="torch sees 2 GPU"):
        resolve_device("cuda:2")
    _gpus(monkeypatch, 1)
    with pytest.raises(ConfigError, match=r"torch sees 1 GPU\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:1")


def test_without_a_gpu(monkeypatch):
    _gpus(monkeypatch, 0)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    for text in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            resolve_device(text)
    for text in ("tpu", "cuda:x", "cuda:-1", "gpu"):
        with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(text)


def test_the_trial_indexes_a_bare_cuda_from_an_older_spec(monkeypatch):
    from memft_bench.harness.trial.worker import trial_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert trial_device("cuda") == torch.device("cuda", 1)
    assert trial_device("cuda:0") == torch.device("cuda", 0)
    assert trial_device("cpu") == torch.device("cpu")
