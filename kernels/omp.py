"""Batched Orthogonal Matching Pursuit (OMP) in torch: many independent sparse-recovery problems at once.

Problem i: given A_i (m x d) and y_i (m), find x_i with at most `n_nonzero` non-zeros that minimises
||A_i x_i - y_i||. OMP (Pati et al. 1993; Tropp & Gilbert 2007) grows the support greedily: pick the
column most correlated with the residual, re-fit the coefficients on the support by least squares,
update the residual. This is what SGC (`methods/sgc.py`) runs every step to turn compressed optimizer
moments back into a sparse full-dimension update, with one problem per weight (or per chunk).

The least-squares re-fit is not solved from scratch: the torch kernel keeps an orthonormal basis Q of
the selected columns (A_S = Q R, grown by one Gram-Schmidt step, done twice so that Q stays orthogonal
in float32) and updates the residual by one projection, r <- r - q (q^T r); the coefficients come from
one triangular solve R x = Q^T y at the end. The CuPy kernel grows the inverse Cholesky factor of
A_S^T A_S instead (the same least squares). Every operation is a batched matmul on (b, m, s) or (b, s, s)
tensors, so the whole batch advances in lock-step on a CPU or a GPU, and the correlation A^T r, the only
O(k d) work of an iteration, is one matmul into a reused buffer. Selection matches scikit-learn's
`orthogonal_mp` (argmax |A^T r|, columns not normalised); a problem whose residual vanishes, whose best
column is already in its support, or whose next column is linearly dependent on its support, stops
growing (its remaining slots get zero coefficients), as scikit-learn stops early. The selection scans
every column, its support's included (their correlations with the residual are zero up to rounding):
masking the support out would cost a scattered write per selected column into the correlation buffer,
a quarter of the selection's time on a CPU at 2048 problems.

Entry points:
- `OmpSolver(backend="auto")`, called as `solver(A, Y, n_nonzero, return_support=False)`: "auto" runs
  the CuPy kernel (`kernels/omp_cupy.py`) for CUDA tensors when CuPy is installed and the torch kernel
  otherwise; "torch" and "cupy" force one. A CuPy that fails at its first launch (no NVRTC or driver, a
  build for another CUDA, a kernel that does not compile...) would otherwise end a run that the torch
  kernel can finish, so the solver then runs the torch kernel, for that call and every later one, and
  says so: `backend_used` is the kernel that ran the latest call ("torch" or "cupy"), `fallback_reason`
  one line naming the exception. Only the first launch falls back: once CuPy has run, its errors
  propagate, and so does running out of memory at any launch (the torch kernel needs as much).
- `batched_omp(A, Y, n_nonzero, return_support=False, backend="auto")`, the same selection as a
  function, with no fallback: a CuPy failure propagates.
- `batched_omp_torch(...)`, the torch kernel itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

BACKENDS = ("auto", "torch", "cupy")


def _tiny(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) * 10


def _problem_size(A: torch.Tensor, Y: torch.Tensor, n_nonzero: int) -> tuple[int, int, int, int, bool]:
    """(b, m, d, n, shared) of a batch, n = the support size reached; a ValueError for bad shapes."""
    if Y.dim() != 2:
        raise ValueError(f"Y must be (b, m); got shape {tuple(Y.shape)}")
    b, m = Y.shape
    shared = A.dim() == 2
    if (shared and A.shape[0] != m) or (not shared and (A.dim() != 3 or A.shape[:2] != (b, m))):
        raise ValueError(f"A must be (m, d) or (b, m, d) with m={m}, b={b}; got shape {tuple(A.shape)}")
    d = A.shape[-1]
    n = int(min(n_nonzero, m, d))
    if n < 1:
        raise ValueError(f"n_nonzero must be >= 1; got {n_nonzero}")
    return b, m, d, n, shared


def batched_omp_torch(
    A: torch.Tensor, Y: torch.Tensor, n_nonzero: int, return_support: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """OMP for every row of Y. A: (m, d) shared or (b, m, d) per problem; Y: (b, m).

    Returns X (b, d) with at most `n_nonzero` non-zeros per row, and with `return_support` also the
    support indices (b, n_nonzero) in selection order (-1 where a problem stopped early).
    """
    b, m, d, n, shared = _problem_size(A, Y, n_nonzero)
    A = A.to(Y.dtype)
    rows = torch.arange(b, device=Y.device)
    if shared:
        select = SharedSelect(A, b)
        columns = lambda j: A[:, j].T  # noqa: E731
    else:
        At = A.transpose(1, 2)

        def select(residual: torch.Tensor) -> torch.Tensor:
            return row_argmax(torch.bmm(At, residual.unsqueeze(-1)).squeeze(-1).abs_())

        columns = lambda j: A[rows, :, j]  # noqa: E731
    X_coef, support = omp_core(Y, n, select, columns)
    X = scatter_solution(X_coef, support, d)
    return (X, support) if return_support else X


class SharedSelect:
    """argmax_j |a_j^T r| for a shared A, into one reused (b, d) buffer (a fresh multi-megabyte tensor per
    iteration costs page faults that a matmul of these shapes does not amortise)."""

    def __init__(self, A: torch.Tensor, b: int) -> None:
        self.A = A
        self.buffer = torch.empty((b, A.shape[1]), dtype=A.dtype, device=A.device)

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        return row_argmax(torch.matmul(residual, self.A, out=self.buffer).abs_())


def row_argmax(values: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax of a 2-D tensor (ties to the lowest index). On a CPU through NumPy, which shares the
    tensor's memory: its vectorised argmax is several times faster than torch's on these (b, d) rows (0.01
    against 0.07 ms for 6 x 16384 here), and OMP runs one per iteration."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64) and values.stride(1) == 1:
        return torch.from_numpy(np.argmax(values.numpy(), axis=1).astype(np.int64, copy=False))
    return values.argmax(dim=1)


def omp_core(
    Y: torch.Tensor,
    n: int,
    select: Callable[[torch.Tensor], torch.Tensor],
    columns: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The OMP iterations, independent of how A is held: `select(residual (b, m))` returns each
    problem's next column index (argmax |a_j^T r| over every column; a problem whose choice is already
    in its support stops, as scikit-learn's does) and `columns(j)` those columns (b, m). Returns the
    coefficients (b, n) and the support (b, n), -1 where a problem stopped. A dense A, a streamed block
    operator (`kernels/sensing.py`) or per-problem A's plug in."""
    b, m = Y.shape
    dtype, device = Y.dtype, Y.device
    support = torch.full((b, n), -1, dtype=torch.long, device=device)
    # Q's rows are an orthonormal basis of the selected columns, zero beyond those selected so far, so the
    # products below run over all n rows with no slicing (a few ops fewer per iteration: on a CPU, these
    # small batched ops cost their launch more than their flops).
    Q = torch.zeros((b, n, m), dtype=dtype, device=device)
    Qt = Q.transpose(1, 2)  # a view: it follows Q's updates
    R = torch.eye(n, dtype=dtype, device=device).repeat(b, 1, 1)  # A_S = Q^T R, R upper triangular; unit
    # diagonal in the slots a problem never fills, so their coefficients solve to 0
    residual = Y.clone()
    floor_sq = (_tiny(dtype) * torch.linalg.vector_norm(Y, dim=1)) ** 2  # a residual this small has vanished
    eps = _tiny(dtype)
    one = torch.ones((), dtype=dtype, device=device)
    active = torch.ones(b, dtype=torch.bool, device=device)
    for t in range(n):
        j = select(residual)
        if t:  # the best column is one already chosen: nothing is left to explain (scikit-learn stops)
            active &= ~(support[:, :t] == j.unsqueeze(1)).any(dim=1)
        col = columns(j)  # (b, m)
        c = col.unsqueeze(-1)
        # Gram-Schmidt twice (numerically orthogonal Q in float32 too): w = Q a, v = a - Q^T w.
        w = torch.bmm(Q, c)
        v = torch.baddbmm(c, Qt, w, alpha=-1)
        w2 = torch.bmm(Q, v)
        v = torch.baddbmm(v, Qt, w2, alpha=-1).squeeze(-1)
        delta_sq = torch.linalg.vecdot(v, v)
        # Stop a problem whose new column depends on its support or whose residual vanished (as
        # scikit-learn stops early); its remaining slots keep a zero column and a unit diagonal.
        active &= (delta_sq > eps * torch.linalg.vecdot(col, col).clamp_min(eps)) & (
            torch.linalg.vecdot(residual, residual) > floor_sq)
        delta = torch.where(active, delta_sq.clamp_min(eps).sqrt(), one)
        q = v * torch.where(active, delta.reciprocal(), 0.0).unsqueeze(1)
        Q[:, t] = q
        R[:, :, t] = torch.where(active.unsqueeze(1), (w + w2).squeeze(-1), 0.0)
        R[:, t, t] = delta
        support[:, t] = torch.where(active, j, -1)
        residual = residual - q * torch.linalg.vecdot(q, residual).unsqueeze(1)
        if not bool(active.any()):
            break
    # Least squares on the support: A_S x = Q^T R x = Q^T Q y, so x = R^-1 Q y (one triangular solve).
    coef = torch.linalg.solve_triangular(R, torch.bmm(Q, Y.unsqueeze(-1)), upper=True).squeeze(-1)
    return coef * (support >= 0), support


