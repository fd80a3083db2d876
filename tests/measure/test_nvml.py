"""NVML on a machine without a GPU: a stand-in `pynvml` and stand-in `torch.cuda` device properties.

The stand-in numbers GPUs as NVML does (PCI order, blind to CUDA_VISIBLE_DEVICES) and fails the test if
anything looks a GPU up by bare index; torch's side says which GPU each CUDA ordinal is.
"""

from __future__ import annotations

import os
import sys
import time
import types
from dataclasses import dataclass, field

import pytest
import torch

from memft_bench.harness.measure import env as env_module
from memft_bench.harness.measure.memory import MB, NvmlSampler, nvml_handle


class FakeNVMLError(Exception):
    pass


class FakeUuid:
    """Like torch's `_CUuuid`: str() is the bare UUID, without NVML's "GPU-" prefix."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


@dataclass
class Gpu:
    uuid: str  # bare, as torch prints it
    domain: int
    bus: int
    device: int
    name: str
    used_mb: float
    processes: list = field(default_factory=list)  # (pid, used MiB or None)

    @property
    def bus_id(self) -> str:  # NVML accepts any case; torch-derived ids are lowercase
        return f"{self.domain:08x}:{self.bus:02x}:{self.device:02x}.0"

    def props(self):
        return types.SimpleNamespace(name=self.name, uuid=FakeUuid(self.uuid), pci_domain_id=self.domain,
                                     pci_bus_id=self.bus, pci_device_id=self.device, total_memory=80 * 1024 * MB)


@dataclass
class Handle:
    gpu: Gpu


class FakeNvml:
    """The calls of pynvml the harness uses, over a list of GPUs in NVML's (PCI) order."""

    def __init__(self, gpus: list[Gpu], *, uuid_lookup: bool = True, process_listing: bool = True) -> None:
        self.gpus = gpus
        self.uuid_lookup = uuid_lookup
        self.process_listing = process_listing
        self.inits = 0
        self.shutdowns = 0
        self.memory_reads = 0
        self.process_reads = 0
        self.memory_error: str | None = None  # set: every memory read raises this (NVML lost the GPU)

    def module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        m.NVMLError = FakeNVMLError
        for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetHandleByPciBusId",
                     "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetComputeRunningProcesses",
                     "nvmlSystemGetDriverVersion"):
            setattr(m, name, getattr(self, name))
        return m

    def _live(self) -> None:
        if self.inits <= self.shutdowns:
            raise FakeNVMLError("Uninitialized")

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self._live()
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        pytest.fail(f"NVML was asked for GPU by bare index {index}; NVML's order is not CUDA's")

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self._live()
        if not self.uuid_lookup:
            raise FakeNVMLError("Not Supported")
        for gpu in self.gpus:
            if uuid == "GPU-" + gpu.uuid:
                return Handle(gpu)
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        self._live()
        for gpu in self.gpus:
            if bus_id.lower() == gpu.bus_id:
                return Handle(gpu)
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._live()
        self.memory_reads += 1
        if self.memory_error:
            raise FakeNVMLError(self.memory_error)
        gpu = handle.gpu
        return types.SimpleNamespace(used=int(gpu.used_mb * MB), total=80 * 1024 * MB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._live()
        self.process_reads += 1
        if not self.process_listing:
            raise FakeNVMLError("Not Supported")
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=None if mb is None else int(mb * MB))
                for pid, mb in handle.gpu.processes]

    def nvmlSystemGetDriverVersion(self):
        self._live()
        return b"550.54.15"


def two_gpus() -> list[Gpu]:
    """NVML's order: GPU 0 at bus 0x1b, GPU 1 at bus 0x3d; different idle memory, so a mix-up shows."""
    return [
        Gpu("aaaaaaaa-0000-0000-0000-000000000000", 0, 0x1B, 0, "NVIDIA A100 (nvml 0)", used_mb=1000.0),
        Gpu("bbbbbbbb-1111-1111-1111-111111111111", 0, 0x3D, 0, "NVIDIA H100 (nvml 1)", used_mb=5000.0),
    ]


@pytest.fixture
def fake_gpus(monkeypatch):
    """Install a stand-in pynvml and torch.cuda; returns a function (nvml GPUs, CUDA ordinal -> NVML index)."""

    def install(gpus: list[Gpu], cuda_to_nvml: list[int], **kwargs) -> FakeNvml:
        fake = FakeNvml(gpus, **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake.module())

        def props(index):
            if not 0 <= index < len(cuda_to_nvml):
                raise RuntimeError(f"invalid device ordinal {index}")
            return gpus[cuda_to_nvml[index]].props()

        monkeypatch.setattr(torch.cuda, "get_device_properties", props)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: props(index).name)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(cuda_to_nvml))
        monkeypatch.setattr(torch.version, "cuda", "12.4")
        return fake

    return install


def wait_for_samples(fake: FakeNvml, n: int = 3) -> None:
    target = fake.memory_reads + n
    deadline = time.monotonic() + 5
    while fake.memory_reads < target:
        assert time.monotonic() < deadline, "the sampler thread does not sample"
        time.sleep(0.001)


