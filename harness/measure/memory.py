"""Memory, measured four ways; each meter that does not apply reports None, never a made-up number.

1. NVML (GPU): a thread samples the GPU's used memory every 20 ms (this process's usage only when it peaks); the
   device figure is the phase's peak minus the idle baseline taken before the model was built, so it
   sees everything the process holds, CuPy's pool and the CUDA context included (and, on a shared
   GPU, other processes' growth too). The GPU is found by its UUID or PCI bus id from torch, never by
   the CUDA ordinal, which NVML does not know (see `nvml_handle`). The per-process figure needs
   NVML's PIDs to match ours; inside a container's PID namespace they do not, and it is None with a
   reason in `NvmlSampler.process_note`.
2. The CUDA allocator: `max_memory_allocated` / `max_memory_reserved`, reset before each phase.
3. CPU: peak resident set size of the trial's own process (VmHWM, reset between phases where the
   kernel allows; else getrusage's lifetime peak), so a CPU-only machine still gets a measured
   figure. Each trial is a fresh process, so the peak is the trial's.
4. Exact accounting: bytes of weights, gradients held and optimizer state from the method's
   `state_bytes()`; deterministic, so CI can track it exactly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from memft_bench.harness.core.tensor_bytes import model_bytes

MB = 1024 * 1024
log = logging.getLogger(__name__)


def status_bytes(field: str = "VmRSS") -> int | None:
    """One memory line of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile) in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def rss_peak_mb() -> float:
    """Peak resident set size of this process since the last `reset_rss_peak()` (or its start), in MiB.

    Linux: VmHWM from /proc/self/status, which `reset_rss_peak` can reset, so training and evaluation
    get separate peaks. Elsewhere: getrusage's lifetime peak.
    """
    hwm = status_bytes("VmHWM")
    if hwm is not None:
        return hwm / MB
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


def _cpu_storages() -> dict[int, Any]:
    """Every CPU tensor storage alive in this process, found through the garbage collector, by address. Fake
    tensors (a memory trace's, while it is alive) say they are on the CPU but hold no memory: left out."""
    import gc
    import warnings

    from torch._subclasses.fake_tensor import FakeTensor

    storages: dict[int, Any] = {}
    with warnings.catch_warnings():  # isinstance() of some library objects warns of their deprecation
        warnings.simplefilter("ignore")
        objects = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor) and not isinstance(obj, FakeTensor)]
    # A gradient autograd accumulated lives in C++ until Python first reads `.grad`: the garbage collector does not
    # see it, so it is reached through its parameter (reading `.grad` of a non-leaf would warn: leaves only).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grads = [obj.grad for obj in objects if obj.is_leaf and obj.requires_grad and obj.grad is not None]
    for obj in objects + grads:
        try:
            if obj.device.type == "cpu" and obj.layout == torch.strided:
                st = obj.untyped_storage()
                if st.nbytes() and st.nbytes() >= storages.get(st.data_ptr(), st).nbytes():
                    storages[st.data_ptr()] = st
        except Exception:  # a tensor without storage of its own (a functional wrapper, a fake tensor)
            continue
    return storages


def live_cpu_tensor_bytes() -> int:
    """Bytes of every CPU tensor storage alive, each storage once: what of the resident set is tensors."""
    return sum(st.nbytes() for st in _cpu_storages().values())


def page_in_cpu_tensors() -> None:
    """Read every CPU tensor storage once. A pre-trained model's weights are mapped from its safetensors file and
    enter the resident set only when first read; a baseline taken before that would see them arrive during
    training and count them as the training's growth."""
    with torch.no_grad():
        for st in _cpu_storages().values():
            with contextlib.suppress(Exception):
                torch.tensor([], dtype=torch.uint8).set_(st).sum()


