"""The benchmark harness: CLI, runner, training and evaluation loops, meters, results, reports.

Importing this package is cheap on purpose (no torch): `bench --help` and `bench list` must answer fast.
"""

__version__ = "0.1.0"
