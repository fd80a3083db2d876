"""SGC: sparse gradient compression (Yang, Amiri, Pedapati, Chaudhury, Chen 2025, arXiv 2502.00311).

In the paper's notation, per adapted weight with gradient g (d entries) at step t:

1. sparsify: g_s = top_s(g), the s largest-magnitude entries (the rest set to zero);
2. compress with a fixed random A (k x d): AdamW's moments live only in R^k,
       p_t = beta1 p_{t-1} + (1 - beta1) A g_s
       q_t = beta2 q_{t-1} + (1 - beta2) A (g_s * g_s)
   so p_t = A m_t and q_t = A v_t exactly, where m_t, v_t are the dense moments of the sparsified
   gradients: k is independent of d, and the state is 2k numbers per weight (or chunk);
3. recover a sparse full-dimension update by Orthogonal Matching Pursuit: m^ = OMP(A, p_t / (1 - beta1^t), s),
   v^ = the least-squares fit of q_t / (1 - beta2^t) on m^'s support (one support for both moments:
   recovering them separately picks different supports and can give v^ <= 0), and
       W <- W - lr (m^ / (sqrt(v^) + eps) on the coordinates where v^ > 0) - lr wd W.

A is never materialised beyond one block (`kernels/sensing.py`): its columns come in blocks of B columns
(`block_columns`, never more than a quarter of `workspace_mb` holds as k x B float32: 131072 at k = 128
and 256 MiB). Block 0 has i.i.d. N(0, 1/k) entries from a seed, so for vectors of d <= B entries A is the
paper's Gaussian A. Beyond it, `sensing: block-permuted` (default) makes block b a random row permutation
of block 0, so each OMP iteration's correlations A^T r are one GEMM with no random draws (2 k d flops,
linear in d), and `sensing: gaussian` draws every block anew (the paper's A at any size, s k d draws per
step: minutes per step on a LLaMA-7B MLP weight on a CPU). The default B (`block_columns`) is d up to
4096 (one block: the paper's A, solved by the dense kernels, CuPy's on a GPU) and max(1024, d / 4096)
beyond, because drawing a wide block every step and streaming it from memory in every OMP iteration cost
a CPU more than the rest of SGC's step (see `columns_per_block`). One A serves every adapted weight: a
weight whose vectors have d entries uses its first d columns, so the problems of all weights are solved
in one OMP call (per length when A is one block: the dense kernels take one A).
The compression A g_s of the s-sparse g_s reads only s columns of A. With `store_projection: false`
(default) block 0 and the permutations are regenerated from the seed every step and are not state (the
MeZO seed trick applied to A); with `true` they are kept and counted. OMP's problems run in groups whose
buffers fit half the workspace, and the streamed correlation buffer another quarter, so the transient
memory of a step is bounded by `workspace_mb` whatever d is (`predicted_workspace_bytes()`).

Gradients (`fused: true`, default): each adapted weight's gradient is sparsified and compressed in a
`register_post_accumulate_grad_hook` as soon as backward has accumulated it, then freed, so at most one
full gradient exists at a time; OMP and the updates run after backward, batched over every adapted weight
(the update needs no gradient, and a batch keeps the kernel efficient on small weights).
With several micro-batches the hooks act only in the last one's backward: top_s of a sum is not the sum
of top_s, so the accumulated gradients are all held until then, and `gradients` counts them all.
`fused: false` compresses after the whole backward, as before, for comparison.

Variants:
- `mesgc` (memory-efficient; "gradient chunking"): g is split into chunks of `chunk_size` entries that
  share one A (k x chunk_size); each chunk is sparsified to s and compressed to k, so A costs
  k * chunk_size instead of k * d, and every chunk is one problem of the batched OMP.
- `cesgc` (compute-efficient; "double compression with an SVD-based projection"): first a GaLore-style
  projection R = P^T G (P from the SVD of G, refreshed every `update_proj_gap` steps, rank `rank`),
  then SGC on R, whose OMP works in rank * max(m, n) instead of m * n dimensions; the recovered update
  is projected back with P.

Scope of this implementation, stated because the paper's body (its Algorithm 4 "practical adjustments"
and the Section 5.2 rule for k and s) could not be consulted here: the shared-support recovery of v^
and the v^ > 0 restriction are our adjustment (see docs/methods.md: recovering v^ on its own support can
give v^ <= 0, whose square root is undefined); k and s
are options with small defaults, validated so that OMP can recover s entries (s < k <= block length).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.kernels.omp import BACKENDS, OmpSolver
from memft_bench.kernels.sensing import SENSING, BlockSensing
from memft_bench.kernels.sensing import omp_sparse as streamed_omp
from memft_bench.methods.base import AdamOptions, Batch, Method, StepResult, register, split_inventory, tensor_counts
from memft_bench.methods.lora import DEFAULT_TARGETS

MIB = 2**20


@dataclass
class SgcOptions(AdamOptions):
    lr: float = option(1e-3, "peak learning rate", min=0.0)
    k: int = option(128, "dimension of the compressed space: rows of A, entries of each moment", min=1)
    s: int = option(16, "non-zeros kept of each gradient and recovered by OMP", min=1)
    target_modules: list[str] = option(
        default_factory=lambda: list(DEFAULT_TARGETS), help="2-D weights (by module name) to adapt; the rest is frozen"
    )
    store_projection: bool = option(False, "keep A's first block (and its permutations) in memory, counted as "
                                    "state, instead of regenerating it every step")
    projection_seed: int = option(0, "seed of A (added to the trial seed)", min=0)
    backend: str = option("auto", "OMP kernel: auto (CuPy on a GPU when installed), torch or cupy", choices=BACKENDS)
    sensing: str = option("block-permuted", "A beyond its first block: block-permuted (row permutations of the "
                          "first Gaussian block: one GEMM per OMP iteration) or gaussian (every block drawn anew: "
                          "the paper's A at any size, s*k*d draws per step)", choices=SENSING)
    block_columns: int = option(0, "columns of A's generated block (block 0); 0 = auto: the whole length up to "
                                "4096 (A is then the paper's Gaussian A), else max(1024, length / 4096), since "
                                "drawing k x B normals every step and streaming a block larger than the cache cost "
                                "a CPU more than the OMP itself", min=0)
    workspace_mb: float = option(256.0, "bound on SGC's transient memory in a step (A's block, the correlation "
                                 "buffer, the OMP and compression buffers): a quarter holds A's block", gt=0.0)
    fused: bool = option(True, "compress each weight's gradient in a post-accumulate hook as soon as backward "
                         "has accumulated it, then free it (at most one full gradient held); false: after backward")

    def validate(self, where: str) -> None:
        if self.s >= self.k:
            raise ConfigError(
                f"{where}.s: must be smaller than k ({self.k}) for OMP to recover s entries; got {self.s}"
            )


@dataclass
class MesgcOptions(SgcOptions):
    chunk_size: int = option(1024, "entries per gradient chunk; one A (k x chunk_size) serves all chunks", min=2)

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.k > self.chunk_size:
            raise ConfigError(f"{where}.k: must not exceed chunk_size ({self.chunk_size}); got {self.k}")


@dataclass
class CesgcOptions(SgcOptions):
    rank: int = option(8, "rank r of the SVD projection applied before SGC", min=1)
    update_proj_gap: int = option(200, "steps between SVD refreshes of the projection", min=1)


@dataclass
class _Block:
    """One adapted weight's SGC state: its moments, one (c, k) row-block per chunk."""

    name: str
    param: torch.nn.Parameter
    length: int  # entries per chunk (the length of the vectors A compresses)
    chunks: int
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    projector: torch.Tensor | None = None  # CESGC's P
    project_right: bool = False