def scatter_solution(coef: torch.Tensor, support: torch.Tensor, d: int) -> torch.Tensor:
    """Dense (b, d) solutions from coefficients and supports (b, n) (-1 slots unused)."""
    b = coef.shape[0]
    X = torch.zeros((b, d), dtype=coef.dtype, device=coef.device)
    valid = support >= 0
    rows = torch.arange(b, device=coef.device).unsqueeze(1).expand_as(support)
    X[rows[valid], support[valid]] = coef[valid]
    return X


def cupy_available() -> bool:
    try:
        import cupy  # noqa: F401

        return torch.cuda.is_available()
    except Exception:  # ImportError, or a CuPy built for another CUDA
        return False


def on_cuda(t: torch.Tensor) -> bool:
    """Whether `t` lives on a CUDA device (the one place the backend choice asks; tests replace it)."""
    return t.is_cuda


def _run_cupy(A: torch.Tensor, Y: torch.Tensor, n_nonzero: int, return_support: bool):
    from memft_bench.kernels.omp_cupy import batched_omp_cupy  # imports cupy, so an ImportError surfaces here

    return batched_omp_cupy(A, Y, n_nonzero, return_support)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OmpSolver:
    """Batched OMP with a backend chosen once and recorded; see the module docstring.

    `solver(A, Y, n_nonzero, return_support=False)` takes and returns what `batched_omp_torch` does.
    After a call, `backend_used` is "torch" or "cupy" (None before the first call) and `fallback_reason`
    is None, or one line saying why the torch kernel ran in place of CuPy.
    """

    def __init__(self, backend: str = "auto") -> None:
        _check_backend(backend)
        self.backend = backend
        self.backend_used: str | None = None
        self.fallback_reason: str | None = None
        # None: CuPy not launched yet; "ran": it has run once; "failed": its first launch failed;
        # "absent": not installed (with "auto", the torch kernel is then simply the choice).
        self._cupy_state: str | None = None

    def _wants_cupy(self, Y: torch.Tensor) -> bool:
        if self.backend == "torch":
            return False
        if self.backend == "cupy":
            if not on_cuda(Y):
                raise ValueError("the cupy backend needs CUDA tensors")
            return True
        return on_cuda(Y)

    def __call__(
        self, A: torch.Tensor, Y: torch.Tensor, n_nonzero: int, return_support: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        _problem_size(A, Y, n_nonzero)  # bad input is the caller's error on either kernel, never a fallback
        if A.device != Y.device:
            raise ValueError(f"A and Y must be on one device; got {A.device} and {Y.device}")
        if self._wants_cupy(Y) and self._cupy_state in (None, "ran"):
            if self._cupy_state == "ran":
                out = _run_cupy(A, Y, n_nonzero, return_support)
                self.backend_used = "cupy"
                return out
            try:
                out = _run_cupy(A, Y, n_nonzero, return_support)
            except (MemoryError, torch.cuda.OutOfMemoryError):
                raise  # out of memory is a result of the trial, not a broken CuPy
            except Exception as exc:
                if self.backend == "auto" and isinstance(exc, ModuleNotFoundError) and exc.name == "cupy":
                    self._cupy_state = "absent"
                else:
                    self._cupy_state = "failed"
                    self.fallback_reason = f"cupy failed at its first launch ({_one_line(exc)}); ran the torch kernel"
            else:
                self._cupy_state = "ran"
                self.backend_used = "cupy"
                return out
        out = batched_omp_torch(A, Y, n_nonzero, return_support)
        self.backend_used = "torch"
        return out


def batched_omp(
    A: torch.Tensor, Y: torch.Tensor, n_nonzero: int, return_support: bool = False, backend: str = "auto"
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Batched OMP; `backend` auto (CuPy for CUDA tensors when it imports, else torch), torch or cupy.

    No fallback and no record of the kernel that ran: `OmpSolver` has both.
    """
    _check_backend(backend)
    use_cupy = backend == "cupy" or (backend == "auto" and on_cuda(Y) and cupy_available())
    if use_cupy:
        if not on_cuda(Y):
            raise ValueError("the cupy backend needs CUDA tensors")
        return _run_cupy(A, Y, n_nonzero, return_support)
    return batched_omp_torch(A, Y, n_nonzero, return_support)
