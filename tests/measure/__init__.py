"""Tests of harness/measure: memory meters, NVML, the installed stack."""
