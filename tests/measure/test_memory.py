"""Meters: the exact breakdown from state_elements, peak RSS, and (on a GPU) the allocator and NVML."""

from __future__ import annotations

import pytest
import torch

from memft_bench.harness.core.tensor_bytes import model_bytes
from memft_bench.harness.measure.memory import MB, CudaPeaks, NvmlSampler, exact_breakdown, rss_peak_mb
from memft_bench.methods.base import create
from tests.toy import Toy, quadratic_loss, toy_batch

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_exact_breakdown_of_full_and_lora():
    full = create("full", {}, quadratic_loss)
    full.prepare(Toy())
    full.step(toy_batch())
    row = exact_breakdown(full.model, full.state_elements(), full.state_bytes())
    n = 6 * 8 + 8
    assert row["trainable_params"] == n and row["optimizer_state_elements"] == 2 * n
    assert row["mem_weights_mb"] == pytest.approx(4 * n / MB)
    assert row["mem_grads_mb"] == pytest.approx(4 * n / MB)
    assert row["mem_optimizer_mb"] == pytest.approx(8 * n / MB)

    lora = create("lora", {"r": 2, "target_modules": ["q_proj"]}, quadratic_loss)
    lora.prepare(Toy())
    lora.step(toy_batch())
    row = exact_breakdown(lora.model, lora.state_elements(), lora.state_bytes())
    assert row["mem_weights_mb"] == pytest.approx(model_bytes(lora.model) / MB)  # base + adapters
    assert row["mem_optimizer_mb"] == pytest.approx(8 * 2 * (6 + 8) / MB)


def test_rss_peak_is_a_real_measurement():
    before = rss_peak_mb()
    block = bytearray(64 * 1024 * 1024)  # touch 64 MiB
    for i in range(0, len(block), 4096):
        block[i] = 1
    assert rss_peak_mb() >= before
    assert rss_peak_mb() > 64


def test_rss_peak_resets_between_phases():
    import mmap

    from memft_bench.harness.measure.memory import reset_rss_peak

    if not reset_rss_peak():  # from here on, the peak is this test's, not that of the tests run before it
        pytest.skip("this kernel cannot reset the peak RSS")
    # An anonymous mapping of our own, unmapped by close(): the memory certainly goes back to the kernel
    # (a malloc'd block may stay in the process's heap when an earlier library raised the mmap threshold).
    block = mmap.mmap(-1, 128 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    high = rss_peak_mb()
    block.close()
    reset_rss_peak()
    assert rss_peak_mb() < high - 64  # the next phase's peak no longer includes the freed block


def test_gpu_meters_are_inert_on_a_cpu():
    peaks = CudaPeaks(torch.device("cpu"))
    peaks.reset()
    assert peaks.read() == (None, None)
    sampler = NvmlSampler()
    if not torch.cuda.is_available():
        assert sampler.start() is False and sampler.stop() == (None, None)


@gpu
@needs_cuda
def test_cuda_allocator_peak_sees_an_allocation():
    device = torch.device("cuda")
    peaks = CudaPeaks(device)
    peaks.reset()
    x = torch.empty(256 * 1024 * 1024 // 4, device=device)  # 256 MiB
    allocated, reserved = peaks.read()
    del x
    assert allocated >= 256 and reserved >= allocated


@gpu
@needs_cuda
def test_nvml_sampler_sees_device_memory_grow():
    sampler = NvmlSampler(device_index=torch.cuda.current_device())
    assert sampler.init()
    assert sampler.start()
    x = torch.ones(512 * 1024 * 1024 // 4, device="cuda")  # 512 MiB
    torch.cuda.synchronize()
    import time

    time.sleep(0.05)
    device_peak, _process_peak = sampler.stop()
    del x
    assert device_peak >= 400


def test_live_cpu_tensor_bytes_counts_real_storage_once_and_no_fake_tensor():
    import gc

    from torch._subclasses.fake_tensor import FakeTensorMode

    from memft_bench.harness.measure.memory import live_cpu_tensor_bytes

    gc.collect()
    before = live_cpu_tensor_bytes()
    real = torch.empty(250_000)  # 1 MB
    view = real[10:]  # shares its storage: counted once
    with FakeTensorMode():
        fake = torch.empty(1000, 1000)  # 4 MB that do not exist
    assert live_cpu_tensor_bytes() - before == 1_000_000
    del real, view, fake


def test_live_cpu_tensor_bytes_counts_a_gradient_python_never_read():
    """autograd keeps a leaf's gradient in C++ until `.grad` is read: the garbage collector does not see it, and a
    baseline taken after a backward would count its bytes as non-tensor memory."""
    import gc

    from memft_bench.harness.measure.memory import live_cpu_tensor_bytes

    weight = torch.nn.Parameter(torch.ones(250_000))  # 1 MB
    gc.collect()
    before = live_cpu_tensor_bytes()
    (weight * 2).sum().backward()  # the gradient exists now; no Python object holds it
    gc.collect()
    assert live_cpu_tensor_bytes() - before == 1_000_000


def test_cpu_training_peak_leaves_out_only_the_library_code_training_paged_in(monkeypatch):
    """The peak counts from the non-tensor resident set of the warmed process; of what training adds, only the
    file-backed pages (library code) are left out, and anonymous growth (a library's buffers) counts."""
    from memft_bench.harness.measure import memory

    figures = {"VmRSS": iter([500 * MB]), "RssFile": iter([100 * MB, 107 * MB])}
    monkeypatch.setattr(memory, "status_bytes", lambda field="VmRSS": next(figures[field]))
    monkeypatch.setattr(memory, "live_cpu_tensor_bytes", lambda: 120 * MB)
    monkeypatch.setattr(memory, "page_in_cpu_tensors", lambda: None)
    warmed = []
    monkeypatch.setattr(memory, "warm_up_runtime", lambda: warmed.append(True))
    peak = memory.CpuTrainingPeak()
    peak.start()
    assert warmed == [True] and peak.non_tensor_bytes == 380 * MB
    assert peak.peak_mb(900.0) == 520.0  # before stop(): nothing left out yet
    peak.stop()
    assert peak.library_pages_mb == 7.0
    assert peak.peak_mb(900.0) == 513.0


def test_warm_up_runtime_draws_no_random_number():
    state = torch.get_rng_state()
    from memft_bench.harness.measure.memory import warm_up_runtime

    warm_up_runtime()
    assert torch.equal(torch.get_rng_state(), state)
