"""One trial, (task, method, seed), run in its own process: `python -m memft_bench.harness.trial SPEC RESULT`.

A fresh process per trial gives clean memory peaks (RSS, CUDA allocator, NVML), a fresh CUDA
context, and crash isolation: whatever happens here, the runner records one row and goes on. The
spec is plain JSON written by the runner; the row is written to RESULT atomically (temp + rename).
Failures inside the trial become the row's `status` (oom, diverged, error) with a `reason`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.core.records_io import now, write_json_atomic
from memft_bench.harness.results.rows import empty_row

if TYPE_CHECKING:
    import torch

    from memft_bench.harness.measure.memory import CpuTrainingPeak


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "defaultcpuallocator" in text
    )


def _short(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:500]


def free_memory(device: torch.device) -> None:
    """Return what the last phase no longer holds to the allocator and the OS, so the next phase's peaks
    start from what is really alive: garbage collection, the CUDA caching allocator's free blocks (which
    NVML would otherwise count), and glibc's free heap pages (which the resident set would)."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PhaseMeters:
    """Peak RSS, the CUDA allocator's peaks and NVML, reset together at every phase boundary, so that each
    phase (training, evaluation) reports only its own peaks."""

    cpu_peak: CpuTrainingPeak | None = None  # the phase's CPU training peak, when `start` was given one

    def __init__(self, device: torch.device, notes: dict[str, str]) -> None:
        from memft_bench.harness.measure.memory import CudaPeaks, NvmlSampler

        self.device = device
        self.notes = notes
        self.cuda = CudaPeaks(device)
        self.nvml = NvmlSampler(device_index=device.index or 0)
        self.nvml_on = device.type == "cuda" and self.nvml.init()
        if device.type == "cuda" and not self.nvml_on:
            notes["nvml"] = f"NVML unavailable: {self.nvml.init_error or 'no reason given'}"

    def start(self, cpu_peak: CpuTrainingPeak | None = None) -> None:
        """Reset every meter; `cpu_peak` takes its non-tensor baseline between freeing and the RSS reset."""
        from memft_bench.harness.measure.memory import reset_rss_peak

        free_memory(self.device)
        self.cpu_peak = cpu_peak
        if cpu_peak is not None:
            cpu_peak.start()
        if not reset_rss_peak() and cpu_peak is not None:  # the peak would be the process's lifetime peak
            cpu_peak.non_tensor_bytes = None
            self.notes["peak_mem_training"] = "none: the resident set's peak cannot be reset here (no " \
                "/proc/self/clear_refs), so the training phase's own peak is not known"
        self.cuda.reset()
        if self.nvml_on:
            self.nvml.start()

    def stop(self) -> dict[str, float | None]:
        """rss, allocated, reserved, nvml (device above its idle level), nvml_process: MiB or None."""
        from memft_bench.harness.measure.memory import rss_peak_mb

        allocated, reserved = self.cuda.read()
        if self.cpu_peak is not None:
            self.cpu_peak.stop()
        nvml_device = nvml_process = None
        if self.nvml_on:
            nvml_device, nvml_process = self.nvml.stop()
            if self.nvml.process_note:
                self.notes["nvml_process"] = self.nvml.process_note
            if self.nvml.sample_note:  # sampling failed part-way: the device peak is partial, and says so
                self.notes["nvml"] = self.nvml.sample_note
        return {"rss": rss_peak_mb(), "allocated": allocated, "reserved": reserved, "nvml": nvml_device,
                "nvml_process": nvml_process}

    def close(self) -> None:
        self.nvml.close()


def training_peaks(peaks: dict[str, float | None]) -> dict[str, float | None]:
    """The row's training-phase columns of `PhaseMeters.stop()`'s figures."""
    return {"peak_mem_rss_mb": peaks["rss"], "peak_mem_allocated_mb": peaks["allocated"],
            "peak_mem_reserved_mb": peaks["reserved"], "peak_mem_nvml_mb": peaks["nvml"],
            "peak_mem_nvml_process_mb": peaks["nvml_process"]}


