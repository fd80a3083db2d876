"""The predicted training peak (`harness/trial/memory_trace.py`) against the measured one, per method, on a CPU.

    python benchmarks/memory_prediction.py --cases tiny,tiny-tokens-64 --out reports/memory-prediction-cpu
    python benchmarks/memory_prediction.py --report-only --out reports/memory-prediction-cpu

Each case is a suite at one length, run with gradient checkpointing off and on (on only for methods that run
backward: a zeroth-order method's trial is the same either way). For every (case, method, checkpointing):

1. the prediction: the method's step traced on fake tensors (`predict_training_peak`) with the batches the
   trial itself trains on (`task_batches`: its first batch and the longest of its steps);
2. the measured peak of a real trial, run by the harness's own `worker.run_trial` in a fresh process, twice:
   - RSS: the row's own `peak_mem_training_mb`, as the harness measures every CPU trial (its process started
     with glibc's mmap threshold fixed; the peak RSS of training above the warmed process's non-tensor resident
     set just before it, less the library code training paged in, `mem_cpu_library_pages_mb`). A record from
     before that measurement (glibc's dynamic threshold; the non-tensor resident set when training started, cold)
     keeps it as `rss_dynamic` when `--remeasure` measures it again;
   - the allocator: the same trial under `torch.profiler` with `profile_memory=True`; the peak of the running
     sum of every allocation and free of torch's CPU allocator during training, plus the tensor bytes alive at
     its start. The profiler's own buffers would inflate RSS, so this is a second process.
   The evaluation phase is skipped in both (it comes after the training peak is read), and so is the untrained
   evaluation before training.

Results are appended to OUT/records.jsonl (a case already recorded is skipped, so an interrupted run resumes)
and OUT/README.md is written from all records. Measure one trial at a time: two processes at once on a
2-core machine would share its memory bandwidth, not its memory, but the timings beside would suffer.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from string import Template
from typing import Any

MiB = 2**20
PARTS = ("weights", "state", "batch", "forward", "backward", "update")
WORK = Path("/tmp/memory-prediction-work")  # trial specs, logs and run folders (not kept)
CORE = ["full", "lora", "dora", "galore", "mezo", "sgc", "subzero", "rso", "smt"]
FORWARD_ONLY = {"mezo", "subzero"}

# tiny's model and method options at a real length: its own tasks are 54 tokens whatever cutoff_len says, so
# the length axis uses random token ids cutoff_len long (every position a target) on the same shapes.
TINY_TOKENS = """\
name: tiny-tokens
description: "tiny's shapes (hidden 128, 2 layers, vocabulary 110), random init, random tokens cutoff_len long"
model:
  kind: llama-shape
  hidden_size: 128
  intermediate_size: 256
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 4
  vocab_size: 110
  max_position_embeddings: 512
  precision: fp32
tasks:
  - {name: tokens, source: tokens, train_size: 96, test_size: 4}
budget:
  steps: 5
  micro_batch_size: 16
  grad_accum: 1
  cutoff_len: 64
  lr_schedule: constant
  timing_warmup_steps: 1
evaluation:
  mode: loglik
  batch_size: 4
seeds: [0]
data_seed: 1234
default_methods: [full, lora, dora, galore, mezo, sgc, subzero, rso, smt]
methods:
  full: {lr: 3.0e-3}
  lora: {lr: 1.0e-3, r: 8, alpha: 16}
  dora: {lr: 1.0e-3, r: 8, alpha: 16}
  galore: {lr: 3.0e-3}
  mezo: {lr: 1.0e-4, eps: 1.0e-3}
  sgc: {lr: 1.0e-2, k: 128, s: 8}
  subzero: {lr: 1.0e-4, eps: 1.0e-3, rank: 8}
  rso: {lr: 3.0e-3, rank: 8, inner_steps: 50}
  smt: {lr: 3.0e-3, block_size: 32, budget_ratio: 0.1, warmup_steps: 20}
"""

# smollm2-135m's two models: its shapes (hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocabulary 49152,
# tied) with random values, and the pre-trained model itself.
SMOLLM2_SHAPES = """\
  kind: llama-shape
  hidden_size: 576
  intermediate_size: 1536
  num_hidden_layers: 30
  num_attention_heads: 9
  num_key_value_heads: 3
  vocab_size: 49152
  tie_word_embeddings: true
  max_position_embeddings: 8192"""
SMOLLM2_PRETRAINED = """\
  kind: pretrained
  path: smollm2-135m"""
SMOLLM2_SUITE = Template("""\
name: $name
description: "smollm2-135m's shapes, random init, random tokens cutoff_len long"
model:
$model
  precision: fp32
