""".ci/gpu's judging and planning, .ci/gpu-prepare, and the fixes the first GPU lease needs, on a CPU machine:
the scripts are loaded as modules and judged against stand-in rows, fake arguments and a stand-in pynvml."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from memft_bench.harness.measure import env as env_module
from memft_bench.harness.measure.memory import NvmlSampler
from tests.commands import REPO_ROOT
from tests.measure.test_nvml import fake_gpus, two_gpus  # noqa: F401  (fake_gpus is a fixture)

ROOT = REPO_ROOT


def load(name: str, path: Path):
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ci():
    return load("ci_gpu", ROOT / ".ci" / "gpu")


@pytest.fixture(scope="module")
def prepare():
    return load("ci_gpu_prepare", ROOT / ".ci" / "gpu-prepare")


@pytest.fixture
def acceptance(ci, tmp_path, monkeypatch):
    """An Acceptance of `.ci/gpu --device cuda` on this GPU-less machine (nvidia-smi finds nothing)."""
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)

    def make(*argv: str):
        return ci.Acceptance(ci.parse_args(["--out", str(tmp_path / "out"), *argv]))

    return make


def row(method: str, status: str = "ok", backend: str | None = None, reason: str | None = None, **params) -> dict:
    return {"method": method, "status": status, "method_info": {"omp_backend": backend, "omp_fallback_reason": reason},
            "method_params": params}


# 1. benchmarks/omp_ratio.py --device cuda: torch.cuda.set_device needs an indexed device


def test_omp_ratio_resolves_a_bare_cuda_to_the_current_indexed_gpu():
    omp_ratio = load("omp_ratio", ROOT / "benchmarks" / "omp_ratio.py")
    assert omp_ratio.resolve_device("cuda", lambda: 2) == torch.device("cuda", 2)
    assert omp_ratio.resolve_device("cuda:1", lambda: 0) == torch.device("cuda", 1)
    assert omp_ratio.resolve_device("cpu").type == "cpu"
    assert omp_ratio.resolve_device("cuda", lambda: 0).index == 0  # what set_device accepts


# 2. a `bench run` is judged by its rows, not its exit status


def test_bench_exit_1_with_an_oom_row_is_judged_by_the_row(ci):
    assert ci.bench_problem(1, [{"status": "oom"}]) is None
    assert ci.bench_problem(0, [{"status": "ok"}]) is None
    assert ci.bench_problem(1, []) == "exit status 1, no row written"
    assert ci.bench_problem(2, [{"status": "ok"}]) == "exit status 2"
    assert ci.bench_problem(None, []) is None  # a timeout, reported by the caller


def test_step_7_probe_returns_the_oom_row_when_bench_exits_1(acceptance, monkeypatch):
    acc = acceptance()
    step = next(s for s in acc.steps if s.key == "oom")

    def fake_run(step, cmd, timeout, log, env=None, show=True):
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.jsonl").write_text(json.dumps({"trial_id": "t", "method": "gpu-probe", "status": "oom",
                                                       "reason": "CUDA out of memory"}) + "\n")
        return 1, "results: 0 ok, 1 failed", 1.0

    monkeypatch.setattr(acc, "run", fake_run)
    got = acc.run_probe(step, "oom", {"fill_until_oom": "true"}, time.monotonic() + 60)
    assert got is not None and got["status"] == "oom"
    assert not [c for c in step.checks if c[0] == "FAIL"]


# 3. step 5 runs only the methods whose packages are here, and says why the others are left out


def test_methods_whose_package_is_missing_are_left_out_with_the_reason(ci):
    run, skipped = ci.choose_methods(["full", "galore", "lora", "adamw8bit", "sgc"],
                                     {"full": None, "galore": "galore-torch", "adamw8bit": "bitsandbytes"})
    assert run == ["full", "lora", "sgc"]
    assert set(skipped) == {"galore", "adamw8bit"}
    assert "galore-torch" in skipped["galore"] and "bitsandbytes" in skipped["adamw8bit"]


def test_package_check_covers_galore(monkeypatch):
    from memft_bench.methods import package_check

    monkeypatch.setattr(package_check.importlib.util, "find_spec", lambda name: None)
    assert package_check.missing("galore") == "galore-torch"
    assert package_check.missing("lora") is None


# 4. the SGC family's CuPy check matches what methods/sgc.py does


def test_sgc_check_accepts_the_streamed_kernel_and_requires_cupy_where_the_dense_one_ran(ci):
    tiny = [row("sgc"), row("mesgc", backend="cupy", chunk_size=2048, block_columns=0), row("cesgc", backend="cupy"),
            row("lora", backend=None)]
    ok, figures = ci.judge_sgc_backends(tiny)
    assert ok is True, figures
    assert "sgc: streamed" in figures and "mesgc: dense kernel on cupy" in figures


def test_sgc_check_fails_when_the_dense_kernel_ran_on_torch(ci):
    ok, figures = ci.judge_sgc_backends([row("sgc"), row("mesgc", backend="torch", reason="cupy failed at its first "
                                                        "launch (boom); ran the torch kernel", chunk_size=1024)])
    assert ok is False and "boom" in figures


def test_sgc_check_fails_when_mesgc_fits_one_block_but_reports_no_backend(ci):
    assert ci.dense_omp_expected(row("mesgc", chunk_size=2048, block_columns=0)) is True
    assert ci.dense_omp_expected(row("mesgc", chunk_size=8192, block_columns=0)) is False
    assert ci.dense_omp_expected(row("sgc")) is None
    ok, _ = ci.judge_sgc_backends([row("mesgc", chunk_size=2048, block_columns=0)])
    assert ok is False


def test_sgc_check_skips_when_no_row_took_the_dense_path(ci):
    ok, figures = ci.judge_sgc_backends([row("sgc"), row("cesgc")])  # commonsense's lengths: streamed
    assert ok is None and "streamed" in figures
    assert ci.judge_sgc_backends([row("sgc", status="oom")])[0] is None


# 5. step 5 is sized from its number of trials


def test_tiny_step_is_sized_from_its_trials(acceptance, ci):
    acc = acceptance()
    tiny = next(s for s in acc.steps if s.key == "tiny")
    acc.size_suites(13)
    small = (tiny.min_s, tiny.cap_s)
    acc.size_suites(24)
    assert tiny.min_s > small[0] and tiny.cap_s > small[1]
    least, most = ci.TINY_TRIAL_S["cuda"]
    assert tiny.min_s >= 24 * least and tiny.cap_s >= 24 * most
    assert small[0] >= 13 * least > 60  # the old 60 s minimum could not hold them


# 6. the tiny model's cache is built before any trial, by the code .ci/gpu and .ci/gpu-prepare run


def test_tiny_cache_is_built_once_then_found(ci, tmp_path):
    data = ci.tiny_check_data(ROOT, False, ["full"])
    assert data["model"]["precision"] == "bf16-mixed" and data["model"]["pretrain_steps"] > 0
    data["model"]["pretrain_steps"] = 2  # the same code path, cheaper
    suite = tmp_path / "tiny-check.yaml"
    suite.write_text(yaml.safe_dump(data), encoding="utf-8")
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache")}

    def build() -> dict:
        out = subprocess.run([sys.executable, "-c", ci.TINY_CACHE_CODE, str(suite)], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    first = build()
    assert len(first["built"]) == 1 and first["cache"] == str(tmp_path / "cache")
    assert (tmp_path / "cache" / "tiny-llama" / first["built"][0]).is_file()
    again = build()
    assert again["built"] == [] and again["files"] == first["built"]


def test_cpu_and_gpu_mode_share_the_tiny_model(ci):
    assert ci.tiny_check_data(ROOT, True, [])["model"] == ci.tiny_check_data(ROOT, False, ["full"])["model"]


# 7. step 6 needs a prepared model and data; it never converts on a GPU machine


def test_commonsense_is_skipped_without_prepared_inputs(ci, tmp_path):
    data = tmp_path / "data"
    for task in ci.COMMONSENSE_TASKS:
        (data / task).mkdir(parents=True)
        (data / task / "test.json").write_text("[]")
    cache = tmp_path / "cache"
    assert "--data-dir" in ci.commonsense_inputs(None, cache, cpu=False)[2]
    assert "--model-cache" in ci.commonsense_inputs(data, None, cpu=False)[2]
    assert "no converted model" in ci.commonsense_inputs(data, cache, cpu=False)[2]
    model = cache / "models" / "smollm2-135m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_text("")
    assert ci.commonsense_inputs(data, cache, cpu=False) == (data, cache, None)
    assert ci.commonsense_inputs(data, None, cpu=True) == (data, None, None)  # CI may convert it
    (data / "piqa" / "test.json").unlink()
    assert "piqa" in ci.commonsense_inputs(data, cache, cpu=False)[2]


def test_commonsense_step_is_skipped_on_a_gpu_without_flags(acceptance):
    step = next(s for s in acceptance().steps if s.key == "commonsense")
    assert step.status == "SKIPPED" and "--data-dir" in step.reason


# 8. .whl/ is git-ignored: the prepared command carries it


def test_prepare_carries_the_git_ignored_paths(prepare):
    inside = [".whl/x.whl", ".bench-cache/tiny-llama/x.safetensors", "COMMIT"]
    ignored = subprocess.run(["git", "check-ignore", *inside], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert set(prepare.CARRY) == {".whl", ".bench-cache", "COMMIT"}
    assert ignored == inside  # hence they travel only when the call's carry names them


# 9. the commit, where the tree has no .git


def test_commit_is_read_from_the_commit_file_without_git(ci, tmp_path):
    assert ci.read_commit(tmp_path) == "–"
    assert env_module.git_commit(tmp_path) is None
    (tmp_path / "COMMIT").write_text("0123abcd+dirty\n")
    assert ci.read_commit(tmp_path) == "0123abcd+dirty (from COMMIT)"
    assert env_module.git_commit(tmp_path) == "0123abcd+dirty"


def test_commit_comes_from_git_where_there_is_one(ci):
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert ci.read_commit(ROOT).startswith(head)
    assert env_module.git_commit(ROOT).startswith(head)


# 10. NVML: sampled every 20 ms, processes listed when needed, a failed sampling noted


def test_nvml_samples_every_20_ms_or_more():
    assert NvmlSampler().interval_s >= 0.02


def _sampling(install_fake):
    """A started sampler on a stand-in GPU that this process uses 100 MiB of."""
    gpus = two_gpus()
    gpus[0].processes = [(os.getpid(), 100.0)]
    fake = install_fake(gpus, cuda_to_nvml=[0])
    sampler = NvmlSampler(device_index=0, interval_s=0.001)
    assert sampler.init()
    sampler.start()
    return gpus, fake, sampler


def test_nvml_lists_processes_only_on_a_new_peak(fake_gpus):  # noqa: F811
    gpus, fake, sampler = _sampling(fake_gpus)
    target = fake.memory_reads + 50
    while fake.memory_reads < target:
        time.sleep(0.001)
    assert fake.process_reads == 1  # the first sample only: the device figure did not move
    gpus[0].used_mb += 300.0
    gpus[0].processes = [(os.getpid(), 400.0)]
    target = fake.memory_reads + 5
    while fake.memory_reads < target:
        time.sleep(0.001)
    device_mb, process_mb = sampler.stop()
    assert device_mb == pytest.approx(300.0) and process_mb == pytest.approx(400.0)
    assert fake.process_reads == 3  # the new peak, and stop()'s last sample
    sampler.close()


def test_nvml_sampling_failure_is_noted_not_silent(fake_gpus):  # noqa: F811
    gpus, fake, sampler = _sampling(fake_gpus)
    gpus[0].used_mb += 200.0
    target = fake.memory_reads + 3
    while fake.memory_reads < target:
        time.sleep(0.001)
    fake.memory_error = "GPU is lost"
    deadline = time.monotonic() + 5
    while sampler._thread.is_alive():
        assert time.monotonic() < deadline, "the sampler does not give up"
        time.sleep(0.001)
    device_mb, _ = sampler.stop()
    assert device_mb == pytest.approx(200.0)  # the partial peak is kept...
    assert "GPU is lost" in sampler.sample_note and "stopped" in sampler.sample_note
    sampler.close()
    # ...and the trial's meters copy the note into the row's meter_notes
    from types import SimpleNamespace

    from memft_bench.harness.trial.worker import PhaseMeters

    meters = object.__new__(PhaseMeters)
    meters.notes, meters.nvml_on = {}, True
    meters.cuda = SimpleNamespace(read=lambda: (None, None))
    meters.nvml = SimpleNamespace(stop=lambda: (device_mb, None), process_note=None, sample_note=sampler.sample_note)
    assert meters.stop()["nvml"] == device_mb
    assert meters.notes == {"nvml": sampler.sample_note}


# 11. the cuda extra is CUDA 13's CuPy


def test_install_picks_the_cupy_extra_of_torchs_cuda(ci):
    assert ci.cuda_extra("13.0", []) == "cuda"
    assert ci.cuda_extra("12.8", []) == "cuda12"
    assert ci.cuda_extra("13.0", ["cupy-cuda13x 14.2.0"]) is None
    assert ci.cuda_extra(None, []) is None
    text = (ROOT / "pyproject.toml").read_text()
    assert 'cuda = ["cupy-cuda13x' in text and 'cuda12 = ["cupy-cuda12x' in text


# 12. the plan fits the budget


@pytest.mark.parametrize("budget", [60, 120, 200, 330, 450, 1000])
def test_budget_arithmetic_never_plans_more_than_the_budget(ci, budget):
    steps = [(20, 75), (20, 60), (25, 55), (20, 50), (12, 40), (142, 207), (225, 355)]
    for used in (None, [0.0] * len(steps), [1.0, 5.0, 1e9, 3.0, 1e9, 1.0, 1e9]):
        total, allotments = ci.planned_total(budget, steps, used)
        assert total <= budget - ci.FINAL_RESERVE_S + 1e-9
        for (low, cap), got in zip(steps, allotments):
            assert got is None or low <= got <= cap


def test_allotment_leaves_every_later_minimum(ci):
    later = [(20, 50), (142, 207)]
    got = ci.allot(300, (20, 75), later)
    assert got is not None and got + 20 + 142 + ci.FINAL_RESERVE_S <= 300
    assert ci.allot(100, (20, 75), later) is None  # its minimum does not fit beside the later ones'
    assert ci.allot(1000, (20, 75), later) == 75  # room for every cap


def test_the_gpu_plan_fits_330_s_with_13_methods_and_finishes_in_6_minutes(acceptance, ci):
    acc = acceptance("--budget-s", "330")
    acc.size_suites(13)  # the lent machine: 24 methods less the 11 whose packages it lacks
    pending = [(s.min_s, s.cap_s) for s in acc.steps if s.status == "PENDING" and s.func is not None]
    assert len(pending) == 6  # steps 1, 2, 3, 7, 4, 5 (6 is SKIPPED without its inputs)
    total, allotments = ci.planned_total(330, pending)
    assert None not in allotments and total <= 330 - ci.FINAL_RESERVE_S
    # a step cut at its timeout gets 15 s to stop, the report is written after: within 6 minutes
    assert 330 + 15 + 5 <= 360
    assert ci.parse_args([]).budget_s == 330


# .ci/gpu-prepare: the size check and the printed command


def test_prepare_size_check(prepare, tmp_path):
    (tmp_path / "a.py").write_bytes(b"x" * 1000)
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "w.whl").write_bytes(b"x" * (2 * prepare.MIB))
    ok, total, lines = prepare.size_report(tmp_path, ["a.py"], [".whl", ".bench-cache"], limit_mib=3)
    assert ok and total == 1000 + 2 * prepare.MIB
    assert any("absent" in ln for ln in lines)
    ok, _, lines = prepare.size_report(tmp_path, ["a.py"], [".whl"], limit_mib=1.5)
    assert not ok and "TOO LARGE" in lines[-1]


def test_prepare_prints_the_device_command_and_carry(prepare, capsys, monkeypatch):
    command = prepare.device_command(330, prepare.CARRY)
    assert ".ci/gpu --device cuda --budget-s 330" in command
    assert 'BENCH_CACHE_DIR="$PWD/.bench-cache"' in command and "PIP_NO_INDEX=1" in command
    assert "timeout --preserve-status -k 30 -s TERM 350 " in command and "$OUT/gpu-report.tgz" in command
    assert len(command) < 2000 and prepare.call_timeout_s(330) == 410
    monkeypatch.setattr(prepare, "write_commit", lambda root: "abc")
    monkeypatch.setattr(prepare, "ROOT", ROOT)
    assert prepare.main(["--no-download", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "device command:" in out and "total" in out and "\ncarry: " in out and "timeout_s: 410" in out
    assert prepare.download_command("py-cpuinfo", Path(".whl"))[1:] == [
        "-m", "pip", "download", "--only-binary=:all:", "--python-version", "3.12", "--platform",
        "manylinux2014_x86_64", "--no-deps", "-d", ".whl", "py-cpuinfo"]


def test_the_import_shim_imports_the_folders_as_memft_bench_without_an_install(ci, tmp_path):
    """The device's last resort when not even `pip install --no-deps --no-build-isolation -e .` works."""
    shim = ci.import_shim(ROOT, tmp_path / "shim")
    code = ("import memft_bench.harness.spec.config as c, memft_bench.kernels.omp as o; "
            "print(c.load_suite('tiny').name, c.__file__, o.__file__)")
    env = dict(os.environ, PYTHONPATH=str(shim))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    name, config_file, omp_file = out.stdout.split()
    # the files come through the shim, not through the editable install's finder (which sits after it)
    assert name == "tiny" and config_file.startswith(str(shim)) and omp_file.startswith(str(shim))


