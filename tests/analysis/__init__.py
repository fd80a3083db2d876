"""Tests of harness/analysis: statistics, significance, sweeps and compare."""
