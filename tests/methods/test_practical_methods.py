"""The methods practitioners reach for first (methods/quantized_adamw.py, apollo_adamw.py, adam_mini_opt.py,
adafactor.py, block_adam.py, lomo_fused.py, lisa.py, peft_tuners.py).

Faithful wiring: a few steps of our method equal the package's optimizer driven directly on a copy of the
same model and batches (the harness adds nothing and drops nothing). Exact accounting: quantised state at
the byte sizes computed here from the packages' documented layouts, and the shape-only predictions equal to
what a real step leaves. Behaviour of what is written here: LISA's layer draws and dropped state, the
generic peft method against `get_peft_model`. Missing packages: one line, listed with how to install.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from memft_bench.harness.core.errors import ConfigError
from memft_bench.harness.spec.config import suite_from_data
from memft_bench.harness.trial.data import encode_example, load_task, training_batches
from memft_bench.harness.trial.models import build_model, build_tokenizer, causal_lm_loss
from memft_bench.methods.base import build_options, create
from tests.conftest import small_suite_data

LR = 1e-2
STEPS = 3


@pytest.fixture(scope="module")
def wide():
    """A 2-layer width-64 Llama (q/o/MLP weights >= 4096 entries, so 8/4-bit state is quantised) and batches."""
    data = small_suite_data()
    data["model"].update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    suite = suite_from_data(data, "test")
    tokenizer = build_tokenizer(suite.model)
    model = build_model(suite.model, tokenizer, seed=0, device="cpu")
    task = load_task(suite.tasks[0], suite)
    examples = [encode_example(tokenizer, r, 64) for r in task.train[:16]]
    batches = training_batches(examples, 4, 1, 0, tokenizer.pad_token_id, "cpu")
    return model, [next(batches) for _ in range(STEPS + 1)]


def _run_ours(name, options, model, batches):
    method = create(name, options, causal_lm_loss, seed=0)
    method.prepare(model)
    method.apply_precision()
    for batch in batches[:STEPS]:
        method.step(batch)
    return method


def _run_reference(model, batches, make_optimizer, fused=False):
    """Drive the package's optimizer the way its own examples do: mean loss, backward, step, zero_grad."""
    optimizer = make_optimizer(model)
    for batch in batches[:STEPS]:
        total = max(batch.target_tokens, 1)
        for mb in batch.micro_batches:
            loss_sum, _ = causal_lm_loss(model, mb)
            if fused:
                optimizer.fused_backward(loss_sum / total, LR)
            else:
                (loss_sum / total).backward()
        if not fused:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return optimizer


def _adam_args():
    return {"lr": LR, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}


def _bnb(paged):
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit
    return lambda m: cls(m.parameters(), **_adam_args())


def _ao(bits):
    import torchao.optim

    cls = torchao.optim.AdamW8bit if bits == 8 else torchao.optim.AdamW4bit
    return lambda m: cls(m.parameters(), **_adam_args())


TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _apollo(rank, scale_type, scale):
    def make(m):
        from apollo_torch import APOLLOAdamW

        low = [p for n, p in m.named_parameters() if p.dim() == 2 and n.split(".")[-2] in TARGETS]
        rest = [p for n, p in m.named_parameters() if not (p.dim() == 2 and n.split(".")[-2] in TARGETS)]
        return APOLLOAdamW([{"params": rest}, {"params": low, "rank": rank, "proj": "random", "scale_type": scale_type,
                                               "scale": scale, "update_proj_gap": 200, "proj_type": "std"}],
                           lr=LR, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    return make


def _adam_mini(m):
    from adam_mini import Adam_mini

    return Adam_mini(named_parameters=m.named_parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                     dim=64, n_heads=4, n_kv_heads=2, verbose=False)


def _badam(m):
    from badam import BlockOptimizer

    named = list(m.named_parameters())
    base = torch.optim.AdamW([p for _, p in named], **_adam_args())
    return BlockOptimizer(base_optimizer=base, named_parameters_list=named, switch_block_every=2,
                          switch_mode="descending", verbose=0)


def _lomo(m):
    from lomo_optim import Lomo

    return Lomo(m, lr=LR)


WIRING = {  # name -> (our options, the package's optimizer built directly, fused backward)
    "adamw8bit": ({"lr": LR}, _bnb(False), False),
    "paged-adamw8bit": ({"lr": LR}, _bnb(True), False),
    "ao-adamw8bit": ({"lr": LR}, _ao(8), False),
    "ao-adamw4bit": ({"lr": LR}, _ao(4), False),
    "apollo": ({"lr": LR, "rank": 4}, _apollo(4, "channel", 1.0), False),
    "apollo-mini": ({"lr": LR}, _apollo(1, "tensor", 128.0), False),
    "adam-mini": ({"lr": LR}, _adam_mini, False),
    "adafactor": ({"lr": LR}, lambda m: torch.optim.Adafactor(m.parameters(), lr=LR), False),
    "badam": ({"lr": LR, "switch_every": 2}, _badam, False),
    "lomo": ({"lr": LR}, _lomo, True),
}


@pytest.mark.parametrize("name", sorted(WIRING))
def test_update_equals_the_package_optimizer_called_directly(name, wide):
    base, batches = wide
    options, make_reference, fused = WIRING[name]
    ours_model, reference_model = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(0)
    _run_ours(name, options, ours_model, batches)
    torch.manual_seed(0)  # BAdam's random order and any package randomness draw the same numbers
    _run_reference(reference_model, batches, make_reference, fused)
    changed = 0
    for (n, ours), (_, ref), (_, before) in zip(ours_model.named_parameters(), reference_model.named_parameters(),
                                                base.named_parameters()):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0, msg=f"{name}: {n}")
        changed += int(not torch.equal(ours, before))
    assert changed, "the update moved no weight"


