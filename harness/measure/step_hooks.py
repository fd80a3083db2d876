"""The hooks around each training step that meters and recorders implement.

Defined below the training loop (`trial/train.py`) so a meter (`timing.StepTimer`) can observe the loop
without importing it: the loop calls these hooks, and nothing in this layer calls the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memft_bench.methods.base import Batch, StepResult


class Callback:
    """Hooks around each step. Subclasses override what they need."""

    def on_step_start(self, step: int, batch: Batch) -> None: ...

    def on_step_end(self, step: int, batch: Batch, result: StepResult) -> None: ...
