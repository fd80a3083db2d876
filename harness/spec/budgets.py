"""State budgets, as a suite writes them: SGC's size as an optimizer-state budget (resolved to k and s from
the model's shapes by `run/budget_resolution.py`, which holds the rule below).

```yaml
state_budgets:
  sgc: {state: "0.4x lora"}                # 0.4 times LoRA's optimizer state in this suite
  mesgc: {state: "0.08%", s_ratio: 0.0625}  # 0.08 % of the model's parameters
```

SGC keeps 2k numbers (p and q) per adapted weight, or per chunk (MESGC); CESGC adds its projectors,
which do not depend on k. For a budget of B state elements the resolved k is the largest with
2k * (blocks) + (projectors) <= B, and s = round(s_ratio * k) (at least 1, below k). The default
s_ratio 1/64 keeps k >= 2 s ln(d / s), compressed sensing's bound for recovering s entries of d, for
every d / s up to e^32, while OMP's cost (s iterations over k x d) is 8 times lower than at s = k / 8. The reference
method's state ("0.4x lora") is that of its options in this suite's `methods:` section, counted from a
real optimizer step on the suite's model built on the `meta` device (no memory, no weights); a share
("0.08%") is of all the model's parameters, the figure the SGC paper's reviewers quote (SGC about 0.08 %
against about 0.2 % for LoRA). Explicit `k` or `s` (in `methods:`, `--set` or a sweep) take precedence:
`--set sgc.k=64,128` sweeps k with s still following `s_ratio`.

The paper's own rule for k and s (its Section 5.2) was not available; the budget and `s_ratio` are the
harness's choice (docs/methods.md), and `reports/frontier-cpu/` shows how accuracy moves with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.core.options import build, option

_MULTIPLE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*x\s*([A-Za-z_][\w-]*)\s*")
_SHARE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*")


@dataclass
class StateBudget:
    state: str = option(help='"0.4x lora" (a multiple of that method\'s optimizer state in this suite) or "0.08%" '
                             "(a share of the model's parameters)")
    s_ratio: float = option(
        1 / 64, "s = round(s_ratio * k): entries kept and recovered per block (OMP runs s iterations over k x d)",
        gt=0.0, max=0.5)

    def validate(self, where: str) -> None:
        parse_state(self.state, f"{where}.state")


def parse_state(text: Any, where: str) -> tuple[str, float]:
    """(reference, factor): ("lora", 0.4) for "0.4x lora", ("%", 0.0008) for "0.08%"."""
    text = str(text)
    if match := _MULTIPLE.fullmatch(text):
        factor, reference = float(match.group(1)), match.group(2)
    elif match := _SHARE.fullmatch(text):
        factor, reference = float(match.group(1)) / 100, "%"
    else:
        raise ConfigError(f'{where}: expected "<number>x <method>" (e.g. "0.4x lora") or "<number>%" '
                          f'(e.g. "0.08%"); got {text!r}')
    if factor <= 0:
        raise ConfigError(f"{where}: the budget must be positive; got {text!r}")
    return reference, factor


def parse_budgets(data: dict, where: str) -> dict[str, StateBudget]:
    """Validated budgets by method name (raises ConfigError naming the field)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected method: {{state: ...}} entries, got {data!r}")
    return {method: build(StateBudget, values, f"{where}.{method}") for method, values in data.items()}