# 1. The GPU is found by identity, never by the CUDA ordinal.


def test_handle_is_the_gpu_torch_uses_not_nvmls_gpu_of_that_index(fake_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    gpus = two_gpus()
    fake = fake_gpus(gpus, cuda_to_nvml=[1])  # cuda:0 is NVML's second GPU
    fake.nvmlInit()
    handle, how = nvml_handle(sys.modules["pynvml"], 0)
    assert handle.gpu is gpus[1]
    assert how == "uuid GPU-bbbbbbbb-1111-1111-1111-111111111111"


def test_handle_falls_back_to_the_pci_bus_id(fake_gpus):
    gpus = two_gpus()
    fake = fake_gpus(gpus, cuda_to_nvml=[1, 0], uuid_lookup=False)
    fake.nvmlInit()
    handle, how = nvml_handle(sys.modules["pynvml"], 0)
    assert handle.gpu is gpus[1] and how == "pci_bus_id 00000000:3d:00.0"
    handle, how = nvml_handle(sys.modules["pynvml"], 1)
    assert handle.gpu is gpus[0] and how == "pci_bus_id 00000000:1b:00.0"


def test_no_silent_fallback_to_the_index_when_the_gpu_is_not_found(fake_gpus, monkeypatch):
    gpus = two_gpus()
    stranger = Gpu("cccccccc-2222-2222-2222-222222222222", 0, 0x5E, 0, "not in NVML's list", used_mb=0.0)
    fake = fake_gpus(gpus, cuda_to_nvml=[0])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: stranger.props())
    fake.nvmlInit()
    with pytest.raises(LookupError, match="uuid GPU-cccccccc.*pci_bus_id 00000000:5e:00.0"):
        nvml_handle(sys.modules["pynvml"], 0)
    fake.nvmlShutdown()

    sampler = NvmlSampler(device_index=0)
    assert sampler.init() is False
    assert "cuda:0" in sampler.init_error and "Not Found" in sampler.init_error
    assert fake.shutdowns == fake.inits  # the failed init shut its NVML reference down again
    assert sampler.start() is False and sampler.stop() == (None, None)
    sampler.close()
    assert fake.shutdowns == fake.inits


