"""SGC's block sensing operator (kernels/sensing.py): its columns and streamed OMP against the dense A it
defines (and scikit-learn), its recovery of sparse vectors against the paper's Gaussian A, and its bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp

from memft_bench.kernels.omp import batched_omp_torch
from memft_bench.kernels.sensing import BlockSensing, omp


@pytest.mark.parametrize("kind", ["block-permuted", "gaussian"])
def test_columns_and_blocks_are_the_dense_matrix(kind):
    op = BlockSensing(16, 250, 64, seed=3, kind=kind)  # 4 blocks, the last one 58 columns wide
    A = op.dense()
    assert A.shape == (16, 250) and op.n_blocks == 4
    index = torch.tensor([[0, 63, 64, 249], [130, 5, 200, 191]])
    torch.testing.assert_close(op.columns(index), A[:, index].movedim(0, -1), rtol=0, atol=0)
    # Regenerated from the seed: the same A after its cached block is dropped.
    op.release()
    torch.testing.assert_close(op.dense(), A, rtol=0, atol=0)
    # A single block is the paper's Gaussian A: the same for both kinds.
    single = BlockSensing(16, 250, 1000, seed=3, kind=kind).dense()
    torch.testing.assert_close(single, BlockSensing(16, 250, 1000, seed=3, kind="gaussian").dense())


@pytest.mark.parametrize("kind", ["block-permuted", "gaussian"])
@pytest.mark.parametrize("chunk_blocks", [1, 3, 100])
def test_streamed_omp_equals_the_dense_kernel_and_scikit_learn(kind, chunk_blocks):
    k, d, b, n = 24, 300, 5, 7
    op = BlockSensing(k, d, 40, seed=11, kind=kind, chunk_bytes=4 * b * 40 * chunk_blocks)
    A = op.dense().double()
    Y = torch.randn(b, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    X, S = omp(op, Y, n, return_support=True)
    X_dense, S_dense = batched_omp_torch(A.float(), Y.float(), n, return_support=True)
    assert torch.equal(S, S_dense)
    ref = orthogonal_mp(A.numpy(), Y.numpy().T, n_nonzero_coefs=n).T
    np.testing.assert_array_equal(X.numpy() != 0, ref != 0)
    np.testing.assert_allclose(X.numpy(), ref, atol=1e-5, rtol=1e-4)


def test_block_permuted_recovers_the_sparse_vectors_the_gaussian_a_recovers():
    """Exact recovery of s-sparse vectors well above the ~2 s ln(d/s) threshold: every problem, both operators."""
    k, d, s, b = 64, 4096, 5, 40
    gen = torch.Generator().manual_seed(1)
    X_true = torch.zeros(b, d, dtype=torch.float64)
    for i in range(b):
        X_true[i, torch.randperm(d, generator=gen)[:s]] = torch.randn(s, generator=gen, dtype=torch.float64) + 1.0
    for kind in ("gaussian", "block-permuted"):
        op = BlockSensing(k, d, 512, seed=5, kind=kind)  # 8 blocks
        A = op.dense().double()
        X = omp(op, X_true @ A.T, s)
        torch.testing.assert_close(X, X_true, atol=1e-6, rtol=1e-6)


def test_block_permuted_columns_are_as_incoherent_as_gaussian_ones():
    k, d = 64, 8192
    coherence = {}
    for kind in ("gaussian", "block-permuted"):
        A = BlockSensing(k, d, 1024, seed=2, kind=kind).dense()
        A = A / A.norm(dim=0)
        G = (A.T @ A).abs().fill_diagonal_(0)
        coherence[kind] = float(G.max())
    assert coherence["block-permuted"] < 1.1 * coherence["gaussian"]


def test_workspace_is_bounded_and_linear_work():
    op = BlockSensing(128, 4096 * 11008, 32768, seed=0, chunk_bytes=16 * 2**20)
    assert op.n_blocks == 1376
    assert op.workspace_bytes(problems=3) < 64 * 2**20  # one 16 MiB block, 16 MiB of correlations, permutations


def test_bad_kind():
    with pytest.raises(ValueError, match="sensing must be one of"):
        BlockSensing(4, 10, 5, seed=0, kind="hadamard")


@pytest.mark.parametrize("chunk_blocks", [1, 100])
def test_problems_of_several_lengths_in_one_call_use_their_own_columns(chunk_blocks):
    """SGC solves every weight's problem in one call: a problem of length L sees A's first L columns only."""
    k, d, n = 16, 200, 4
    op = BlockSensing(k, d, 32, seed=4, chunk_bytes=4 * 6 * 32 * chunk_blocks)
    A = op.dense().double().numpy()
    lengths = [50, 50, 130, 200, 200, 64]
    Y = torch.randn(len(lengths), k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    X, S = omp(op, Y, n, return_support=True, lengths=lengths)
    for i, length in enumerate(lengths):
        ref = orthogonal_mp(A[:, :length], Y[i].numpy(), n_nonzero_coefs=n)
        assert int(S[i].max()) < length
        np.testing.assert_allclose(X[i, :length].numpy(), ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="between n_nonzero"):
        omp(op, Y, n, lengths=[3, 50, 130, 200, 200, 64])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streamed_omp_on_a_gpu_equals_the_dense_kernel_there():
    """The streamed path (one GEMM per run of rows, torch's argmax on CUDA) picks the dense kernel's supports."""
    k, d, n = 32, 3000, 6
    op = BlockSensing(k, d, 512, seed=7, device="cuda", chunk_bytes=4 * 8 * 512 * 3)  # 6 blocks, groups of 3
    A = op.dense()
    Y = torch.randn(8, k, generator=torch.Generator().manual_seed(2)).cuda()
    X, S = omp(op, Y, n, return_support=True)
    X_dense, S_dense = batched_omp_torch(A, Y, n, return_support=True)
    assert torch.equal(S, S_dense)
    torch.testing.assert_close(X, X_dense, atol=1e-4, rtol=1e-3)
    lengths = [700, 700, 3000, 3000, 3000, 1500, 1500, 1500]
    _, S_short = omp(op, Y, n, return_support=True, lengths=lengths)
    for i, length in enumerate(lengths):
        _, ref = batched_omp_torch(A[:, :length].contiguous(), Y[i: i + 1], n, return_support=True)
        assert torch.equal(S_short[i], ref[0])
