"""The training peak traced on fake tensors (`harness/trial/memory_trace.py`) against independent figures: the
tensors autograd saves, the weights and AdamW state from shapes, and the real CPU allocator's peak over the
same steps; and its behaviour in batch, length, gradient checkpointing and for a forward-only method."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.conftest import small_suite_data


def suite(**budget):
    from memft_bench.harness.spec.config import suite_from_data

    return suite_from_data(small_suite_data(**budget), "unit")


def predict(s, method, params=None, **kwargs):
    from memft_bench.harness.trial.memory_trace import predict_training_peak

    return predict_training_peak(s, method, params or {}, **kwargs)


def test_saved_activations_of_a_linear_layer_are_what_autograd_saves():
    """Linear -> ReLU -> sum: after the forward pass the step holds what autograd saved for backward (ReLU's
    output; the Linear saves its input and weight, which already existed) and the loss, nothing else."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memft_bench.harness.trial.memory_trace import LiveBytes

    def forward(linear, x):
        h = linear(x)
        a = torch.relu(h)
        del h  # nothing saves the pre-activation: it is freed
        return a.sum()

    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(0)
    linear, x = torch.nn.Linear(64, 32), torch.randn(8, 64)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward(linear, x)
    existing = {t.untyped_storage().data_ptr() for t in (x, linear.weight, linear.bias)}
    saved_new = sum(n for ptr, n in saved.items() if ptr not in existing)
    assert saved_new == 8 * 32 * 4  # ReLU's output: the independent figure

    tracker = LiveBytes()
    with FakeTensorMode(), tracker:
        fake_linear, fake_x = torch.nn.Linear(64, 32), torch.empty(8, 64)
        tracker.phase = "forward"
        loss = forward(fake_linear, fake_x)
        assert tracker.by_phase["forward"] == saved_new + loss.untyped_storage().nbytes()
        loss.backward()
        assert tracker.by_phase["forward"] == loss.untyped_storage().nbytes()  # the saved activation is freed
        assert tracker.by_phase["backward"] == (32 * 64 + 32) * 4  # the weight's and bias's gradients


def test_full_fine_tuning_weights_and_adamw_state_are_exact():
    from memft_bench.harness.core.tensor_bytes import model_bytes
    from memft_bench.harness.trial.meta_model import build_meta_model

    s = suite()
    p = predict(s, "full")
    meta = build_meta_model(s.model)
    weights = model_bytes(meta)
    params = list(meta.parameters())
    assert p.weights_bytes == weights == p.start_bytes  # full's prepare() allocates nothing
    assert p.peak_step == 1  # the second step: AdamW's moments exist from its start
    # exp_avg and exp_avg_sq per weight (fp32, like the weights) and one float32 step counter per parameter
    assert p.at_peak["state"] == 2 * sum(q.numel() * 4 for q in params) + 4 * len(params)
    assert p.at_peak["weights"] == weights


def _real_allocator_peak(s, method: str, batches) -> int:
    """The real CPU allocator's peak over the same steps: live bytes at the start (weights, what prepare() made,
    the batches) plus the highest running sum of torch.profiler's allocation and free events during the steps."""
    from torch.profiler import ProfilerActivity, profile

    from memft_bench.harness.core.precision import Precision
    from memft_bench.harness.core.tensor_bytes import model_bytes
    from memft_bench.harness.trial.models import build_model, build_tokenizer, causal_lm_loss
    from memft_bench.methods.base import create

    model = build_model(s.model, build_tokenizer(s.model), seed=0, device="cpu")
    instance = create(method, {}, causal_lm_loss, seed=0, precision=Precision(s.model.precision))
    instance.prepare(model)
    instance.apply_precision()
    instance.model.train()
    start = model_bytes(instance.model) + sum(t.untyped_storage().nbytes() for b in batches[:1]
                                              for mb in b.micro_batches for t in mb.values())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for batch in batches:
            instance.step(batch)
    current = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        current += nbytes
        peak = max(peak, current)
    return start + peak


@pytest.mark.parametrize("method", ["full", "lora", "lisa"])  # LISA: its layers drawn by randperm, for real
def test_the_prediction_is_the_real_allocators_peak(method):
    from memft_bench.harness.trial.memory_trace import synthetic_batches

    s = suite(micro_batch_size=4, cutoff_len=48)
    batches = synthetic_batches(s, 2, target_tokens=8)
    predicted = predict(s, method, batches=batches).peak_bytes
    measured = _real_allocator_peak(s, method, batches)
    assert predicted == pytest.approx(measured, rel=0.01)


def test_the_peak_grows_with_batch_and_length():
    small = predict(suite(micro_batch_size=2, cutoff_len=32), "full").peak_bytes
    wider = predict(suite(micro_batch_size=4, cutoff_len=32), "full").peak_bytes
    longer = predict(suite(micro_batch_size=2, cutoff_len=64), "full").peak_bytes
    assert small < wider and small < longer


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_shrinks_the_peak(method):
    off = predict(suite(micro_batch_size=4, cutoff_len=96), method)
    on = predict(suite(micro_batch_size=4, cutoff_len=96, gradient_checkpointing=True), method)
    assert off.gradient_checkpointing is False and on.gradient_checkpointing is True
    assert on.peak_bytes < off.peak_bytes
    assert on.at_peak["forward"] < off.at_peak["forward"]  # fewer activations kept from the forward pass


