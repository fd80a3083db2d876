"""Numerical kernels shared by methods (batched Orthogonal Matching Pursuit for SGC, in torch and CuPy).

Kept apart from `methods/` so a kernel can be tested and benchmarked against its reference on its own.
"""