def test_sampler_measures_the_gpu_torch_uses(fake_gpus, monkeypatch):
    """CUDA_VISIBLE_DEVICES=1: cuda:0 is NVML's GPU 1. Its growth is measured; GPU 0's is not."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    gpus = two_gpus()
    fake = fake_gpus(gpus, cuda_to_nvml=[1])
    sampler = NvmlSampler(device_index=0, interval_s=0.001)
    assert sampler.init(), sampler.init_error
    assert sampler.handle_source.startswith("uuid GPU-bbbbbbbb")
    assert sampler.baseline_device_mb == pytest.approx(5000.0)

    for phase_growth in (300.0, 120.0):  # several phases in one process, as the trial does
        assert sampler.start()
        gpus[0].used_mb += 9999.0  # another job on the other GPU: not ours to see
        gpus[1].used_mb = 5000.0 + phase_growth
        wait_for_samples(fake)
        gpus[1].used_mb = 5000.0 + phase_growth / 2  # the peak survives the drop
        device_mb, _process_mb = sampler.stop()
        assert device_mb == pytest.approx(phase_growth)
        gpus[0].used_mb = 1000.0
        gpus[1].used_mb = 5000.0
    sampler.close()
    assert fake.inits == fake.shutdowns == 1


# 2. The per-process figure in a PID namespace.


def test_process_figure_is_none_with_a_reason_when_no_pid_matches(fake_gpus):
    gpus = two_gpus()
    gpus[0].processes = [(os.getpid() + 100_000, 700.0), (os.getpid() + 100_001, 50.0)]  # host PIDs
    fake = fake_gpus(gpus, cuda_to_nvml=[0, 1])
    sampler = NvmlSampler(device_index=0, interval_s=0.001)
    assert sampler.init()
    assert sampler.process_note is None
    sampler.start()
    gpus[0].used_mb += 700.0
    wait_for_samples(fake)
    device_mb, process_mb = sampler.stop()
    assert device_mb == pytest.approx(700.0) and process_mb is None
    note = sampler.process_note
    assert note is not None
    assert "2 processes" in note and str(os.getpid()) in note and "PID namespace" in note
    assert "unavailable" in note

    gpus[0].processes = []  # a later phase with another cause: the first note stands (set once)
    sampler.start()
    assert sampler.stop()[1] is None
    assert sampler.process_note == note
    sampler.close()


def test_process_figure_is_none_with_a_reason_when_listing_is_unsupported(fake_gpus):
    fake = fake_gpus(two_gpus(), cuda_to_nvml=[0], process_listing=False)
    sampler = NvmlSampler(device_index=0, interval_s=0.001)
    assert sampler.init()
    sampler.start()
    wait_for_samples(fake)
    assert sampler.stop()[1] is None
    assert "cannot list" in sampler.process_note and "Not Supported" in sampler.process_note
    sampler.close()


def test_process_figure_when_nvml_sees_this_pid(fake_gpus):
    gpus = two_gpus()
    gpus[1].processes = [(os.getpid() + 100_000, 4000.0), (os.getpid(), 256.0)]
    fake = fake_gpus(gpus, cuda_to_nvml=[1])
    sampler = NvmlSampler(device_index=0, interval_s=0.001)
    assert sampler.init()
    sampler.start()
    gpus[1].processes[1] = (os.getpid(), 512.0)  # this process grows: so does the device's figure
    gpus[1].used_mb += 256.0
    wait_for_samples(fake)
    gpus[1].processes[1] = (os.getpid(), 300.0)
    gpus[1].used_mb -= 212.0
    assert sampler.stop()[1] == pytest.approx(512.0)
    assert sampler.process_note is None
    sampler.close()


# 3. NVML is shut down; stop() and close() may be called again.


def test_close_shuts_nvml_down_once_and_stop_is_repeatable(fake_gpus):
    fake = fake_gpus(two_gpus(), cuda_to_nvml=[0])
    NvmlSampler().close()  # never initialised: nothing to shut down
    assert fake.shutdowns == 0

    sampler = NvmlSampler(device_index=0, interval_s=0.001)
    assert sampler.init()
    assert fake.inits == 1 and fake.shutdowns == 0
    sampler.start()
    first = sampler.stop()
    assert first[0] is not None
    assert sampler.stop() == (None, None)  # a second stop() neither raises nor invents a phase
    sampler.start()
    sampler.close()  # stops the running phase, then shuts NVML down
    assert fake.shutdowns == 1
    sampler.close()
    assert fake.shutdowns == 1
    assert sampler.stop() == (None, None) and sampler.start() is False

    assert sampler.init()  # a closed sampler may be initialised again
    assert sampler.init()  # and init() twice does not leak an NVML reference
    sampler.close()
    assert fake.inits == fake.shutdowns == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_sampler_is_inert_and_says_why_without_a_gpu():
    sampler = NvmlSampler()
    assert sampler.init() is False
    assert sampler.init_error
    assert sampler.start() is False and sampler.stop() == (None, None)
    sampler.close()
    sampler.close()


# 5. The environment records the GPU the device string names.


@pytest.fixture
def quick_env(monkeypatch):
    monkeypatch.setattr(env_module, "package_versions", lambda stack: {})
    monkeypatch.setattr(env_module, "git_commit", lambda root=None: None)


def test_environment_records_the_gpu_of_the_device(fake_gpus, quick_env):
    gpus = two_gpus()
    fake = fake_gpus(gpus, cuda_to_nvml=[0, 1])
    row = env_module.environment("cuda:1")
    assert row["gpu_name"] == "NVIDIA H100 (nvml 1)"
    assert row["gpu_uuid"] == "GPU-bbbbbbbb-1111-1111-1111-111111111111"
    assert row["gpu_pci_bus_id"] == "00000000:3d:00.0"
    assert row["driver"] == "550.54.15" and row["cuda"] == "12.4"
    assert fake.inits == fake.shutdowns == 1  # NVML shut down after reading the driver

    assert env_module.environment("cuda:0")["gpu_uuid"] == "GPU-aaaaaaaa-0000-0000-0000-000000000000"
    assert env_module.environment("cuda")["gpu_uuid"] == "GPU-aaaaaaaa-0000-0000-0000-000000000000"


def test_environment_on_a_cpu_device_records_no_gpu(fake_gpus, quick_env):
    fake_gpus(two_gpus(), cuda_to_nvml=[0, 1])
    row = env_module.environment("cpu")
    assert row["gpu_name"] is None and row["gpu_uuid"] is None and row["gpu_pci_bus_id"] is None
    assert row["driver"] == "550.54.15"


def test_environment_without_torch_or_nvml(monkeypatch, quick_env):
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    row = env_module.environment("cuda:0")
    assert "torch" not in sys.modules  # not imported by environment()
    assert {k: row[k] for k in ("gpu_name", "gpu_uuid", "gpu_pci_bus_id", "cuda", "driver")} == dict.fromkeys(
        ("gpu_name", "gpu_uuid", "gpu_pci_bus_id", "cuda", "driver"))


def test_device_strings_and_identity_helpers():
    assert env_module.cuda_index("cuda:1") == 1
    assert env_module.cuda_index("cuda") is None
    assert env_module.cuda_index("cpu") is None and env_module.cuda_index(None) is None
    props = two_gpus()[1].props()
    assert env_module.cuda_uuid(props) == "GPU-bbbbbbbb-1111-1111-1111-111111111111"
    assert env_module.cuda_pci_bus_id(props) == "00000000:3d:00.0"
    assert env_module.cuda_pci_bus_id(types.SimpleNamespace(uuid="x")) is None
    assert env_module.cuda_uuid(types.SimpleNamespace()) is None
