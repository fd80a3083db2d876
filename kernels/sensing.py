"""SGC's sensing matrix A (k x d) as a block operator: at most one k x B block of it exists at a time.

A dense Gaussian A for one LLaMA-7B MLP weight (d = 4096 x 11008, k = 128) is 23 GB, and OMP reads all of
it in each of its s iterations (argmax_j |a_j^T r| over every column j). Here A is split into column blocks
of B columns, each a function of a seed, and two operators are offered:

- `gaussian`: every block has i.i.d. N(0, 1/k) entries from its own generator (seeded by the weight's
  seed and the block index): exactly the paper's A at any size. Memory: one k x B block. Time: every OMP
  iteration regenerates every block, s * k * d normal draws per step; a CPU draws about 0.2-1 billion a
  second, so on a 4096 x 11008 weight (k = 128, s = 16) that is minutes per step: bounded, linear in d,
  and slow. Meant for checking the other operator against the paper's A, and for small weights.
- `block-permuted` (the default): block 0 is the Gaussian block above (so for d <= B, A is the paper's
  Gaussian A, identical to `gaussian`), and block b is block 0 with its k rows permuted by a random
  permutation pi_b drawn from the seed: A_b[i, c] = A_0[pi_b(i), c]. Each column is still N(0, I/k);
  columns of different blocks are related only through a random re-pairing of their entries, so their
  coherence is that of independent Gaussian columns to O(1/k) (the tests check that OMP recovers the
  same sparse vectors as with the Gaussian A). Why this design: all d correlations with a residual r are
  one GEMM, A_b^T r = A_0^T (r permuted by pi_b^-1) for every block at once, with no random draws
  after block 0. That is the matmul a dense A would cost (2 k d flops per iteration, linear in d),
  with the memory of one block. A subsampled randomized Hadamard transform would cost d log B adds per
  iteration instead, but in torch that is a chain of log B memory-bound passes per residual, where this
  GEMM takes all residuals of a batch at once at the CPU's matmul speed.

Both operators give `columns(j)` (any columns, for the compression A g_s of an s-sparse g and for OMP's
selected atoms: only the blocks holding them are touched) and `argmax_abs(residual)` (OMP's
atom selection, streamed over groups of blocks with a correlation buffer bounded by `chunk_bytes`).
`kernels.omp.omp_core` runs OMP on top of them; when d <= B, `dense()` is A itself and the dense
kernels run.
"""

from __future__ import annotations

import math

import torch

from memft_bench.kernels.omp import row_argmax

SENSING = ("block-permuted", "gaussian")


