"""Experiment trackers: each result row logged as one tracked run in MLflow, TensorBoard or Weights & Biases.

Below the suite schema (spec) and above results: the runner, the single writer of `results.jsonl`, hands each
row here after appending it, and the sweep's report after writing it. Nothing here runs inside a trial, and
no tracking library is imported until a tracker logs: `bench --help` and `bench list` never load one.
"""