tasks:
  - $task
budget:
  steps: 3
  micro_batch_size: $micro_batch_size
  grad_accum: 1
  cutoff_len: 256
  lr_schedule: constant
  timing_warmup_steps: 1
evaluation:
  mode: loglik
  batch_size: 2
seeds: [0]
data_seed: 1234
default_methods: [full, lora, dora, galore, mezo, sgc, subzero, rso, smt]
methods:
  full: {lr: 2.0e-5}
  lora: {lr: 1.0e-3, r: 8, alpha: 16, dropout: 0.05}
  dora: {lr: 1.0e-3, r: 8, alpha: 16, dropout: 0.05}
  galore: {lr: 1.0e-4, rank: 8, update_proj_gap: 50, scale: 2.0}
  mezo: {lr: 1.0e-6, eps: 1.0e-3}
  sgc: {lr: 1.0e-3, k: 128, s: 8, target_modules: [v_proj]}
  subzero: {lr: 1.0e-6, eps: 1.0e-3, rank: 8}
  rso: {lr: 1.0e-3, rank: 8, inner_steps: 40}
  smt: {lr: 1.0e-4, block_size: 64, budget_ratio: 0.01, warmup_steps: 10}
""")
# the shapes on random tokens: its length axis, with the logits of every position (the commonsense data is not on
# every machine, and its answers are a few tokens)
SMOLLM2_TOKENS = SMOLLM2_SUITE.substitute(name="smollm2-tokens", model=SMOLLM2_SHAPES, micro_batch_size=2,
                                          task="{name: tokens, source: tokens, train_size: 16, test_size: 2}")
# the pre-trained model on tiny's synthetic "kind" task (its own tokenizer: about 50 tokens a record, the answer's
# few tokens the targets): the commonsense suite's model with a task that needs no download
SMOLLM2_KIND = SMOLLM2_SUITE.substitute(name="smollm2-kind", model=SMOLLM2_PRETRAINED, micro_batch_size=4,
                                        task="{name: kind, generator: kind, train_size: 64, test_size: 4}")
# the layer-7b suite's decoder layer (hidden 4096, MLP 11008, 32 heads) on random tokens cutoff_len long: its own
# task is about 54 tokens whatever cutoff_len says, so its length axis needs tokens (a vocabulary of 128 ids)
LAYER_7B_TOKENS = """\
name: layer-7b-tokens
description: "One LLaMA-7B-shaped decoder layer, random init, random tokens cutoff_len long"
model:
  kind: llama-shape
  hidden_size: 4096
  intermediate_size: 11008
  num_hidden_layers: 1
  num_attention_heads: 32
  num_key_value_heads: 32
  vocab_size: 128
  max_position_embeddings: 512
  precision: fp32
tasks:
  - {name: tokens, source: tokens, train_size: 16, test_size: 2}
budget:
  steps: 4
  micro_batch_size: 2
  grad_accum: 1
  cutoff_len: 256
  lr_schedule: constant
  timing_warmup_steps: 1
evaluation:
  mode: loglik
  batch_size: 2
seeds: [0]
data_seed: 1234
default_methods: [full, lora, dora, galore, mezo, sgc, subzero, rso, smt]
trial_timeout_s: 1800
methods:
  full: {lr: 1.0e-4}
  lora: {lr: 1.0e-3, r: 8, alpha: 16}
  galore: {lr: 1.0e-3}
  mezo: {lr: 1.0e-6, eps: 1.0e-3}
  sgc: {lr: 1.0e-3}
  dora: {lr: 1.0e-3, r: 8, alpha: 16}
  subzero: {lr: 1.0e-6, eps: 1.0e-3, rank: 8}
  rso: {lr: 1.0e-3, rank: 8, inner_steps: 2}
  smt: {lr: 1.0e-3, block_size: 256, budget_ratio: 0.0084, warmup_steps: 2}
