"""`peft`: any of peft's tuners, chosen by `peft_type`, with the tuner's own options passed through.

One generic method over `peft.PEFT_TYPE_TO_CONFIG_MAPPING`: `--methods peft --set peft.peft_type=VERA,LOHA,
LOKR,IA3` sweeps tuners, and `tuner_options` holds the chosen config class's own fields (`r=4,alpha=8` on
the command line, a list of such items in a suite file), so LoRA's initialisation variants are
`peft_type=LORA` with `tuner_options=init_lora_weights=pissa` (or `olora`, `gaussian`, ...). The model is
exactly `get_peft_model(model, config)`; the adapter weights train with torch AdamW. Without
`target_modules` in `tuner_options`, each tuner's own default for the model's architecture applies.

- AdaLoRA: `total_step` defaults to the suite's step budget, and after every optimizer step the method
  calls `update_and_allocate(step)` (peft's rank-allocation hook) before the gradients are freed, as
  peft's documentation prescribes. peft adds AdaLoRA's orthogonal regularisation to `outputs.loss` only
  when the model computes the loss itself; the harness computes the loss (the same for every method), so
  that term is not added.
- Refused with one line: prompt-learning tuners (prompt, prefix, p-tuning, multitask prompt, CPT,
  cartridge: they need virtual-token inputs our prompts do not have), X-LoRA (needs its own classifier
  training set-up) and Poly (needs task ids per example).
- `keeps_base_function`: True only for tuners checked to start at the base model's function (tests check
  each); any other tuner is scored untrained on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import AdamOptions, Batch, OptimizerMethod, StepResult, adamw, register

REFUSED = {
    "PROMPT_TUNING": "prompt learning needs virtual-token inputs",
    "P_TUNING": "prompt learning needs virtual-token inputs",
    "PREFIX_TUNING": "prompt learning needs virtual-token inputs",
    "MULTITASK_PROMPT_TUNING": "prompt learning needs virtual-token inputs and task ids",
    "CPT": "prompt learning needs virtual-token inputs",
    "CARTRIDGE": "prompt learning needs virtual-token inputs",
    "XLORA": "X-LoRA needs trained adapters to mix and its own classifier set-up",
    "POLY": "Poly needs a task id per example",
}
#: tuners whose fresh adapters leave the model's function unchanged (tests/methods/test_practical_methods.py
#: checks each)
IDENTITY_AT_INIT = {"LORA", "ADALORA", "VERA", "LOHA", "LOKR", "IA3", "BOFT", "OFT", "HRA", "LN_TUNING",
                    "RANDLORA"}
IDENTITY_LORA_INITS = ("true", "gaussian", "pissa", "olora")


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@dataclass
class PeftOptions(AdamOptions):
    lr: float = option(1e-4, "peak learning rate", min=0.0)
    peft_type: str = option("LORA", "the tuner: a key of peft.PEFT_TYPE_TO_CONFIG_MAPPING (LORA, VERA, LOHA, "
                                    "LOKR, IA3, ADALORA, BOFT, OFT, HRA, FOURIERFT, ...)")
    tuner_options: list[str] = option(
        default_factory=list, help="the tuner config's own fields as KEY=VALUE items (r=4,alpha=8; values in YAML)")

    def validate(self, where: str) -> None:
        self.peft_type = self.peft_type.upper()
        if self.peft_type in REFUSED:
            raise ConfigError(f"{where}.peft_type: {self.peft_type} is not supported here: {REFUSED[self.peft_type]}")
        self.tuner_fields(where)
        peft_config(self, where)

    def tuner_fields(self, where: str = "methods.peft") -> dict[str, Any]:
        """`tuner_options` as the config's keyword arguments (values parsed as YAML: 4, true, [q_proj])."""
        fields = {}
        for item in self.tuner_options:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{where}.tuner_options: expected KEY=VALUE items, got {item!r}")
            fields[key.strip()] = _parse_value(value.strip())
        return fields


def peft_config(options: PeftOptions, where: str, total_steps: int | None = None) -> Any:
    """The tuner's config object, or ConfigError naming the option to fix."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    valid = {str(getattr(k, "value", k)): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    if options.peft_type not in valid:
        choices = ", ".join(sorted(set(valid) - set(REFUSED)))
        raise ConfigError(f"{where}.peft_type: unknown tuner {options.peft_type!r}; one of {choices}")
    fields = options.tuner_fields(where)
    fields.setdefault("task_type", "CAUSAL_LM")
    if options.peft_type == "ADALORA":
        fields.setdefault("total_step", total_steps or 1000)
    try:
        return valid[options.peft_type](**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.tuner_options: {str(exc).splitlines()[0]}") from None


@register("peft")
class PeftTuner(OptimizerMethod):
    """Any peft tuner (`get_peft_model` with the config of `peft_type`); adapter weights train with AdamW."""

    Options = PeftOptions
    options: PeftOptions
    total_steps: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        init = str(o.tuner_fields().get("init_lora_weights", True)).lower()
        self.keeps_base_function = o.peft_type in IDENTITY_AT_INIT and (
            o.peft_type != "LORA" or init.startswith(IDENTITY_LORA_INITS))
        self.global_step = 0

    def prepare(self, model: torch.nn.Module) -> None:
        from peft import get_peft_model

        self.config = peft_config(self.options, "methods.peft", self.total_steps)
        try:
            self.model = get_peft_model(model, self.config)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"methods.peft.tuner_options ({self.options.peft_type}): "
                              f"{str(exc).splitlines()[0]}") from None
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError(f"methods.peft: {self.options.peft_type} left nothing to train on this model")
        self.optimizer = self.build_optimizer()

    def build_optimizer(self) -> torch.optim.Optimizer:
        return adamw([p for _, p in self.trainable_parameters()], self.options)

    def step(self, batch: Batch) -> StepResult:
        if self.options.peft_type != "ADALORA":
            return super().step(batch)
        self.apply_lr_scale(self.optimizer)
        loss = self.forward_backward(batch)
        self.optimizer.step()
        self.model.base_model.update_and_allocate(self.global_step)  # needs the gradients: before zero_grad
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return StepResult(loss)

    def info(self) -> dict[str, Any]:
        return {"peft_type": self.options.peft_type}
