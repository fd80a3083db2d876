"""Batched OMP on the GPU with CuPy, taking and returning torch tensors zero-copy through DLPack.

The algorithm is the one of `kernels/omp.py` (incrementally grown inverse Cholesky factor, all steps
batched matmuls, which CuPy sends to cuBLAS as strided-batched GEMMs). It is written against the
NumPy array API (`xp` is `cupy` on the GPU), so the very same code runs with `numpy` on a CPU: the
tests check it against scikit-learn there, and against the torch kernel on a GPU.

`batched_omp_cupy` runs it where torch would, so that it is measured as torch's kernels are:
- on the tensors' device (not CuPy's device 0), as the current device of both torch and CuPy, since
  torch exports a tensor through DLPack only from its current device;
- on torch's current stream of that device (a CuPy `ExternalStream`), so it is ordered after the work
  that produced its inputs and before whatever uses its outputs, with no synchronisation;
- with every CuPy buffer taken from torch's caching allocator: CuPy keeps a memory pool of its own,
  which torch's meters (`torch.cuda.max_memory_allocated`, the harness's peak memory) do not see, so
  for the duration of the call CuPy's allocator is one that wraps a `torch.empty` uint8 tensor (kept
  alive by the CuPy memory that wraps it, and handed back to torch's cache when CuPy frees it). The
  allocator is installed with `cupy.cuda.using_allocator`, for this thread and this call only.

CuPy is an optional extra (`pip install -e .[cuda]`); this module imports it only when called.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def omp_xp(xp: ModuleType, A: Any, Y: Any, n_nonzero: int, return_support: bool = False) -> Any:
    """OMP for every row of Y with arrays of module `xp` (numpy or cupy). Shapes as `batched_omp`."""
    if Y.ndim != 2:
        raise ValueError(f"Y must be (b, m); got shape {Y.shape}")
    b, m = Y.shape
    shared = A.ndim == 2
    if (shared and A.shape[0] != m) or (not shared and (A.ndim != 3 or A.shape[:2] != (b, m))):
        raise ValueError(f"A must be (m, d) or (b, m, d) with m={m}, b={b}; got shape {A.shape}")
    d = A.shape[-1]
    n = int(min(n_nonzero, m, d))
    if n < 1:
        raise ValueError(f"n_nonzero must be >= 1; got {n_nonzero}")
    dtype = Y.dtype
    A = A.astype(dtype, copy=False)
    eps = float(xp.finfo(dtype).eps) * 10
    rows = xp.arange(b)
    support = xp.full((b, n), -1, dtype=xp.int64)
    atoms = xp.zeros((b, m, n), dtype=dtype)
    l_inv = xp.zeros((b, n, n), dtype=dtype)
    active = xp.ones(b, dtype=bool)
    residual = Y.copy()
    y_norm = xp.linalg.norm(Y, axis=1)
    coef = xp.zeros((b, 0), dtype=dtype)
    for t in range(n):
        corr = residual @ A if shared else xp.matmul(residual[:, None, :], A)[:, 0, :]
        j = xp.argmax(xp.abs(corr), axis=1)  # every column: one already chosen stops its problem, as below
        chosen_again = (support[:, :t] == j[:, None]).any(axis=1)
        col = A[:, j].T if shared else A[rows, :, j]
        w = xp.matmul(l_inv[:, :t, :t], xp.matmul(atoms[:, :, :t].transpose(0, 2, 1), col[:, :, None]))[:, :, 0]
        col_norm_sq = (col * col).sum(axis=1)
        delta_sq = col_norm_sq - (w * w).sum(axis=1)
        res_norm = xp.linalg.norm(residual, axis=1)
        ok = active & ~chosen_again & (delta_sq > eps * xp.maximum(col_norm_sq, eps)) & (res_norm > eps * y_norm)
        active = ok
        delta = xp.where(ok, xp.sqrt(xp.maximum(delta_sq, eps)), 1.0).astype(dtype)
        col = col * ok[:, None]
        w = w * ok[:, None]
        atoms[:, :, t] = col
        l_inv[:, t, :t] = -xp.matmul(w[:, None, :], l_inv[:, :t, :t])[:, 0, :] / delta[:, None]
        l_inv[:, t, t] = 1.0 / delta
        support[:, t] = xp.where(ok, j, -1)
        rhs = xp.matmul(atoms[:, :, : t + 1].transpose(0, 2, 1), Y[:, :, None])
        li = l_inv[:, : t + 1, : t + 1]
        coef = xp.matmul(li.transpose(0, 2, 1), xp.matmul(li, rhs))[:, :, 0]
        residual = Y - xp.matmul(atoms[:, :, : t + 1], coef[:, :, None])[:, :, 0]
        if not bool(active.any()):
            break
    X = xp.zeros((b, d), dtype=dtype)
    used = support[:, : coef.shape[1]]
    valid = used >= 0
    X[xp.broadcast_to(rows[:, None], used.shape)[valid], used[valid]] = coef[valid]
    return (X, support) if return_support else X


def torch_allocator(cupy: ModuleType, device: Any, device_id: int) -> Any:
    """A CuPy allocator (`size -> cupy.cuda.MemoryPointer`) drawing from torch's caching allocator on `device`."""
    import torch

    def allocate(size: int) -> Any:
        block = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
        memory = cupy.cuda.UnownedMemory(block.data_ptr(), size, block, device_id)  # `block` is the owner
        return cupy.cuda.MemoryPointer(memory, 0)

    return allocate


def batched_omp_cupy(A: Any, Y: Any, n_nonzero: int, return_support: bool = False) -> Any:
    """`omp_xp` with CuPy on CUDA torch tensors, on their device and torch's current stream there, with
    CuPy's memory taken from torch's allocator; inputs and outputs shared with torch through DLPack."""
    import cupy
    import torch

    index = Y.device.index if Y.device.index is not None else torch.cuda.current_device()
    device = torch.device(Y.device.type, index)
    stream = torch.cuda.current_stream(index).cuda_stream
    with (
        torch.cuda.device(index),
        cupy.cuda.Device(index),
        cupy.cuda.ExternalStream(stream, index),
        cupy.cuda.using_allocator(torch_allocator(cupy, device, index)),
    ):
        a = cupy.from_dlpack(A.detach().to(Y.dtype).contiguous())
        y = cupy.from_dlpack(Y.detach().contiguous())
        out = omp_xp(cupy, a, y, n_nonzero, return_support)
        if return_support:
            return torch.from_dlpack(out[0]), torch.from_dlpack(out[1])
        return torch.from_dlpack(out)
