"""Will it fit: the largest micro-batch or length search, the named GPUs' arithmetic, and `bench run --dry-run
--memory/--gpu` end to end."""

from __future__ import annotations

import subprocess

import pytest

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.run.fit import MAX_TRACES, MICRO_BATCH_LIMIT, largest_fitting, traced_peak
from memft_bench.harness.spec.config import apply_overrides, suite_from_data
from memft_bench.harness.spec.memory_sizes import CUDA_CONTEXT_BYTES, GPUS, gpu_memory, parse_size
from tests.commands import BENCH_CLI, REPO_ROOT
from tests.conftest import small_suite_data

MiB = 2**20


def _suite(**budget):
    data = small_suite_data(steps=2)
    data["budget"].update(budget)
    return suite_from_data(data, "fit")


def _counting(peak_of_budget):
    """A peak function of the suite's budget that counts its calls."""
    calls = []

    def peak(suite):
        calls.append((suite.budget.micro_batch_size, suite.budget.cutoff_len))
        return peak_of_budget(suite.budget)

    return peak, calls


@pytest.mark.parametrize("memory", [100 * MiB, 100 * MiB + 1, 1000 * MiB, 37 * MiB + 5])
def test_an_affine_peak_gives_the_exact_largest_micro_batch(memory):
    base, per_row = 30 * MiB, 7 * MiB  # weights and state, then activations per row
    peak, calls = _counting(lambda b: base + per_row * b.micro_batch_size)
    answer = largest_fitting(_suite(micro_batch_size=4), "full", {}, memory, "micro_batch_size", peak_of=peak)
    expected = (memory - base) // per_row
    assert answer.value == expected and answer.exact and not answer.at_limit
    assert answer.peak_bytes == base + per_row * expected <= memory
    assert len(calls) <= MAX_TRACES


def test_a_quadratic_peak_in_length_is_searched_not_extrapolated():
    def need(length: int) -> int:  # an attention matrix per layer grows with the square of the length
        return 10 * MiB + 30_000 * length + 400 * length ** 2

    peak, calls = _counting(lambda b: need(b.cutoff_len))
    memory = 12 * MiB  # 44 tokens (the small model's context is 128)
    answer = largest_fitting(_suite(cutoff_len=16), "full", {}, memory, "cutoff_len", peak_of=peak)
    assert answer.value == 44 and answer.exact and need(44) <= memory < need(45)
    assert len(calls) <= MAX_TRACES


@pytest.mark.parametrize(("square", "answer"), [(40_000, 357), (400_000, 113)])
def test_a_steeply_convex_peak_is_bisected_not_crawled(square, answer):
    """Regula falsi alone crawls along a convex side; every step that does not halve the bracket is followed by
    a bisection, so the boundary is found within the trace budget."""
    def need(length: int) -> int:
        return 10 * MiB + square * length ** 2

    memory = need(answer) + (need(answer + 1) - need(answer)) // 2
    peak, calls = _counting(lambda b: need(b.cutoff_len))
    suite = apply_overrides(_suite(cutoff_len=16), ["model.max_position_embeddings=4096"])
    found = largest_fitting(suite, "full", {}, memory, "cutoff_len", peak_of=peak)
    assert found.value == answer and found.exact and len(calls) <= MAX_TRACES


def test_a_length_that_does_not_fit_is_searched_down_to_eight_tokens_not_below():
    peak, calls = _counting(lambda b: 10 * MiB + MiB * b.cutoff_len)
    found = largest_fitting(_suite(cutoff_len=64), "full", {}, 12 * MiB, "cutoff_len", peak_of=peak)
    assert found.value is None and found.exact and min(length for _, length in calls) == 8
    assert found.describe() == "none (8 needs 18.0 MiB)"


def test_traces_running_out_give_the_open_range():
    peak, calls = _counting(lambda b: 10 * MiB + (MiB if b.micro_batch_size < 3000 else 10**12))
    found = largest_fitting(_suite(micro_batch_size=1), "full", {}, 20 * MiB, "micro_batch_size", peak_of=peak)
    assert len(calls) == MAX_TRACES and not found.exact
    assert found.value < 3000 <= found.upper + 1 and found.describe().startswith(f"{found.value} to {found.upper}")


