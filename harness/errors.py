"""The harness's own error types.

A `BenchError` is a user's mistake or a missing resource: the CLI prints its message as one line and
exits with status 2, never with a traceback. Anything else that escapes is a bug in the harness.
"""

from __future__ import annotations


class BenchError(Exception):
    """Bad input (flag, suite file, override, data file, model path): one line says what to fix."""


class ConfigError(BenchError):
    """A suite file or `--set` override that does not match the schema."""


class UnknownNameError(BenchError):
    """An unknown method or suite name."""