def test_lomo_is_sgd_applied_during_backward(wide):
    """Independent of the package: LOMO's steps are plain SGD's."""
    base, batches = wide
    ours_model, sgd_model = copy.deepcopy(base), copy.deepcopy(base)
    _run_ours("lomo", {"lr": LR}, ours_model, batches)
    _run_reference(sgd_model, batches, lambda m: torch.optim.SGD(m.parameters(), lr=LR))
    for ours, ref in zip(ours_model.parameters(), sgd_model.parameters()):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


# -- exact accounting ----------------------------------------------------------------------------------
def _bnb_moment_bytes(params, min_size=4096):
    """bitsandbytes' blockwise 8-bit layout: uint8 codes + a float32 absmax per 256 entries, and one
    256-entry float32 quantisation map per moment shared by all weights (made with the optimizer); small
    weights float32."""
    quantised = [p.numel() for p in params if p.numel() >= min_size]
    small = [p.numel() for p in params if p.numel() < min_size]
    return sum(n + 4 * math.ceil(n / 256) for n in quantised) + 4 * sum(small) + 4 * 256


def _ao_moment_bytes(params, bits):
    block = 256 if bits == 8 else 128
    total = 0
    for p in params:
        n = p.numel()
        if n >= 4096 and n % block == 0:
            total += n * bits // 8 + 4 * (n // block) + 4 * 2**bits
        else:
            total += 4 * n
    return total


@pytest.mark.parametrize("name", ["adamw8bit", "paged-adamw8bit", "ao-adamw8bit", "ao-adamw4bit"])
def test_low_bit_state_counted_at_real_byte_sizes_with_scales(name, wide):
    base, batches = wide
    model = copy.deepcopy(base)
    method = _run_ours(name, {"lr": LR}, model, batches)
    params = list(model.parameters())
    expected = _bnb_moment_bytes(params) if "ao" not in name else _ao_moment_bytes(params, 8 if "8" in name else 4)
    state = method.state_bytes()
    assert state["exp_avg"] == state["exp_avg_sq"] == expected
    fp32_state = 4 * sum(p.numel() for p in params)
    block = 256 if "8bit" in name else 128
    quantised = [p for p in params if p.numel() >= 4096 and ("ao" not in name or p.numel() % block == 0)]
    assert quantised, "the test model must have weights large enough to quantise"
    # the quantised weights' moments: a quarter (8-bit) or an eighth (4-bit) of float32, plus scales and maps
    big = sum(p.numel() for p in quantised)
    bits = 4 if "4bit" in name else 8
    assert big * bits / 8 < state["exp_avg"] - 4 * (sum(p.numel() for p in params) - big) < big * (bits / 8 + 0.2)
    assert state["exp_avg"] < fp32_state
    assert method.predicted_state_bytes() == state
    if name == "paged-adamw8bit":
        assert method.info()["paged"] is False  # bitsandbytes pages only on CUDA: the row says so