def test_nothing_fits_when_one_row_does_not():
    peak, _ = _counting(lambda b: 50 * MiB + MiB * b.micro_batch_size)
    answer = largest_fitting(_suite(micro_batch_size=8), "full", {}, 40 * MiB, "micro_batch_size", peak_of=peak)
    assert answer.value is None and answer.exact and answer.peak_bytes == 51 * MiB
    assert answer.describe().startswith("none (1 needs 51.0 MiB")


def test_the_search_stops_at_its_limit():
    peak, _ = _counting(lambda b: MiB * b.micro_batch_size)
    answer = largest_fitting(_suite(), "full", {}, 2**50, "micro_batch_size", peak_of=peak)
    assert answer.value == MICRO_BATCH_LIMIT and answer.at_limit and "≥ 4096" in answer.describe()


def test_a_flat_peak_doubles_to_the_limit_not_crawls():
    peak, calls = _counting(lambda b: 10 * MiB)
    answer = largest_fitting(_suite(micro_batch_size=40), "full", {}, 20 * MiB, "micro_batch_size", peak_of=peak)
    assert answer.value == MICRO_BATCH_LIMIT and answer.at_limit and len(calls) <= MAX_TRACES


def test_nothing_fitting_at_a_large_budget_tries_the_least_value_early():
    """A line through two traces with no positive root says even one row is too much: that is traced next."""
    peak, calls = _counting(lambda b: 50 * MiB + 1000 * b.micro_batch_size)
    answer = largest_fitting(_suite(micro_batch_size=2048), "full", {}, 40 * MiB, "micro_batch_size", peak_of=peak)
    assert answer.value is None and answer.exact and answer.describe().startswith("none (1 needs ")
    assert len(calls) <= 3


@pytest.mark.parametrize("memory", [100 * MiB, 1000 * MiB + 3])
def test_a_second_search_for_less_memory_reuses_the_first_ones_traces(memory):
    base, per_row = 30 * MiB, 7 * MiB
    peak, calls = _counting(lambda b: base + per_row * b.micro_batch_size)
    known: dict[int, int] = {}
    strict = largest_fitting(_suite(micro_batch_size=4), "full", {}, memory, "micro_batch_size", peak_of=peak,
                             known=known)
    first = len(calls)
    roomy = largest_fitting(_suite(micro_batch_size=4), "full", {}, int(memory * 0.95), "micro_batch_size",
                            peak_of=peak, known=known)
    assert strict.value == (memory - base) // per_row and roomy.value == (int(memory * 0.95) - base) // per_row
    assert roomy.exact and roomy.traces == len(calls) - first <= 2
    assert len({c for c in calls}) == len(calls)  # nothing traced twice


def test_the_largest_cell_adds_the_largest_with_room_when_it_differs():
    from memft_bench.harness.run.fit import Largest
    from memft_bench.harness.run.preflight import VariantCheck

    check = VariantCheck("lora", "lora")
    check.largest = Largest("micro_batch_size", 13, 30 * MiB, 13, False, 3)
    check.largest_with_room = Largest("micro_batch_size", 12, 28 * MiB, 12, False, 1)
    assert check.largest_cell() == "13 (30.0 MiB); 12 (28.0 MiB) with 5% to spare"
    check.largest_with_room = Largest("micro_batch_size", 13, 30 * MiB, 13, False, 0)
    assert check.largest_cell() == "13 (30.0 MiB)"


def test_the_largest_micro_batch_of_a_real_trace_fits_and_one_more_does_not():
    suite = _suite(micro_batch_size=2, cutoff_len=24)
    at_budget = traced_peak(suite, "lora", {"r": 2})
    memory = 3 * at_budget
    answer = largest_fitting(suite, "lora", {"r": 2}, memory, "micro_batch_size", at_budget)
    assert answer.value is not None and answer.value > 2 and answer.exact
    assert traced_peak(apply_overrides(suite, [f"budget.micro_batch_size={answer.value}"]), "lora", {"r": 2}) \
        <= memory < traced_peak(apply_overrides(suite, [f"budget.micro_batch_size={answer.value + 1}"]), "lora",
                                {"r": 2})