def measured_training_peak(row: dict[str, Any], device: torch.device, cpu_peak: CpuTrainingPeak | None
                           ) -> float | None:
    """The measured training peak a prediction is compared with (MiB): the CUDA allocator's peak on a GPU; on a
    CPU the peak RSS above the non-tensor resident set of the warmed process, less the library code training
    paged in (`CpuTrainingPeak`)."""
    if device.type == "cuda":
        return row["peak_mem_allocated_mb"]
    return None if cpu_peak is None else cpu_peak.peak_mb(row["peak_mem_rss_mb"])


def warm_up_pass(method: Any, batch: Any, device: torch.device, notes: dict[str, str]) -> None:
    """One training pass of the trial's model on its first micro-batch, before a CPU trial's idle baseline is read:
    a process's first forward and backward initialise things once (the BLAS library's buffers for these shapes,
    the libraries' lazily built tables): about 1.5 MiB of anonymous memory on tiny, which a baseline read before
    it would count as training's. A method that backpropagates gets its backward through
    `torch.autograd.grad`: the gradients are returned and dropped, never accumulated into `.grad`, so no
    post-accumulate hook runs (SGC's compression, the fused optimizers' steps) and no state of the method's
    changes; a forward-only method gets its forward without gradients. Then the method runs its update's own
    kernels once on throwaway data (`Method.warm_up_kernels`: SGC's triangular solves and batched products set
    up about 3 MiB of MKL's buffers on their first call). Every random generator is restored, so
    the trial trains exactly as it would without it (tests/trial/test_predicted_peak.py)."""
    import torch

    from memft_bench.harness.trial.predicted_peak import preserved_random_state

    model = method.model
    was_training = model.training
    micro = batch.micro_batches[0]
    try:
        with preserved_random_state(device):
            trainable = [p for p in model.parameters() if p.requires_grad] if method.uses_backward else []
            if trainable:
                model.train()  # as training runs it: gradient checkpointing applies only in training mode
                loss = method.loss_fn(model, micro)[0]
                if loss.requires_grad:
                    torch.autograd.grad(loss, trainable, allow_unused=True)
                del loss
            else:
                model.eval()
                with torch.no_grad():
                    method.loss_fn(model, micro)
    except Exception as exc:  # the baseline is then a little colder; the trial goes on
        notes["cpu_warm_up"] = f"the warm-up pass failed ({_short(exc)}): the idle baseline was read without it"
    finally:
        model.train(was_training)
    try:
        with preserved_random_state(device):
            method.warm_up_kernels()  # the update's own kernels (SGC's solves), on throwaway data
    except Exception as exc:
        notes["cpu_warm_up_kernels"] = (f"the method's kernel warm-up failed ({_short(exc)}): the idle baseline was "
                                        "read without it")


def parameter_dtypes(model: torch.nn.Module) -> str:
    """The dtypes the model's parameters are really stored in, with their share of the parameters'
    bytes when there are several: `float32`, or `bfloat16 92%, float32 8%` under bf16-mixed LoRA."""
    nbytes: dict[str, int] = {}
    for p in model.parameters():
        key = str(p.dtype).removeprefix("torch.")
        nbytes[key] = nbytes.get(key, 0) + p.numel() * p.element_size()
    total = sum(nbytes.values()) or 1
    if len(nbytes) == 1:
        return next(iter(nbytes))
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(nbytes.items(), key=lambda kv: -kv[1]))