@pytest.mark.parametrize("name,options", [
    ("apollo", {"rank": 4}), ("apollo-mini", {}), ("adam-mini", {}), ("adafactor", {}), ("lisa", {"gamma": 1}),
    ("badam", {"switch_every": 100}),
])
def test_predicted_state_bytes_equal_a_real_step(name, options, wide):
    base, batches = wide
    method = _run_ours(name, options, copy.deepcopy(base), batches)
    assert method.predicted_state_bytes() == method.state_bytes()


def test_apollo_state_is_low_rank_moments_plus_projection(wide):
    base, batches = wide
    method = _run_ours("apollo", {"rank": 4}, copy.deepcopy(base), batches)
    q = method.model.model.layers[0].self_attn.q_proj.weight  # 64 x 64: moments 64 x 4, projection 4 x 64
    state = method.optimizer.state[q]
    assert state["exp_avg"].shape == (64, 4) and state["projector"].ortho_matrix.shape == (4, 64)


# -- LOMO and AdaLomo ----------------------------------------------------------------------------------
def test_lomo_gradient_peak_is_two_weights_in_backward_order(wide):
    """Independently of the method's hook: record the order gradients arrive in; LOMO holds the previous
    weight's gradient until the next one arrives, so the peak is the largest adjacent pair."""
    base, batches = wide
    model = copy.deepcopy(base)
    order: list[int] = []
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: order.append(p.numel() * p.element_size()))
    method = _run_ours("lomo", {"lr": LR}, model, batches[:1])
    arrivals = order[: len(list(model.parameters()))]
    expected = max([arrivals[0]] + [a + b for a, b in zip(arrivals, arrivals[1:])])
    assert method.state_bytes()["gradients"] == expected
    assert expected < sum(p.numel() * p.element_size() for p in model.parameters()) / 2
    assert all(p.grad is None for p in model.parameters())
    assert method.predicted_state_bytes()["gradients"] >= expected  # an upper bound from shapes


def test_lomo_refuses_gradient_accumulation(wide):
    base, _ = wide
    model = copy.deepcopy(base)
    method = create("lomo", {}, causal_lm_loss)
    method.prepare(model)
    from memft_bench.methods.base import Batch

    batch = Batch(micro_batches=[{}, {}])
    with pytest.raises(ConfigError, match="grad_accum: 1"):
        method.step(batch)


def test_adalomo_on_a_cpu_is_one_line(wide):
    base, _ = wide
    method = create("adalomo", {}, causal_lm_loss)
    with pytest.raises(ConfigError) as info:
        method.prepare(copy.deepcopy(base))
    assert "CUDA" in str(info.value) and "\n" not in str(info.value)


# -- BAdam -----------------------------------------------------------------------------------------------
def test_badam_trains_one_block_and_drops_the_state_it_leaves(wide):
    base, batches = wide
    method = create("badam", {"lr": LR, "switch_every": 2}, causal_lm_loss)
    method.prepare(copy.deepcopy(base))
    layers = method.model.model.layers
    assert all(p.requires_grad for p in layers[1].parameters())  # descending: the last layer first
    assert not any(p.requires_grad for p in layers[0].parameters())
    method.step(batches[0])  # the package switches after its step when (steps + 1) % K == 0: after step 1
    assert not method.optimizer.base_optimizer.state  # layer 1's state dropped with the switch
    method.step(batches[1])
    trainable = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.layers.0.{n}" for n, _ in layers[0].named_parameters()}
    state = method.optimizer.base_optimizer.state
    assert len(state) == len(trainable)  # only the active block's Adam state
    masters = method.trained_parameters()
    assert all(p.dtype == torch.float32 for p in masters) and len(masters) == len(trainable)


def test_badam_gradient_peak_while_converting_to_float32():
    from memft_bench.methods.block_adam import conversion_peak

    a, b = torch.zeros(10, dtype=torch.bfloat16), torch.zeros(6, dtype=torch.bfloat16)
    # start: 20 + 12 bytes; converting a: 40 + 20 + 12; converting b: 40 + 24 + 12
    assert conversion_peak([a, b]) == 76
    assert conversion_peak([torch.zeros(10), torch.zeros(6)]) == 64  # float32: the same tensors


