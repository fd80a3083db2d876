"""The built-in methods' table (the methods themselves sit behind one interface: `methods/base.py`).

`BUILTIN_METHODS` maps each built-in method name to the module of `memft_bench.methods` that registers it
and a one-line summary, so `bench list methods` can answer without importing torch (lm-evaluation-harness
keeps the same kind of name -> module table for its model backends). Third-party packages add methods
through the entry-point group `bench.methods`; no edit here is needed for them.
"""

from __future__ import annotations

import logging

# torchao, which peft imports whenever it is installed (the `methods` extra installs it), logs at import
# that its CUDA-only kernels cannot load on a CPU machine, and torch's pytree then warns about torchao's
# enums; bitsandbytes (imported by peft too) warns that it could not fetch a CPU kernel from the hub, which
# Hugging Face's `kernels` package (a transformers dependency) refuses for an untrusted repository, as it
# should: several lines of noise before every one-line error and in every trial log. Only errors pass.
for _noisy in ("torchao", "torch.utils._pytree", "bitsandbytes"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

BUILTIN_METHODS: dict[str, tuple[str, str]] = {
    "full": ("full", "AdamW on every weight: the baseline all ratios are taken against"),
    "lora": ("lora", "LoRA adapters through peft (Hu et al. 2021)"),
    "dora": ("lora", "DoRA, weight-decomposed LoRA, through peft (Liu et al. 2024)"),
    "galore": ("galore", "GaLore gradient low-rank projection through galore-torch (Zhao et al. 2024)"),
    "mezo": ("mezo", "MeZO zeroth-order SPSA with the seed trick (Malladi et al. 2023)"),
    "sgc": ("sgc", "SGC: AdamW moments compressed to k dims, OMP-recovered sparse updates (Yang et al. 2025)"),
    "mesgc": ("sgc", "MESGC: memory-efficient SGC with gradient chunking and one shared A (Yang et al. 2025)"),
    "cesgc": ("sgc", "CESGC: compute-efficient SGC after an SVD projection (Yang et al. 2025)"),
    "subzero": (
        "subzero", "SubZero: zeroth-order SPSA with low-rank random-subspace perturbations (Yu et al. 2024)"
    ),
    "rso": ("rso", "RSO: Adam on small factors in random subspaces, merged and redrawn (Chen et al. 2025)"),
    "smt": ("smt", "SMT: warm-up, then Adam on the top-scored weight blocks only (He et al. 2024)"),
}
# The methods practitioners reach for first, through their authors' packages (the `methods` extra; a method
# whose package is missing is listed with how to install it: methods/package_check.py).
BUILTIN_METHODS.update({
    "adamw8bit": ("quantized_adamw", "AdamW with block-wise 8-bit moments: bitsandbytes AdamW8bit"),
    "paged-adamw8bit": ("quantized_adamw",
                        "paged 8-bit AdamW: bitsandbytes PagedAdamW8bit (CUDA unified memory; unpaged on a CPU)"),
    "ao-adamw8bit": ("quantized_adamw", "AdamW with 8-bit block-quantised moments: torchao AdamW8bit"),
    "ao-adamw4bit": ("quantized_adamw", "AdamW with 4-bit block-quantised moments: torchao AdamW4bit"),
    "apollo": ("apollo_adamw",
               "APOLLO: AdamW rescaled by random-projection low-rank moments, apollo-torch (Zhu et al. 2024)"),
    "apollo-mini": ("apollo_adamw", "APOLLO-Mini: rank 1, tensor-wise scaling, apollo-torch (Zhu et al. 2024)"),
    "badam": ("block_adam", "BAdam: Adam on one transformer block at a time, badam (Luo et al. 2024)"),
    "adam-mini": ("adam_mini_opt",
                  "Adam-mini: one second moment per head/neuron block, adam-mini (Zhang et al. 2024)"),
    "lomo": ("lomo_fused", "LOMO: SGD fused into the backward pass, lomo-optim (Lv et al. 2023)"),
    "adalomo": ("lomo_fused", "AdaLomo: LOMO with factored adaptive rates, lomo-optim; CUDA only"),
    "lisa": ("lisa", "LISA: AdamW on gamma random layers plus embeddings and head (Pan et al. 2024)"),
    "adafactor": ("adafactor", "Adafactor, factored second moment: torch.optim.Adafactor"),
    "peft": ("peft_tuners", "any peft tuner by peft_type (VERA, LOHA, LOKR, IA3, ADALORA...)"),
})
