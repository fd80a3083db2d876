"""The pre-flight: a whole sweep's option problems found at once on the meta device, before any trial
starts, and each trial's memory predicted there equal to what the trial then counts."""

from __future__ import annotations

import subprocess

import pytest
import torch

from memft_bench.harness.core.precision import Precision
from memft_bench.harness.measure.memory import exact_breakdown
from memft_bench.harness.run.preflight import (
    Preflight,
    PreflightError,
    check_variant,
    run_preflight,
)
from memft_bench.harness.spec.config import suite_from_data
from memft_bench.harness.trial.meta_model import CannotBuildOnMeta, build_meta_model
from memft_bench.harness.trial.models import build_model, build_tokenizer, causal_lm_loss
from memft_bench.methods.base import Batch, create
from tests.commands import BENCH_CLI, REPO_ROOT
from tests.conftest import small_suite_data

ROOT = REPO_ROOT

# Options that fit the 32-wide test model; two steps reach every method's end-of-training state (SMT's sparse
# phase, SubZero's subspace, RSO's merge-free inner steps).
OPTIONS = {
    "full": {}, "lora": {"r": 2}, "dora": {"r": 2}, "galore": {"rank": 4}, "mezo": {},
    "subzero": {"rank": 2}, "rso": {"rank": 2, "inner_steps": 5},
    "smt": {"block_size": 16, "warmup_steps": 1, "num_blocks": 3},
}


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH_CLI, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def _suite(precision: str = "fp32"):
    data = small_suite_data()
    data["model"]["precision"] = precision
    return suite_from_data(data, "unit")


def _batch(vocab: int) -> Batch:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (4, 12), generator=generator)
    return Batch([{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}])


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_prediction_on_meta_equals_the_accounting_after_real_steps(method, precision):
    suite = _suite(precision)
    check, problem = check_variant(build_meta_model(suite.model), suite, method, "", OPTIONS[method])
    assert problem is None and check.estimate is not None, check.note

    tokenizer = build_tokenizer(suite.model)
    model = build_model(suite.model, tokenizer, seed=0, device="cpu")
    real = create(method, OPTIONS[method], causal_lm_loss, seed=0, precision=Precision(precision))
    real.prepare(model)
    real.apply_precision()
    for _ in range(2):
        real.step(_batch(len(tokenizer)))
    measured = exact_breakdown(real.model, real.state_elements(), real.state_bytes())
    predicted = check.estimate.columns()
    for column in ("mem_weights_mb", "mem_grads_mb", "mem_optimizer_mb"):
        assert predicted[column] == pytest.approx(measured[column], rel=1e-9, abs=1e-12), column


@pytest.mark.slow  # the CLI end to end in subprocesses: left out of the stacks' fast tests
def test_every_problem_of_a_sweep_is_reported_at_once_and_nothing_starts(tmp_path):
    out = tmp_path / "run"
    result = _bench("run", "--methods", "lora,smt,sgc,full", "--out", str(out),
                    "--set", "lora.target_modules=nonexistent_proj", "--set", "smt.block_size=1000",
                    "--set", "sgc.k=100000")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bench: error: ")]
    assert len(errors) == 3 and "Traceback" not in result.stderr
    assert "lora" in errors[0] and "nonexistent_proj" in errors[0]
    assert "smt" in errors[1] and "block_size" in errors[1]
    assert "sgc" in errors[2] and "k=100000" in errors[2]
    assert not (out / "results.jsonl").exists() and not (out / "logs").exists()


@pytest.mark.slow  # the CLI end to end in subprocesses: left out of the stacks' fast tests
def test_unknown_set_section_is_an_error_and_a_method_not_run_a_warning(tmp_path):
    typo = _bench("run", "--set", "nosuch.x=1", "--out", str(tmp_path / "a"))
    assert typo.returncode == 2 and typo.stderr.count("\n") == 1
    assert "'nosuch' is neither a suite section (model, budget, evaluation) nor a method" in typo.stderr
    assert "lora" in typo.stderr  # the valid names are listed
    not_run = _bench("run", "--dry-run", "--methods", "full", "--set", "lora.r=4", "--out", str(tmp_path / "b"))
    assert not_run.returncode == 0, not_run.stderr
    assert "bench: warning: --set lora.…: lora is not in this run's methods (full)" in not_run.stderr