# -- Adam-mini's grouping ------------------------------------------------------------------------------
def test_adam_mini_refuses_a_weight_it_does_not_recognise(wide):
    base, _ = wide
    model = copy.deepcopy(base)
    model.model.layers[0].mlp.extra = torch.nn.Linear(64, 64, bias=False)
    model.model.layers[0].mlp_renamed = model.model.layers[0].mlp  # an alias does not hide the name below
    odd = torch.nn.Module()
    odd.weight = torch.nn.Parameter(torch.zeros(8, 8))
    model.model.layers[0].odd_block = odd
    with pytest.raises(ConfigError, match="odd_block"):
        create("adam-mini", {}, causal_lm_loss).prepare(model)


def test_adam_mini_keeps_one_second_moment_per_head_and_neuron(wide):
    base, batches = wide
    method = _run_ours("adam-mini", {}, copy.deepcopy(base), batches[:1])
    layer = method.model.model.layers[0]
    state = method.optimizer.state
    assert state[layer.self_attn.q_proj.weight]["vmean"].numel() == 4  # heads
    assert state[layer.self_attn.k_proj.weight]["vmean"].numel() == 2  # key-value heads
    assert state[layer.mlp.up_proj.weight]["vmean"].numel() == 128  # output neurons


# -- LISA ----------------------------------------------------------------------------------------------
def test_lisa_trains_gamma_drawn_layers_plus_embeddings_and_head_and_drops_frozen_state(wide):
    data = small_suite_data()
    data["model"].update(num_hidden_layers=4)
    suite = suite_from_data(data, "test")
    tokenizer = build_tokenizer(suite.model)
    model = build_model(suite.model, tokenizer, seed=0, device="cpu")
    task = load_task(suite.tasks[0], suite)
    batches = training_batches([encode_example(tokenizer, r, 64) for r in task.train[:16]], 4, 1, 0,
                               tokenizer.pad_token_id, "cpu")
    method = create("lisa", {"gamma": 2, "interval": 2, "lr": LR}, causal_lm_loss, seed=3)
    method.prepare(model)
    layers = model.model.layers
    seen_active = []
    for step in range(6):
        method.step(next(batches))
        active = [i for i, layer in enumerate(layers) if all(p.requires_grad for p in layer.parameters())]
        frozen = [i for i, layer in enumerate(layers) if not any(p.requires_grad for p in layer.parameters())]
        assert len(active) == 2 and len(frozen) == 2, step
        assert active == method.active
        assert model.model.embed_tokens.weight.requires_grad and model.lm_head.weight.requires_grad
        # the optimizer holds state for exactly the trainable weights: frozen layers' state is dropped
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert {id(p) for p in method.optimizer.state} == trainable, step
        seen_active.append(tuple(active))
    assert seen_active[0] == seen_active[1] and seen_active[2] == seen_active[3]  # redrawn every 2 steps only
    assert len(method.history) == 3
    again = create("lisa", {"gamma": 2, "interval": 2}, causal_lm_loss, seed=3)
    again.prepare(copy.deepcopy(model))
    assert again.history[0] == method.history[0]  # the trial's seed fixes the draws


def test_lisa_gamma_larger_than_the_model_is_refused(wide):
    base, _ = wide
    with pytest.raises(ConfigError, match="gamma"):
        create("lisa", {"gamma": 3}, causal_lm_loss).prepare(copy.deepcopy(base))


# -- the generic peft method ---------------------------------------------------------------------------
@pytest.mark.parametrize("peft_type,tuner_options", [
    ("VERA", ["r=4"]), ("LOHA", ["r=4"]), ("LOKR", ["r=4"]), ("IA3", []),
    ("LORA", ["r=4", "init_lora_weights=pissa"]),
])
def test_peft_model_equals_get_peft_model_with_that_config(peft_type, tuner_options, wide):
    from peft import get_peft_model

    from memft_bench.methods.peft_tuners import peft_config

    base, batches = wide
    torch.manual_seed(0)
    method = create("peft", {"peft_type": peft_type, "tuner_options": tuner_options}, causal_lm_loss)
    method.prepare(copy.deepcopy(base))
    torch.manual_seed(0)
    config = peft_config(method.options, "test")
    direct = get_peft_model(copy.deepcopy(base), config)
    ours = dict(method.model.named_parameters())
    theirs = dict(direct.named_parameters())
    assert ours.keys() == theirs.keys()
    for n in ours:
        assert ours[n].requires_grad == theirs[n].requires_grad, n
        torch.testing.assert_close(ours[n], theirs[n], rtol=0, atol=0, msg=n)
    assert type(config).__name__.upper().startswith(peft_type[:3])
    method.step(batches[0])  # and it trains


