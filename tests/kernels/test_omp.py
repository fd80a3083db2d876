"""Batched OMP (torch kernel, and the CuPy kernel's code run with NumPy) against scikit-learn's orthogonal_mp;
OmpSolver's choice of kernel, its record of it and its fallback (with a stand-in `cupy` module on a CPU);
on a GPU, the CuPy kernel against the torch kernel, its memory in torch's meters and its device."""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp

from memft_bench.kernels import omp as omp_module
from memft_bench.kernels.omp import OmpSolver, batched_omp, batched_omp_torch
from memft_bench.kernels.omp_cupy import omp_xp


def _torch_omp(A, Y, n, return_support=False):
    out = batched_omp_torch(torch.from_numpy(A), torch.from_numpy(Y), n, return_support)
    return tuple(o.numpy() for o in out) if return_support else out.numpy()


def _numpy_omp(A, Y, n, return_support=False):
    return omp_xp(np, A, Y, n, return_support)


KERNELS = pytest.mark.parametrize("omp", [_torch_omp, _numpy_omp], ids=["torch", "xp-numpy"])


def _reference(A, Y, n):
    if A.ndim == 2:
        return orthogonal_mp(A, Y.T, n_nonzero_coefs=n).T.reshape(Y.shape[0], A.shape[1])
    return np.stack([orthogonal_mp(A[i], Y[i], n_nonzero_coefs=n) for i in range(len(Y))])


@KERNELS
@pytest.mark.parametrize(("b", "m", "d", "n"), [(5, 20, 50, 4), (3, 40, 120, 10), (1, 8, 8, 8), (4, 16, 300, 1)])
@pytest.mark.parametrize("shared", [True, False])
def test_matches_scikit_learn_in_float64(omp, b, m, d, n, shared):
    rng = np.random.default_rng(b * 1000 + m + d + n)
    A = rng.standard_normal((m, d) if shared else (b, m, d))
    Y = rng.standard_normal((b, m))
    X = omp(A, Y, n)
    ref = _reference(A, Y, n)
    assert X.shape == (b, d)
    np.testing.assert_array_equal(X != 0, ref != 0)  # the same support
    np.testing.assert_allclose(X, ref, atol=1e-5, rtol=1e-5)


@KERNELS
def test_exact_recovery_of_sparse_signals(omp):
    rng = np.random.default_rng(7)
    b, d, s = 8, 200, 6
    m = int(np.ceil(4 * s * np.log(d / s)))  # comfortably above the ~2 s ln(d/s) threshold
    A = rng.standard_normal((m, d)) / np.sqrt(m)
    X_true = np.zeros((b, d))
    for i in range(b):
        X_true[i, rng.choice(d, s, replace=False)] = rng.standard_normal(s) + np.sign(rng.standard_normal(s))
    X, support = omp(A, X_true @ A.T, s, return_support=True)
    np.testing.assert_allclose(X, X_true, atol=1e-8)
    assert all(set(support[i]) == set(np.flatnonzero(X_true[i])) for i in range(b))


@KERNELS
def test_stops_early_when_the_residual_vanishes(omp):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((30, 60))
    Y = (A[:, [4, 9]] @ np.array([1.5, -2.0]))[None]
    X, support = omp(A, Y, 6, return_support=True)
    assert sorted(support[0][support[0] >= 0]) == [4, 9]
    np.testing.assert_allclose(X[0, [4, 9]], [1.5, -2.0], atol=1e-10)
    assert np.count_nonzero(X) == 2


def test_float32_close_to_float64():
    rng = np.random.default_rng(11)
    A, Y = rng.standard_normal((64, 256)), rng.standard_normal((10, 64))
    X64 = _torch_omp(A, Y, 8)
    X32 = batched_omp(torch.from_numpy(A).float(), torch.from_numpy(Y).float(), 8).numpy()
    np.testing.assert_allclose(X32, X64, atol=1e-4, rtol=1e-3)