def trial_device(text: str) -> torch.device:
    """The trial's device, indexed on a GPU (a bare `cuda` from an older spec means the current GPU)."""
    import torch

    device = torch.device(text)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def write_training_started(spec: dict[str, Any], prediction: Any, cpu_peak: CpuTrainingPeak | None) -> None:
    """As training starts, what the runner must still know if the kernel kills this process (its out-of-memory
    killer leaves no row): the predicted peak and, on a CPU, the idle baseline its resident set is read against.
    Next to the row file (`trial_process.training_started_path`); nothing when the spec names none."""
    path = spec.get("training_started_file")
    if not path:
        return
    idle = None if cpu_peak is None or cpu_peak.non_tensor_bytes is None else cpu_peak.non_tensor_bytes / 2**20
    data = {"mem_predicted_peak_mb": None if prediction is None else prediction.peak_bytes / 2**20,
            "cpu_idle_non_tensor_mb": idle}
    with contextlib.suppress(OSError):
        write_json_atomic(Path(path), data)


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, train, measure and evaluate one trial; always returns a row.

    Phases, each with its own peaks: set-up (model, method, data; not measured), the untrained evaluation
    (when the suite asks for it; its memory is freed before training), training, and evaluation (after the
    exact accounting is read, the method frees its gradients and optimizer state first).
    """
    import torch

    from memft_bench.harness.core.precision import Precision, check_supported
    from memft_bench.harness.measure.env import environment
    from memft_bench.harness.measure.glibc_heap import apply_heap_policy
    from memft_bench.harness.measure.memory import CpuTrainingPeak, exact_breakdown
    from memft_bench.harness.measure.timing import StepTimer
    from memft_bench.harness.sources.prompts import build_prompt
    from memft_bench.harness.spec.config import suite_from_data
    from memft_bench.harness.trial import llm_adapters
    from memft_bench.harness.trial.data import VALIDATION, encode_example, load_task, training_batches
    from memft_bench.harness.trial.models import build_model, build_tokenizer, causal_lm_loss
    from memft_bench.harness.trial.predicted_peak import (
        out_of_memory_shortfall,
        predict_trial_peak,
        prediction_columns,
    )
    from memft_bench.harness.trial.train import Diverged, ExtrasRecorder, LossRecorder, ProgressLog, train
    from memft_bench.methods.base import create

    device = torch.device(spec["device"])
    row = empty_row(
        run_id=spec["run_id"], trial_id=spec["trial_id"], suite=spec["suite"]["name"], task=spec["task"],
        method=spec["method"], variant=spec.get("variant") or None, method_params=spec["method_params"],
        seed=spec["seed"], device=str(device), command=spec.get("command"),
        forward_passes_per_step=None, started_at=now(), status="error",
    )
    notes: dict[str, str] = {}
    losses = LossRecorder()
    extras = ExtrasRecorder()
    timer = StepTimer(device)
    method = model = meters = prediction = None
    cpu_peak = heap_policy = None
    phase = "setup"
    try:
        if (spec.get("tuning") or {}).get("unresolved"):  # the search chose nothing: the row says why
            row.update(phase=spec.get("phase"), tuning=spec["tuning"])
            raise BenchError(spec["tuning"]["unresolved"])
        device = trial_device(spec["device"])
        row["device"] = str(device)
        suite = suite_from_data(spec["suite"], "trial spec")
        budget = suite.budget
        precision = Precision(suite.model.precision)
        row.update(model=suite.model.label, precision=precision.name, batch_size=budget.batch_size,
                   time_budget_s=budget.time_s or None, micro_batch_size=budget.micro_batch_size,
                   cutoff_len=budget.cutoff_len,
                   gradient_checkpointing=budget.gradient_checkpointing)  # asked; then what reached the model
        timer.warmup = extras.warmup = budget.timing_warmup_steps
        if device.type == "cuda":
            torch.cuda.set_device(device)
            # Create the CUDA context now, whatever the device index (torch creates it lazily on cuda:0 and
            # eagerly elsewhere), so NVML's idle baseline always includes it and the figures never do.
            torch.empty(1, device=device)
            torch.cuda.synchronize(device)
        check_supported(precision, device)
        if device.type == "cpu":  # before the model exists, so every block of it follows the policy
            heap_policy = apply_heap_policy()
            cpu_peak = CpuTrainingPeak()
        meters = PhaseMeters(device, notes)  # NVML's idle baseline: before the trial's model is on the GPU

        tokenizer = build_tokenizer(suite.model)
        task = load_task(suite.task(spec["task"]), suite, spec["seed"])
        task_spec = suite.task(spec["task"])
        search = spec.get("phase") == "search"
        row.update(phase=spec.get("phase"), tuning=spec.get("tuning"))
        if search and not task.validation:
            raise BenchError(f"task {task.name}: a search trial needs a validation split (validation_size)")
        row.update(data_source=task.source, task_family=task_spec.task_family,
                   scoring=None if task.tokens else {name: scoring_line(task.scoring(name), suite)
                                                     for name in task.tests})
        model = build_model(suite.model, tokenizer, spec["seed"], device)
        method = create(spec["method"], spec["method_params"], causal_lm_loss, spec["seed"], precision)
        method.total_steps = budget.steps  # a schedule that needs the budget (peft's AdaLoRA) reads it in prepare()
        row["forward_passes_per_step"] = method.forward_passes_per_step
        row["gradient_checkpointing"] = gradient_checkpointing(model, method, budget.gradient_checkpointing, notes)
        if suite.evaluation.before_training and method.keeps_base_function and not search:
            # The base model as built (storage dtype), before any method touched it: the same measurement
            # whichever method of the run makes it first.
            phase = "evaluation before training"
            before = untrained_score(model, precision, tokenizer, task, suite, spec.get("untrained_score_file"),
                                     spec["trial_id"])
            phase = "setup"
        method.prepare(model)
        method.apply_precision()
        row["dtype"] = parameter_dtypes(method.model)
        if suite.evaluation.before_training and not method.keeps_base_function and not search:
            phase = "evaluation before training"
            before = untrained_score(method.model, precision, tokenizer, task, suite, None, spec["trial_id"])
        if suite.evaluation.before_training and not search:
            row.update(accuracy_before=sum(before.values()) / len(before), accuracy_per_task_before=before)
        prompt_of = llm_adapters.train_prompt if suite.evaluation.mode == "llm-adapters" else build_prompt
        examples = [encode_example(tokenizer, r, budget.cutoff_len, prompt_of) for r in task.train]
        def batch_stream(on: torch.device | str) -> Any:  # the trial's seeded batches; a second copy is traced
            return training_batches(examples, budget.micro_batch_size, budget.grad_accum, spec["seed"],
                                    tokenizer.pad_token_id, on)

        batches = batch_stream(device)
        phase = "memory prediction"
        prediction = predict_trial_peak(suite, spec["method"], spec["method_params"], batch_stream("cpu"), device,
                                        spec["seed"], notes)
        row.update(prediction_columns(prediction, None))  # kept if training fails; measured after it
        phase = "training"
        if cpu_peak is not None:
            warm_up_pass(method, next(batch_stream("cpu")), device, notes)
        meters.start(cpu_peak)
        write_training_started(spec, prediction, cpu_peak)
        t0 = time.perf_counter()
        try:
            train(method, batches, budget, [timer, losses, extras, ProgressLog(budget.steps)])
            row["status"] = "ok"
        except Diverged as exc:
            row.update(status="diverged", reason=str(exc))
        row["train_time_s"] = time.perf_counter() - t0
        row.update(training_peaks(meters.stop()))
        row.update(prediction_columns(prediction, measured_training_peak(row, device, cpu_peak)))
        if cpu_peak is not None:
            row["mem_cpu_library_pages_mb"] = cpu_peak.library_pages_mb
        row.update(exact_breakdown(method.model, method.state_elements(), method.state_bytes()))
        if row["peak_mem_allocated_mb"] is not None:
            accounted = row["mem_weights_mb"] + row["mem_grads_mb"] + row["mem_optimizer_mb"]
            row["mem_other_mb"] = max(0.0, row["peak_mem_allocated_mb"] - accounted)

        if row["status"] == "ok":
            phase = "evaluation"
            method.release_training_state()
            del batches
            meters.start()
            t0 = time.perf_counter()
            if search:  # the validation split only: a search never scores a test item
                per_task, items, lines = evaluate_all(method.model, tokenizer, task, suite, precision,
                                                      spec["trial_id"], {VALIDATION: task.validation})
                row.update(validation_accuracy=per_task[VALIDATION], validation_items=items[VALIDATION],
                           validation_loss=validation_loss(method.model, tokenizer, task.validation, suite, precision,
                                                           prompt_of))
            else:
                per_task, items, lines = evaluate_all(method.model, tokenizer, task, suite, precision,
                                                      spec["trial_id"])
                row.update(accuracy=sum(per_task.values()) / len(per_task), accuracy_per_task=per_task,
                           eval_items=items)
            row["eval_time_s"] = time.perf_counter() - t0
            if task.tokens:
                notes["accuracy"] = (f"not meaningful: next-token accuracy on uniformly random tokens (chance 1/"
                                     f"{suite.model.vocab_size}) of a randomly initialised model; the row is read "
                                     "for memory and time")
            peaks = meters.stop()
            if spec.get("predictions_file") and lines:  # a tokens task has no items to record
                from memft_bench.harness.results import predictions

                predictions.write(Path(spec["predictions_file"]), lines)
                row["predictions"] = predictions.relative_path(spec["trial_id"])
            row.update(peak_mem_rss_eval_mb=peaks["rss"], peak_mem_allocated_eval_mb=peaks["allocated"],
                       peak_mem_nvml_eval_mb=peaks["nvml"])
    except BenchError as exc:
        row.update(status="error", reason=str(exc))
    except Exception as exc:
        traceback.print_exc()  # into the trial's log; the row gets one line
        status = "oom" if is_out_of_memory(exc) else "error"
        row.update(status=status, reason=f"during {phase}: {_short(exc)}")
        if phase == "training" and meters is not None and row["peak_mem_rss_mb"] is None:
            with contextlib.suppress(Exception):  # what training reached before it failed (an OOM's peak)
                row.update(training_peaks(meters.stop()))
        measured_so_far = measured_training_peak(row, device, cpu_peak) if phase == "training" else None
        if status == "oom" and phase == "training" and (shortfall := out_of_memory_shortfall(prediction, device,
                                                                                             measured_so_far, exc)):
            row["reason"] += f"; {shortfall}"
    finally:
        row["steps"] = len(losses.losses)
        row["tokens_seen"] = sum(timer.step_tokens)
        row["target_tokens_seen"] = sum(timer.step_target_tokens)
        if losses.losses:
            row["loss_first"], row["loss_last"] = losses.losses[0], losses.losses[-1]
            stride = max(1, len(losses.losses) // 200)
            row["loss_curve"] = losses.losses[::stride]
            # per-step wall time at the same steps (warm-up included, unlike the median): for trackers' step plots
            row["step_time_ms_curve"] = [round(s * 1000, 3) for s in timer.step_seconds[::stride]] or None
        row.update(timer.summary())
        row.pop("timed_steps", None)
        metrics = extras.means()
        if "omp_time_ms" in metrics and row["step_time_ms_median"]:
            metrics["omp_share_of_step"] = metrics["omp_time_ms"] / row["step_time_ms_median"]
        row["method_metrics"] = metrics or None
        if method is not None:
            if row["method_params"] is not None:
                row["method_params"] = method.hyperparameters()
            row["method_info"] = method.info() or None
        if meters is not None:
            meters.close()
        row["meter_notes"] = notes or None
        row["finished_at"] = now()
        row["env"] = environment(str(device))
        if heap_policy is not None:
            row["env"]["cpu_heap"] = heap_policy
    return row


def gradient_checkpointing(model: torch.nn.Module, method: Any, wanted: bool, notes: dict[str, str]) -> bool | None:
    """Apply `budget.gradient_checkpointing` to the built model, before the method prepares it, the same way for
    every method that backpropagates; returns the row's value: what reached the model (True when its decoder
    layers recompute their activations), or None where it does not apply (a zeroth-order method has no backward,
    so there are no activations kept for one)."""
    from memft_bench.harness.trial.models import enable_gradient_checkpointing

    if not wanted:
        return False
    if not method.uses_backward:
        notes["gradient_checkpointing"] = (f"does not apply: {type(method).__name__} runs forward passes only, "
                                           "so it keeps no activations for a backward pass")
        return None
    layers = enable_gradient_checkpointing(model)
    notes["gradient_checkpointing"] = f"on: {layers} decoder layers recompute their activations in backward " \
                                      "(non-reentrant)"
    print(f"gradient checkpointing: {notes['gradient_checkpointing']}", flush=True)
    return layers > 0


def evaluate_all(model, tokenizer, task, suite, precision, trial_id: str,
                 sets: dict[str, list[dict[str, Any]]] | None = None,
                 ) -> tuple[dict[str, float], dict[str, int], list[dict[str, Any]]]:
    """Accuracy and item count of every test set of the trial's task (or of `sets`: the validation split), and the
    per-item records, in the suite's evaluation mode, under the precision policy's autocast (the model holds
    weights of two dtypes under bf16-mixed)."""
    from memft_bench.harness.core.precision import device_type

    with precision.autocast(device_type(model)):
        return _evaluate_all(model, tokenizer, task, suite, trial_id, sets or task.tests)


def validation_loss(model, tokenizer, records, suite, precision, prompt_of) -> float:
    """Mean loss per response token on the validation records (the tie-break between equally accurate
    configurations), under the precision policy's autocast."""
    from memft_bench.harness.core.precision import device_type
    from memft_bench.harness.trial.evaluate import mean_response_loss

    with precision.autocast(device_type(model)):
        return mean_response_loss(model, tokenizer, records, suite.budget.cutoff_len, suite.evaluation.batch_size,
                                  prompt_of)


