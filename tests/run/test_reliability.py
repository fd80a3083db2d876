"""Faults caused for real: each becomes one row with its status and reason, and the sweep goes on;
interrupted sweeps leave valid results and resume to exactly one row per trial."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memft_bench.harness.core.errors import BenchError, ConfigError
from memft_bench.harness.results.rows import read_rows
from memft_bench.harness.run.runner import run_lock
from memft_bench.harness.spec.config import apply_overrides, suite_from_data
from tests.commands import BENCH_CLI, REPO_ROOT, TRIAL_MODULE
from tests.conftest import small_suite_data

ROOT = REPO_ROOT


def _suite_file(tmp_path: Path, steps: int = 3) -> Path:
    suite = small_suite_data(steps=steps)
    suite["tasks"][0]["test_size"] = 4
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    return path


def _bench(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH_CLI, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, **kwargs)


def _rows(out: Path) -> dict[str, dict]:
    return {r["method"]: r for r in read_rows(out / "results.jsonl")}


@pytest.mark.slow  # the CLI end to end in subprocesses: left out of the stacks' fast tests
def test_every_fault_becomes_a_row_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "run"
    methods = "fault-raise,fault-nan,fault-hang,fault-sigkill,fault-oom,full"
    result = _bench("run", "--suite", str(_suite_file(tmp_path)), "--methods", methods, "--plugin", "tests.faults",
                    "--out", str(out), "--trial-timeout", "20", "--quiet")
    assert result.returncode == 1, result.stderr  # `error` rows: a trial hit an error
    rows = _rows(out)
    assert rows["fault-raise"]["status"] == "error" and "injected failure in step" in rows["fault-raise"]["reason"]
    assert rows["fault-nan"]["status"] == "diverged" and "step 1" in rows["fault-nan"]["reason"]
    assert rows["fault-nan"]["steps"] == 2
    assert rows["fault-hang"]["status"] == "timeout" and "20" in rows["fault-hang"]["reason"]
    assert rows["fault-sigkill"]["status"] == "error" and "SIGKILL" in rows["fault-sigkill"]["reason"]
    assert rows["fault-oom"]["status"] == "oom"
    assert rows["full"]["status"] == "ok" and rows["full"]["accuracy"] is not None
    assert "Traceback" in (out / "logs" / "kind__fault-raise__seed0.log").read_text()  # the whole story is in the log
    strict = _bench("run", "--suite", str(_suite_file(tmp_path)), "--methods", methods, "--plugin", "tests.faults",
                    "--out", str(out), "--quiet", "--strict")
    assert strict.returncode == 1 and "6 of 6 trials already recorded" in strict.stdout


@pytest.mark.slow  # the CLI end to end in subprocesses
def test_a_trial_the_kernel_kills_keeps_its_prediction_and_says_how_far_off_it_was(tmp_path):
    """The kernel's out-of-memory killer leaves no row: the runner's row carries the prediction the trial wrote as
    training started, and the resident set it last sampled against it."""
    out = tmp_path / "run"
    result = _bench("run", "--suite", str(_suite_file(tmp_path)), "--methods", "fault-balloon", "--plugin",
                    "tests.faults", "--out", str(out), "--device", "cpu", "--quiet")
    assert result.returncode == 1, result.stderr
    row = _rows(out)["fault-balloon"]
    assert row["status"] == "error" and "SIGKILL" in row["reason"]
    assert row["mem_predicted_peak_mb"] is not None and row["mem_predicted_peak_mb"] > 0
    predicted, needed = (float(x) for x in re.search(r"predicted training peak (\d+) MiB, at least (\d+) MiB needed",
                                                     row["reason"]).groups())
    assert needed >= 256 > predicted and "the prediction was at least" in row["reason"]


def test_a_sigkill_near_the_memory_limit_is_an_out_of_memory_row():
    from memft_bench.harness.run.trial_process import killed_reason

    mib = 2**20
    started = {"mem_predicted_peak_mb": 1000.0, "cpu_idle_non_tensor_mb": 500.0}
    status, reason = killed_reason(3500 * mib, 4000 * mib, started)
    assert status == "oom" and "out-of-memory killer" in reason and "3500 MiB of the 4000 MiB allowed" in reason
    assert reason.endswith("predicted training peak 1000 MiB, at least 3000 MiB needed when last sampled: the "
                           "prediction was at least 2000 MiB (67 %) short")
    status, reason = killed_reason(1000 * mib, 4000 * mib, started)  # far from the limit: someone else's SIGKILL
    assert status == "error" and "if nobody sent it" in reason and "short" not in reason
    assert killed_reason(0, None, None) == ("error", "trial process killed by SIGKILL (if nobody sent it, the "
                                                     "kernel's out-of-memory killer)")


def _start_sweep(tmp_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*BENCH_CLI, "run", "--suite", str(_suite_file(tmp_path, steps=4)),
         "--methods", "full,fault-slow,lora", "--plugin", "tests.faults", "--out", str(out), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_rows(out: Path, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "results.jsonl").exists() and len(read_rows(out / "results.jsonl")) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} rows within {timeout}s")


def _trial_processes(out: Path) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if TRIAL_MODULE in line and str(out) in line]


@pytest.mark.slow  # the CLI end to end in subprocesses: left out of the stacks' fast tests
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_sweep_resumes_to_one_row_per_trial(tmp_path, sig):
    out = tmp_path / "run"
    sweep = _start_sweep(tmp_path, out)
    _wait_for_rows(out, 1)
    time.sleep(1.0)  # the slow trial is in flight
    sweep.send_signal(sig)
    _, stderr = sweep.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert sweep.returncode == 130 and "run the same command again to resume" in stderr
    time.sleep(1.0)
    assert _trial_processes(out) == []  # no orphan trial keeps running
    assert len(read_rows(out / "results.jsonl")) == 1
    resumed = subprocess.run(sweep.args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 of 3 trials already recorded" in resumed.stdout
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len({json.loads(line)["trial_id"] for line in lines}) == 3


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    with run_lock(tmp_path):
        code = (f"from pathlib import Path\nfrom memft_bench.harness.run.runner import run_lock\n"
                f"with run_lock(Path({str(tmp_path)!r})): pass")
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode != 0 and "another `bench run` is writing to" in other.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "full.lr=-1"], "methods.full.lr: must be >= 0"),
        (["--set", "lora.r=0"], "methods.lora.r: must be >= 1"),
        (["--set", "sgc.s=5000"], "methods.sgc.s: must be smaller than k"),
        (["--set", "budget.steps=ten"], "budget.steps"),
        (["--set", "model.precision=float8"], "model.precision: must be one of fp32, bf16-mixed, bf16"),
        (["--set", "model.precision=fp16"], "model.precision: fp16 is not supported: float16 needs loss scaling"),
        (["--set", "model.dtype=bfloat16"], "unknown option 'dtype'"),
        (["--model", "../../etc/passwd"], "model.path"),
        (["--trial-timeout", "-3"], "--trial-timeout"),
        (["--plugin", "no_such_module_xyz"], "--plugin no_such_module_xyz: cannot import it"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_input_is_refused_before_training(tmp_path, args, fragment):
    result = _bench("run", "--out", str(tmp_path / "r"), *args)
    assert result.returncode == 2, result
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r" / "results.jsonl").exists()


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                       max_leaves=12)
SECTIONS = st.sampled_from(["model", "budget", "evaluation", "tasks", "seeds", "methods", "name", "bogus"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(SECTIONS, JSONISH, max_size=6))
def test_random_suite_data_only_ever_raises_config_error(data):
    with contextlib.suppress(ConfigError):
        suite_from_data(data, "random.yaml")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=3))
def test_random_overrides_only_ever_raise_config_error(overrides):
    suite = suite_from_data(small_suite_data(), "s")
    with contextlib.suppress(BenchError):
        apply_overrides(suite, overrides)


def test_model_loading_stays_safe():
    """No trust_remote_code unless asked, weights as safetensors only: checked in the source itself."""
    source = (ROOT / "harness" / "trial" / "models.py").read_text()
    assert "trust_remote_code=spec.trust_remote_code" in source and "use_safetensors=True" in source
    assert suite_from_data(small_suite_data(), "s").model.trust_remote_code is False
    for path in [p for d in ("harness", "methods", "kernels") for p in (ROOT / d).glob("**/*.py")]:
        text = path.read_text()
        assert "yaml.load(" not in text and "torch.load(" not in text.replace("weights_only=True", ""), path
    assert os.environ.get("BENCH_CACHE_DIR")  # tests never write into the user's cache