"""
SUITES = {"tiny-tokens": TINY_TOKENS, "smollm2-tokens": SMOLLM2_TOKENS, "smollm2-kind": SMOLLM2_KIND,
          "layer-7b-tokens": LAYER_7B_TOKENS}

#: name -> (suite, --set overrides, model label, steps)
CASES: dict[str, tuple[str, list[str], str, int]] = {
    "tiny": ("tiny", [], "tiny (own tasks: 54 tokens, 7 targets a row)", 5),
    "tiny-tokens-64": ("@tiny-tokens", ["budget.cutoff_len=64"], "tiny shapes, random tokens 64", 5),
    "tiny-tokens-256": ("@tiny-tokens", ["budget.cutoff_len=256"], "tiny shapes, random tokens 256", 5),
    "smollm2-kind": ("@smollm2-kind", [], "smollm2-135m, synthetic task (about 50 tokens, 6 targets a row)", 3),
    "smollm2-tokens-256": ("@smollm2-tokens", [], "smollm2-135m shapes, random tokens 256", 3),
    "layer-7b-64": ("layer-7b", [], "layer-7b (B 2, cutoff 64)", 4),
    "layer-7b-256": ("@layer-7b-tokens", ["budget.cutoff_len=256"], "layer-7b shapes, random tokens 256", 4),
}


# -- inside a measured trial's process ---------------------------------------------------------------------
def _status_bytes(field: str = "VmRSS") -> int:
    """A memory line of /proc/self/status (VmRSS, RssAnon, RssFile, VmHWM), in bytes."""
    from memft_bench.harness.measure.memory import status_bytes

    return status_bytes(field) or 0


def _vm_rss_bytes() -> int:
    return _status_bytes("VmRSS")


def measure(spec_file: Path, out_file: Path, profile: bool) -> None:
    """Run one trial as the worker does, recording the RSS and the tensors alive when training starts (and with
    `profile`, the allocator's peak over training); evaluation is skipped."""
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from memft_bench.harness.measure.memory import live_cpu_tensor_bytes, page_in_cpu_tensors
    from memft_bench.harness.trial import train as train_module
    from memft_bench.harness.trial import worker

    record: dict[str, Any] = {"rss_process_start": _vm_rss_bytes()}
    original_start = worker.PhaseMeters.start

    def start(self: Any, *args: Any) -> None:
        first = "rss_train_start" not in record
        if first:
            page_in_cpu_tensors()
        original_start(self, *args)
        if first:  # the first phase measured is training
            record["tensors_train_start"] = live_cpu_tensor_bytes()
            gc.collect()
            record["rss_train_start"] = _vm_rss_bytes()
            record["rss_file_train_start"] = _status_bytes("RssFile")
            record["rss_anon_train_start"] = _status_bytes("RssAnon")

    original_stop = worker.PhaseMeters.stop

    def stop(self: Any, *args: Any) -> dict:
        if "rss_file_train_end" not in record:  # file-backed pages (library code) the training phase paged in
            record["rss_file_train_end"] = _status_bytes("RssFile")
            record["hwm_train_end"] = _status_bytes("VmHWM")
        return original_stop(self, *args)

    worker.PhaseMeters.start = start  # type: ignore[method-assign]
    worker.PhaseMeters.stop = stop  # type: ignore[method-assign]
    worker.evaluate_all = lambda *a, **k: ({"skipped": 0.0}, {"skipped": 0}, [])  # type: ignore[assignment]
    if profile:
        original_train = train_module.train

        def profiled_train(method: Any, batches: Any, budget: Any, callbacks: Any) -> int:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                done = original_train(method, batches, budget, callbacks)
            events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]")
            current = peak = 0
            for _, nbytes in events:
                current += nbytes
                peak = max(peak, current)
            record["allocator_peak_increment"] = peak
            return done

        train_module.train = profiled_train  # type: ignore[assignment]
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    row = worker.run_trial(spec)
    record["row"] = {k: row.get(k) for k in ("status", "reason", "peak_mem_rss_mb", "mem_weights_mb", "mem_grads_mb",
                                              "mem_optimizer_mb", "steps", "gradient_checkpointing", "method_info",
                                              "train_time_s", "meter_notes", "peak_mem_training_mb",
                                              "mem_cpu_library_pages_mb", "mem_predicted_peak_mb",
                                              "step_time_ms_median")}
    record["cpu_heap"] = (row.get("env") or {}).get("cpu_heap")
    out_file.write_text(json.dumps(record), encoding="utf-8")


# -- the driver ----------------------------------------------------------------------------------------------
def load_case(name: str, out: Path) -> tuple[Any, str, int]:
    from memft_bench.harness.spec.config import apply_overrides, load_suite

    suite_name, overrides, label, steps = CASES[name]
    if suite_name.startswith("@"):
        path = out / "suites" / f"{suite_name[1:]}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SUITES[suite_name[1:]], encoding="utf-8")
        suite_name = str(path)
    suite = load_suite(suite_name)
    suite = apply_overrides(suite, [*overrides, f"budget.steps={steps}"])
    return suite, label, steps


