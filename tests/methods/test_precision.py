"""The precision policy, applied to every built-in method, and exact accounting equal to the real tensors.

Each method runs a few steps on a small Llama under `fp32` and `bf16-mixed`. Checked independently of the
method's own bookkeeping: the dtypes of what it trains and of what it keeps, the bytes of every tensor
reachable from the method object that is not a model weight (its optimizer state, however it stores it),
and the bytes of the gradients alive after the backward pass.
"""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from torch.nn import Parameter

from memft_bench.harness.core.precision import Precision
from memft_bench.harness.core.tensor_bytes import model_bytes
from memft_bench.harness.measure.memory import exact_breakdown
from memft_bench.harness.trial.data import encode_example, load_task, training_batches
from memft_bench.harness.trial.models import build_model, build_tokenizer, causal_lm_loss
from memft_bench.methods.base import create
from memft_bench.methods.builtin import BUILTIN_METHODS

OPTIONS = {  # small sizes that fit the 32-wide test model; everything else at the method's defaults
    "sgc": {"k": 32, "s": 4, "store_projection": True},
    "mesgc": {"k": 16, "s": 4, "chunk_size": 256},
    "cesgc": {"k": 16, "s": 4, "rank": 2},
    "smt": {"block_size": 16, "warmup_steps": 1, "budget_ratio": 0.5},
    "rso": {"inner_steps": 2},
    "lora": {"r": 4},
    "dora": {"r": 4},
    "apollo": {"rank": 4},
}
NOT_OPTIMIZER_STATE = ("trainable_params", "gradients")
CUDA_ONLY = {"adalomo"}  # lomo-optim's AdaLomo creates its state with .cuda()
# Gradients held at a peak other than "all of them after backward": LOMO frees each as it applies it,
# BAdam converts the block's to float32 copies; tests/methods/test_practical_methods.py checks those peaks.
OWN_GRADIENT_PEAK = {"lomo", "badam"}
NO_ACCUMULATION = {"lomo"}  # its update is fused into the backward pass


def _setup(suite, name: str, precision: str):
    if name in CUDA_ONLY:
        pytest.skip(f"{name} runs on CUDA only")
    spec = dataclasses.replace(suite.model, precision=precision)
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer, seed=0, device="cpu")
    method = create(name, OPTIONS.get(name, {}), causal_lm_loss, seed=0, precision=Precision(precision))
    method.prepare(model)
    method.apply_precision()
    task = load_task(suite.tasks[0], suite)
    examples = [encode_example(tokenizer, r, 64) for r in task.train[:16]]
    accumulate = 1 if name in NO_ACCUMULATION else 2
    return method, training_batches(examples, 4, accumulate, 0, tokenizer.pad_token_id, "cpu")


def _reachable_state_bytes(method) -> int:
    """Bytes of every tensor reachable from the method object (optimizer state, projections, moments,
    factors, wherever kept) that is not a model parameter, buffer or gradient, each storage counted once."""
    assert method.model is not None
    model_storages = {t.untyped_storage().data_ptr() for t in [*method.model.parameters(), *method.model.buffers()]}
    seen: set[int] = set()
    found: dict[int, int] = {}
    stack: list = [method]
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, str, bytes)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor) and hasattr(obj, "__tensor_flatten__") and type(obj) is not Parameter:
            stack.extend(getattr(obj, name) for name in obj.__tensor_flatten__()[0])  # torchao's 8/4-bit state
            continue
        if isinstance(obj, torch.Tensor):
            ptr = obj.untyped_storage().data_ptr()
            if obj.dim() > 0 and obj.numel() and ptr not in model_storages:
                found[ptr] = max(found.get(ptr, 0), obj.numel() * obj.element_size())
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return sum(found.values())


