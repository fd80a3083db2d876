"""OMP benchmarks (pytest-benchmark; not part of the default test run).

    python -m pytest benchmarks -p no:cacheprovider --benchmark-enable --benchmark-save=omp
    python -m pytest benchmarks --benchmark-enable --benchmark-compare   # against the last saved run

On a CPU: the batched torch kernel against a loop of scikit-learn `orthogonal_mp` calls (one per
problem, as a straightforward implementation would run them) and against scikit-learn's strongest form,
one multi-target call with the precomputed Gram matrix, at several (batch, d, s, k); and the kernel's
correlation step against a plain matmul of the same shapes. On a GPU
(marked `gpu`): the CuPy kernel against the torch kernel on the same problems. `benchmarks/omp_ratio.py`
prints the ratios measured in one process, which is what `reports/` records.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp

from memft_bench.kernels.omp import batched_omp_torch

SHAPES = [(16, 1024, 8, 64), (64, 1024, 16, 128), (16, 4096, 32, 256)]  # (batch, d, s, k)


def _problems(b: int, d: int, s: int, k: int, device: str = "cpu"):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((k, d)) / np.sqrt(k)
    X = np.zeros((b, d))
    for i in range(b):
        X[i, rng.choice(d, s, replace=False)] = rng.standard_normal(s)
    Y = X @ A.T
    return A, Y


@pytest.mark.parametrize(("b", "d", "s", "k"), SHAPES)
def test_batched_torch(benchmark, b, d, s, k):
    A, Y = _problems(b, d, s, k)
    At, Yt = torch.from_numpy(A).float(), torch.from_numpy(Y).float()
    benchmark(batched_omp_torch, At, Yt, s)


@pytest.mark.parametrize(("b", "d", "s", "k"), SHAPES)
def test_sklearn_loop(benchmark, b, d, s, k):
    A, Y = _problems(b, d, s, k)
    A32, Y32 = A.astype(np.float32), Y.astype(np.float32)
    benchmark(lambda: [orthogonal_mp(A32, Y32[i], n_nonzero_coefs=s) for i in range(b)])


@pytest.mark.parametrize(("b", "d", "s", "k"), SHAPES)
def test_sklearn_multi_target_gram(benchmark, b, d, s, k):
    A, Y = _problems(b, d, s, k)
    A32, Y32 = A.astype(np.float32), Y.astype(np.float32)
    benchmark(lambda: orthogonal_mp(A32, Y32.T, n_nonzero_coefs=s, precompute=True))


@pytest.mark.parametrize("part", ["correlation_step", "plain_matmul"])
@pytest.mark.parametrize(("b", "d", "s", "k"), SHAPES)
def test_correlation_step_against_matmul(benchmark, part, b, d, s, k):
    from memft_bench.kernels.omp import SharedSelect

    A = torch.randn(k, d)
    residual = torch.randn(b, k)
    if part == "plain_matmul":
        out = torch.empty(b, d)
        benchmark(lambda: torch.matmul(residual, A, out=out))
    else:
        select = SharedSelect(A, b)
        benchmark(lambda: select(residual))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["torch", "cupy"])
@pytest.mark.parametrize(("b", "d", "s", "k"), SHAPES)
def test_gpu_backends(benchmark, backend, b, d, s, k):
    from memft_bench.kernels.omp import batched_omp

    if backend == "cupy":
        pytest.importorskip("cupy")
    A, Y = _problems(b, d, s, k)
    At, Yt = torch.from_numpy(A).float().cuda(), torch.from_numpy(Y).float().cuda()

    def run():
        batched_omp(At, Yt, s, backend=backend)
        torch.cuda.synchronize()

    benchmark(run)
