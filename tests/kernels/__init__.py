"""Tests of kernels/: the OMP kernels and the sensing operator."""