def _gradient_bytes_after_backward(method, batch) -> int:
    """Run the method's step, measuring the gradients alive when its backward pass ends (their peak)."""
    held = []
    original = method.forward_backward

    def alive() -> int:
        return sum(p.grad.numel() * p.grad.element_size() for p in method.model.parameters() if p.grad is not None)

    def measured(b):
        loss = original(b)
        held.append(alive())
        return loss

    method.forward_backward = measured
    compress = getattr(method, "compress", None)
    if compress is not None:  # SGC's hooks compress and free each gradient during backward: its peak is there

        def spy(block, grad):
            held.append(alive())
            compress(block, grad)

        method.compress = spy
    method.step(batch)
    return max(held) if held else 0


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "bf16"])
@pytest.mark.parametrize("name", sorted(BUILTIN_METHODS))
def test_exact_accounting_equals_the_real_tensors(name, precision, small_suite):
    method, batches = _setup(small_suite, name, precision)
    for _ in range(2):  # SMT switches to its sparse phase after one step; optimizer state exists after one
        method.step(next(batches))
    grads = _gradient_bytes_after_backward(method, next(batches))
    state = method.state_bytes()
    elements = method.state_elements()
    assert set(state) == set(elements)
    optimizer_bytes = sum(v for k, v in state.items() if k not in NOT_OPTIMIZER_STATE)
    assert optimizer_bytes == _reachable_state_bytes(method)
    if name not in OWN_GRADIENT_PEAK or (name == "badam" and precision == "fp32"):
        assert state["gradients"] == grads
    row = exact_breakdown(method.model, elements, state)
    assert row["mem_weights_mb"] * 2**20 == model_bytes(method.model)
    assert row["mem_optimizer_mb"] * 2**20 == optimizer_bytes


@pytest.mark.parametrize("name", sorted(BUILTIN_METHODS))
def test_bf16_mixed_keeps_trained_weights_and_state_in_fp32_and_frozen_weights_in_bf16(name, small_suite):
    method, batches = _setup(small_suite, name, "bf16-mixed")
    for _ in range(2):
        loss = method.step(next(batches)).loss
    assert loss == loss  # not NaN
    trained = {id(p) for p in method.trained_parameters()}
    assert trained, "every method trains something"
    for n, p in method.model.named_parameters():
        expected = torch.float32 if id(p) in trained else torch.bfloat16
        assert p.dtype == expected, (n, p.dtype)
    optimizer = getattr(method, "optimizer", None)
    for values in (optimizer.state.values() if optimizer is not None else []):
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                assert value.dtype == torch.float32, key


def test_full_fine_tuning_in_bf16_mixed_follows_fp32_adamw_closely(small_suite):
    """Mixed precision changes the forward's rounding, not the optimizer: one step of `full` under bf16-mixed
    moves the weights as fp32 AdamW on the same (bf16-rounded) start does, within bf16 forward noise, and
    no update is lost to rounding (every weight that fp32 moves, mixed moves)."""
    runs = {}
    for precision in ("fp32", "bf16-mixed"):
        spec = dataclasses.replace(small_suite.model, precision="bf16")  # the same bf16-rounded start
        tokenizer = build_tokenizer(spec)
        model = build_model(spec, tokenizer, seed=0, device="cpu")
        for p in model.parameters():
            p.data = p.data.float()
        method = create("full", {"lr": 1e-3}, causal_lm_loss, seed=0, precision=Precision(precision))
        method.prepare(model)
        method.apply_precision()
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        task = load_task(small_suite.tasks[0], small_suite)
        examples = [encode_example(tokenizer, r, 64) for r in task.train[:8]]
        method.step(next(training_batches(examples, 4, 2, 0, tokenizer.pad_token_id, "cpu")))
        runs[precision] = {n: p.detach() - start[n] for n, p in model.named_parameters()}
    for n, delta in runs["fp32"].items():
        mixed = runs["bf16-mixed"][n]
        moved = delta != 0
        assert bool((mixed[moved] != 0).float().mean() > 0.99), n
        cosine = torch.nn.functional.cosine_similarity(delta.reshape(-1), mixed.reshape(-1), dim=0)
        assert cosine > 0.9, (n, float(cosine))


def test_bf16_stores_everything_in_bf16(small_suite):
    method, batches = _setup(small_suite, "lora", "bf16")
    method.step(next(batches))
    assert {p.dtype for p in method.model.parameters()} == {torch.bfloat16}


def test_precision_rejects_unknown_names_and_float16():
    from memft_bench.harness.core.errors import ConfigError
    from memft_bench.harness.core.options import build
    from memft_bench.harness.spec.config import ModelSpec

    with pytest.raises(ConfigError, match="fp16 is not supported: float16 needs loss scaling"):
        build(ModelSpec, {"precision": "fp16"}, "model")
    with pytest.raises(ConfigError, match="must be one of fp32, bf16-mixed, bf16"):
        build(ModelSpec, {"precision": "half"}, "model")
    with pytest.raises(ValueError):
        Precision("fp16")