def _evaluate_all(model, tokenizer, task, suite, trial_id: str, sets: dict[str, list[dict[str, Any]]],
                  ) -> tuple[dict[str, float], dict[str, int], list[dict[str, Any]]]:
    from memft_bench.harness.results.predictions import item_lines
    from memft_bench.harness.trial import llm_adapters
    from memft_bench.harness.trial.evaluate import evaluate_generate, evaluate_loglik

    per_task, items, lines = {}, {}, []
    for test_name, records in sets.items():
        if task.tokens:  # random token ids: next-token accuracy, chance level by construction (no items)
            from memft_bench.harness.trial.models import next_token_accuracy

            correct, total = next_token_accuracy(model, [r["token_ids"] for r in records],
                                                 suite.evaluation.batch_size, next(model.parameters()).device)
            per_task[test_name], items[test_name] = correct / max(total, 1), total
            print(f"evaluated {test_name}: next-token accuracy {per_task[test_name]:.4f} on {total} tokens "
                  "(random tokens: not meaningful)", flush=True)
            continue
        scoring = task.scoring(test_name)
        if scoring.generative:  # a final number, a letter, an exact match or a pattern: read from generated text
            result = evaluate_generate(model, tokenizer, records, lambda _record, text, s=scoring: s.extract(text),
                                       suite.evaluation.batch_size, suite.budget.cutoff_len,
                                       suite.evaluation.max_new_tokens, scoring.is_correct)
        elif suite.evaluation.mode == "llm-adapters":
            result = llm_adapters.evaluate(model, tokenizer, records, extractor(task, test_name))
        elif suite.evaluation.mode == "generate":
            result = evaluate_generate(model, tokenizer, records, extractor(task, test_name),
                                       suite.evaluation.batch_size, suite.budget.cutoff_len,
                                       suite.evaluation.max_new_tokens)
        else:
            result = evaluate_loglik(model, tokenizer, records, lambda r, n=test_name: task.options(n, r),
                                     suite.evaluation.batch_size, suite.budget.cutoff_len)
        per_task[test_name], items[test_name] = result.accuracy, result.n_items
        lines += item_lines(trial_id, test_name, task.indices(test_name), records, result.details)
        print(f"evaluated {test_name}: accuracy {result.accuracy:.4f} on {result.n_items} items", flush=True)
    return per_task, items, lines