def test_bad_shapes_and_backend_are_clear_errors():
    with pytest.raises(ValueError, match="A must be"):
        batched_omp(torch.zeros(5, 10), torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        batched_omp(torch.zeros(4, 10), torch.zeros(2, 4), 2, backend="numba")
    with pytest.raises(ValueError, match="cupy backend needs CUDA tensors"):
        batched_omp(torch.zeros(4, 10), torch.zeros(2, 4), 2, backend="cupy")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cupy_kernel_matches_torch_kernel_on_gpu():
    pytest.importorskip("cupy")
    from memft_bench.kernels.omp_cupy import batched_omp_cupy

    gen = torch.Generator(device="cuda").manual_seed(0)
    A = torch.randn(16, 128, 1024, device="cuda", dtype=torch.float64, generator=gen)
    Y = torch.randn(16, 128, device="cuda", dtype=torch.float64, generator=gen)
    X_cupy, S_cupy = batched_omp_cupy(A, Y, 32, return_support=True)
    X_torch, S_torch = batched_omp_torch(A, Y, 32, return_support=True)
    assert torch.equal(S_cupy.to(S_torch.dtype), S_torch)
    torch.testing.assert_close(X_cupy, X_torch, atol=1e-8, rtol=1e-8)


# -- OmpSolver on a CPU: a stand-in `cupy` (NumPy underneath), with the CUDA-only calls replaced --------


class CompileException(Exception):
    """Named as CuPy's NVRTC error, which a machine without NVRTC raises at the first kernel launch."""


class _StandInCupy(types.ModuleType):
    """`cupy` as far as `batched_omp_cupy` uses it: array functions from NumPy, `cuda` contexts that log.

    `fail` is raised by the launch (the first `from_dlpack`) while set; `launches` counts launches.
    """

    def __init__(self, fail: BaseException | None = None) -> None:
        super().__init__("cupy")
        self.fail = fail
        self.launches = 0
        self.log: list[tuple] = []
        self.allocator = None  # the allocator installed now, if any
        self.allocated = None  # what the installed allocator returned for a trial request
        self.context_at_launch: tuple | None = None
        stand_in = self

        @contextlib.contextmanager
        def device(index):
            stand_in.log.append(("device", index))
            yield

        @contextlib.contextmanager
        def external_stream(ptr, device_id):
            stand_in.log.append(("stream", ptr, device_id))
            yield

        @contextlib.contextmanager
        def using_allocator(allocator):
            stand_in.log.append(("allocator on",))
            stand_in.allocator = allocator
            stand_in.allocated = allocator(1000)
            try:
                yield
            finally:
                stand_in.allocator = None
                stand_in.log.append(("allocator off",))

        self.cuda = types.SimpleNamespace(
            Device=device,
            ExternalStream=external_stream,
            using_allocator=using_allocator,
            UnownedMemory=lambda ptr, size, owner, device_id: types.SimpleNamespace(
                ptr=ptr, size=size, owner=owner, device_id=device_id
            ),
            MemoryPointer=lambda mem, offset: types.SimpleNamespace(mem=mem, offset=offset),
        )

    def __getattr__(self, name):
        return getattr(np, name)

    def from_dlpack(self, x):
        if self.context_at_launch is None:
            self.launches += 1
            self.context_at_launch = (tuple(self.log), self.allocator is not None)
            if self.fail is not None:
                raise self.fail
        return np.from_dlpack(x)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make CPU tensors count as CUDA ones and the torch.cuda calls of `batched_omp_cupy` harmless."""
    monkeypatch.setattr(omp_module, "on_cuda", lambda t: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # the "GPU" the tensors are on
    monkeypatch.setattr(
        torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=0xABC + 0x100 * device)
    )
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())

    def install(fail: BaseException | None = None) -> _StandInCupy:
        stand_in = _StandInCupy(fail)
        monkeypatch.setitem(sys.modules, "cupy", stand_in)
        return stand_in

    return install


def _problem(seed=0, b=6, m=24, d=80):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=gen, dtype=torch.float64), torch.randn(b, m, generator=gen, dtype=torch.float64)


def _start_launch(stand_in):
    stand_in.context_at_launch = None  # the next from_dlpack counts as a launch


@pytest.mark.parametrize("backend", ["cupy", "auto"])
def test_solver_falls_back_to_torch_when_the_first_cupy_launch_fails(fake_gpu, backend):
    stand_in = fake_gpu(CompileException("nvrtc: error: failed to open libnvrtc-builtins.so.12\nmore lines"))
    A, Y = _problem()
    solver = OmpSolver(backend)
    assert solver.backend_used is None and solver.fallback_reason is None
    X, S = solver(A, Y, 5, return_support=True)
    X_ref, S_ref = batched_omp_torch(A, Y, 5, return_support=True)
    assert torch.equal(X, X_ref) and torch.equal(S, S_ref)
    assert stand_in.launches == 1
    assert solver.backend_used == "torch"
    assert solver.fallback_reason == (
        "cupy failed at its first launch (CompileException: nvrtc: error: failed to open libnvrtc-builtins.so.12); "
        "ran the torch kernel"
    )
    assert stand_in.allocator is None and stand_in.log[-1] == ("allocator off",)  # uninstalled on failure too
    # Later calls run the torch kernel without trying CuPy again, even once it would work.
    stand_in.fail = None
    _start_launch(stand_in)
    assert torch.equal(solver(A, Y, 5), X_ref)
    assert stand_in.launches == 1
    assert solver.backend_used == "torch" and "CompileException" in solver.fallback_reason


def test_solver_runs_cupy_on_the_tensors_device_stream_and_allocator(fake_gpu):
    stand_in = fake_gpu()
    A, Y = _problem(1)
    solver = OmpSolver("auto")
    X, S = solver(A, Y, 5, return_support=True)
    X_ref, S_ref = batched_omp_torch(A, Y, 5, return_support=True)
    assert solver.backend_used == "cupy" and solver.fallback_reason is None
    assert stand_in.launches == 1
    assert isinstance(X, torch.Tensor) and X.dtype == torch.float64 and S.dtype == torch.int64
    assert torch.equal(S, S_ref)
    torch.testing.assert_close(X, X_ref, atol=1e-10, rtol=1e-10)
    # The kernel ran inside the device, on torch's stream, with the allocator installed; then it was removed.
    log, allocator_on = stand_in.context_at_launch
    assert log == (("device", 3), ("stream", 0xABC + 0x300, 3), ("allocator on",)) and allocator_on
    assert stand_in.log[-1] == ("allocator off",) and stand_in.allocator is None
    # The allocator hands out torch memory: a uint8 tensor that the CuPy memory object keeps alive.
    pointer = stand_in.allocated
    assert pointer.offset == 0
    mem = pointer.mem
    assert isinstance(mem.owner, torch.Tensor) and mem.owner.dtype == torch.uint8 and mem.owner.numel() >= 1000
    assert (mem.ptr, mem.size, mem.device_id) == (mem.owner.data_ptr(), 1000, 3)


def test_solver_propagates_cupy_failures_after_a_successful_launch(fake_gpu):
    stand_in = fake_gpu()
    A, Y = _problem(2)
    solver = OmpSolver("cupy")
    solver(A, Y, 4)
    assert solver.backend_used == "cupy"
    stand_in.fail = CompileException("a later kernel did not compile")
    _start_launch(stand_in)
    with pytest.raises(CompileException, match="a later kernel"):
        solver(A, Y, 4)
    assert solver.fallback_reason is None


def test_solver_does_not_fall_back_on_out_of_memory_or_bad_input(fake_gpu):
    stand_in = fake_gpu(MemoryError("out of memory allocating 1 GiB"))
    A, Y = _problem(3)
    solver = OmpSolver("cupy")
    with pytest.raises(MemoryError):
        solver(A, Y, 4)
    assert solver.backend_used is None and solver.fallback_reason is None
    stand_in.fail = CompileException("never reached")
    _start_launch(stand_in)
    with pytest.raises(ValueError, match="A must be"):
        solver(A[:5], Y, 4)
    with pytest.raises(ValueError, match="n_nonzero must be"):
        solver(A, Y, 0)
    assert stand_in.launches == 1  # only the out-of-memory launch: bad input never reaches CuPy
    assert solver.backend_used is None and solver.fallback_reason is None


def test_solver_when_cupy_does_not_import(fake_gpu, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ModuleNotFoundError
    A, Y = _problem(4)
    X_ref = batched_omp_torch(A, Y, 4)
    requested = OmpSolver("cupy")
    assert torch.equal(requested(A, Y, 4), X_ref)
    assert requested.backend_used == "torch"
    assert requested.fallback_reason.startswith("cupy failed at its first launch (ModuleNotFoundError: ")
    auto = OmpSolver("auto")  # not installed: the torch kernel is auto's choice, not a fallback
    assert torch.equal(auto(A, Y, 4), X_ref)
    assert auto.backend_used == "torch" and auto.fallback_reason is None


def test_batched_omp_function_does_not_fall_back(fake_gpu):
    fake_gpu(CompileException("nvrtc missing"))
    A, Y = _problem(5)
    with pytest.raises(CompileException):
        batched_omp(A, Y, 4, backend="cupy")


def test_solver_on_cpu_tensors():
    A, Y = _problem(6)
    X_ref = batched_omp_torch(A, Y, 4)
    for backend in ("auto", "torch"):
        solver = OmpSolver(backend)
        assert torch.equal(solver(A, Y, 4), X_ref)
        assert solver.backend_used == "torch" and solver.fallback_reason is None
    with pytest.raises(ValueError, match="cupy backend needs CUDA tensors"):
        OmpSolver("cupy")(A, Y, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        OmpSolver("numba")


# -- OmpSolver on a GPU ------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gpu_problem(device, b, m, d, dtype, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    A = torch.randn(m, d, device=device, dtype=dtype, generator=gen) / m**0.5
    Y = torch.randn(b, m, device=device, dtype=dtype, generator=gen)
    return A, Y


def _ran_cupy(solver):
    assert solver.backend_used == "cupy", solver.fallback_reason


@pytest.mark.gpu
@gpu
def test_solver_cupy_matches_torch_kernel_on_gpu():
    pytest.importorskip("cupy")
    A, Y = _gpu_problem("cuda", 32, 128, 1024, torch.float64)
    solver = OmpSolver("auto")
    X, S = solver(A, Y, 32, return_support=True)
    _ran_cupy(solver)
    assert solver.fallback_reason is None
    X_ref, S_ref = batched_omp_torch(A, Y, 32, return_support=True)
    assert X.device == Y.device and S.device == Y.device
    assert torch.equal(S.to(S_ref.dtype), S_ref)
    torch.testing.assert_close(X, X_ref, atol=1e-8, rtol=1e-8)


@pytest.mark.gpu
@gpu
def test_cupy_memory_is_counted_by_torch_and_the_allocator_is_restored():
    cupy = pytest.importorskip("cupy")
    b, m, d, n = 256, 256, 4096, 128
    A, Y = _gpu_problem("cuda", b, m, d, torch.float32)
    solver = OmpSolver("cupy")
    solver(A[:, :256], Y[:4], 2)  # the first launch (kernel compilation, cuBLAS handle) out of the measure
    _ran_cupy(solver)
    pool = cupy.get_default_memory_pool()
    pool_before = pool.total_bytes()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    solver(A, Y, n)
    torch.cuda.synchronize()
    big_buffers = 4 * (b * m * n + b * n * n)  # the selected columns (b, m, n) and the inverse factor (b, n, n)
    assert torch.cuda.max_memory_allocated() - base >= big_buffers
    assert pool.total_bytes() == pool_before  # nothing went to CuPy's own pool
    # Outside the call CuPy allocates from its own pool again, not from torch.
    torch_before, used_before = torch.cuda.memory_allocated(), pool.used_bytes()
    x = cupy.empty(1 << 22, dtype=cupy.uint8)
    assert pool.used_bytes() - used_before >= 1 << 22
    assert torch.cuda.memory_allocated() == torch_before
    del x


@pytest.mark.gpu
@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cupy_runs_on_the_tensors_device():
    pytest.importorskip("cupy")
    b, m, d, n = 64, 128, 2048, 64
    with torch.cuda.device(0):
        A, Y = _gpu_problem("cuda:1", b, m, d, torch.float32)
        solver = OmpSolver("cupy")
        torch.cuda.synchronize(0)
        torch.cuda.synchronize(1)
        on_0 = torch.cuda.memory_allocated(0)
        torch.cuda.reset_peak_memory_stats(1)
        base_1 = torch.cuda.memory_allocated(1)
        X, S = solver(A, Y, n, return_support=True)
        torch.cuda.synchronize(1)
        _ran_cupy(solver)
        assert torch.cuda.current_device() == 0
        assert X.device == torch.device("cuda:1") and S.device == torch.device("cuda:1")
        assert torch.cuda.memory_allocated(0) == on_0
        assert torch.cuda.max_memory_allocated(1) - base_1 >= 4 * (b * m * n + b * n * n)
        X_ref, S_ref = batched_omp_torch(A, Y, n, return_support=True)
    assert torch.equal(S.to(S_ref.dtype), S_ref)
    torch.testing.assert_close(X, X_ref, atol=1e-4, rtol=1e-4)


# -- edge cases against scikit-learn: ties, supports as large as k, vanishing residuals, mixed batches ------


def _ref_one(A, y, n):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scikit-learn warns when it stops early
        return orthogonal_mp(A, y, n_nonzero_coefs=n)


@KERNELS
def test_edge_cases_match_scikit_learn(omp):
    rng = np.random.default_rng(21)
    m, d = 12, 40
    A = rng.standard_normal((m, d))
    A[:, 7] = A[:, 2]  # duplicate columns: a tie, which scikit-learn breaks towards the lower index
    A[:, 30] = -A[:, 5]  # a column and its negation: equal |correlation|
    Y = rng.standard_normal((6, m))
    Y[1] = 0.0  # zero problem: nothing to select
    Y[2] = A[:, [2, 9]] @ np.array([1.0, -3.0])  # exactly 2-sparse through a duplicated column
    Y[3] = A[:, 5] * 2.0  # exactly 1-sparse through a column that has a negated twin
    Y[4] = A[:, [0, 11, 20]] @ np.array([0.5, 0.5, 0.5])
    for n in (1, 3, m - 1, m):  # from one atom to as many as rows
        X = omp(A, Y, n)
        ref = np.stack([_ref_one(A, Y[i], n) for i in range(len(Y))])
        np.testing.assert_allclose(X, ref, atol=1e-7, rtol=1e-6, err_msg=f"n_nonzero={n}")


@KERNELS
def test_s_near_k_and_float32_batches(omp):
    rng = np.random.default_rng(5)
    for m, d, n in ((16, 64, 15), (16, 64, 16), (32, 33, 31), (8, 8, 8)):
        A = rng.standard_normal((m, d))
        Y = rng.standard_normal((9, m))
        ref = np.stack([_ref_one(A, Y[i], n) for i in range(len(Y))])
        np.testing.assert_allclose(omp(A, Y, n), ref, atol=1e-6, rtol=1e-6)


def test_a_problem_whose_best_column_is_already_chosen_stops():
    """As scikit-learn's OMP stops when its argmax is an active column: the rest of its slots stay unused."""
    from memft_bench.kernels.omp import omp_core

    A = torch.eye(4)
    Y = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 1.0, 0.5]])
    picks = iter([torch.tensor([1, 0]), torch.tensor([1, 2]), torch.tensor([0, 3])])  # problem 0 repeats 1
    coef, support = omp_core(Y, 3, lambda residual: next(picks), lambda j: A[:, j].T)
    assert support.tolist() == [[1, -1, -1], [0, 2, 3]]
    torch.testing.assert_close(coef, torch.tensor([[2.0, 0.0, 0.0], [3.0, 1.0, 0.5]]))
