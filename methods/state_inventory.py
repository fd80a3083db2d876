"""Exact accounting of optimizer state however a package stores it: quantised, paged, shared or in objects.

`methods.base.optimizer_state_inventory` counts `numel * element_size` of plain tensors. That is wrong for
the packages wrapped here: torchao's 8/4-bit moments are tensor subclasses that report the float32 size of
the tensor they stand for while storing uint8 codes, float32 block scales and a quantisation map;
bitsandbytes keeps codes, absmax scales and a quantisation map that every parameter's state shares;
Adam-mini's second moment is one 0-d tensor per block. Here every tensor is reduced to the plain tensors
that really hold its bytes (`__tensor_flatten__` for subclasses), and each storage is counted once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from memft_bench.methods.base import OptimizerMethod, split_inventory, tensor_counts

if TYPE_CHECKING:
    import torch

Inventory = dict[str, tuple[int, int]]


def storage_parts(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding `t`'s data: `t` itself, or a subclass's inner tensors, recursively."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is None or type(t).__name__ == "Parameter":
        return [t]
    names, _ = flatten()
    parts: list[torch.Tensor] = []
    for name in names:
        parts.extend(storage_parts(getattr(t, name)))
    return parts


def _storage_key(t: torch.Tensor) -> tuple[str, int, int]:
    """One storage's identity: a shared quantisation map is counted once however many states point at it."""
    if t.device.type == "meta":
        return ("meta", id(t), 0)
    return (t.device.type, t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())


def state_inventory(
    states: Iterable[Mapping[str, Any]], *, rename: Mapping[str, str] | None = None,
    skip: Iterable[str] = ("step",), keep_scalars: bool = False,
) -> Inventory:
    """kind -> (elements, bytes) over the tensors in `states` (an optimizer's per-parameter dicts).

    `rename` maps a package's state keys to kinds (bitsandbytes' `state1`, `absmax1`, `qmap1` are all the
    first moment); 0-d tensors are left out unless `keep_scalars` (a step counter is not state that scales
    with the model; Adam-mini's per-block second moment is). A paged tensor (bitsandbytes' unified memory)
    is counted under `<kind>_paged`, where it lives. Tensors held by objects (projectors) are found
    through their attributes.
    """
    rename = rename or {}
    skip = set(skip)
    seen: set[tuple[str, int, int]] = set()
    inventory: Inventory = {}

    def add(kind: str, t: torch.Tensor) -> None:
        if getattr(t, "is_paged", False):
            kind = f"{kind}_paged"
        for part in storage_parts(t):
            if part.dim() == 0 and not keep_scalars:
                continue
            key = _storage_key(part)
            if key in seen:
                continue
            seen.add(key)
            elements, nbytes = inventory.get(kind, (0, 0))
            inventory[kind] = (elements + part.numel(), nbytes + part.numel() * part.element_size())

    import torch

    for state in states:
        for key, value in state.items():
            if key in skip:
                continue
            kind = rename.get(key, key)
            if isinstance(value, torch.Tensor):
                add(kind, value)
            elif hasattr(value, "__dict__"):
                for attr_value in vars(value).values():
                    for t in attr_value if isinstance(attr_value, (list, tuple)) else [attr_value]:
                        if isinstance(t, torch.Tensor):
                            add(kind, t)
    return inventory


class InventoriedOptimizerMethod(OptimizerMethod):
    """An `OptimizerMethod` whose optimizer keeps state that `optimizer_state_inventory` cannot count (quantised
    tensors, maps shared between parameters): counted by `state_inventory`, its keys renamed by `RENAME` to
    the accounting's kinds. Every trainable parameter has its gradient at the step's peak."""

    RENAME: ClassVar[Mapping[str, str] | None] = None

    def _inventory(self) -> dict[str, tuple[int, int]]:
        return state_inventory(self.optimizer.state.values(), rename=self.RENAME)

    def _counts(self) -> dict[str, tuple[int, int]]:
        trainable = tensor_counts(p for _, p in self.trainable_parameters())
        return {"trainable_params": trainable, "gradients": trainable, **self._inventory()}

    def state_elements(self) -> dict[str, int]:
        return split_inventory(self._counts(), 0)

    def state_bytes(self) -> dict[str, int]:
        return split_inventory(self._counts(), 1)
