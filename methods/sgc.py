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

A has i.i.d. N(0, 1/k) entries, drawn from a seed; with `store_projection: false` (the default) it is
regenerated from that seed every step and never stored (the MeZO seed trick applied to A), so it is not
optimizer state; with `true` it is kept and counted. One A serves every block of the same length.

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
SGC still computes the full gradient of each adapted weight; it is freed right after the update.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.errors import ConfigError
from harness.options import option
from kernels.omp import BACKENDS, OmpSolver
from methods.base import AdamOptions, Batch, Method, StepResult, register, split_inventory, tensor_counts
from methods.lora import DEFAULT_TARGETS


@dataclass
class SgcOptions(AdamOptions):
    lr: float = option(1e-3, "peak learning rate", min=0.0)
    k: int = option(128, "dimension of the compressed space: rows of A, entries of each moment", min=1)
    s: int = option(16, "non-zeros kept of each gradient and recovered by OMP", min=1)
    target_modules: list[str] = option(
        default_factory=lambda: list(DEFAULT_TARGETS), help="2-D weights (by module name) to adapt; the rest is frozen"
    )
    store_projection: bool = option(False, "keep A in memory (counted as state) instead of regenerating it")
    projection_seed: int = option(0, "seed of A (added to the trial seed)", min=0)
    backend: str = option("auto", "OMP kernel: auto (CuPy on a GPU when installed), torch or cupy", choices=BACKENDS)

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
        targets = tuple(self.options.target_modules)
        model.requires_grad_(False)
        self.blocks: list[_Block] = []
        for name, p in model.named_parameters():
            if p.dim() == 2 and name.rsplit(".", 1)[0].split(".")[-1] in targets:
                p.requires_grad_(True)
                length, chunks = self.block_shape(p)
                if not self.options.s < self.options.k <= length:
                    raise ConfigError(
                        f"methods.{self.name}: need s < k <= {length} (the block length of {name}); "
                        f"got s={self.options.s}, k={self.options.k}"
                    )
                zeros = torch.zeros(chunks, self.options.k, device=p.device, dtype=torch.float32)
                self.blocks.append(_Block(name, p, length, chunks, zeros, zeros.clone()))
        if not self.blocks:
            raise ConfigError(f"methods.{self.name}.target_modules: no 2-D weight matches {list(targets)}")
        self.model = model
        self.t = 0
        self.stored: dict[int, torch.Tensor] = {}
        self.omp = OmpSolver(self.options.backend)
        self._diagnostics: _Diagnostics | None = None

    # -- shapes and the projection ---------------------------------------------------------
    def block_shape(self, p: torch.Tensor) -> tuple[int, int]:
        """(entries per chunk, chunks) of the vector SGC compresses for weight p."""
        return p.numel(), 1

    def projection(self, length: int, device: torch.device) -> torch.Tensor:
        """A (k x length), N(0, 1/k) entries from a seed: regenerated identically every call unless stored."""
        if length in self.stored:
            return self.stored[length]
        generator = torch.Generator(device=device).manual_seed(
            (self.seed + self.options.projection_seed) * 1_000_003 + length
        )
        A = torch.randn(self.options.k, length, generator=generator, device=device) / math.sqrt(self.options.k)
        if self.options.store_projection:
            self.stored[length] = A
        return A

    def gradient_vector(self, block: _Block, grad: torch.Tensor) -> torch.Tensor:
        """The gradient as (chunks, length) rows, zero-padded at the end."""
        flat = grad.reshape(-1).float()
        pad = block.chunks * block.length - flat.numel()
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        return flat.view(block.chunks, block.length)

    def to_update(self, block: _Block, direction: torch.Tensor) -> torch.Tensor:
        """(chunks, length) recovered direction -> the weight's shape."""
        return direction.reshape(-1)[: block.param.numel()].view_as(block.param)

    # -- the step ---------------------------------------------------------------------------
    def step(self, batch: Batch) -> StepResult:
        assert self.model is not None
        loss = self.forward_backward(batch)
        self.t += 1
        o = self.options
        lr = o.lr * self.lr_scale
        diagnostics = _Diagnostics()
        groups: dict[int, list[_Block]] = {}
        for block in self.blocks:
            groups.setdefault(block.length, []).append(block)
        for length, blocks in groups.items():
            device = blocks[0].param.device
            A = self.projection(length, device)
            # 1-2: sparsify each chunk to s entries, compress both moments with A.
            for block in blocks:
                g = self.gradient_vector(block, block.param.grad)
                top = g.abs().topk(o.s, dim=1).indices
                g_sparse = torch.zeros_like(g).scatter_(1, top, g.gather(1, top))
                block.exp_avg.mul_(o.beta1).add_(g_sparse @ A.T, alpha=1 - o.beta1)
                block.exp_avg_sq.mul_(o.beta2).add_((g_sparse * g_sparse) @ A.T, alpha=1 - o.beta2)
                block.param.grad = None  # the full gradient is not needed any more
            # 3: recover every chunk of every weight of this length in one batched OMP call.
            p_hat = torch.cat([b.exp_avg for b in blocks]) / (1 - o.beta1**self.t)
            q_hat = torch.cat([b.exp_avg_sq for b in blocks]) / (1 - o.beta2**self.t)
            with diagnostics.omp_timer(device):
                m_hat, support = self.omp(A, p_hat, o.s, return_support=True)
            v_hat = least_squares_on_support(A, q_hat, support)
            valid = v_hat > 0
            direction = torch.where(valid, m_hat / (v_hat.clamp_min(0).sqrt() + o.eps), torch.zeros_like(m_hat))
            diagnostics.add(A, p_hat, m_hat, v_hat, support)
            row = 0
            for block in blocks:
                d = direction[row : row + block.chunks]
                row += block.chunks
                with torch.no_grad():
                    if o.weight_decay:
                        block.param.mul_(1 - lr * o.weight_decay)
                    block.param.sub_(self.to_update(block, d).to(block.param.dtype), alpha=lr)
        diagnostics.total = sum(b.param.numel() for b in self.blocks)
        self._diagnostics = diagnostics
        # Read back lazily, after the step timer stopped: the figures cost no host-device synchronisation
        # inside the timed step (the training loop's ExtrasRecorder resolves them).
        return StepResult(loss, diagnostics.lazy())

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
        self.stored = {}
        self._diagnostics = None

    def info(self) -> dict[str, str | None]:
        return {"omp_backend": self.omp.backend_used, "omp_fallback_reason": self.omp.fallback_reason}

    # -- accounting -------------------------------------------------------------------------
    def state_elements(self) -> dict[str, int]:
        return split_inventory(self._inventory(), 0)

    def state_bytes(self) -> dict[str, int]:
        return split_inventory(self._inventory(), 1)

    def _inventory(self) -> dict[str, tuple[int, int]]:
        """(elements, bytes) of each kind of state, from the real tensors (A when stored is float32, k x
        length per distinct length, whether or not a step has made it yet)."""
        trainable = tensor_counts(b.param for b in self.blocks)
        inventory = {
            "trainable_params": trainable,
            # each adapted weight's full gradient exists until its update, in the weight's dtype
            "gradients": trainable,
            "exp_avg": tensor_counts(b.exp_avg for b in self.blocks),
            "exp_avg_sq": tensor_counts(b.exp_avg_sq for b in self.blocks),
        }
        if self.options.store_projection:
            elements = sum(self.options.k * length for length in {b.length for b in self.blocks})
            inventory["projection"] = (elements, elements * 4)
        projectors = [b.projector for b in self.blocks if b.projector is not None]
        if projectors:
            inventory["projector"] = tensor_counts(projectors)
        return inventory


