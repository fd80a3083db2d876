"""One trial, inside its own process: building the model (the meta model too), its data, the training loop,
evaluation and the worker behind `python -m memft_bench.harness.trial SPEC ROW`.
"""
