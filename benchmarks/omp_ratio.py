"""Measure batched OMP against a loop of scikit-learn calls (and CuPy against torch on a GPU) in one
process, and print a Markdown table of times and ratios: the figures `reports/omp-benchmark*.md` keep.

    python benchmarks/omp_ratio.py [--device cpu|cuda] [--repeats 5] > reports/omp-benchmark-cpu.md
"""

from __future__ import annotations

import argparse
import platform
import time
from functools import partial

import numpy as np
import torch
from sklearn.linear_model import orthogonal_mp

from kernels.omp import OmpSolver, batched_omp_torch, cupy_available

SHAPES = [(16, 1024, 8, 64), (64, 1024, 16, 128), (16, 4096, 32, 256), (128, 2048, 16, 128)]


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    gpu = args.device.startswith("cuda")
    if gpu:  # synchronize() and get_device_name() below act on the current device: make it this one
        torch.cuda.set_device(torch.device(args.device))
    print(f"# Batched OMP benchmark ({args.device})\n")
    print(f"- torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if gpu else ""))
    print(f"- best of {args.repeats} after one warm-up; float32; problems with exactly s-sparse solutions\n")
    if gpu:
        print("| batch | d | s | k | torch (ms) | cupy (ms) | torch / cupy |\n|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print("| batch | d | s | k | sklearn loop (ms) | batched torch (ms) | speed-up |\n"
              "|---:|---:|---:|---:|---:|---:|---:|")
    cupy_solver = OmpSolver("cupy")  # records the kernel that ran, and why CuPy did not if it did not
    for b, d, s, k in SHAPES:
        A = (rng.standard_normal((k, d)) / np.sqrt(k)).astype(np.float32)
        X = np.zeros((b, d), dtype=np.float32)
        for i in range(b):
            X[i, rng.choice(d, s, replace=False)] = rng.standard_normal(s)
        Y = X @ A.T
        At, Yt = torch.from_numpy(A).to(args.device), torch.from_numpy(Y).to(args.device)
        if gpu:
            def run_torch(At=At, Yt=Yt, s=s):
                batched_omp_torch(At, Yt, s)
                torch.cuda.synchronize()

            t_torch = best_of(run_torch, args.repeats)
            if cupy_available():
                def run_cupy(At=At, Yt=Yt, s=s):
                    cupy_solver(At, Yt, s)
                    torch.cuda.synchronize()

                t_cupy = best_of(run_cupy, args.repeats)
                if cupy_solver.backend_used == "cupy":
                    print(f"| {b} | {d} | {s} | {k} | {t_torch * 1e3:.2f} | {t_cupy * 1e3:.2f} | "
                          f"{t_torch / t_cupy:.2f} |")
                else:  # CuPy failed at its first launch: the times are the torch kernel's, so none is shown
                    reason = (cupy_solver.fallback_reason or "").replace("|", "/")
                    print(f"| {b} | {d} | {s} | {k} | {t_torch * 1e3:.2f} | (not run: {reason}) | – |")
            else:
                print(f"| {b} | {d} | {s} | {k} | {t_torch * 1e3:.2f} | (cupy not installed) | – |")
        else:
            def run_sklearn(A=A, Y=Y, s=s, b=b):
                return [orthogonal_mp(A, Y[i], n_nonzero_coefs=s) for i in range(b)]

            t_sk = best_of(run_sklearn, args.repeats)
            t_torch = best_of(partial(batched_omp_torch, At, Yt, s), args.repeats)
            print(f"| {b} | {d} | {s} | {k} | {t_sk * 1e3:.2f} | {t_torch * 1e3:.2f} | {t_sk / t_torch:.1f}x |")


if __name__ == "__main__":
    main()