@register("sgc")
class Sgc(Method):
    """SGC: AdamW moments compressed to k dims by a random A; OMP recovers a sparse update (Yang et al. 2025)."""

    Options = SgcOptions
    options: SgcOptions

    def prepare(self, model: torch.nn.Module) -> None:
        o = self.options
        targets = tuple(o.target_modules)
        model.requires_grad_(False)
        self.blocks: list[_Block] = []
        for name, p in model.named_parameters():
            if p.dim() == 2 and name.rsplit(".", 1)[0].split(".")[-1] in targets:
                p.requires_grad_(True)
                length, chunks = self.block_shape(p)
                if not o.s < o.k <= length:
                    raise ConfigError(
                        f"methods.{self.name}: need s < k <= {length} (the block length of {name}); "
                        f"got s={o.s}, k={o.k}"
                    )
                zeros = torch.zeros(chunks, o.k, device=p.device, dtype=torch.float32)
                self.blocks.append(_Block(name, p, length, chunks, zeros, zeros.clone()))
        if not self.blocks:
            raise ConfigError(f"methods.{self.name}.target_modules: no 2-D weight matches {list(targets)}")
        matched = {b.name.rsplit(".", 1)[0].split(".")[-1] for b in self.blocks}
        unmatched = [t for t in targets if t not in matched]
        if unmatched:  # a typo would otherwise adapt fewer weights than asked, silently
            names = sorted({n.rsplit(".", 1)[0].split(".")[-1] for n, q in model.named_parameters() if q.dim() == 2})
            raise ConfigError(f"methods.{self.name}.target_modules: {unmatched} match no 2-D weight of this "
                              f"model; its 2-D weights are named {names}")
        if self.max_block_columns < 1:
            raise ConfigError(f"methods.{self.name}.workspace_mb: {o.workspace_mb} MiB cannot hold one column of A "
                              f"({4 * o.k * 4} bytes needed at k={o.k})")
        # One A for every adapted weight: a weight whose vectors have d entries uses A's first d columns.
        longest = max(b.length for b in self.blocks)
        device = self.blocks[0].param.device
        self.operator = BlockSensing(o.k, longest, self.columns_per_block(longest), self._seed(), o.sensing,
                                     device, chunk_bytes=self.workspace_bytes // 4)
        self.model = model
        self.t = 0
        self.omp = OmpSolver(o.backend)
        self._diagnostics: _Diagnostics | None = None
        self._compress_now = False
        self._max_micro_batches = 1
        self._hooks = []
        if o.fused:
            for block in self.blocks:
                self._hooks.append(block.param.register_post_accumulate_grad_hook(self._hook(block)))

    # -- shapes, budgets and the projection ------------------------------------------------------
    @property
    def workspace_bytes(self) -> int:
        return int(self.options.workspace_mb * MIB)

    @property
    def max_block_columns(self) -> int:
        """The most columns of A per block: a quarter of the workspace holds one k x B float32 block."""
        return self.workspace_bytes // 4 // (4 * self.options.k)

    @property
    def top_s_piece(self) -> int:
        """Entries of one long gradient searched at a time for its top s (|g| of a piece is a temporary):
        a 64th of the workspace, 4 M entries (16 MiB) at 256 MiB."""
        return max(1, self.workspace_bytes // 64)

    def columns_per_block(self, length: int) -> int:
        """B for vectors of `length` entries: `block_columns`, or its automatic choice (see the option), never
        more than the workspace holds. On a CPU, drawing A's block is the costliest part of a step when it is
        large (about 0.15 billion normals a second: 50 ms for tiny's weights at B = length, against 35 ms for
        full fine-tuning's whole step), and a block that fits the cache turns the correlations into a
        compute-bound GEMM; block-permuted sensing makes the rest of A from it. The same on every device, so
        that the pre-flight on the meta device predicts what a GPU trial holds, and a GPU and a CPU run use
        the same construction."""
        chosen = self.options.block_columns or auto_block_columns(length)
        return max(1, min(chosen, self.max_block_columns, length))

    def _seed(self) -> int:
        return (self.seed + self.options.projection_seed) * 1_000_003

    def block_shape(self, p: torch.Tensor) -> tuple[int, int]:
        """(entries per chunk, chunks) of the vector SGC compresses for weight p."""
        return p.numel(), 1

    def projection(self, length: int, device: torch.device | None = None) -> torch.Tensor:
        """The whole A (k x length) of a block length, as the operator defines it (for tests and small sizes)."""
        return self.operator.dense()[:, :length]

    def _row_groups(self, rows: int, bytes_per_row: int) -> Iterator[tuple[int, int]]:
        """Consecutive (start, end) row ranges whose buffers fit a quarter of the workspace."""
        step = max(1, self.workspace_bytes // 4 // max(1, bytes_per_row))
        for start in range(0, rows, step):
            yield start, min(rows, start + step)

    def gradient_rows(self, block: _Block, grad: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Chunks start..end of the gradient as (end - start, length) float32 rows, zero-padded at the end."""
        flat = grad.reshape(-1)
        piece = flat[start * block.length: end * block.length].float()
        pad = (end - start) * block.length - piece.numel()
        if pad:
            piece = torch.cat([piece, piece.new_zeros(pad)])
        return piece.view(end - start, block.length)

    def to_update(self, block: _Block, direction: torch.Tensor) -> torch.Tensor:
        """(chunks, length) recovered direction -> the weight's shape (CESGC: projected back)."""
        return direction.reshape(-1)[: block.param.numel()].view_as(block.param)

    # -- 1-2: sparsify and compress, as soon as a weight's gradient is complete ---------------------
    def _hook(self, block: _Block) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            if self._compress_now and param.grad is not None:
                self.compress(block, param.grad)
                param.grad = None  # the full gradient is not needed any more: free it now

        return hook

    def compress(self, block: _Block, grad: torch.Tensor) -> None:
        """g_s = top_s(g) of each chunk; p += (1-b1)(A g_s - p), q likewise with g_s^2, from s columns of A."""
        o = self.options
        op = self.operator
        with torch.no_grad():
            for start, end in self._row_groups(block.chunks, 8 * block.length):
                g = self.gradient_rows(block, grad, start, end)
                values, index = top_s(g, o.s, self.top_s_piece)
                atoms = op.columns(index)  # (rows, s, k)
                pq = torch.stack([values, values * values], dim=1) @ atoms  # (rows, 2, k): A g_s and A g_s^2
                block.exp_avg[start:end].lerp_(pq[:, 0], 1 - o.beta1)
                block.exp_avg_sq[start:end].lerp_(pq[:, 1], 1 - o.beta2)

    # -- the step ---------------------------------------------------------------------------
    def step(self, batch: Batch) -> StepResult:
        assert self.model is not None, "prepare() must run before step()"
        self.t += 1
        loss = self.forward_backward(batch)
        for block in self.blocks:
            if block.param.grad is not None:  # unfused, or a weight the hook did not see
                self.compress(block, block.param.grad)
                block.param.grad = None
        diagnostics = self.recover_and_update()
        self._diagnostics = diagnostics
        # Read back lazily, after the step timer stopped: the figures cost no host-device synchronisation
        # inside the timed step (the training loop's ExtrasRecorder resolves them).
        return StepResult(loss, diagnostics.lazy())

    def forward_backward(self, batch: Batch) -> float:
        """Forward and backward over the micro-batches; with `fused`, the hooks compress (and free) each
        gradient during the last micro-batch's backward only, once it holds the whole step's sum."""
        assert self.model is not None, "prepare() must run before step()"
        micro = list(batch.micro_batches)
        self._max_micro_batches = max(self._max_micro_batches, len(micro))
        total = max(batch.target_tokens, 1)
        loss_total = 0.0
        try:
            for i, mb in enumerate(micro):
                self._compress_now = self.options.fused and i == len(micro) - 1
                loss_sum, _ = self.loss_fn(self.model, mb)
                (loss_sum / total).backward()
                loss_total += float(loss_sum.detach())
        finally:
            self._compress_now = False
        return loss_total / total

    def recover_and_update(self) -> _Diagnostics:
        """3-4: OMP on the bias-corrected moments of every chunk (batched over every adapted weight, each
        problem restricted to its own length, in groups that fit the workspace; when A is one block, over the
        weights of one length with the dense kernels), the least-squares v^ on m^'s support, the update."""
        o = self.options
        lr = o.lr * self.lr_scale
        diagnostics = _Diagnostics()
        diagnostics.total = sum(b.param.numel() for b in self.blocks)
        bc1, bc2 = 1 - o.beta1**self.t, 1 - o.beta2**self.t
        op = self.operator
        for blocks in self._groups():
            for pieces in _pack(blocks, self._problems_per_call(op)):
                p_hat = torch.cat([b.exp_avg[r0:r1] for b, r0, r1 in pieces]) / bc1
                q_hat = torch.cat([b.exp_avg_sq[r0:r1] for b, r0, r1 in pieces]) / bc2
                support, step = self._recover(pieces, p_hat, q_hat, diagnostics)
                row = 0
                for block, r0, r1 in pieces:
                    self.apply_update(block, r0, support[row: row + r1 - r0], step[row: row + r1 - r0], lr)
                    row += r1 - r0
        if not self.options.store_projection:
            op.release()
        return diagnostics

    def _groups(self) -> list[list[_Block]]:
        """The blocks each kernel call may mix: the dense kernels (CuPy on a GPU) take one A, so one length a
        call; the streamed kernel restricts each run of rows to its own length, so every block at once."""
        if self.operator.n_blocks == 1:
            return [[b for b in self.blocks if b.length == length]
                    for length in dict.fromkeys(b.length for b in self.blocks)]
        return [sorted(self.blocks, key=lambda b: b.length)]  # rows of one length together

    def _recover(self, pieces: list[tuple[_Block, int, int]], p_hat: torch.Tensor, q_hat: torch.Tensor,
                 diagnostics: _Diagnostics | None) -> tuple[torch.Tensor, torch.Tensor]:
        """OMP's support of each row of p^, the least-squares m^ and v^ on it, and the Adam step there."""
        o, op = self.options, self.operator
        with diagnostics.omp_timer(p_hat.device) if diagnostics else contextlib.nullcontext():
            if op.n_blocks == 1:
                A = op.base[:, : pieces[0][0].length]
                _, support = self.omp(A, p_hat, o.s, return_support=True)
            else:
                lengths = [b.length for b, r0, r1 in pieces for _ in range(r1 - r0)]
                _, support = streamed_omp(op, p_hat, o.s, lengths)
        atoms = op.columns(support.clamp_min(0)) * (support >= 0).unsqueeze(-1)  # (b, n, k)
        m_coef = least_squares(atoms, p_hat)
        v_coef = least_squares(atoms, q_hat)
        valid = (support >= 0) & (v_coef > 0)
        step = torch.where(valid, m_coef / (v_coef.clamp_min(0).sqrt() + o.eps), torch.zeros_like(m_coef))
        if diagnostics is not None:
            diagnostics.add(atoms, p_hat, m_coef, valid)
        return support, step

    def warm_up_kernels(self) -> None:
        """The compression and the recovery once, on random rows of each kernel call's first shape (from a
        generator of their own), results dropped: OMP's triangular solve, the least squares' solve and the
        batched products set up MKL's buffers on their first call (about 3 MiB on tiny), before the idle
        baseline is read. Nothing of the method's state, the weights or the projection's seed changes."""
        o, op = self.options, self.operator
        device = self.blocks[0].param.device
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for blocks in self._groups():
                pieces = next(_pack(blocks, self._problems_per_call(op)))
                rows = sum(r1 - r0 for _, r0, r1 in pieces)
                block = pieces[0][0]
                g = torch.randn(min(rows, block.chunks), block.length, generator=generator, device=device)
                values, index = top_s(g, o.s, self.top_s_piece)
                torch.stack([values, values * values], dim=1) @ op.columns(index)
                p_hat = torch.randn(rows, o.k, generator=generator, device=device)
                self._recover(pieces, p_hat, p_hat.square(), None)
        if not o.store_projection:
            op.release()

    def apply_update(self, block: _Block, first_row: int, support: torch.Tensor, step: torch.Tensor,
                     lr: float) -> None:
        """W <- W (1 - lr wd) - lr * (the sparse step at the support of chunks first_row..), in place."""
        o = self.options
        with torch.no_grad():
            if o.weight_decay and first_row == 0:
                block.param.mul_(1 - lr * o.weight_decay)
            rows = torch.arange(first_row, first_row + support.shape[0], device=support.device).unsqueeze(1)
            flat_index = rows * block.length + support.clamp_min(0)
            keep = (support >= 0) & (step != 0) & (flat_index < block.param.numel())
            flat = block.param.view(-1)
            flat.index_add_(0, flat_index[keep], (-lr * step[keep]).to(flat.dtype))

    def _problems_per_call(self, op: BlockSensing) -> int:
        """OMP problems per call so that their buffers fit half the workspace (at least one)."""
        return max(1, self.workspace_bytes // 2 // self._problem_bytes(op))

    def _problem_bytes(self, op: BlockSensing) -> int:
        k, n = self.options.k, self.options.s
        per = 4 * (6 * k * n + 4 * n * n + 8 * k + 8 * n)  # atoms (OMP, least squares x2, diagnostics), factors
        if op.n_blocks == 1:
            per += 8 * op.length  # the dense kernel's (b, d) correlation buffer and (b, d) solutions
        else:  # at least one block's correlations per problem, and its permuted residual
            per += 4 * (op.B + op.k)
        return per

    @property
    def metrics(self) -> dict[str, float]:
        """The last step's diagnostics (OMP time, recovery error, update density), as numbers."""
        diagnostics = getattr(self, "_diagnostics", None)
        return {k: v() for k, v in diagnostics.lazy().items()} if diagnostics else {}

    def release_training_state(self) -> None:
        super().release_training_state()
        for block in self.blocks:  # the moments and projectors serve training only
            block.exp_avg = block.exp_avg_sq = block.exp_avg.new_empty(0)
            block.projector = None
        self.operator.release()
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._diagnostics = None

    def info(self) -> dict[str, str | None]:
        return {"omp_backend": self.omp.backend_used, "omp_fallback_reason": self.omp.fallback_reason}

    # -- accounting -------------------------------------------------------------------------
    def state_elements(self) -> dict[str, int]:
        return split_inventory(self._inventory(), 0)

    def state_bytes(self) -> dict[str, int]:
        return split_inventory(self._inventory(), 1)

    def _gradient_counts(self, micro_batches: int) -> tuple[int, int]:
        """(elements, bytes) of gradient held at the step's peak: one weight's when the hooks compress each
        gradient as backward completes it (a single micro-batch), every adapted weight's otherwise (the
        unfused path, or gradients accumulated over micro-batches before the last one completes them)."""
        per_weight = [(b.param.numel(), b.param.numel() * b.param.element_size()) for b in self.blocks]
        if self.options.fused and micro_batches == 1:
            return max(per_weight)
        return sum(e for e, _ in per_weight), sum(n for _, n in per_weight)

    def _projection_counts(self) -> tuple[int, int]:
        """(elements, bytes) that `store_projection` keeps: A's first block (k x B float32) and, for
        block-permuted A with several blocks, its permutations and their inverses (int64)."""
        op = self.operator
        elements, nbytes = op.k * op.B, 4 * op.k * op.B
        if op.kind == "block-permuted" and op.n_blocks > 1:
            elements += 2 * op.n_blocks * op.k
            nbytes += 16 * op.n_blocks * op.k
        return elements, nbytes

    def _inventory(self, micro_batches: int | None = None) -> dict[str, tuple[int, int]]:
        """(elements, bytes) of each kind of state, from the real tensors' shapes and element sizes."""
        inventory = {
            "trainable_params": tensor_counts(b.param for b in self.blocks),
            "gradients": self._gradient_counts(micro_batches or self._max_micro_batches),
            "exp_avg": tensor_counts(b.exp_avg for b in self.blocks),
            "exp_avg_sq": tensor_counts(b.exp_avg_sq for b in self.blocks),
        }
        if self.options.store_projection:
            inventory["projection"] = self._projection_counts()
        projectors = self._projector_counts()
        if projectors is not None:
            inventory["projector"] = projectors
        return inventory

    def _projector_counts(self) -> tuple[int, int] | None:
        return None

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """What `state_bytes()` will report after training with `grad_accum` micro-batches per step, from
        the adapted weights' shapes and dtypes and the options alone (prepare() may have run on `meta`)."""
        return split_inventory(self._inventory(grad_accum), 1)

    def predicted_workspace_bytes(self) -> int:
        """Transient bytes a step allocates beyond weights, gradients and state, at its peak: A's block
        (and a generated one for gaussian), the permutations, the correlation chunk, the OMP problems'
        buffers and the compression's gradient rows. At most about `workspace_mb`."""
        op = self.operator
        problems = min(self._problems_per_call(op), sum(b.chunks for b in self.blocks))
        worst = op.workspace_bytes(problems) + problems * self._problem_bytes(op)  # OMP
        if op.n_blocks == 1 and len({b.length for b in self.blocks}) > 1:
            worst += 4 * op.k * op.length  # CuPy's contiguous copy of a shorter weight's first columns of A
        for length in {b.length for b in self.blocks}:
            chunks = max(b.chunks for b in self.blocks if b.length == length)
            compress_rows = min(chunks, max(1, self.workspace_bytes // 4 // (8 * length)))
            piece = self.top_s_piece
            if compress_rows == 1 and length > piece:  # one long row: |g| searched in pieces
                compress = 4 * piece + 8 * self.options.s * (length // piece + 1)
                if any(b.param.dtype != torch.float32 for b in self.blocks if b.length == length):
                    compress += 4 * length  # the float32 copy of a lower-precision gradient
            else:  # |g| of the rows, and a padded or float32 copy of them
                compress = 8 * compress_rows * length
            compress += 4 * compress_rows * self.options.s * self.options.k  # the s columns of A per row
            worst = max(worst, compress + (4 * op.k * op.B))
        return worst


def auto_block_columns(length: int) -> int:
    """SGC's automatic B: the whole length up to 4096 columns (A is then the paper's Gaussian A and small
    enough, 2 MiB at k = 128, for the dense kernels to beat the block path's gather), else
    max(1024, length / 4096): a block that stays in cache and costs little to draw, and at most 4096 blocks."""
    return length if length <= 4096 else max(1024, math.ceil(length / 4096))


def top_s(g: torch.Tensor, s: int, piece: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the s largest-magnitude entries of each row of g. A single long row is searched
    in pieces of `piece` entries (the top s of the whole are among the pieces' top s), so no full-size |g|
    is allocated, each piece through `_top_index`."""
    rows, length = g.shape
    if rows > 1 or length <= _SMALL:
        index = g.abs().topk(s, dim=1).indices
        return g.gather(1, index), index
    flat = g[0]
    candidates = [_top_index(flat[start: start + piece].abs(), s) + start for start in range(0, length, piece)]
    index = candidates[0] if len(candidates) == 1 else torch.cat(candidates)
    if len(candidates) > 1:
        index = index[flat[index].abs().topk(s).indices]
    index = index.unsqueeze(0)
    return g.gather(1, index), index


_SMALL = 65536  # up to this many entries, torch's topk on the whole row is as fast as anything


def _top_index(values: torch.Tensor, s: int, width: int = 1024) -> torch.Tensor:
    """Indices of the s largest entries of a 1-D tensor. Cut into rows of `width`: the s largest lie in
    the s rows whose maxima are largest (a row outside them has s rows above its maximum, so an entry of
    it has s larger ones), so one max per row and a topk over s * width entries replace a topk over all:
    0.36 ms against 7.5 ms for torch's topk on an 884,736-entry smollm2 MLP gradient here."""
    n = values.numel()
    rows = n // width
    if rows <= s:
        return values.topk(min(s, n)).indices
    body = values[: rows * width].view(rows, width)
    best_rows = body.amax(dim=1).topk(s).indices
    columns = torch.arange(width, device=values.device)
    candidates = (best_rows.unsqueeze(1) * width + columns).view(-1)
    if n > rows * width:  # the tail that does not fill a row is a candidate as a whole
        candidates = torch.cat([candidates, torch.arange(rows * width, n, device=values.device)])
    return candidates[values[candidates].topk(s).indices]


def _pack(blocks: list[_Block], limit: int) -> Iterator[list[tuple[_Block, int, int]]]:
    """Groups of (block, first row, end row) with at most `limit` rows in all, in order."""
    group: list[tuple[_Block, int, int]] = []
    size = 0
    for block in blocks:
        start = 0
        while start < block.chunks:
            end = min(block.chunks, start + limit - size)
            group.append((block, start, end))
            size += end - start
            start = end
            if size == limit:
                yield group
                group, size = [], 0
    if group:
        yield group


class _Diagnostics:
    """What SGC measures about itself in a step, kept on the device until read (no synchronisation).

    `relative_recovery_error` = ||A m^ - p|| / ||p|| of the recovered first moment, computed from the
    support's s columns (not a full k x d product); `update_density` = share of the adapted weights'
    entries changed; `omp_time_ms` = the OMP kernel's time (CUDA events on a GPU).
    """

    def __init__(self) -> None:
        self.residual_sq: list[torch.Tensor] = []
        self.reference_sq: list[torch.Tensor] = []
        self.nonzero: list[torch.Tensor] = []
        self.omp_times: list = []
        self.total = 0

    @contextlib.contextmanager
    def omp_timer(self, device: torch.device):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.omp_times.append(lambda: (end.synchronize(), start.elapsed_time(end))[1])
        else:
            t0 = time.perf_counter()
            yield
            elapsed = (time.perf_counter() - t0) * 1e3
            self.omp_times.append(lambda: elapsed)

    def add(self, atoms: torch.Tensor, p_hat: torch.Tensor, m_coef: torch.Tensor, changed: torch.Tensor) -> None:
        """Queue the figures: atoms (b, n, k) of the support, m^'s coefficients (b, n), which entries change."""
        with torch.no_grad():
            residual = p_hat - (m_coef.unsqueeze(1) @ atoms).squeeze(1)
            self.residual_sq.append((residual * residual).sum())
            self.reference_sq.append((p_hat * p_hat).sum())
            self.nonzero.append((changed & (m_coef != 0)).sum())

    def lazy(self) -> dict[str, Callable[[], float]]:
        def recovery_error() -> float:
            reference = float(sum(self.reference_sq))
            return math.sqrt(float(sum(self.residual_sq)) / reference) if reference > 0 else 0.0

        return {
            "omp_time_ms": lambda: float(sum(t() for t in self.omp_times)),
            "relative_recovery_error": recovery_error,
            "update_density": lambda: float(sum(self.nonzero)) / max(self.total, 1),
        }


def least_squares(atoms: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Coefficients (b, n) of min ||atoms_i^T x - y_i|| for atoms (b, n, k) whose zero rows are unused slots.

    Normal equations, batched; an unused slot gets a unit diagonal, so its coefficient is 0 and the others
    are unaffected (OMP's atoms are linearly independent).
    """
    unused = (atoms == 0).all(dim=2)
    gram = atoms @ atoms.transpose(1, 2) + torch.diag_embed(unused.to(atoms.dtype))
    return torch.linalg.solve(gram, atoms @ Y.to(atoms.dtype).unsqueeze(-1)).squeeze(-1)


@register("mesgc")
class Mesgc(Sgc):
    """MESGC: SGC with gradient chunking; one small A shared by every chunk (Yang et al. 2025)."""

    Options = MesgcOptions
    options: MesgcOptions

    def block_shape(self, p: torch.Tensor) -> tuple[int, int]:
        length = min(self.options.chunk_size, p.numel())
        return length, math.ceil(p.numel() / length)


@register("cesgc")
class Cesgc(Sgc):
    """CESGC: an SVD projection (GaLore-style) first, then SGC on the projected gradient (Yang et al. 2025)."""

    Options = CesgcOptions
    options: CesgcOptions

    def block_shape(self, p: torch.Tensor) -> tuple[int, int]:
        m, n = p.shape
        r = min(self.options.rank, m, n)
        return r * max(m, n), 1

    def gradient_rows(self, block: _Block, grad: torch.Tensor, start: int, end: int) -> torch.Tensor:
        g = grad.float()
        m, n = g.shape
        r = min(self.options.rank, m, n)
        if block.projector is None or (self.t - 1) % self.options.update_proj_gap == 0:
            u, _, vh = torch.linalg.svd(g, full_matrices=False)
            block.project_right = m >= n  # as GaLore's "std": project the smaller side
            block.projector = vh[:r].T.contiguous() if block.project_right else u[:, :r].contiguous()
        low = g @ block.projector if block.project_right else block.projector.T @ g  # (m, r) or (r, n)
        return low.reshape(1, -1)

    def apply_update(self, block: _Block, first_row: int, support: torch.Tensor, step: torch.Tensor,
                     lr: float) -> None:
        """The sparse step lives in the projected space (r * max(m, n)): make it dense there, project back."""
        o = self.options
        direction = torch.zeros(1, block.length, dtype=step.dtype, device=step.device)
        keep = support >= 0
        direction[0, support[keep]] = step[keep]
        with torch.no_grad():
            if o.weight_decay:
                block.param.mul_(1 - lr * o.weight_decay)
            block.param.sub_(self.to_update(block, direction).to(block.param.dtype), alpha=lr)

    def _projector_counts(self) -> tuple[int, int] | None:
        """P (min(m, n) x r, float32) per weight, from the shapes: what the first step creates."""
        elements = sum(min(b.param.shape) * min(self.options.rank, *b.param.shape) for b in self.blocks)
        return elements, 4 * elements

    def to_update(self, block: _Block, direction: torch.Tensor) -> torch.Tensor:
        assert block.projector is not None
        m, n = block.param.shape
        if block.project_right:
            return direction.view(m, -1) @ block.projector.T
        return block.projector @ direction.view(-1, n)
