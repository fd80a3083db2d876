"""Experiment trackers (harness/trackers/): rows logged through MLflow, TensorBoard and W&B, read back with each
tool's own reader and compared with the rows figure by figure."""
