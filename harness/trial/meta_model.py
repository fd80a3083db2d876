"""The suite's model on PyTorch's `meta` device: shapes and dtypes, no memory and no values.

The pre-flight checks every method variant on it and predicts memory from it, and state budgets are
resolved from its shapes, all before any trial starts; it is built exactly as `models.build_model` builds
the real one, so what is checked is what will run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memft_bench.harness.core.errors import BenchError, describe_exception

if TYPE_CHECKING:
    import torch

    from memft_bench.harness.spec.config import ModelSpec


class CannotBuildOnMeta(Exception):
    """The model cannot be built on the meta device (a custom architecture, a hub id offline)."""


def build_meta_model(spec: ModelSpec) -> torch.nn.Module:
    """The suite's model with every parameter on `meta`, in the precision policy's storage dtype, exactly as
    `trial.models.build_model` builds it but for the values."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    from memft_bench.harness.core.precision import Precision
    from memft_bench.harness.trial.models import build_tokenizer, model_config

    dtype = Precision(spec.precision).storage_dtype
    try:
        if spec.kind in ("tiny-llama", "llama-shape"):  # llama-shape: a 7B model's shapes, never its memory
            config = model_config(spec, build_tokenizer(spec))
            with torch.device("meta"):
                model = LlamaForCausalLM(config)
        else:
            from memft_bench.harness.sources.pretrained import check_model_files, resolve

            local = resolve(spec.path)
            check_model_files(local)  # a damaged file is a BenchError naming it, not a reason to skip
            config = AutoConfig.from_pretrained(local, trust_remote_code=spec.trust_remote_code)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    except BenchError:
        raise
    except Exception as exc:  # whatever a custom architecture or an offline hub id raises
        raise CannotBuildOnMeta(describe_exception(exc)) from None
    for p in model.parameters():
        p.data = p.data.to(dtype)
    model.config.use_cache = False
    return model