def test_mezo_is_forward_only_sized():
    """No backward pass and no gradients: MeZO's peak is an inference forward's peak plus its probe's workspace
    (a module's perturbed weight and its z), far below full fine-tuning's."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memft_bench.harness.trial.memory_trace import LiveBytes, fake_model, synthetic_batches
    from memft_bench.harness.trial.models import causal_lm_loss

    s = suite(micro_batch_size=4, cutoff_len=96)
    mezo = predict(s, "mezo")
    full = predict(s, "full")
    assert mezo.gradient_checkpointing is False
    assert mezo.at_peak["backward"] == 0
    tracker = LiveBytes()
    batch = synthetic_batches(s, 1)[0].micro_batches[0]
    with FakeTensorMode(allow_non_fake_inputs=True), tracker:
        model = fake_model(s, "cpu", tracker)
        largest = max(p.numel() * p.element_size() for p in model.parameters())
        model.eval()
        for t in batch.values():
            tracker.add(t, "batch")
        tracker.reset_peak()
        with torch.no_grad():
            causal_lm_loss(model, batch)
    inference = tracker.peak
    assert inference <= mezo.peak_bytes <= inference + 2 * largest
    assert mezo.peak_bytes < full.peak_bytes / 2


def test_checkpointing_does_not_apply_to_a_forward_only_method():
    p = predict(suite(gradient_checkpointing=True), "mezo")
    assert p.gradient_checkpointing is None


@pytest.mark.parametrize("method", ["dora", "galore", "sgc", "subzero", "rso", "smt"])
def test_every_core_method_traces(method):
    s = suite(micro_batch_size=2, cutoff_len=32, steps=30)
    options = {"sgc": {"k": 32, "s": 4}, "smt": {"block_size": 16, "warmup_steps": 2},
               "rso": {"inner_steps": 2}}.get(method, {})
    p = predict(s, method, options)
    assert p.peak_bytes > p.start_bytes >= p.weights_bytes > 0
    if method in ("smt", "rso"):  # moved forward to their switch (SMT) or merge (RSO)
        assert p.steps == (4 if method == "smt" else 2)


@pytest.mark.parametrize("method", ["sgc", "lora", "full"])
def test_a_trace_leaves_no_fake_tensor_alive(method):
    """The trace runs inside the trial's process: a method whose hooks live in its parameters' C++ tensors (SGC's
    post-accumulate-grad hooks hold the method, which holds the fake model: a cycle the garbage collector cannot
    see) must be released, or its fake model outlives every trace of the process."""
    import gc

    from torch._subclasses.fake_tensor import FakeTensor

    def fakes() -> int:
        gc.collect()
        return sum(isinstance(o, FakeTensor) for o in gc.get_objects())

    before = fakes()
    predict(suite(micro_batch_size=2, cutoff_len=32), method, {"k": 32, "s": 4} if method == "sgc" else {})
    assert fakes() == before


def test_values_that_decide_sizes_take_the_largest_size():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memft_bench.harness.trial.memory_trace import LiveBytes

    tracker = LiveBytes()
    with FakeTensorMode(), tracker:
        x = torch.empty(10, 3)
        assert x[x > 0].shape == (30,)  # every entry selected: the upper bound
        assert (x > 0).nonzero().shape == (30, 2)
        assert bool((x > 0).any()) is True
    assert tracker.notes


def test_the_trial_batches_are_the_workers():
    from memft_bench.harness.trial.memory_trace import task_batches

    s = suite()
    batches = task_batches(s, 2)
    assert len(batches) == 2
    mb = batches[0].micro_batches[0]
    assert mb["input_ids"].shape[0] == s.budget.micro_batch_size
    assert 0 < batches[0].target_tokens < mb["input_ids"].numel()  # the prompt is not a target


def test_a_kernels_own_copy_of_its_input_is_counted():
    """torch's CPU SVD copies its input for LAPACK inside the kernel (no dispatched operation shows it): the
    trace adds it, and matches the real allocator's peak."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.profiler import ProfilerActivity, profile

    from memft_bench.harness.trial.memory_trace import LiveBytes

    a = torch.randn(256, 688)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.linalg.svd(a, full_matrices=False)
    current = real = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        current += nbytes
        real = max(real, current)
    tracker = LiveBytes()
    with FakeTensorMode(), tracker:
        fake = torch.empty(256, 688)
        tracker.reset_peak()
        torch.linalg.svd(fake, full_matrices=False)
    assert tracker.peak - a.untyped_storage().nbytes() == pytest.approx(real, rel=0.01)