class CpuTrainingPeak:
    """The training peak of a CPU trial as the resident set shows it, comparable with a prediction of tensor
    bytes: the peak RSS above the trial's idle baseline, the non-tensor resident set just before training.

    Two things make that baseline the process's, not an accident of what ran before: the runtime is warmed first
    (`warm_up_runtime`: the thread pools started, autograd and the common kernels run once), and the library code
    training pages in is not counted (`library_pages_mb`, the growth of the file-backed resident set over the
    phase: clean pages of shared libraries, which the kernel drops and reads again under memory pressure, so they
    never decide whether a run fits). Everything else counts: the tensors alive at the peak, and whatever anonymous
    memory the steps hold then or keep (a library's workspace or buffer cache outside torch's allocator, heap
    slack). With glibc's mmap threshold fixed (`glibc_heap`), freed activations leave the resident set.
    """

    def __init__(self) -> None:
        self.non_tensor_bytes: int | None = None
        self.file_bytes_at_start: int | None = None
        self.library_pages_mb: float | None = None

    def start(self) -> None:
        """Call just before the training phase's meters reset (after `free_memory`)."""
        import gc

        warm_up_runtime()
        page_in_cpu_tensors()
        gc.collect()
        rss = status_bytes("VmRSS")
        self.non_tensor_bytes = None if rss is None else rss - live_cpu_tensor_bytes()
        self.file_bytes_at_start = status_bytes("RssFile")

    def stop(self) -> None:
        """Call when the phase ends: reads the library code it paged in."""
        now = status_bytes("RssFile")
        if now is not None and self.file_bytes_at_start is not None:
            self.library_pages_mb = max(0, now - self.file_bytes_at_start) / MB

    def peak_mb(self, peak_rss_mb: float | None) -> float | None:
        """The training peak (MiB) from the phase's peak RSS; None when either figure is missing."""
        if peak_rss_mb is None or self.non_tensor_bytes is None:
            return None
        return peak_rss_mb - self.non_tensor_bytes / MB - (self.library_pages_mb or 0.0)


def warm_up_runtime() -> None:
    """Run a forward and backward pass of a small matrix product once: it starts the OpenMP and intra-op thread
    pools (their stacks and arenas) and pages in autograd's engine, so the idle baseline read next is the one of a
    process that has trained, as every trial's is after its first step. Touches no random generator."""
    x = torch.ones(128, 128, requires_grad=True)
    torch.nn.functional.silu(x @ x).sum().backward()
    del x


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


def nvml_handle(pynvml: Any, device_index: int) -> tuple[object, str]:
    """The NVML handle of the GPU torch calls `cuda:<device_index>`, and how it was found.

    NVML numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES, so the CUDA ordinal is no NVML
    index. The GPU is looked up by its identity instead: its UUID first, then its PCI bus id, both from
    `torch.cuda.get_device_properties`. Never by bare index. `how` says which lookup worked, e.g.
    "uuid GPU-58f7b3a2-..." or "pci_bus_id 00000000:1b:00.0". Raises LookupError, naming each failed
    lookup, when neither finds the GPU. NVML must already be initialised.
    """
    from memft_bench.harness.measure.env import cuda_pci_bus_id, cuda_uuid

    props = torch.cuda.get_device_properties(device_index)
    failures: list[str] = []
    uuid = cuda_uuid(props)
    if uuid is None:
        failures.append("torch reports no UUID")
    else:
        candidates = [uuid]
        if uuid.startswith("GPU-"):  # a MIG instance's UUID, under the prefix NVML gives MIG devices
            candidates.append("MIG-" + uuid[len("GPU-"):])
        for candidate in candidates:
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(candidate), f"uuid {candidate}"
            except Exception as exc:  # pynvml.NVMLError, or a binding too old to have the call
                failures.append(f"uuid {candidate}: {exc}")
    bus_id = cuda_pci_bus_id(props)
    if bus_id is None:
        failures.append("torch reports no PCI bus id")
    else:
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id), f"pci_bus_id {bus_id}"
        except Exception as exc:
            failures.append(f"pci_bus_id {bus_id}: {exc}")
    raise LookupError(f"NVML does not find cuda:{device_index} ({'; '.join(failures)})")