def test_a_stack_outside_the_ranges_is_noted_and_the_run_goes_on(ci, monkeypatch):
    run = object.__new__(ci.Acceptance)
    run.env = {}
    monkeypatch.setattr(run, "py_json", lambda code, timeout=120: ["peft 0.17.0 is installed, outside ..."],
                        raising=False)
    step = ci.Step("install", 1, "install", 60, 10)
    run.check_stack(step)
    assert run.env["BENCH_ALLOW_UNSUPPORTED_STACK"] == "1"
    assert any("peft 0.17.0" in line for line in step.body)
    clean = object.__new__(ci.Acceptance)
    clean.env = {}
    monkeypatch.setattr(clean, "py_json", lambda code, timeout=120: [], raising=False)
    clean.check_stack(step)
    assert "BENCH_ALLOW_UNSUPPORTED_STACK" not in clean.env


def test_reports_go_under_the_cards_short_name_one_folder_per_run(ci):
    import datetime as dt

    when = dt.datetime(2026, 12, 6, 3, 30, tzinfo=dt.UTC)
    assert ci.report_dir("NVIDIA H200", when) == "reports/gpu-h200/acceptance-20261206-033000"
    assert ci.report_dir("NVIDIA H100 80GB HBM3", when) == "reports/gpu-h100/acceptance-20261206-033000"
    assert ci.report_dir(None, when) == "reports/gpu-none/acceptance-20261206-033000"
    # two runs in one minute on a warm machine (a quick rerun) get two folders: the second must not replace the first
    assert ci.report_dir("NVIDIA H200", when) != ci.report_dir("NVIDIA H200", when.replace(second=41))