def trial_spec(suite: Any, method: str, run_dir: Path) -> dict[str, Any]:
    from memft_bench.harness.run import planning

    plan = planning.plan(suite, [method], run_dir, "cpu")
    return plan.trials[0].spec


def run_measurement(spec: dict[str, Any], work: Path, profile: bool, timeout_s: float,
                    env_extra: dict[str, str] | None = None, name: str | None = None) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    name = name or ("profiled" if profile else "rss")
    spec_file, out_file = work / "spec.json", work / f"{name}.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    from memft_bench.harness.measure.glibc_heap import heap_environment

    # as the runner starts a CPU trial (`run/trial_process.py`): glibc's heap policy from the first allocation
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", **heap_environment(), **(env_extra or {}))
    command = [sys.executable, __file__, "--measure", str(spec_file), str(out_file)]
    command += ["--profile"] if profile else []
    with open(work / f"{name}.log", "w", encoding="utf-8") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False)
    if not out_file.is_file():
        return {"error": f"no result; see {work}"}
    return json.loads(out_file.read_text(encoding="utf-8"))


def prediction(suite: Any, method: str, params: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The trace on the trial's own batches: its first, and the one with the most tokens among its steps."""
    from memft_bench.harness.trial.memory_trace import CannotTrace, peak_batches, predict_training_peak

    try:
        p = predict_training_peak(suite, method, params, batches=peak_batches(suite, spec["task"], spec["seed"]),
                                  seed=spec["seed"])
    except CannotTrace as exc:
        return {"error": str(exc)}
    return p.to_dict()


def run_cases(cases: list[str], methods: list[str], out: Path, timeout_s: float,
              checkpointed: dict[str, list[str]] | None = None, profile: bool = True,
              checkpointing_settings: tuple[bool, ...] = (False, True)) -> None:
    """Every case x method, checkpointing off then on (on: the methods of `checkpointed[case]`, default every
    method that runs backward); without `profile`, the RSS only (GaLore's SVDs of a 7B layer take 20 minutes
    a process on 2 cores)."""
    records_file = out / "records.jsonl"
    done = set()
    if records_file.is_file():
        for line in records_file.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            done.add((r["case"], r["method"], r["checkpointing"]))
    for case in cases:
        for checkpointing in checkpointing_settings:
            suite, label, steps = load_case(case, out)
            if checkpointing:
                from memft_bench.harness.spec.config import apply_overrides

                suite = apply_overrides(suite, ["budget.gradient_checkpointing=true"])
            for method in methods:
                if checkpointing and (method in FORWARD_ONLY or method not in (checkpointed or {}).get(case, methods)):
                    continue
                if (case, method, checkpointing) in done:
                    continue
                work = WORK / case / f"{method}-{'gc' if checkpointing else 'nogc'}"
                spec = trial_spec(suite, method, work / "run")
                t0 = time.perf_counter()
                predicted = prediction(suite, method, spec["method_params"], spec)
                t1 = time.perf_counter()
                rss = run_measurement(spec, work, False, timeout_s)
                profiled = run_measurement(spec, work, True, timeout_s) if profile else \
                    {"skipped": "not profiled (--no-profile)"}
                record = {"case": case, "model": label, "method": method, "checkpointing": checkpointing,
                          "cutoff_len": suite.budget.cutoff_len, "micro_batch_size": suite.budget.micro_batch_size,
                          "steps": steps, "predicted": predicted, "prediction_s": t1 - t0, "rss": rss,
                          "profiled": profiled, "measure_s": time.perf_counter() - t1}
                with open(records_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                print(summary_line(record), flush=True)
                write_report(out)


def remeasure(out: Path, cases: list[str], methods: list[str], timeout_s: float, again: bool = False) -> None:
    """Measure the RSS of the recorded trials of `cases` again with the harness as it is now (its heap policy and
    warm baseline), keeping the first measurement, taken under glibc's dynamic mmap threshold, as `rss_dynamic`.
    `again`: also the trials measured under the heap policy already (after a change to the warm-up), replacing
    their RSS measurement."""
    records_file = out / "records.jsonl"
    records = [json.loads(line) for line in records_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in records:
        measured_now = "rss_dynamic" in r or r["rss"].get("cpu_heap")
        if r["case"] not in cases or r["method"] not in methods or (measured_now and not again):
            continue  # re-measured already, or measured by the harness as it is
        suite, _, _ = load_case(r["case"], out)
        if r["checkpointing"]:
            from memft_bench.harness.spec.config import apply_overrides

            suite = apply_overrides(suite, ["budget.gradient_checkpointing=true"])
        work = WORK / r["case"] / f"{r['method']}-{'gc' if r['checkpointing'] else 'nogc'}"
        spec = trial_spec(suite, r["method"], work / "run")
        if measured_now:
            r["rss"] = run_measurement(spec, work, False, timeout_s)
        else:
            r["rss_dynamic"], r["rss"] = r["rss"], run_measurement(spec, work, False, timeout_s)
        print(summary_line(r), flush=True)
        records_file.write_text("".join(json.dumps(x) + "\n" for x in records), encoding="utf-8")
        write_report(out)


def repredict(out: Path) -> None:
    records_file = out / "records.jsonl"
    records = [json.loads(line) for line in records_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in records:
        suite, _, _ = load_case(r["case"], out)
        if r["checkpointing"]:
            from memft_bench.harness.spec.config import apply_overrides

            suite = apply_overrides(suite, ["budget.gradient_checkpointing=true"])
        spec = trial_spec(suite, r["method"], WORK / "repredict")
        t0 = time.perf_counter()
        r["predicted"] = prediction(suite, r["method"], spec["method_params"], spec)
        r["prediction_s"] = time.perf_counter() - t0
        print(summary_line(r), flush=True)
    records_file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


# -- the report ----------------------------------------------------------------------------------------------
def _rss_peak(rss: dict[str, Any]) -> float | None:
    """The RSS-measured training peak of a measurement (MiB): the row's own `peak_mem_training_mb` where the
    harness reported one; for a record older than that column, the peak RSS less the non-tensor resident set
    when training started."""
    row = rss.get("row") or {}
    if "peak_mem_training_mb" in row:
        return row["peak_mem_training_mb"]
    if row.get("peak_mem_rss_mb") and "rss_train_start" in rss:
        return row["peak_mem_rss_mb"] - (rss["rss_train_start"] - rss["tensors_train_start"]) / MiB
    return None


def figures(record: dict[str, Any]) -> dict[str, float | None]:
    """predicted, RSS-measured (as the harness measures it now, and as it did under glibc's dynamic mmap
    threshold with a cold baseline) and allocator-measured training peaks (MiB), the prediction's error against
    each (%), and the library code training paged in (left out of the harness's figure)."""
    p, rss, prof = record["predicted"], record["rss"], record["profiled"]
    out: dict[str, float | None] = dict.fromkeys(("predicted", "rss", "rss_dynamic", "allocator", "library_pages",
                                                  "err_rss", "err_rss_dynamic", "err_allocator"))
    if "peak_bytes" in p:
        out["predicted"] = p["peak_bytes"] / MiB
    if "rss_dynamic" in record or "peak_mem_training_mb" in (rss.get("row") or {}):  # the harness's measurement
        out["rss"] = _rss_peak(rss)
        out["library_pages"] = (rss.get("row") or {}).get("mem_cpu_library_pages_mb")
        out["rss_dynamic"] = _rss_peak(record["rss_dynamic"]) if "rss_dynamic" in record else None
    else:  # a record from before the heap policy, not re-measured yet
        out["rss_dynamic"] = _rss_peak(rss)
    if "allocator_peak_increment" in prof:
        out["allocator"] = (prof["tensors_train_start"] + prof["allocator_peak_increment"]) / MiB
    for key in ("rss", "rss_dynamic", "allocator"):
        if out["predicted"] is not None and out[key]:
            out[f"err_{key}"] = 100 * (out["predicted"] - out[key]) / out[key]
    return out


def summary_line(record: dict[str, Any]) -> str:
    f = figures(record)
    cells = [f"{record['case']:16s} {record['method']:8s} gc={'on ' if record['checkpointing'] else 'off'}"]
    for key in ("predicted", "rss", "rss_dynamic", "allocator", "library_pages"):
        cells.append(f"{key} {f[key]:.1f}" if f[key] is not None else f"{key} -")
    for key in ("err_rss", "err_rss_dynamic", "err_allocator"):
        cells.append(f"{key} {f[key]:+.1f}%" if f[key] is not None else f"{key} -")
    if "error" in record["predicted"]:
        cells.append(record["predicted"]["error"][:120])
    return "  ".join(cells)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def write_report(out: Path) -> None:
    records_file = out / "records.jsonl"
    if not records_file.is_file():
        return
    records = [json.loads(line) for line in records_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for r in records:
        f = figures(r)
        p = r["predicted"]
        at = p.get("at_peak", {})
        phase = f"{p.get('peak_phase', '?')} (step {p.get('peak_step', '?') + 1 if 'peak_step' in p else '?'})"
        shapes = p.get("batch_shapes") or []
        tokens = f"{shapes[-1][1]}x{shapes[-1][2]}, {shapes[-1][3]} targets" if shapes else "–"
        rows.append([r["method"], r["model"], tokens, "on" if r["checkpointing"] else "off", _fmt(f["predicted"]),
                     _fmt(f["rss"]), _fmt(f["err_rss"], "+.1f"), _fmt(f["library_pages"]), _fmt(f["rss_dynamic"]),
                     _fmt(f["err_rss_dynamic"], "+.1f"), _fmt(f["allocator"]), _fmt(f["err_allocator"], "+.1f"),
                     " / ".join(_fmt(at.get(k, 0) / MiB) for k in PARTS) if at else p.get("error", "–")[:80],
                     phase, _fmt(r.get("prediction_s"), ".1f")])
    from tabulate import tabulate

    table = tabulate(rows, headers=["method", "model", "batch (rows x length, targets)", "checkpointing",
                                    "predicted MiB", "measured MiB (RSS: the row's peak_mem_training_mb)",
                                    "error % (RSS)", "library code MiB (left out)",
                                    "before: RSS under glibc's dynamic threshold, cold baseline", "error %",
                                    "measured MiB (allocator)", "error % (allocator)",
                                    "at the peak: " + " / ".join(PARTS) + " MiB", "peak in",
                                    "prediction s"], tablefmt="github")
    counts = []
    for key, what in (("err_rss", "the RSS-measured peak (the harness's `peak_mem_training_mb`)"),
                      ("err_rss_dynamic", "the RSS as measured before the heap policy (glibc's dynamic threshold, "
                                          "cold baseline)"),
                      ("err_allocator", "the allocator-measured peak")):
        errors = [figures(r)[key] for r in records if figures(r)[key] is not None]
        counts.append(f"{sum(abs(e) <= 10 for e in errors)} of {len(errors)} rows within 10 % of {what}")
    head = (out / "README.head.md").read_text(encoding="utf-8") if (out / "README.head.md").is_file() else ""
    text = (head + "\n## Predicted against measured\n\n" + "; ".join(counts) + ". Error = (predicted - measured) / "
            "measured. Generated by `benchmarks/memory_prediction.py` from `records.jsonl`.\n\n" + table + "\n")
    (out / "README.md").write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="tiny", help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--methods", default=",".join(CORE))
    parser.add_argument("--out", type=Path, default=Path("reports/memory-prediction-cpu"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measured trial")
    parser.add_argument("--checkpointed", action="append", default=[], metavar="CASE=M1,M2",
                        help="measure only these methods with gradient checkpointing on in CASE (repeatable)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-profile", action="store_true", help="measure the RSS only, not the allocator's peak "
                        "(a second process: GaLore on the 7B layer spends 20 minutes in SVDs in each)")
    parser.add_argument("--checkpointing", choices=["both", "off", "on"], default="both")
    parser.add_argument("--remeasure", action="store_true", help="measure the RSS of the recorded trials of --cases "
                        "(and --methods) again with the harness as it is, keeping the first measurement as "
                        "rss_dynamic (glibc's dynamic mmap threshold, cold baseline)")
    parser.add_argument("--again", action="store_true", help="with --remeasure: also the trials already measured "
                        "under the heap policy, replacing that measurement (after a change to the warm-up)")
    parser.add_argument("--repredict", action="store_true", help="recompute the predictions of the records kept "
                        "(after a change to the trace), keeping their measurements")
    parser.add_argument("--measure", nargs=2, type=Path, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], args.measure[1], args.profile)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.repredict:
        repredict(args.out)
    elif args.remeasure:
        remeasure(args.out, args.cases.split(","), args.methods.split(","), args.timeout, args.again)
    elif not args.report_only:
        checkpointed = {case: names.split(",") for case, _, names in (c.partition("=") for c in args.checkpointed)}
        settings = {"both": (False, True), "off": (False,), "on": (True,)}[args.checkpointing]
        run_cases(args.cases.split(","), args.methods.split(","), args.out, args.timeout, checkpointed,
                  profile=not args.no_profile, checkpointing_settings=settings)
    write_report(args.out)


if __name__ == "__main__":
    main()