def _adamw_step_peak(params: list[torch.nn.Parameter], foreach: bool | None) -> int:
    """The real CPU allocator's peak over AdamW's second step (the first makes the moments), above what was live."""
    from torch.profiler import ProfilerActivity, profile

    optimizer = torch.optim.AdamW(params, lr=1e-3, foreach=foreach)
    optimizer.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        optimizer.step()
    current = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        current += nbytes
        peak = max(peak, current)
    return peak


def _traced_adamw_step_peak(shapes: list[tuple[int, ...]], optimizers_device: str) -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memft_bench.harness.trial.memory_trace import LiveBytes, optimizer_kernels_as_on

    tracker = LiveBytes()
    with FakeTensorMode(), tracker, optimizer_kernels_as_on(optimizers_device):
        params = [torch.nn.Parameter(torch.empty(shape)) for shape in shapes]
        for p in params:
            p.grad = torch.empty(p.shape)
        optimizer = torch.optim.AdamW(params, lr=1e-3)  # foreach=None: torch's own choice, as every method leaves it
        optimizer.step()
        before = tracker.current
        tracker.reset_peak()
        optimizer.step()
        return tracker.peak - before


def test_the_optimizers_multi_tensor_path_is_traced_as_a_gpu_runs_it():
    """On a GPU torch's AdamW takes its foreach path, which holds a temporary the size of every parameter at once
    (the loop holds a few the size of one); fake tensors alone would take the per-tensor loop. Traced as on
    "cuda", the step's peak is the real foreach step's (run here on the CPU with foreach=True); as on "cpu", the
    real loop's."""
    shapes = [(128, 128)] * 8 + [(300,)]  # many equal weights: foreach's one temporary for all beats the loop's

    def parameters() -> list[torch.nn.Parameter]:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p)
        return params

    real_foreach = _adamw_step_peak(parameters(), foreach=True)
    real_loop = _adamw_step_peak(parameters(), foreach=False)
    assert real_foreach >= 4 * (8 * 128 * 128 + 300) > real_loop  # a temporary of every parameter at once
    assert _traced_adamw_step_peak(shapes, "cuda") == pytest.approx(real_foreach, rel=0.02)
    assert _traced_adamw_step_peak(shapes, "cpu") == pytest.approx(real_loop, rel=0.02)


def test_a_trace_for_a_gpu_trial_follows_the_gpus_optimizer_path():
    """`optimizers_as_on("cuda")` reaches the trace of a whole method: full fine-tuning's one AdamW over every
    weight and SMT's warm-up (the same) peak higher by at most the foreach temporary (4 bytes a weight); MeZO has
    no torch optimizer, unchanged."""
    from memft_bench.harness.core.tensor_bytes import model_bytes
    from memft_bench.harness.trial.memory_trace import optimizers_as_on
    from memft_bench.harness.trial.meta_model import build_meta_model

    s = suite(micro_batch_size=1, cutoff_len=8)  # short: the update, not the activations, sets the peak
    weights = model_bytes(build_meta_model(s.model))
    options = {"full": {}, "smt": {"block_size": 8}, "mezo": {}}
    cpu = {m: predict(s, m, p).peak_bytes for m, p in options.items()}
    with optimizers_as_on("cuda"):
        gpu = {m: predict(s, m, p).peak_bytes for m, p in options.items()}
    for method in ("full", "smt"):
        assert cpu[method] < gpu[method] <= cpu[method] + weights, method
    assert gpu["mezo"] == cpu["mezo"]


def test_a_compiled_optimizer_still_compiles_for_real_after_its_trace():
    """torchao's AdamW8bit compiles its step (fullgraph): on fake tensors the compile fails and the trace says so,
    and the trial's real step in the same process must still compile and run."""
    pytest.importorskip("torchao")
    from memft_bench.harness.core.precision import Precision
    from memft_bench.harness.trial.memory_trace import CannotTrace, synthetic_batches
    from memft_bench.harness.trial.models import build_model, build_tokenizer, causal_lm_loss
    from memft_bench.methods.base import create

    s = suite(micro_batch_size=2, cutoff_len=16)
    batches = synthetic_batches(s, 2, target_tokens=4)
    with contextlib.suppress(CannotTrace):
        predict(s, "ao-adamw8bit", batches=batches)
    model = build_model(s.model, build_tokenizer(s.model), seed=0, device="cpu")
    instance = create("ao-adamw8bit", {}, causal_lm_loss, seed=0, precision=Precision(s.model.precision))
    instance.prepare(model)
    instance.apply_precision()
    for batch in batches:
        instance.step(batch)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_factorisation_holds_a_copy_of_its_input_on_either_device(device):
    """LAPACK and cuSOLVER overwrite the matrix they factorise, so torch's SVD copies its input inside the
    kernel, where no dispatched operation shows it: the peak holds the input, its outputs and that copy."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memft_bench.harness.trial.memory_trace import LiveBytes

    tracker = LiveBytes()
    with FakeTensorMode(), tracker:
        g = torch.empty(256, 128, device=device)
        u, s, vh = torch.linalg.svd(g, full_matrices=False)
        outputs = sum(t.untyped_storage().nbytes() for t in (u, s, vh))
    assert tracker.peak == 2 * 256 * 128 * 4 + outputs