def untrained_score(model, precision, tokenizer, task, suite, shared_file: str | None,
                    trial_id: str) -> dict[str, float]:
    """Per-task accuracy of the model before training, measured once per run and shared across methods.

    Every method whose `prepare()` keeps the base model's function starts from the same untrained model,
    so its score is one measurement (a deterministic one, made on the model as built, before `prepare`),
    not one per method: the first trial writes it to `shared_file`, later trials of the run read it.
    Others (`shared_file` None) are scored on their own prepared model.
    """
    path = Path(shared_file) if shared_file else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            print(f"untrained score: reused {path.name} (measured by {saved['trial_id']})", flush=True)
            return saved["accuracy_per_task"]
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: measure again and overwrite
    per_task, items, lines = evaluate_all(model, tokenizer, task, suite, precision, trial_id)
    if path is not None:
        from memft_bench.harness.results import predictions

        path.parent.mkdir(parents=True, exist_ok=True)
        predictions.write(path.with_suffix(".predictions.jsonl"), lines)  # the untrained model's items
        write_json_atomic(path, {"accuracy_per_task": per_task, "eval_items": items,
                                 "trial_id": trial_id})
    return per_task


def scoring_line(scoring: Any, suite: Any) -> str:
    """How a test set is scored, for its row: the rule, and how the answer was produced (decoding and length)."""
    from memft_bench.harness.trial.llm_adapters import MAX_NEW_TOKENS, NUM_BEAMS

    evaluation = suite.evaluation
    if scoring.generative or evaluation.mode == "generate":
        how = f"greedy decoding, at most {evaluation.max_new_tokens} new tokens"
    elif evaluation.mode == "llm-adapters":
        how = f"LLM-Adapters' protocol: {NUM_BEAMS}-beam search, at most {MAX_NEW_TOKENS} new tokens"
    else:
        how = "the option with the highest log-likelihood"
    return f"{scoring.describe()}; {how}"