@pytest.mark.parametrize("peft_type", ["VERA", "LOHA", "LOKR", "IA3", "ADALORA", "BOFT", "OFT", "HRA",
                                       "LN_TUNING", "RANDLORA"])
def test_peft_tuners_claimed_to_start_at_the_base_function_do(peft_type, wide):
    from memft_bench.methods.peft_tuners import IDENTITY_AT_INIT

    assert peft_type in IDENTITY_AT_INIT
    base, batches = wide
    model = copy.deepcopy(base).eval()
    mb = batches[0].micro_batches[0]
    with torch.no_grad():
        before = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
    options = {"peft_type": peft_type, "tuner_options": ["r=4"] if peft_type in ("RANDLORA",) else []}
    method = create("peft", options, causal_lm_loss)
    method.total_steps = 10
    method.prepare(model)
    assert method.keeps_base_function
    method.model.eval()
    with torch.no_grad():
        after = method.model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_adalora_gets_the_budget_and_its_allocation_hook_every_step(wide, monkeypatch):
    base, batches = wide
    method = create("peft", {"peft_type": "ADALORA"}, causal_lm_loss)
    method.total_steps = 7
    method.prepare(copy.deepcopy(base))
    assert method.config.total_step == 7
    calls = []
    original = method.model.base_model.update_and_allocate

    def spy(step):
        calls.append((step, any(p.grad is not None for p in method.model.parameters() if p.requires_grad)))
        return original(step)

    monkeypatch.setattr(method.model.base_model, "update_and_allocate", spy)
    for batch in batches[:2]:
        method.step(batch)
    assert calls == [(0, True), (1, True)]  # with the gradients still there


@pytest.mark.parametrize("options,match", [
    ({"peft_type": "PREFIX_TUNING"}, "prompt learning"),
    ({"peft_type": "XLORA"}, "X-LoRA"),
    ({"peft_type": "POLY"}, "task id"),
    ({"peft_type": "NOPE"}, "unknown tuner"),
    ({"peft_type": "VERA", "tuner_options": ["no_such_field=1"]}, "tuner_options"),
    ({"peft_type": "VERA", "tuner_options": ["r4"]}, "KEY=VALUE"),
])
def test_peft_bad_choices_are_one_line(options, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_options("peft", options, "methods.peft")
    assert "\n" not in str(info.value)


def test_peft_tuner_options_parse_yaml_values():
    options = build_options("peft", {"peft_type": "lora", "tuner_options": "r=4,lora_dropout=0.1,use_rslora=true"},
                            "methods.peft")
    assert options.peft_type == "LORA"
    assert options.tuner_fields() == {"r": 4, "lora_dropout": 0.1, "use_rslora": True}


# -- optional packages ---------------------------------------------------------------------------------
def _hide(monkeypatch, module):
    import importlib.util

    real = importlib.util.find_spec
    def find_spec(name, *args, **kwargs):
        return None if name == module else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("name,module", [("adamw8bit", "bitsandbytes"), ("ao-adamw4bit", "torchao"),
                                         ("apollo", "apollo_torch"), ("badam", "badam"), ("adam-mini", "adam_mini"),
                                         ("lomo", "lomo_optim"), ("galore", "galore_torch")])
def test_a_missing_package_is_refused_in_one_line_and_listed_with_how_to_install(name, module, monkeypatch):
    from memft_bench.methods.package_check import install_note

    _hide(monkeypatch, module)
    with pytest.raises(ConfigError) as info:
        build_options(name, {}, f"methods.{name}")
    message = str(info.value)
    extra = "galore" if name == "galore" else "methods"  # the smallest extra that installs it, at the lock's version
    assert "\n" not in message and f'pip install -c requirements-lock.txt -e ".[{extra}]"' in message
    assert "not installed" in install_note(name)


def test_bench_run_with_a_missing_package_exits_2_before_training(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from memft_bench.harness.cli import main

    _hide(monkeypatch, "bitsandbytes")
    result = CliRunner().invoke(main, ["run", "--methods", "adamw8bit", "--steps", "1", "--out", str(tmp_path / "r"),
                                       "--quiet", "--no-report"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "bitsandbytes" in lines[0]
    assert not (tmp_path / "r" / "results.jsonl").exists()


def test_apollo_licence_is_shown_in_the_listing():
    from memft_bench.methods.package_check import install_note

    assert "non-commercial" in install_note("apollo") and "non-commercial" in install_note("apollo-mini")
