"""Tests of harness/run: executors, Slurm, the pre-flight, estimates, devices, reliability of a run."""