# Found by reading the scripts against the lent image (KINDS.md, 2026-11-17), before any lease


#: top-level modules the lent image holds (KINDS.md's package list) that the GPU test files may import
IMAGE_MODULES = {"torch", "numpy", "pytest", "sklearn", "yaml", "pandas", "scipy", "transformers", "peft", "cupy",
                 "pynvml", "click", "tqdm", "psutil", "tabulate", "matplotlib", "hypothesis", "pytest_benchmark",
                 "safetensors", "memft_bench", "tests"}


def _top_level_imports(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_step_2_collects_only_the_files_with_gpu_tests_and_they_import_only_what_the_image_has(ci):
    """A module-level import of a package the image lacks (tests/sources/ imports `datasets`) stops pytest at
    collection, before any GPU test runs: step 2 names its files, and those files (and the test helpers they
    import) import nothing outside the image."""
    files = ci.gpu_test_files(ROOT)
    assert "tests/kernels/test_omp.py" in files and "benchmarks/test_omp_bench.py" in files
    assert "tests/sources/test_user_files.py" not in files
    assert "benchmarks/test_omp_bench.py" not in ci.gpu_test_files(ROOT, benchmarks=False)
    stdlib = set(sys.stdlib_module_names)
    for name in files:
        imports = _top_level_imports(ROOT / name)
        helpers = {m for m in imports if m.startswith("tests.")}
        for helper in helpers:  # one level down: the helpers' own module-level imports
            imports |= _top_level_imports(ROOT / (helper.replace(".", "/") + ".py"))
        outside = {m for m in imports if m.split(".")[0] not in IMAGE_MODULES | stdlib}
        assert not outside, f"{name} imports {outside}, which the lent image lacks"


def test_step_2_runs_pytest_on_those_files(acceptance, ci, monkeypatch):
    run = acceptance("--only", "2")
    commands = []
    monkeypatch.setattr(run, "run", lambda step, cmd, timeout, log, env=None: (commands.append(cmd) or (0, "", 1.0)))
    run.step_tests(next(s for s in run.steps if s.key == "tests"), time.monotonic() + 60)
    files = ci.gpu_test_files(ROOT, benchmarks=run.pytest_benchmark)
    assert commands[0][-len(files):] == files and "tests" not in commands[0]


def test_the_import_check_finds_the_checkout_through_the_import_shim(ci, tmp_path):
    """With the shim on PYTHONPATH, `memft_bench.harness.__path__[0]` is the shim's link: the check resolves it,
    or it would fail step 1 on a machine where only the shim works."""
    shim = ci.import_shim(ROOT, tmp_path / "shim")
    code = f"import os, memft_bench.harness as m; print({ci.HARNESS_LOCATION})"
    env = dict(os.environ, PYTHONPATH=str(shim))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == ROOT


def test_the_stack_is_checked_before_bench_list_and_a_slow_bench_list_fails_only_its_check(acceptance, ci,
                                                                                            monkeypatch):
    """`bench` exits 2 on a stack outside pyproject's ranges unless BENCH_ALLOW_UNSUPPORTED_STACK is set: the
    check must come before the first `bench` call; and a `bench list` that times out is a failed check, not an
    exception that ends step 1 before the methods are chosen."""
    run = acceptance()
    run.env = {}
    order = []

    def py_json(code, timeout=120):
        if "unsupported()" in code:
            order.append("stack")
            return ["transformers 5.17.0 is outside ..."]
        if "package_check" in code:
            return {}
        return {"memft_bench.harness": f"0.1.0 at {ROOT}"}

    def slow_bench(cmd, **kwargs):
        order.append(("bench", kwargs["env"].get("BENCH_ALLOW_UNSUPPORTED_STACK")))
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(run, "py_json", py_json, raising=False)
    monkeypatch.setattr(run, "bench", lambda: ["bench"], raising=False)
    monkeypatch.setattr(ci.subprocess, "run", slow_bench)
    step = ci.Step("install", 1, "install", 60, 10)
    run.check_imports(step, time.monotonic() + 60)
    assert order == ["stack", ("bench", "1")]
    assert any(c[0] == "FAIL" and "bench list methods" in c[1] for c in step.checks)


def test_prepare_starts_the_wheel_folder_afresh_and_carries_none_when_none_is_needed(prepare, tmp_path, monkeypatch):
    """The image holds pytest-benchmark and py-cpuinfo (KINDS.md): nothing to carry. A wheel left from an
    earlier download would travel and, beside a newer one, make pip refuse both."""
    stale = tmp_path / ".whl"
    stale.mkdir()
    (stale / "pytest_benchmark-5.2.0-py3-none-any.whl").write_bytes(b"old")
    monkeypatch.setattr(prepare, "WHEELS", {})
    prepare.download(stale)
    assert not stale.exists()
    fetched = []
    monkeypatch.setattr(prepare, "WHEELS", {"pytest-benchmark==5.3.1": "step 2"})
    monkeypatch.setattr(prepare.subprocess, "run", lambda cmd, check: fetched.append(cmd))
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "old.whl").write_bytes(b"old")
    prepare.download(tmp_path / "again")
    assert [c[-1] for c in fetched] == ["pytest-benchmark==5.3.1"] and not list((tmp_path / "again").iterdir())


def test_the_device_command_passes_on_the_scripts_exit_status_when_timeout_stops_it(prepare, tmp_path):
    """A bare `timeout` exits 124 whatever the script did on SIGTERM; with --preserve-status the call's rc is the
    script's own 130 (interrupted, report written), which the device tool does not read as its own time-out."""
    command = prepare.device_command(330, [])
    timeout_part = command.split("; ")[1].split(" python3 ")[0]
    script = tmp_path / "stops.py"
    script.write_text("import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(130))\n"
                      "time.sleep(30)\n", encoding="utf-8")
    rc = subprocess.run(timeout_part.replace(" 350", " 1").split() + [sys.executable, str(script)],
                        timeout=60).returncode
    assert rc == 130
