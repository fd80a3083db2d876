"""`galore` through galore-torch: Adam in a low-rank projection of each 2-D weight's gradient.

GaLore (Zhao et al. 2024): every `update_proj_gap` (T) steps the projector P is refreshed from the
SVD of the current gradient G; Adam runs on R = P^T G (the smaller side is projected with
`proj_type="std"`) and the update is `scale * P Adam(R)`. Every weight of the model trains: the 2-D
weights of attention and MLP through the projection, the rest (embeddings, norms, head) with plain
Adam in the same `GaLoreAdamW`, as in the authors' training script. State per projected weight
(m x n, m >= n): P (r x n) plus 2 m r moments. Defaults: the GaLore paper's fine-tuning settings
(rank 8, T 200, scale 2); `GaLoreAdamW`'s own eps 1e-6 and no weight decay.

`layerwise: true` is galore-torch's layer-wise mode: one `GaLoreAdamW` per parameter (projected or
not, with the same group options), stepped from the parameter's post-accumulate-grad hook, so one
gradient is held instead of all (`methods/fused.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memft_bench.harness.core.options import option
from memft_bench.methods.base import AdamOptions, register
from memft_bench.methods.fused import LayerwiseOptimizerMethod
from memft_bench.methods.package_check import require

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class GaloreOptions(AdamOptions):
    lr: float = option(1e-5, "peak learning rate", min=0.0)
    rank: int = option(8, "rank r of the gradient projection", min=1)
    update_proj_gap: int = option(200, "T: steps between SVD refreshes of the projector", min=1)
    scale: float = option(2.0, "alpha: scale of the projected-back update", gt=0.0)
    proj_type: str = option(
        "std", "which side to project", choices=("std", "reverse_std", "left", "right")
    )
    target_modules: list[str] = option(
        default_factory=lambda: list(DEFAULT_TARGETS), help="2-D weights (by module name) to project"
    )
    eps: float = option(1e-6, "Adam's epsilon (GaLoreAdamW's default)", gt=0.0)
    layerwise: bool = option(
        False, "galore-torch's layer-wise mode: one GaLoreAdamW per parameter, stepped inside backward as soon as "
        "its gradient is complete (one gradient held instead of all; gradient accumulation stays exact)")

    def validate(self, where: str) -> None:
        require("galore", where)  # galore-torch is an extra: the lent GPU image and slim installs lack it


def _import_galore_adamw() -> type[torch.optim.Optimizer]:
    from memft_bench.methods.package_check import quiet_bitsandbytes_import

    with quiet_bitsandbytes_import():  # galore_torch imports bitsandbytes
        from galore_torch import GaLoreAdamW
    return GaLoreAdamW


@register("galore")
class Galore(LayerwiseOptimizerMethod):
    """GaLore: `GaLoreAdamW` with the attention/MLP 2-D weights in a projected param group."""

    Options = GaloreOptions
    options: GaloreOptions

    def prepare(self, model: torch.nn.Module) -> None:
        self.train_every_weight(model)
        projected = set(self.projected_parameter_names())
        if not projected:
            from memft_bench.harness.core.errors import ConfigError

            raise ConfigError(
                f"methods.galore.target_modules: no 2-D weight matches {self.options.target_modules}")
        self._projected = {id(p) for n, p in model.named_parameters() if n in projected}
        self.finish_prepare()
        self.warn_clipped_rank()

    def warn_clipped_rank(self) -> None:
        """galore-torch keeps min(rank, smaller side) singular vectors without a word: say so, so a sweep over
        ranks does not compare variants that are the same on some weights."""
        import warnings

        params = dict(self.model.named_parameters()) if self.model is not None else {}
        clipped = [name for name in self.projected_parameter_names() if min(params[name].shape) < self.options.rank]
        if clipped:
            side = min(min(params[name].shape) for name in clipped)
            warnings.warn(f"methods.galore.rank: {self.options.rank} is larger than a side of {len(clipped)} projected "
                          f"weight(s) (e.g. {clipped[0]}, smaller side {side}); GaLore clips the rank to that side "
                          "there", UserWarning, stacklevel=2)

    def projected_parameter_names(self) -> list[str]:
        assert self.model is not None
        targets = tuple(self.options.target_modules)
        names = []
        for name, p in self.model.named_parameters():
            module_name = name.rsplit(".", 1)[0]
            if p.dim() == 2 and module_name.split(".")[-1] in targets:
                names.append(name)
        return names

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """`GaLoreAdamW` over `params`: the projected weights in a group with GaLore's options, the rest
        (embeddings, norms, head) in a plain Adam group; a group left empty is not passed."""
        o = self.options
        galore_params = [p for p in params if id(p) in self._projected]
        regular_params = [p for p in params if id(p) not in self._projected]
        groups: list[dict] = []
        if regular_params:
            groups.append({"params": regular_params})
        if galore_params:
            groups.append({"params": galore_params, "rank": o.rank, "update_proj_gap": o.update_proj_gap,
                           "scale": o.scale, "proj_type": o.proj_type})
        GaLoreAdamW = _import_galore_adamw()
        return GaLoreAdamW(
            groups,
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
            no_deprecation_warning=True,
        )