@dataclass
class NvmlSampler:
    """Samples NVML memory of one GPU in a background thread; the device peak is relative to a baseline.

    Use: `init()` once (before the model is built: it takes the idle baseline), then `start()` and
    `stop()` around each phase, then `close()`. `init()` returns False, and the sampler stays inert
    (`start()` False, `stop()` (None, None)), when there is no GPU, no NVML, or NVML does not find the
    GPU; `init_error` says why. `handle_source` says how the GPU was found (see `nvml_handle`).

    The per-process peak matches NVML's process list against `os.getpid()`. In a container with its
    own PID namespace NVML reports host PIDs, which never match; the figure is then None and
    `process_note` says why (set once, the first time it applies).

    Every 20 ms, not every few: the device figure only moves when a process calls cudaMalloc/cudaFree, and
    within a phase torch's caching allocator only grows its segments (nothing calls empty_cache), so the used
    memory is a staircase whose top `stop()`'s last sample reads anyway; a 5 ms loop of NVML calls (each a
    driver query, the process listing costlier still) competes with the training loop for the GIL and a
    CPU core and perturbs the step times measured beside it. The process list is read only when the device
    figure reaches a new peak (a process's usage is part of the device's) and at `stop()`, and no more in a
    phase once NVML said it cannot list them.

    A sample that raises (the GPU fell off the bus, NVML went away) is not the end silently: the thread tries
    again a few times, and `sample_note` says that sampling failed, how often, after how many good samples,
    and whether it stopped, so the peak is known to be partial; the trial copies it into its row's
    `meter_notes` (key `nvml`).
    """

    device_index: int = 0
    interval_s: float = 0.02
    max_failures: int = 3  # consecutive failed samples before the thread gives up
    baseline_device_mb: float = 0.0
    peak_device_mb: float = 0.0
    peak_process_mb: float | None = None
    init_error: str | None = None
    handle_source: str | None = None
    process_note: str | None = None
    _pynvml: Any = None
    _handle: object = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    sample_note: str | None = None
    _gave_up: bool = False
    _why_no_process: str | None = None
    _samples: int = 0
    _listed_at_mb: float = -1.0  # the device figure at the last process listing
    _can_list: bool = True
    _failures: int = 0
    _last_error: str | None = None
    _gave_up: bool = False

    def init(self) -> bool:
        """Initialise NVML, find the GPU and take the idle baseline; call before the model is built."""
        self.close()  # a second init() starts over rather than leaking an NVML reference
        self.init_error = self.handle_source = None
        try:
            import pynvml
        except ImportError as exc:
            self.init_error = f"pynvml is not importable: {exc}"
            return False
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # no driver, no library: the meter does not apply
            self.init_error = f"nvmlInit failed: {exc}"
            return False
        self._pynvml = pynvml
        try:
            handle, self.handle_source = nvml_handle(pynvml, self.device_index)
            self.baseline_device_mb = pynvml.nvmlDeviceGetMemoryInfo(handle).used / MB
        except Exception as exc:
            self.init_error = str(exc) if isinstance(exc, LookupError) else f"{type(exc).__name__}: {exc}"
            self.close()
            return False
        self._handle = handle
        return True

    def close(self) -> None:
        """Stop sampling and shut NVML down; idempotent, and harmless when `init()` failed or never ran."""
        self.stop()
        pynvml, self._pynvml, self._handle = self._pynvml, None, None
        if pynvml is not None:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()

    def _sample(self, list_processes: bool = False) -> None:
        pynvml = self._pynvml
        used = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / MB
        self.peak_device_mb = max(self.peak_device_mb, used)
        self._samples += 1
        if self._can_list and (list_processes or used > self._listed_at_mb):
            self._listed_at_mb = used
            self._sample_processes()

    def _sample_processes(self) -> None:
        pynvml = self._pynvml
        pid = os.getpid()
        try:
            procs = list(pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle))
        except Exception as exc:  # pynvml.NVMLError: not supported here (some containers, vGPU)
            self._why_no_process = f"NVML cannot list the processes on this GPU ({exc})"
            self._can_list = False  # it will not start to for the rest of this phase
            return
        mine = [p for p in procs if p.pid == pid]
        if not mine:
            self._why_no_process = (
                f"NVML lists {len(procs)} processes on this GPU but none with this PID {pid}: PID namespace of a "
                "container (NVML reports host PIDs)" if procs else "NVML lists no processes on this GPU"
            )
            return
        sizes = [p.usedGpuMemory for p in mine if p.usedGpuMemory is not None]
        if not sizes:
            self._why_no_process = f"NVML lists this PID {pid} on this GPU but not its memory"
            return
        self.peak_process_mb = max(self.peak_process_mb or 0.0, sum(sizes) / MB)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
                self._failures = 0
            except Exception as exc:  # the GPU fell off the bus or NVML went away: keep what was sampled
                self._failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._record_failure()
                if self._failures >= self.max_failures:
                    self._gave_up = True
                    self._record_failure()
                    log.warning("NVML sampling of cuda:%d stopped: %s", self.device_index, self.sample_note)
                    return
            self._stop.wait(self.interval_s)

    def _record_failure(self) -> None:
        how = (f"stopped after {self._failures} failures in a row" if self._gave_up
               else "retried")
        self.sample_note = (f"NVML sampling failed ({self._last_error}) after {self._samples} good samples and "
                            f"{how}: the device peak covers only what was sampled")

    def start(self) -> bool:
        """Begin a phase: reset the peaks and sample in the background; False when the sampler is inert."""
        if self._thread is not None:
            self.stop()
        if self._handle is None:
            return False
        self.peak_device_mb = 0.0
        self.peak_process_mb = None
        self._why_no_process = None
        self._samples = 0
        self._listed_at_mb = -1.0
        self._can_list = True
        self._failures = 0
        self._gave_up = False
        self.sample_note = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> tuple[float | None, float | None]:
        """(device peak minus baseline MiB, this process's peak MiB) over the phase since `start()`.

        (None, None) when no phase is running (never started, already stopped, or closed); the device
        figure is None too when not one sample succeeded (NVML lost the GPU).
        """
        if self._thread is None:
            return None, None
        self._stop.set()
        self._thread.join()
        self._thread = None
        try:  # a last sample (the top of the allocator's staircase), with the process list
            self._sample(list_processes=True)
        except Exception as exc:  # a lost GPU keeps what was sampled, and says so
            self._last_error = f"{type(exc).__name__}: {exc}"[:200]
            self._failures += 1
            self._record_failure()
        if self.peak_process_mb is None and self.process_note is None:
            self.process_note = (self._why_no_process or "NVML gave no per-process figure") + (
                "; per-process figure unavailable")
            log.warning("NVML process figure for cuda:%d: %s", self.device_index, self.process_note)
        device_mb = max(0.0, self.peak_device_mb - self.baseline_device_mb) if self._samples else None
        return device_mb, self.peak_process_mb


def exact_breakdown(model: torch.nn.Module, state_elements: dict[str, int], state_bytes: dict[str, int]) -> dict:
    """The deterministic accounting columns of a result row. A method must give both figures for every
    kind of state: a kind in one mapping and not the other is a bug in the method, not a zero."""
    if set(state_elements) != set(state_bytes):
        raise ValueError(f"state_elements() and state_bytes() name different kinds of state: "
                         f"{sorted(set(state_elements) ^ set(state_bytes))}")
    optimizer_keys = [k for k in state_elements if k not in ("trainable_params", "gradients")]
    return {
        "trainable_params": state_elements.get("trainable_params", 0),
        "optimizer_state_elements": sum(state_elements[k] for k in optimizer_keys),
        "state_elements": dict(state_elements),
        "state_bytes": dict(state_bytes),  # by kind: 8/4-bit state is not elements x 4 bytes
        "mem_weights_mb": model_bytes(model) / MB,
        "mem_grads_mb": state_bytes.get("gradients", 0) / MB,
        "mem_optimizer_mb": sum(state_bytes.get(k, 0) for k in optimizer_keys) / MB,
    }
