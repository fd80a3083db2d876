"""Measure the batched OMP kernel against scikit-learn and against the matmul it is built on, in one
process, and print a Markdown table: the figures `reports/omp-benchmark*.md` keep.

    python benchmarks/omp_ratio.py [--device cpu|cuda] [--repeats 5] > reports/omp-benchmark-cpu.md

Columns (CPU): scikit-learn as a loop of single-target `orthogonal_mp` calls, and in its strongest
form, one multi-target call with the precomputed Gram matrix (`precompute=True`, which runs
`orthogonal_mp_gram`; only for d <= 4096, since the Gram matrix is d x d); the batched torch kernel;
then the roofline of the kernel's only O(k d) work, the correlation A^T r: `corr/matmul` is a plain
matmul of the same shapes, (b x k) @ (k x d), divided by the kernel's correlation step (that matmul
into its buffer, |.|, argmax), and `kernel/matmul` is s such matmuls divided by
the whole kernel (1.0 would be a kernel that costs only its correlations). Then SGC's own operator at its
default (`kernels/sensing.py`, block-permuted with a block of B columns, `methods.sgc.auto_block_columns`,
when that is smaller than d): the streamed OMP on the same problems, and its correlation step against the same
plain matmul (it is a GEMM over a cache-sized block, so it may beat the matmul with the dense A, which
streams k x d floats from memory). On a GPU: CuPy against torch, and both against s matmuls.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from functools import partial

import numpy as np
import torch
from sklearn.linear_model import orthogonal_mp

from memft_bench.kernels.omp import OmpSolver, SharedSelect, batched_omp_torch, cupy_available
from memft_bench.kernels.sensing import BlockSensing
from memft_bench.kernels.sensing import omp as streamed_omp
from memft_bench.methods.sgc import auto_block_columns

# (batch, d, s, k): SGC on tiny's attention and MLP weights, MESGC's 1024-entry chunks, and larger ones.
SHAPES = [(6, 16384, 16, 128), (4, 32768, 16, 128), (2048, 1024, 16, 128), (64, 1024, 16, 128),
          (16, 4096, 32, 256), (128, 2048, 16, 128)]


def best_interleaved(fns, repeats: int) -> list[float]:
    """Best time of each function, measured in turns (one call of each per round, after a warm-up round),
    so that a ratio of two of them is not skewed by the machine's state changing between two series."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(max(repeats, 10)):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def best_of(fn, repeats: int, sync=lambda: None) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def problem(rng: np.random.Generator, b: int, d: int, s: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    A = (rng.standard_normal((k, d)) / np.sqrt(k)).astype(np.float32)
    X = np.zeros((b, d), dtype=np.float32)
    for i in range(b):
        X[i, rng.choice(d, s, replace=False)] = rng.standard_normal(s)
    return A, X @ A.T


