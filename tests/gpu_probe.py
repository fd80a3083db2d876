"""`gpu-probe`: a method that trains nothing and holds memory of known sizes, so `.ci/gpu` can check the meters.

Loaded by trial processes through `bench run --plugin tests.gpu_probe --methods gpu-probe`. In `prepare()` it
freezes the model and allocates `torch_mb` MiB through torch and `cupy_mb` MiB through CuPy *drawing from
torch's caching allocator* (`kernels.omp_cupy.torch_allocator`, the allocator the CuPy OMP kernel runs
under), keeps both until training ends, and reports them exactly as method state (`probe_torch`,
`probe_cupy`: uint8 buffers, so elements are bytes), which the row carries as `mem_optimizer_mb`. Its step
is one forward pass without gradients (the loss is real, nothing is updated), so the training peaks are
weights + the probe's buffers + a forward pass's activations, and NVML sees the CUDA context besides.

It also runs one small OMP problem through `OmpSolver("cupy")` and reports the backend that ran, and
whether CuPy's own memory pool grew (it must not: CuPy's memory is meant to come from torch's allocator).

`fill_until_oom: true` makes the first step allocate 1 GiB blocks until the GPU runs out of memory: a
real CUDA out-of-memory error, which the trial must record as status `oom` (CUDA devices only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from memft_bench.harness.core.options import option
from memft_bench.methods.base import Batch, Method, MethodOptions, StepResult, register

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass
class ProbeOptions(MethodOptions):
    torch_mb: int = option(0, "MiB allocated through torch on the model's device in prepare()", min=0)
    cupy_mb: int = option(0, "MiB allocated by CuPy from torch's caching allocator in prepare() (CUDA only)", min=0)
    omp_check: bool = option(True, "run one small OMP problem through OmpSolver('cupy') on a GPU and report it")
    fill_until_oom: bool = option(False, "first step: allocate 1 GiB blocks until CUDA runs out of memory")
    max_fill_gb: int = option(4096, "fill_until_oom: give up (error) after this many GiB", min=1)


@register("gpu-probe")
class GpuProbe(Method):
    """Trains nothing: holds torch and CuPy (through torch's allocator) buffers of known sizes for meter checks."""

    Options = ProbeOptions
    options: ProbeOptions
    uses_backward = False

    def prepare(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.device = next(model.parameters()).device
        self._info: dict[str, Any] = {"torch_mb": 0, "cupy_mb": 0}
        self._torch_buffer: torch.Tensor | None = None
        self._cupy_buffer: Any = None
        if self.options.torch_mb:
            self._torch_buffer = torch.ones(self.options.torch_mb * MIB, dtype=torch.uint8, device=self.device)
            self._info["torch_mb"] = self.options.torch_mb
        if self.device.type == "cuda":
            self._cupy_probe()
        elif self.options.cupy_mb:
            self._info["cupy_error"] = f"no CuPy allocation on {self.device}: CUDA only"
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _cupy_probe(self) -> None:
        try:
            import cupy
        except Exception as exc:  # not installed, or built for another CUDA
            self._info["cupy_error"] = f"{type(exc).__name__}: {exc}"[:300]
            return
        from memft_bench.kernels.omp_cupy import torch_allocator

        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        pool = cupy.get_default_memory_pool()
        pool_before = pool.total_bytes()
        if self.options.cupy_mb:
            nbytes = self.options.cupy_mb * MIB
            with cupy.cuda.Device(index), cupy.cuda.using_allocator(torch_allocator(cupy, self.device, index)):
                buffer = cupy.empty(nbytes, dtype=cupy.uint8)
                buffer.data.memset(1, nbytes)  # a runtime memset: no kernel to compile
            self._cupy_buffer = buffer
            self._info["cupy_mb"] = self.options.cupy_mb
        if self.options.omp_check:
            from memft_bench.kernels.omp import OmpSolver

            gen = torch.Generator(device=self.device).manual_seed(0)
            A = torch.randn(64, 512, device=self.device, generator=gen)
            Y = torch.randn(8, 64, device=self.device, generator=gen)
            solver = OmpSolver("cupy")
            solver(A, Y, 8)
            self._info["omp_backend"] = solver.backend_used
            self._info["omp_fallback_reason"] = solver.fallback_reason
        self._info["cupy_pool_growth_bytes"] = pool.total_bytes() - pool_before

    def step(self, batch: Batch) -> StepResult:
        assert self.model is not None
        if self.options.fill_until_oom:
            self._fill_until_oom()
        total = max(batch.target_tokens, 1)
        with torch.no_grad():
            loss = sum(float(self.loss_fn(self.model, mb)[0]) for mb in batch.micro_batches)
        return StepResult(loss / total)

    def _fill_until_oom(self) -> None:
        if self.device.type != "cuda":
            raise RuntimeError(f"gpu-probe.fill_until_oom fills a CUDA device; this trial runs on {self.device}")
        blocks = []
        for _ in range(self.options.max_fill_gb):
            blocks.append(torch.empty(GIB, dtype=torch.uint8, device=self.device))  # torch.OutOfMemoryError
        raise RuntimeError(f"gpu-probe.fill_until_oom: {len(blocks)} GiB allocated without running out of memory")

    def _held(self) -> dict[str, int]:
        torch_bytes = self._torch_buffer.numel() if self._torch_buffer is not None else 0
        cupy_bytes = int(self._cupy_buffer.nbytes) if self._cupy_buffer is not None else 0
        return {"probe_torch": torch_bytes, "probe_cupy": cupy_bytes}

    def state_elements(self) -> dict[str, int]:
        return {"trainable_params": 0, "gradients": 0, **self._held()}  # uint8: one element is one byte

    def state_bytes(self) -> dict[str, int]:
        return {"trainable_params": 0, "gradients": 0, **self._held()}

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def release_training_state(self) -> None:
        self._torch_buffer = None
        self._cupy_buffer = None
        super().release_training_state()

    def info(self) -> dict[str, Any]:
        return dict(getattr(self, "_info", {}))