def extractor(task, test_name: str):
    """How an answer is read out of generated text: LLM-Adapters' rule for its tasks, else the first option."""
    from memft_bench.harness.sources.commonsense import ANSWER_WORDS, extract_answer
    from memft_bench.harness.trial.evaluate import first_option_in

    if test_name in ANSWER_WORDS and test_name not in task.scorings:  # not a file task that shares the name
        return lambda record, text: extract_answer(test_name, text)
    return lambda record, text: first_option_in(text, task.options(test_name, record))


def die_with_runner() -> None:
    """Get SIGKILL when the runner dies (Linux), so a killed sweep leaves no orphan trial running."""
    runner_pid = os.environ.get("BENCH_RUNNER_PID")
    if not runner_pid or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != int(runner_pid):  # the runner died before the line above took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    die_with_runner()
    # bitsandbytes (imported by peft and galore-torch) probes for the hub's `kernels` package, finds our
    # `kernels/` first and logs a harmless failure into every trial log; keep the logs to what matters.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if len(argv) != 2:
        print("usage: python -m memft_bench.harness.trial SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    spec.setdefault("training_started_file", f"{argv[1]}.training")  # trial_process.training_started_path
    if spec.get("method_module"):
        importlib.import_module(spec["method_module"])  # a method registered outside the built-ins
    row = run_trial(spec)
    write_json_atomic(Path(argv[1]), row)
    return 0

