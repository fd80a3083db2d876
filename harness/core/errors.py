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


def describe_exception(exc: BaseException) -> str:
    """One line for a problem: a BenchError's own message (already written for the user), else the
    exception's type and first line, so a library's multi-line traceback text never reaches a report."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300] if not isinstance(exc, BenchError) else first[:500]