class BlockSensing:
    """A (k x length) from `seed`, held as blocks of `block_columns` columns; see the module docstring.

    Block 0 and the permutations, once made, are kept until `release()` (SGC releases them after every
    step unless it stores the projection); with `gaussian` the other blocks are drawn when used, never kept.
    """

    def __init__(self, k: int, length: int, block_columns: int, seed: int, kind: str = "block-permuted",
                 device: torch.device | str = "cpu", chunk_bytes: int | None = None) -> None:
        if kind not in SENSING:
            raise ValueError(f"sensing must be one of {', '.join(SENSING)}; got {kind!r}")
        self.k, self.length, self.seed, self.kind = k, length, seed, kind
        self.device = torch.device(device)
        self.B = max(1, min(block_columns, length))
        self.n_blocks = math.ceil(length / self.B)
        self.chunk_bytes = chunk_bytes if chunk_bytes is not None else 4 * k * self.B
        self._base: torch.Tensor | None = None
        self._perms: torch.Tensor | None = None  # (n_blocks, k): pi_b
        self._inverse: torch.Tensor | None = None  # (n_blocks, k): pi_b^-1
        self._corr: torch.Tensor | None = None

    # -- the blocks ---------------------------------------------------------------------------
    def _generate(self, b: int) -> torch.Tensor:
        # Block 0's seed is the one a single-block A always had, so small weights keep the same A.
        seed = self.seed if b == 0 else (self.seed * 1_000_033 + b) % (2**63 - 1)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        cols = self.block_width(b)
        return torch.randn(self.k, cols, generator=generator, device=self.device).div_(math.sqrt(self.k))

    def block_width(self, b: int) -> int:
        return min(self.B, self.length - b * self.B)

    @property
    def base(self) -> torch.Tensor:
        """Block 0 (k x B), generated once and kept until `release()`."""
        if self._base is None:
            self._base = self._generate(0)
        return self._base

    def _permutations(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._perms is None:
            generator = torch.Generator(device=self.device).manual_seed((self.seed * 7_919 + 17) % (2**63 - 1))
            perms = torch.rand(self.n_blocks, self.k, generator=generator, device=self.device).argsort(dim=1)
            perms[0] = torch.arange(self.k, device=self.device)  # block 0 is the base itself
            inverse = torch.empty_like(perms)
            inverse.scatter_(1, perms, torch.arange(self.k, device=self.device).expand_as(perms))
            self._perms, self._inverse = perms, inverse
        assert self._inverse is not None
        return self._perms, self._inverse

    def block(self, b: int) -> torch.Tensor:
        """Block b of A, (k x its width)."""
        if self.kind == "gaussian":
            return self.base if b == 0 else self._generate(b)
        perms, _ = self._permutations()
        return self.base[perms[b], : self.block_width(b)]

    def dense(self) -> torch.Tensor:
        """The whole A (k x length): for a single block (no copy), or for tests on small sizes."""
        if self.n_blocks == 1:
            return self.base
        return torch.cat([self.block(b) for b in range(self.n_blocks)], dim=1)

    def release(self) -> None:
        """Drop the cached block 0 and permutations (they are regenerated from the seed when needed)."""
        self._base = self._perms = self._inverse = self._corr = None

    def workspace_bytes(self, problems: int = 1) -> int:
        """Bytes this operator holds at its peak while serving `problems` residuals at once: block 0, a
        generated block (gaussian), the permutations and the correlation buffer."""
        block = 4 * self.k * self.B
        total = block + (block if self.kind == "gaussian" and self.n_blocks > 1 else 0)
        if self.kind == "block-permuted" and self.n_blocks > 1:
            total += 2 * 8 * self.n_blocks * self.k + 4 * problems * self.k * self._group(problems)
        if self.n_blocks > 1:
            total += 4 * problems * self.B * self._group(problems)
        return total

    # -- what OMP and the compression need ---------------------------------------------------------
    def columns(self, index: torch.Tensor) -> torch.Tensor:
        """The columns a_j for the global indices `index` (any shape), as (*index.shape, k)."""
        if self.n_blocks == 1:
            return self.base[:, index].movedim(0, -1)
        blk, col = index // self.B, index % self.B
        if self.kind == "block-permuted":
            perms, _ = self._permutations()
            values = self.base[:, col].movedim(0, -1)  # (..., k): column col of block 0
            return values.gather(-1, perms[blk])  # entry i is A_0[pi_b(i), col]
        out = torch.empty((*index.shape, self.k), dtype=self.base.dtype, device=self.device)
        for b in torch.unique(blk).tolist():
            where = blk == b
            out[where] = self.block(int(b))[:, col[where]].T
        return out

    def _buffer(self, size: int) -> torch.Tensor:
        """A correlation buffer of at least `size` entries, reused by every group and OMP iteration of a call
        (a fresh multi-megabyte tensor per iteration costs page faults that a GEMM of these shapes does not
        amortise)."""
        if self._corr is None or self._corr.numel() < size:
            self._corr = torch.empty(size, dtype=self.base.dtype, device=self.device)
        return self._corr

    def _group(self, problems: int) -> int:
        """Blocks per correlation chunk: as many as fit `chunk_bytes` for `problems` residuals."""
        return max(1, min(self.n_blocks, self.chunk_bytes // max(1, 4 * problems * self.B)))

    def argmax_abs(self, residual: torch.Tensor, shorter: list[tuple[int, int, int]] = ()) -> torch.Tensor:
        """For each row r of `residual` (b, k): argmax_j |a_j^T r| over A's columns; rows start..end of each
        (start, end, length) in `shorter` only over A's first `length` columns. Ties go to the lowest index,
        as NumPy's argmax."""
        b = residual.shape[0]
        residual = residual.to(self.base.dtype)
        best = torch.empty(b, dtype=torch.long, device=self.device)
        for r0, r1, length in _all_runs(b, self.length, shorter):
            best[r0:r1] = self._run_argmax(residual[r0:r1], length)
        return best

    def _run_argmax(self, residual: torch.Tensor, length: int) -> torch.Tensor:
        """`argmax_abs` for rows that share one length: the blocks that length reaches, in groups of blocks
        whose correlations fit `chunk_bytes` (usually one group: one GEMM per OMP iteration)."""
        rows = residual.shape[0]
        blocks = math.ceil(length / self.B)
        permuted_kind = self.kind == "block-permuted"
        group = min(blocks, self._group(rows)) if permuted_kind else 1
        buffer = self._buffer(rows * group * self.B)
        inverse = self._permutations()[1] if permuted_kind else None
        best_value = best_index = None
        for g0 in range(0, blocks, group):
            g1 = min(blocks, g0 + group)
            start = g0 * self.B
            corr = buffer[: rows * (g1 - g0) * self.B].view(rows, g1 - g0, self.B)
            if permuted_kind:
                # A_b^T r = A_0^T r[pi_b^-1] for every block of the group: one (rows * g, k) @ (k, B) GEMM.
                index = inverse[g0:g1].reshape(1, -1).expand(rows, -1)
                permuted = torch.gather(residual, 1, index).view(rows, g1 - g0, self.k)
                torch.matmul(permuted, self.base, out=corr)
            else:
                block = self.block(g0)
                torch.matmul(residual, block, out=corr[:, 0, : block.shape[1]])
            width = min(length, g1 * self.B) - start
            corr = corr.view(rows, -1)[:, :width].abs_()
            index = row_argmax(corr)
            if blocks == g1 - g0:
                return index
            value = corr.gather(1, index.unsqueeze(1)).squeeze(1)
            if best_value is None:
                best_value, best_index = value, index + start
            else:
                better = value > best_value  # strict: an earlier block keeps a tie
                best_value = torch.where(better, value, best_value)
                best_index = torch.where(better, index + start, best_index)
        assert best_index is not None
        return best_index


def _all_runs(rows: int, full: int, shorter: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(start, end, length) runs covering rows 0..rows: those of `shorter`, and `full` for the rest."""
    runs, row = [], 0
    for r0, r1, length in sorted(shorter):
        if r0 > row:
            runs.append((row, r0, full))
        runs.append((r0, r1, length))
        row = r1
    if row < rows:
        runs.append((row, rows, full))
    return runs


def _shorter_rows(lengths: list[int], full: int, n: int) -> list[tuple[int, int, int]]:
    """(start, end, length) of each run of consecutive rows whose length is below `full`."""
    if min(lengths) < n or max(lengths) > full:
        raise ValueError(f"every length must be between n_nonzero ({n}) and the operator's length ({full}); "
                         f"got {min(lengths)} to {max(lengths)}")
    runs = []
    start = 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths) or lengths[i] != lengths[start]:
            if lengths[start] < full:
                runs.append((start, i, lengths[start]))
            start = i
    return runs


def omp(op: BlockSensing, Y: torch.Tensor, n_nonzero: int, return_support: bool = False,
        lengths: list[int] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Batched OMP of every row of Y (b, k) against the operator's A, streamed over its blocks: the same
    selection and least squares as `kernels.omp.batched_omp_torch` on `op.dense()`. With `lengths` (b
    numbers), problem i is solved against A's first lengths[i] columns only (several weights' problems in one
    call; rows of equal length best kept together). Returns the dense (b, length) solutions X, and with
    `return_support` the supports (b, n); `omp_sparse` returns the coefficients instead of X."""
    from memft_bench.kernels.omp import scatter_solution

    coef, support = omp_sparse(op, Y, n_nonzero, lengths)
    X = scatter_solution(coef, support, op.length)
    return (X, support) if return_support else X


def omp_sparse(op: BlockSensing, Y: torch.Tensor, n_nonzero: int, lengths: list[int] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """`omp` without the dense solutions: the coefficients (b, n) and supports (b, n; -1 where a problem
    stopped). At LLaMA-7B sizes X would be b x 45 M floats, 180 MB per problem, which SGC does not need."""
    from memft_bench.kernels.omp import omp_core

    if Y.dim() != 2 or Y.shape[1] != op.k:
        raise ValueError(f"Y must be (b, {op.k}); got shape {tuple(Y.shape)}")
    n = int(min(n_nonzero, op.k, op.length))
    if n < 1:
        raise ValueError(f"n_nonzero must be >= 1; got {n_nonzero}")
    if lengths is not None and len(lengths) != Y.shape[0]:
        raise ValueError(f"lengths must give one length per row of Y ({Y.shape[0]}); got {len(lengths)}")
    shorter = _shorter_rows(lengths, op.length, n) if lengths is not None else []
    select = (lambda r: op.argmax_abs(r, shorter)) if shorter else op.argmax_abs
    try:
        return omp_core(Y, n, select, lambda j: op.columns(j).to(Y.dtype))
    finally:
        op._corr = None  # the correlation buffer lives for one call: it is workspace, not state
