"""The suite schema as data: loading a suite file, `--set` overrides, sweeps, state-budget parsing and
Slurm settings. Imports `core`, `sources` (task and model names) and the method registry.
"""
