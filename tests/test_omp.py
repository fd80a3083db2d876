"""Batched OMP (torch kernel, and the CuPy kernel's code run with NumPy) against scikit-learn's orthogonal_mp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp

from kernels.omp import batched_omp, batched_omp_torch
from kernels.omp_cupy import omp_xp


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
    from kernels.omp_cupy import batched_omp_cupy

    gen = torch.Generator(device="cuda").manual_seed(0)
    A = torch.randn(16, 128, 1024, device="cuda", dtype=torch.float64, generator=gen)
    Y = torch.randn(16, 128, device="cuda", dtype=torch.float64, generator=gen)
    X_cupy, S_cupy = batched_omp_cupy(A, Y, 32, return_support=True)
    X_torch, S_torch = batched_omp_torch(A, Y, 32, return_support=True)
    assert torch.equal(S_cupy.to(S_torch.dtype), S_torch)
    torch.testing.assert_close(X_cupy, X_torch, atol=1e-8, rtol=1e-8)
