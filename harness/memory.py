"""Memory, measured four ways (DESIGN.md, "Memory, measured four ways").

1. NVML (GPU): a thread samples the device's used memory and this process's usage every few ms;
   the figure is the peak minus the idle baseline taken before the model was built. It sees
   everything the process holds, CuPy's pool and the CUDA context included.
2. The CUDA allocator: `max_memory_allocated` / `max_memory_reserved`, reset before each phase.
3. CPU: peak resident set size of the trial's own process (`getrusage`), so a CPU-only machine
   still gets a measured figure. Each trial is a fresh process, so the peak is the trial's.
4. Exact accounting: bytes of weights, gradients held and optimizer state from the method's
   `state_bytes()`; deterministic, so CI can track it exactly.
Each meter that does not apply reports None, never a made-up number.
"""

from __future__ import annotations

import resource
import sys
import threading
from dataclasses import dataclass, field

import torch

MB = 1024 * 1024


def rss_peak_mb() -> float:
    """Peak resident set size of this process since the last `reset_rss_peak()` (or its start), in MiB.

    Linux: VmHWM from /proc/self/status, which `reset_rss_peak` can reset, so training and evaluation
    get separate peaks. Elsewhere: getrusage's lifetime peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / MB  # Linux reports KiB, macOS bytes


def reset_rss_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CudaPeaks:
    """The torch CUDA allocator's peaks over a phase; None off the GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def active(self) -> bool:
        return self.device.type == "cuda"

    def reset(self) -> None:
        if self.active:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> tuple[float | None, float | None]:
        """(peak allocated MiB, peak reserved MiB) since the last reset."""
        if not self.active:
            return None, None
        torch.cuda.synchronize(self.device)
        return (
            torch.cuda.max_memory_allocated(self.device) / MB,
            torch.cuda.max_memory_reserved(self.device) / MB,
        )


@dataclass
class NvmlSampler:
    """Samples NVML device memory in a background thread; peaks are relative to a baseline.

    `start()` returns False (and the sampler stays inert) when there is no GPU or NVML cannot be
    initialised, so callers need no special case for CPU machines.
    """

    device_index: int = 0
    interval_s: float = 0.005
    baseline_device_mb: float = 0.0
    peak_device_mb: float = 0.0
    peak_process_mb: float | None = None
    _handle: object = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def init(self) -> bool:
        """Initialise NVML and take the idle baseline; call before the model is built."""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
            self.baseline_device_mb = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / MB
            return True
        except Exception:  # no driver, no device, no library: the meter does not apply
            self._handle = None
            return False

    def _sample(self) -> None:
        import os

        import pynvml

        used = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / MB
        self.peak_device_mb = max(self.peak_device_mb, used)
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    mine = proc.usedGpuMemory / MB
                    self.peak_process_mb = max(self.peak_process_mb or 0.0, mine)
        except pynvml.NVMLError:
            pass  # per-process figures are unavailable in some containers

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def start(self) -> bool:
        if self._handle is None:
            return False
        self.peak_device_mb = 0.0
        self.peak_process_mb = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> tuple[float | None, float | None]:
        """(device peak minus baseline MiB, this process's peak MiB) over the sampled phase."""
        if self._thread is None:
            return None, None
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._sample()
        return max(0.0, self.peak_device_mb - self.baseline_device_mb), self.peak_process_mb


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (adapters included), each tensor counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def exact_breakdown(model: torch.nn.Module, state_elements: dict[str, int], state_bytes: dict[str, int]) -> dict:
    """The deterministic accounting columns of a result row."""
    optimizer_keys = [k for k in state_elements if k not in ("trainable_params", "gradients")]
    return {
        "trainable_params": state_elements.get("trainable_params", 0),
        "optimizer_state_elements": sum(state_elements[k] for k in optimizer_keys),
        "state_elements": dict(state_elements),
        "mem_weights_mb": model_bytes(model) / MB,
        "mem_grads_mb": state_bytes.get("gradients", 0) / MB,
        "mem_optimizer_mb": sum(state_bytes.get(k, 0) for k in optimizer_keys) / MB,
    }