@pytest.mark.slow  # the CLI end to end in subprocesses: left out of the stacks' fast tests
def test_dry_run_prints_each_trials_memory_and_starts_nothing(tmp_path):
    out = tmp_path / "run"
    result = _bench("run", "--dry-run", "--methods", "full,lora,mezo", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for label in ("| full ", "| lora ", "| mezo ", "MemAvailable on cpu less 340 MiB for the trial's own process",
                  "predicted peak", "6 trials"):
        assert label in result.stdout
    assert "Nothing was started" in result.stdout
    assert not (out / "results.jsonl").exists()


def test_a_trial_that_cannot_fit_is_an_oom_row_that_never_started(tmp_path, monkeypatch):
    from memft_bench.harness.run import planning, preflight, runner

    monkeypatch.setattr(preflight, "free_memory_bytes", lambda device: 1024)  # 1 KiB free
    suite = _suite()
    plan = planning.plan(suite, ["full", "lora"], tmp_path, "cpu")
    checked = run_preflight(plan, plan.variants)
    refusals = {key: reason for key in checked.checks if (reason := checked.refusal(*key))}
    assert set(refusals) == {("full", ""), ("lora", "")}
    rows = runner.run(plan, progress=False, refusals=refusals, echo=lambda line: None)
    assert [r["status"] for r in rows] == ["oom", "oom"]
    assert "pre-flight: predicted" in rows[0]["reason"] and "free on cpu" in rows[0]["reason"]
    assert not list((tmp_path / "logs").glob("*.log"))  # no trial process was started


def test_a_model_that_cannot_be_built_on_meta_skips_the_preflight_with_a_note(tmp_path, monkeypatch):
    from memft_bench.harness.run import planning, preflight

    def cannot(spec):
        raise CannotBuildOnMeta("custom architecture")

    monkeypatch.setattr(preflight, "build_meta_model", cannot)
    plan = planning.plan(_suite(), ["full"], tmp_path, "cpu")
    checked = run_preflight(plan, plan.variants)
    assert checked.checks == {} and "pre-flight skipped" in checked.notes[0]


def test_a_method_whose_code_cannot_run_on_meta_gets_a_note_not_a_problem(monkeypatch):
    from memft_bench.methods.full import FullFineTuning

    suite = _suite()
    check, problem = check_variant(build_meta_model(suite.model), suite, "full", "", {"rank": 3})
    assert problem is not None and "unknown option 'rank'" in problem  # a wrong option is a problem

    def needs_values(self, model):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(FullFineTuning, "prepare", needs_values)
    check, problem = check_variant(build_meta_model(suite.model), suite, "full", "", {})
    assert problem is None and check.estimate is None and "not checked on the meta device" in check.note


def test_preflight_error_lists_every_problem():
    error = PreflightError(["a: one", "b: two"])
    assert error.problems == ["a: one", "b: two"] and str(error) == "a: one\nb: two"
    assert Preflight({}, None, "cpu").refusal("full", "") is None


@pytest.mark.parametrize(("statuses", "strict", "expected"), [
    (["ok", "ok"], False, 0), (["ok", "oom", "timeout", "diverged"], False, 0), (["ok", "oom"], True, 1),
    (["ok", "error"], False, 1), (["oom", "oom"], False, 1), ([], False, 1),
])
def test_exit_status_says_what_happened(statuses, strict, expected):
    from memft_bench.harness.cli import run_exit_status

    assert run_exit_status([{"status": s} for s in statuses], strict) == expected


def test_dry_run_footnote_names_the_batch_shape_each_variant_was_traced_at(tmp_path):
    """A budget sweep gives its variants their own shapes: the footnote must not state the suite's as theirs."""
    from memft_bench.harness.run import planning
    from memft_bench.harness.run.preflight import render_estimates

    plain = planning.plan(_suite(), ["lora"], tmp_path / "a", "cpu")
    text = render_estimates(run_preflight(plain, plain.variants), plain)
    assert "full batch shape (4 x 96 tokens, every token a target)" in text
    data = small_suite_data()
    data["sweeps"] = {"budget": {"cutoff_len": [32, 64]}}
    swept = planning.plan(suite_from_data(data, "unit"), ["lora"], tmp_path / "b", "cpu")
    text = render_estimates(run_preflight(swept, swept.variants), swept)
    assert "full batch shape (each variant's own, its swept setting in its label; the suite's is 4 x 96" in text


def test_the_free_memory_a_trial_has_leaves_out_its_own_process(monkeypatch):
    """A trial's process holds Python, torch and the libraries before its first tensor (a GPU trial: its CUDA
    context); the prediction counts tensors only, so the free figure it is compared with leaves those out."""
    import psutil

    from memft_bench.harness.run import preflight
    from memft_bench.harness.spec.memory_sizes import CPU_TRIAL_PROCESS_BYTES

    class Memory:
        available = 8 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    assert preflight.free_memory_bytes("cpu") == 8 * 2**30 - CPU_TRIAL_PROCESS_BYTES
    Memory.available = 2**20
    assert preflight.free_memory_bytes("cpu") == 0
    assert "340 MiB for the trial's own process" in preflight.free_label("cpu")


def test_the_dry_run_says_checkpointing_does_not_apply_to_a_forward_only_method(tmp_path):
    from memft_bench.harness.run import planning
    from memft_bench.harness.run.preflight import render_estimates

    data = small_suite_data()
    data["budget"]["gradient_checkpointing"] = True
    run_plan = planning.plan(suite_from_data(data, "unit"), ["lora", "mezo"], tmp_path, "cpu")
    text = render_estimates(run_preflight(run_plan, run_plan.variants), run_plan)
    assert "| mezo (checkpointing does not apply: forward passes only) " in text
    assert "| lora " in text and "lora (checkpointing" not in text


def test_trials_running_at_once_on_a_cpu_each_pay_their_own_process():
    from memft_bench.harness.run.preflight import free_per_cpu_trial
    from memft_bench.harness.spec.memory_sizes import CPU_TRIAL_PROCESS_BYTES as own

    available = 8 * 2**30
    assert free_per_cpu_trial(available - own, 1) == available - own
    assert free_per_cpu_trial(available - own, 4) == available // 4 - own
    assert free_per_cpu_trial(0, 2) == 0
