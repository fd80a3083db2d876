"""Realistic rows to log, and each tracking library kept to the test's own directories (W&B offline, no
network, no MLflow server named by the environment)."""

from __future__ import annotations

import copy
import json

import pytest

from memft_bench.harness.results.rows import empty_row
from tests.commands import REPO_ROOT

BASELINE = REPO_ROOT / "reports/baselines/tiny/results.jsonl"


@pytest.fixture(scope="session")
def tracker_home(tmp_path_factory):
    return tmp_path_factory.mktemp("tracker-home")


@pytest.fixture(scope="module", autouse=True)
def _tracker_environment(tracker_home):
    """Module-wide (before the modules' own module fixtures), undone after each module."""
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("MLFLOW_TRACKING_URI", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_PROJECT",
                         "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_RUN_ID"):
            patch.delenv(variable, raising=False)
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        for variable in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
            patch.setenv(variable, str(tracker_home / variable.lower()))
        patch.setenv("NETRC", str(tracker_home / "no-netrc"))
        yield


def baseline_rows() -> list[dict]:
    return [json.loads(line) for line in BASELINE.read_text(encoding="utf-8").splitlines()]


def sample_rows() -> list[dict]:
    """Rows of every shape a tracker meets: ok rows of the CI baseline (one with SGC's method_metrics and
    method_info), a swept variant with meter notes, a long run whose loss and step-time curves kept every other
    step on two test sets, and a trial that failed after two steps."""
    by_id = {r["trial_id"]: r for r in baseline_rows()}
    full, lora, sgc = (copy.deepcopy(by_id[t]) for t in
                       ("kind/full/seed0/4a71081192", "kind/lora/seed0/a26a598113", "kind/sgc/seed0/bab0198070"))
    variant = copy.deepcopy(lora)
    variant.update(trial_id="kind/lora[r=4]/seed0/0123456789", variant="r=4", method_params={**lora["method_params"],
                   "r": 4}, meter_notes={"nvml": "NVML unavailable: no GPU"}, gradient_checkpointing=True,
                   trainable_params=lora["trainable_params"] // 2)
    long = empty_row(**{k: full[k] for k in ("run_id", "suite", "method", "method_params", "model", "device",
                                              "precision", "dtype", "env", "command", "batch_size")})
    curve = [4.0 / (1 + i) for i in range(225)]
    long.update(trial_id="mix/full/seed1/abcdef0123", task="mix", seed=1, status="ok", steps=450,
                loss_curve=curve, step_time_ms_curve=[30.0 + (i % 7) * 0.125 for i in range(225)],
                loss_first=curve[0], loss_last=0.0123, accuracy=0.625,
                accuracy_per_task={"boolq": 0.5, "ARC-Easy": 0.75}, eval_items={"boolq": 30, "ARC-Easy": 40},
                accuracy_before=0.25, accuracy_per_task_before={"boolq": 0.2, "ARC-Easy": 0.3},
                mem_weights_mb=10.5, mem_grads_mb=10.5, mem_optimizer_mb=21.0, peak_mem_rss_mb=900.25,
                peak_mem_allocated_mb=120.5, peak_mem_nvml_mb=300.0, step_time_ms_median=12.5, step_time_ms_p90=15.0,
                tokens_per_s=12345.6, train_time_s=6.0, eval_time_s=1.5, tokens_seen=3_000_000_000,
                started_at="2026-12-01T10:00:00+00:00", finished_at="2026-12-01T10:05:00+00:00")
    failed = empty_row(**{k: full[k] for k in ("run_id", "suite", "method_params", "model", "device", "precision",
                                                "env", "command")})
    failed.update(trial_id="kind/mezo/seed0/fedcba9876", task="kind", method="mezo", seed=0, status="error",
                  reason="during training: RuntimeError: injected failure", steps=2, loss_curve=[4.1, 4.0],
                  loss_first=4.1, loss_last=4.0, peak_mem_rss_mb=400.0,
                  started_at="2026-12-01T11:00:00+00:00", finished_at="2026-12-01T11:00:09+00:00")
    return [full, sgc, variant, long, failed]
