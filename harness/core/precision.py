"""The precision policy: one setting (`model.precision`), applied identically to every method.

Why a policy and not a dtype: casting a whole model to bf16 makes every method pay for it differently.
Adam on bf16 weights loses most small updates to rounding (bf16 keeps 8 significant bits), a zeroth-order
method's perturbation round trip drifts by more than its update, and float16's Adam epsilon underflows.
So the weights a method *updates* and its optimizer state are kept in float32 while the frozen weights,
which only need to be read, are stored in bf16 and the forward and backward passes run under bf16
autocast: what the Hugging Face Trainer and peft do for mixed precision, and the only fair setting for
full fine-tuning against adapters.

- `fp32`: every weight and all state in float32; no autocast.
- `bf16-mixed`: frozen weights stored in bf16; weights the method updates (its `trained_parameters()`)
  and the optimizer state in float32; forward and backward under `torch.autocast(dtype=bfloat16)`.
- `bf16`: every weight, trained ones included, in bf16 (so is Adam's state, which follows its weights);
  under autocast. For those who ask for it: reports flag it.
- float16 is refused: it needs loss scaling, and not every method's update (SGC, MeZO, RSO's merges) can
  be unscaled and skipped on overflow the way `torch.amp.GradScaler` expects.

The model is built in the storage dtype (bf16 for both bf16 settings), so every method starts from the
same bf16-rounded weights; `apply` then upcasts the trained ones exactly. Buffers keep the dtype the
model gave them (Llama's rotary frequencies stay float32, as transformers builds them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16-mixed", "bf16")
REFUSED = {
    "fp16": "float16 needs loss scaling, which not every method's update can take; use bf16-mixed or fp32",
    "fp16-mixed": "float16 needs loss scaling, which not every method's update can take; use bf16-mixed or fp32",
}


@dataclass(frozen=True)
class Precision:
    name: str = "fp32"

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.name!r}")

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype weights are loaded in, and frozen weights stay in."""
        import torch

        return torch.float32 if self.name == "fp32" else torch.bfloat16

    @property
    def trained_dtype(self) -> torch.dtype:
        """The dtype of the weights a method updates (its optimizer state follows them)."""
        import torch

        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        import torch

        return None if self.name == "fp32" else torch.bfloat16

    @contextlib.contextmanager
    def autocast(self, device_type: str) -> Iterator[None]:
        """Forward passes (training and evaluation) run inside this."""
        if self.autocast_dtype is None:
            yield
            return
        import torch

        with torch.autocast(device_type=device_type, dtype=self.autocast_dtype):
            yield

    def apply(self, model: torch.nn.Module, trained: Iterable[torch.nn.Parameter]) -> None:
        """Store the trained parameters in `trained_dtype` and every other floating parameter in
        `storage_dtype`, in place (the Parameter objects stay the same, so optimizers built on them
        still hold them). Call before the first step: optimizer state is created in its weights' dtype."""
        trained_ids = {id(p) for p in trained}
        for p in model.parameters():
            if not p.is_floating_point():
                continue
            target = self.trained_dtype if id(p) in trained_ids else self.storage_dtype
            if p.dtype != target:
                p.data = p.data.to(target)

    def wrap_loss(self, loss_fn: Callable[..., Any]) -> Callable[..., Any]:
        """`loss_fn` with its forward pass under this policy's autocast (backward runs outside, as torch
        recommends, and follows the forward's dtypes)."""
        if self.autocast_dtype is None:
            return loss_fn

        def loss_under_autocast(model: torch.nn.Module, batch: dict[str, Any]) -> Any:
            kind = batch["input_ids"].device.type if "input_ids" in batch else device_type(model)
            with self.autocast(kind):
                return loss_fn(model, batch)

        return loss_under_autocast


def device_type(model: torch.nn.Module) -> str:
    """The device type ("cuda", "cpu") a model's parameters are on: what `autocast` needs."""
    return next(model.parameters()).device.type


def check_supported(precision: Precision, device: torch.device) -> None:
    """Raise BenchError when the device cannot run the precision: bf16 on a GPU without native bf16 (torch
    would emulate it, slowly, on a V100 or T4, and the step times would measure the emulation)."""
    import torch

    from memft_bench.harness.core.errors import BenchError

    if (precision.autocast_dtype is torch.bfloat16 and device.type == "cuda"
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        raise BenchError(f"model.precision {precision.name}: {torch.cuda.get_device_name(device)} has no bf16 "
                         "support; use fp32")