def resolve_device(text: str, current_index=None) -> torch.device:
    """`text` as an indexed device: a bare `cuda` is the current GPU (`torch.cuda.set_device` refuses a
    device without an index). `current_index` stands in for `torch.cuda.current_device` (tests)."""
    device = torch.device(text)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", (current_index or torch.cuda.current_device)())
    return device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-sklearn-loop", action="store_true", help="skip the slow loop of single calls")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)  # scikit-learn's early-stop warnings
    rng = np.random.default_rng(0)
    args.device = str(resolve_device(args.device))
    gpu = args.device.startswith("cuda")
    if gpu:  # synchronize() and get_device_name() below act on the current device: make it this one
        torch.cuda.set_device(torch.device(args.device))
    print(f"# Batched OMP benchmark ({args.device})\n")
    print(f"- torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if gpu else ""))
    print(f"- best of {args.repeats} after one warm-up (the correlation steps and their matmul: best of at least "
          "10 rounds taken in turns); float32; problems with exactly s-sparse solutions\n")
    if gpu:
        print("| batch | d | s | k | torch (ms) | cupy (ms) | torch / cupy | s matmuls (ms) | torch kernel/matmul "
              "| cupy kernel/matmul |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print("| batch | d | s | k | sklearn loop (ms) | sklearn multi-target Gram (ms) | batched torch (ms) | "
              "vs loop | vs Gram | corr/matmul | kernel/matmul | SGC's CPU operator (ms) | its corr/matmul |\n"
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cupy_solver = OmpSolver("cupy")  # records the kernel that ran, and why CuPy did not if it did not
    for b, d, s, k in SHAPES:
        print(measure(args, rng, cupy_solver, b, d, s, k), flush=True)


def measure(args: argparse.Namespace, rng: np.random.Generator, cupy_solver: OmpSolver,
            b: int, d: int, s: int, k: int) -> str:
    """One table row: every timing of one shape, taken in this process."""
    gpu = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    A, Y = problem(rng, b, d, s, k)
    At, Yt = torch.from_numpy(A).to(args.device), torch.from_numpy(Y).to(args.device)
    residual = torch.randn(b, k, device=args.device)
    out = torch.empty(b, d, device=args.device)
    t_torch = best_of(partial(batched_omp_torch, At, Yt, s), args.repeats, sync)
    if gpu:
        t_matmul = best_of(lambda: torch.matmul(residual, At, out=out), args.repeats, sync)
        cell, t_cupy = "(cupy not installed)", None
        if cupy_available():
            t_cupy = best_of(lambda: cupy_solver(At, Yt, s), args.repeats, sync)
            if cupy_solver.backend_used != "cupy":  # CuPy failed at its first launch: the torch kernel ran
                cell, t_cupy = f"(not run: {(cupy_solver.fallback_reason or '').replace('|', '/')})", None
        cupy_cells = f"{t_cupy * 1e3:.2f} | {t_torch / t_cupy:.2f}" if t_cupy else f"{cell} | –"
        return (f"| {b} | {d} | {s} | {k} | {t_torch * 1e3:.2f} | {cupy_cells} | {s * t_matmul * 1e3:.2f} | "
                f"{s * t_matmul / t_torch:.2f} | " + (f"{s * t_matmul / t_cupy:.2f} |" if t_cupy else "– |"))
    select = SharedSelect(At, b)
    t_matmul, t_select = best_interleaved(  # the correlation step and its roofline, in turns
        [lambda: torch.matmul(residual, At, out=out), lambda: select(residual)], args.repeats)
    t_gram = None  # the Gram matrix is d x d: 1 GiB at d = 16384, where it stops being a fair peer
    if d <= 4096:
        t_gram = best_of(lambda: orthogonal_mp(A, Y.T, n_nonzero_coefs=s, precompute=True), args.repeats)
    t_loop = None
    if not args.no_sklearn_loop and b <= 256:
        t_loop = best_of(lambda: [orthogonal_mp(A, Y[i], n_nonzero_coefs=s) for i in range(b)], args.repeats)
    loop = f"{t_loop * 1e3:.2f}" if t_loop else "–"
    vs_loop = f"{t_loop / t_torch:.1f}x" if t_loop else "–"
    gram = f"{t_gram * 1e3:.2f}" if t_gram else "– (d x d Gram)"
    vs_gram = f"{t_gram / t_torch:.1f}x" if t_gram else "–"
    block = auto_block_columns(d)  # SGC's automatic block
    operator_cells = "– (one block: the dense kernel) | –"
    if block < d:
        op = BlockSensing(k, d, block, seed=0, chunk_bytes=64 * 2**20)
        t_op = best_of(lambda: streamed_omp(op, Yt, s), args.repeats)
        t_op_matmul, t_op_select = best_interleaved(
            [lambda: torch.matmul(residual, At, out=out), lambda: op.argmax_abs(residual)], args.repeats)
        operator_cells = f"{t_op * 1e3:.2f} (B = {block}) | {t_op_matmul / t_op_select:.2f}"
    return (f"| {b} | {d} | {s} | {k} | {loop} | {gram} | {t_torch * 1e3:.2f} | {vs_loop} | "
            f"{vs_gram} | {t_matmul / t_select:.2f} | {s * t_matmul / t_torch:.2f} | {operator_cells} |")


if __name__ == "__main__":
    main()
