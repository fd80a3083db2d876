"""Bytes of a model's tensors, counted once each: the weights line of every memory figure.

In the lowest layer because a method (SMT reports its own weights) and the meters both need the same count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (adapters included), each tensor counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