def test_a_named_gpu_is_the_memory_cuda_reports_less_a_cuda_context():
    usable, line = gpu_memory("H100-80GB")
    # torch's out-of-memory message on an H100 reads "total capacity of 79.11 GiB" (nvidia-smi's Total is 79.65)
    assert usable == GPUS["h100-80gb"] * MiB - CUDA_CONTEXT_BYTES == round(79.11 * 1024) * MiB - 512 * MiB
    assert "h100-80gb" in line and "CUDA context" in line and "78.61 GiB" in line
    assert gpu_memory("RTX 4090 24GB") == gpu_memory("rtx4090-24gb") == gpu_memory("rtx_4090")
    assert gpu_memory("T4")[0] == GPUS["t4-16gb"] * MiB - CUDA_CONTEXT_BYTES  # the model alone, one size
    assert gpu_memory("L4")[1].startswith("l4-24gb") and gpu_memory("a10")[1].startswith("a10-24gb")
    with pytest.raises(BenchError, match="unknown GPU"):
        gpu_memory("RTX 6000")  # the Quadro RTX 6000 (24 GB) is not the RTX 6000 Ada (48 GB)
    with pytest.raises(BenchError, match="means several GPUs: h100-94gb, h100-80gb"):
        gpu_memory("h100")
    with pytest.raises(BenchError, match="unknown GPU; known: b200-180gb"):
        gpu_memory("h300")


@pytest.mark.parametrize(("text", "size"), [("24GiB", 24 * 2**30), ("80GB", 80 * 10**9), ("512MiB", 512 * MiB),
                                            ("1.5TiB", int(1.5 * 2**40)), ("24", 24 * 2**30), ("16 G", 16 * 2**30)])
def test_memory_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "24XB", "-1GiB", "0GiB", ""])
def test_a_bad_memory_size_is_one_clear_error(text):
    with pytest.raises(BenchError, match="--memory"):
        parse_size(text)


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH_CLI, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


def test_an_empty_memory_or_gpu_is_an_error_not_this_machines_answer():
    from memft_bench.harness.cli import fit_target
    from memft_bench.harness.core.errors import BenchError

    with pytest.raises(BenchError, match="--memory ''"):
        fit_target("", None, None, dry_run=True)
    with pytest.raises(BenchError, match="--gpu ''"):
        fit_target(None, "", None, dry_run=True)
    assert fit_target(None, None, None, dry_run=True) == (None, None)


@pytest.mark.slow  # the CLI end to end in subprocesses
def test_dry_run_answers_for_a_memory_size_and_a_named_gpu(tmp_path):
    small = _bench("run", "--dry-run", "--methods", "full,mezo", "--memory", "20MiB", "--out", str(tmp_path / "a"))
    assert small.returncode == 0, small.stderr
    full = next(line for line in small.stdout.splitlines() if line.startswith("| full "))
    mezo = next(line for line in small.stdout.splitlines() if line.startswith("| mezo "))
    assert "| no, " in full and " short " in full  # tiny's full fine-tuning needs ~49 MiB at 16 x 128
    assert "| yes, " in mezo and " spare " in mezo  # MeZO's ~12 MiB fits
    assert "largest micro_batch_size that fits" in small.stdout and "fits in 20.0 MiB" in small.stdout
    named = _bench("run", "--dry-run", "--methods", "lora", "--gpu", "l4-24gb", "-q", "--out", str(tmp_path / "b"))
    assert named.returncode == 0, named.stderr
    assert f"{(GPUS['l4-24gb'] * MiB - CUDA_CONTEXT_BYTES) / 2**30:.2f} GiB" in named.stdout
    assert not (tmp_path / "a" / "results.jsonl").exists() and "Nothing was started" in named.stdout
    # an answer for a GPU traces torch's optimizers as a GPU runs them (foreach); --device cpu keeps a CPU's figure
    assert "multi-tensor `foreach` path" in named.stdout and "multi-tensor" in small.stdout
    on_cpu = _bench("run", "--dry-run", "--methods", "full", "--memory", "20MiB", "--device", "cpu", "-q",
                    "--out", str(tmp_path / "c"))
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert "multi-tensor" not in on_cpu.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--memory", "24GiB"], "--memory go(es) with --dry-run: add --dry-run"),
    (["--dry-run", "--memory", "lots"], "--memory 'lots': expected a size such as 24GiB"),
    (["--dry-run", "--gpu", "h100"], "--gpu 'h100' means several GPUs"),
    (["--dry-run", "--gpu", "l4-24gb", "--memory", "1GiB"], "give --memory or --gpu, not both"),
])
def test_fit_options_misused_are_one_line_and_exit_2(args, message, tmp_path):
    result = _bench("run", *args, "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