class _Diagnostics:
    """What SGC measures about itself in a step, kept on the device until read (no synchronisation).

    `relative_recovery_error` = ||A m^ - p|| / ||p|| of the recovered first moment, computed from the
    support and its coefficients (s columns of A, not a full k x d product); `update_density` = share of
    the adapted weights' entries changed; `omp_time_ms` = the OMP kernel's time (CUDA events on a GPU).
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

    def add(self, A: torch.Tensor, p_hat: torch.Tensor, m_hat: torch.Tensor, v_hat: torch.Tensor,
            support: torch.Tensor) -> None:
        """Queue the figures from the s support columns only: O(b s k) work against the step's O(b d k)
        compression, and no host read (the values are read after the step's timing)."""
        with torch.no_grad():
            valid = support >= 0
            index = support.clamp_min(0)
            coef = m_hat.gather(1, index) * valid
            atoms = A[:, index]  # (k, b, s)
            residual = p_hat - torch.einsum("kbs,bs->bk", atoms, coef)
            self.residual_sq.append((residual * residual).sum())
            self.reference_sq.append((p_hat * p_hat).sum())
            # an entry changes where it is on the support, its recovered m^ is non-zero and v^ > 0
            self.nonzero.append((valid & (coef != 0) & (v_hat.gather(1, index) > 0)).sum())

    def lazy(self) -> dict[str, Callable[[], float]]:
        def recovery_error() -> float:
            reference = float(sum(self.reference_sq))
            return math.sqrt(float(sum(self.residual_sq)) / reference) if reference > 0 else 0.0

        return {
            "omp_time_ms": lambda: float(sum(t() for t in self.omp_times)),
            "relative_recovery_error": recovery_error,
            "update_density": lambda: float(sum(self.nonzero)) / max(self.total, 1),
        }


def least_squares_on_support(A: torch.Tensor, Y: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Dense (b, d) solutions of min ||A_S x_S - y|| on each row's given support (-1 entries unused).

    Normal equations on the support, batched; an unused slot gets a zero column and a unit diagonal,
    so its coefficient is 0 and the others are unaffected (OMP's atoms are linearly independent).
    """
    b, _ = support.shape
    valid = support >= 0
    atoms = A[:, support.clamp_min(0)].permute(1, 0, 2) * valid.unsqueeze(1)  # (b, k, n)
    gram = atoms.transpose(1, 2) @ atoms + torch.diag_embed((~valid).to(A.dtype))
    coef = torch.linalg.solve(gram, atoms.transpose(1, 2) @ Y.unsqueeze(-1)).squeeze(-1)
    X = torch.zeros(b, A.shape[1], dtype=Y.dtype, device=Y.device)
    rows = torch.arange(b, device=Y.device).unsqueeze(1).expand_as(support)
    X[rows[valid], support[valid]] = coef[valid]
    return X


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

    def gradient_vector(self, block: _Block, grad: torch.Tensor) -> torch.Tensor:
        g = grad.float()
        m, n = g.shape
        r = min(self.options.rank, m, n)
        if block.projector is None or (self.t - 1) % self.options.update_proj_gap == 0:
            u, _, vh = torch.linalg.svd(g, full_matrices=False)
            block.project_right = m >= n  # as GaLore's "std": project the smaller side
            block.projector = vh[:r].T.contiguous() if block.project_right else u[:, :r].contiguous()
        low = g @ block.projector if block.project_right else block.projector.T @ g  # (m, r) or (r, n)
        return low.reshape(1, -1)

    def to_update(self, block: _Block, direction: torch.Tensor) -> torch.Tensor:
        assert block.projector is not None
        m, n = block.param.shape
        if block.project_right:
            return direction.view(m, -1) @ block.projector.T
        return block.projector @ direction.view(-1, n)
