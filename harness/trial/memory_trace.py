"""The whole training peak of a trial, predicted by running its method's own step on fake tensors.

`predict_training_peak(suite, method, params)` builds the suite's model as the pre-flight does
(`meta_model.build_meta_model`), turns every parameter and buffer into a *fake* tensor on the trial's device
(`torch._subclasses.fake_tensor.FakeTensorMode`: shapes, dtypes and devices, no memory, no values), then does
what the trial does (`worker.run_trial`): the method is created, gradient checkpointing applied when the budget
asks for it and the method backpropagates, `prepare()`, `apply_precision()`, `model.train()`; and runs the
method's `step()` on real batches (`task_batches`/`peak_batches`: the trial's own; or `synthetic_batches`:
micro_batch_size x cutoff_len), for two steps (the first makes lazily made state such as Adam's moments, the
second runs with it). No formula per architecture or per method: what the step allocates is what the method's
code and torch's kernels allocate, adapters' extra activations, DoRA's norms, SGC's compression and OMP,
GaLore's projections, MeZO's perturbed copies and checkpointing's recomputation included.

How the bytes are counted: a `TorchDispatchMode` (`LiveBytes`), pushed on top of the fake mode, sees every
aten operation and records each output's storage once, with a weak reference whose callback subtracts its
bytes when the storage is freed (the bookkeeping of torch's own `torch.distributed._tools.mem_tracker`). The
prediction is the peak of the live bytes during the steps, with what is alive at that moment split by when it
was made (`PHASES`): the weights, other state (made by `prepare()` or an earlier step and still alive: Adam's
moments, SGC's compressed moments, RSO's projections), the batch, and what the step made in its forward pass
(saved activations, logits and their float32 copy), its backward pass (gradients, recomputed activations) and
after backward (the optimizer's update, SGC's OMP). Views share their base's storage and count once; in-place
updates allocate nothing. The tests and `benchmarks/memory_prediction.py` check the figure against the real
CPU allocator's peak over the same steps (torch.profiler's allocation events): equal within 0.2 %.

MemTracker itself is not used: it needs the model and optimizer registered (`track_external`), splits memory by
module and its own categories, rounds to CUDA's 512-byte blocks and imports torch.distributed, and the rules
below (the real batch, values read from fake tensors) would still have to sit beside it.

What fake tensors cannot do, and how the trace answers it (each is counted in `PeakPrediction.notes`):

- A value read from a fake tensor (`loss.item()`, `bool(mask.any())`, `.tolist()`): floats get distinct
  non-zero values (so MeZO's projected gradient is non-zero and its update runs), booleans True, integers 0.
  Branches that depend on data take the branch those values choose (OMP runs all of its s iterations).
- Operations whose output size depends on values (`nonzero`, boolean indexing, `unique`, `masked_select`):
  the largest size they can have (every mask entry true): an upper bound.
- `Tensor.numpy()` of a fake tensor (SGC's OMP takes row maxima through NumPy): a zero-strided array of its
  shape, which holds no memory, as the real call shares the tensor's.
- The batch is real (token ids, labels and the attention mask: kilobytes): the loss reads its labels to find
  the target positions, so operations whose inputs are all real run for real.
- Which fused attention kernel runs is chosen by the device's own rule (`_fused_sdp_choice` of the CPU or CUDA
  kernel, which reads only shapes and flags): the fake mode alone would choose the math kernel, which keeps
  the attention matrix for backward where a CPU's flash kernel keeps one number a row.
- LAPACK-backed kernels copy their input inside the kernel (`KERNEL_COPIES`: SVD, eigh, solve; on a GPU
  `CUDA_KERNEL_COPIES`, cuSOLVER's SVD): added.
- A random permutation (`torch.randperm`, `REAL_DRAWS`) is drawn for real, from the method's own generator: its
  values choose what trains (LISA's active layers), and stand-in zeros would choose one layer many times. It is
  small (one index per layer or block), and the generator advances as in the trial.
- torch's optimizers take their multi-tensor (`foreach`) path by default only when every parameter is a plain
  tensor on a CUDA device (`torch.optim.optimizer._default_to_fused_or_foreach`); a fake tensor never counts
  as one, so the trace would run the one-tensor-at-a-time loop (a few temporaries the size of one parameter)
  where a GPU trial runs `foreach`, whose `_foreach_sqrt` of the second moments holds a temporary the size of
  every parameter of the group at once (4 bytes a parameter in float32: full fine-tuning's and SMT's warm-up's
  AdamW over every weight, at scale gigabytes). The trace follows the rule of the
  device the optimizers will run on (`optimizers_as_on`: the trial's device; a dry run's target), not the
  fake tensors' type.

What it does not see: memory outside torch's allocator (LAPACK's and MKL's work arrays, oneDNN's scratch,
CuPy's pool), the allocator's rounding and caching (a GPU's 512-byte blocks and cached segments, glibc's
free lists on a CPU), library code paged in, and the Python runtime. A method whose step needs real values in
ways the rules above cannot stand in for raises `CannotTrace`, which says why.

Methods with periodic events are moved forward so that the traced steps include them when the trial's budget
reaches them: RSO's merge (every `inner_steps`) and SMT's switch from its full fine-tuning warm-up to the sparse
phase (after `warmup_steps`). GaLore's and CESGC's SVD and SubZero's subspaces are drawn in the first step
anyway. Fake CUDA tensors need a CUDA build and a GPU; on a CPU-only machine the trace runs on 'cpu'.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten

if TYPE_CHECKING:
    from memft_bench.harness.spec.config import SuiteSpec
    from memft_bench.methods.base import Batch, Method

MiB = 2**20
aten = torch.ops.aten

#: When a storage was made: before the step (weights, state), the step's batch, and the parts of the step.
PHASES = ("weights", "state", "batch", "forward", "backward", "update")


#: LAPACK-backed kernels that copy their input before factorising it (LAPACK overwrites its matrix), inside the
#: kernel where no dispatched operation shows it: copies of the input each holds beside its outputs, measured on
#: torch 2.13's CPU kernels with torch.profiler (GaLore's and CESGC's SVD, SGC's least squares). LAPACK's own
#: work arrays (4 min(m, n)^2 floats for an SVD) come from its allocator, not torch's, and are not counted.
KERNEL_COPIES = {aten._linalg_svd.default: 1.0, aten._linalg_eigh.default: 2.0, aten._linalg_solve_ex.default: 1.0}
#: The same on a GPU, from torch's CUDA linear algebra: the SVD's input is cloned (column-major) before cuSOLVER
#: factorises it, through the caching allocator, so the allocated peak holds it; a solve's LU factor and eigh's
#: vectors are outputs, already counted. cuSOLVER's work arrays come from the caching allocator too and are not
#: counted. Not yet checked on a GPU.
CUDA_KERNEL_COPIES = {aten._linalg_svd.default: 1.0}
#: Random draws made for real in the trace (see the module docstring): small, and their values decide sizes.
REAL_DRAWS = {aten.randperm.default, aten.randperm.generator}


class CannotTrace(Exception):
    """The method's step cannot run on fake tensors (a kernel outside torch, code that needs real values)."""


@dataclass
class PeakPrediction:
    """The predicted peak of one trial's training phase, in bytes of live tensor storage."""

    method: str
    peak_bytes: int
    #: what was alive at the peak, by when it was made (`PHASES`): weights (parameters and buffers), state
    #: (alive before the first traced step, or made by an earlier step and still alive: Adam's moments), batch
    #: (the micro-batches' ids, labels and mask), forward, backward, update (after the last backward)
    at_peak: dict[str, int]
    #: alive when the first traced step began: the weights and whatever `prepare()` allocated
    start_bytes: int
    weights_bytes: int
    peak_step: int
    peak_phase: str
    steps: int
    #: (micro-batches, rows, columns, target tokens) of each traced step's batch
    batch_shapes: list[list[int]]
    batch_source: str
    gradient_checkpointing: bool | None
    seconds: float
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MiB

    @property
    def activations_bytes(self) -> int:
        """What the step itself made and held at the peak: activations, gradients, transients and any state
        made lazily (Adam's moments in the first step): the peak less the weights and the state `prepare()`
        made."""
        return self.peak_bytes - self.start_bytes

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["peak_mb"] = self.peak_mb
        return out


# -- the bookkeeping -------------------------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """Live storage bytes of every tensor made while it is active, and their peak, split by phase.

    Pushed on top of a FakeTensorMode (see the module docstring for the rules it adds); also usable alone on
    real tensors, where it only counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, tuple[int, str]] = {}  # id(storage) -> (bytes, phase made in)
        self._refs: dict[int, weakref.ref] = {}
        self.by_phase = dict.fromkeys(PHASES, 0)
        self.current = 0
        self.peak = 0
        self.peak_by_phase: dict[str, int] = dict(self.by_phase)
        self.peak_where = ("", -1)
        self.phase = "state"
        self.step = -1
        self.notes: dict[str, int] = {}
        self._floats = itertools.count(1)

    # storages
    def add(self, t: torch.Tensor, phase: str | None = None) -> None:
        st = t.untyped_storage()
        key = id(st)
        nbytes = st.nbytes()
        known = self.sizes.get(key)
        if known is None:
            made = phase or self._phase_now()
            self.sizes[key] = (nbytes, made)
            self._refs[key] = weakref.ref(st, lambda _ref, key=key: self._free(key))
            self._change(made, nbytes)
        elif known[0] != nbytes:  # resized in place (an out= argument grown by the kernel)
            self.sizes[key] = (nbytes, known[1])
            self._change(known[1], nbytes - known[0])

    def reclassify(self, t: torch.Tensor, phase: str) -> None:
        """Count `t`'s storage under `phase` from now on (the weights, once the model is built)."""
        key = id(t.untyped_storage())
        known = self.sizes.get(key)
        if known is not None and known[1] != phase:
            self.by_phase[known[1]] -= known[0]
            self.by_phase[phase] += known[0]
            self.sizes[key] = (known[0], phase)

    def _free(self, key: int) -> None:
        known = self.sizes.pop(key, None)
        self._refs.pop(key, None)
        if known is not None:
            self._change(known[1], -known[0], track_peak=False)

    def _change(self, phase: str, delta: int, track_peak: bool = True) -> None:
        self.by_phase[phase] += delta
        self.current += delta
        if track_peak and self.current > self.peak:
            self.peak = self.current
            self.peak_by_phase = dict(self.by_phase)
            self.peak_where = (self._phase_now(), self.step)

    def reset_peak(self) -> None:
        self.peak = self.current
        self.peak_by_phase = dict(self.by_phase)
        self.peak_where = (self.phase, self.step)

    def _phase_now(self) -> str:
        if torch._C._current_graph_task_id() != -1:  # inside autograd's backward pass
            return "backward"
        return self.phase

    def note(self, what: str) -> None:
        self.notes[what] = self.notes.get(what, 0) + 1

    # the rules
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import FakeTensor

        kwargs = kwargs or {}
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        real_draw = func in REAL_DRAWS and torch.device(kwargs.get("device") or "cpu").type == "cpu"
        if (tensors and not any(isinstance(a, FakeTensor) for a in tensors)) or real_draw:
            with _disable_current_modes():  # the real batch, a drawn permutation: small, and they run for real
                out = func(*args, **kwargs)
            self._track(out)
            return out
        if func is aten._local_scalar_dense.default:
            return self._stand_in_scalar(args[0])
        if func is aten._fused_sdp_choice.default:
            return self._sdp_choice(func, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            from torch._subclasses.fake_tensor import DynamicOutputShapeException

            if not isinstance(exc, DynamicOutputShapeException):
                raise
            out = self._largest_output(func, args, kwargs, exc)
        self._track(out)
        copies = None
        if func in KERNEL_COPIES:
            copies = (KERNEL_COPIES if args[0].device.type == "cpu" else CUDA_KERNEL_COPIES).get(func)
        if copies:  # the kernel's own copy of its input, made and freed inside it
            self._transient(int(copies * args[0].untyped_storage().nbytes()))
        return out

    def _transient(self, nbytes: int) -> None:
        """Bytes held for a moment inside one kernel, on top of everything alive (its outputs included)."""
        if self.current + nbytes > self.peak:
            self.peak = self.current + nbytes
            self.peak_by_phase = dict(self.by_phase)
            made = self._phase_now()
            self.peak_by_phase[made] += nbytes
            self.peak_where = (made, self.step)

    def _track(self, out: Any) -> None:
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)

    def _stand_in_scalar(self, t: torch.Tensor) -> bool | int | float:
        self.note("values read from fake tensors (stand-ins used)")
        if t.dtype == torch.bool:
            return True
        if t.dtype.is_floating_point or t.dtype.is_complex:
            return 1.0 + next(self._floats) / 1024
        return 0

    def _sdp_choice(self, func, args, kwargs) -> int:
        key = {"cpu": torch._C.DispatchKey.CPU, "cuda": torch._C.DispatchKey.CUDA}.get(args[0].device.type)
        if key is not None:
            try:
                return func._op_dk(key, *args, **kwargs)
            except Exception:  # no such kernel here (a CUDA prediction on a CPU-only build): the math kernel
                self.note("attention kernel not known: the math kernel assumed")
        return func(*args, **kwargs)

    def _largest_output(self, func, args, kwargs, exc: Exception) -> Any:
        """The output of an operation whose size depends on values, at the largest size it can have."""
        self.note(f"{func.__name__.split('.')[0]}: output size depends on values (upper bound used)")
        x = args[0]
        if func in (aten.nonzero.default,):
            return x.new_zeros((x.numel(), x.dim()), dtype=torch.long)
        if func in (aten.masked_select.default,):
            shape = torch.broadcast_shapes(x.shape, args[1].shape)
            return x.new_zeros(math.prod(shape))
        if func in (aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default):
            values = x.new_zeros(x.numel())
            inverse = x.new_zeros(x.shape, dtype=torch.long)
            counts = x.new_zeros(x.numel(), dtype=torch.long)
            return values, inverse, counts
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                    aten._unsafe_index_put.default):
            indices = [_every_position(i) for i in args[1]]
            expanded = [i for group in indices for i in (group if isinstance(group, tuple) else (group,))]
            if any(i is not j for i, j in zip(expanded, args[1])) or len(expanded) != len(args[1]):
                return func(args[0], expanded, *args[2:], **kwargs)
        raise CannotTrace(f"{func} needs real values (its output size depends on them)") from exc


def _every_position(index: torch.Tensor | None) -> Any:
    """A boolean mask as the long indices of its positions when every entry is true (the largest selection)."""
    if index is None or index.dtype not in (torch.bool, torch.uint8):
        return index
    return tuple(index.new_zeros(index.numel(), dtype=torch.long) for _ in range(index.dim()))


class _FakeModuleConversion:
    """`Module.to()`/`_apply()` on modules with fake parameters, during the trace's set-up: torch swaps a fake
    parameter for its converted copy (`torch.utils.swap_tensors`), which fails when anything holds a weak
    reference to it (the fake mode's own bookkeeping does) even when nothing changes (peft moves each new
    adapter to its base layer's device). Here a parameter that `fn` leaves as it is stays, and one it changes is
    replaced in its module by a new Parameter (before any optimizer holds it)."""

    def __enter__(self) -> None:
        self.original = torch.nn.Module._apply

        def _apply(module: torch.nn.Module, fn: Callable, recurse: bool = True) -> torch.nn.Module:
            if recurse:
                for child in module.children():
                    child._apply(fn)
            for key, param in module._parameters.items():
                if param is None:
                    continue
                with torch.no_grad():
                    applied = fn(param)
                if applied is not param:
                    module._parameters[key] = torch.nn.Parameter(applied, requires_grad=param.requires_grad)
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[key] = fn(buffer)
            return module

        torch.nn.Module._apply = _apply  # type: ignore[method-assign]

    def __exit__(self, *exc: Any) -> None:
        torch.nn.Module._apply = self.original  # type: ignore[method-assign]


class _NumpyOfFake(TorchFunctionMode):
    """`Tensor.numpy()` of a fake tensor: a zero-strided array of its shape (the real call shares memory)."""

    def __init__(self, tracker: LiveBytes) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import FakeTensor

        if func is torch.Tensor.numpy and args and isinstance(args[0], FakeTensor):
            import numpy as np

            self.tracker.note("numpy() of fake tensors (zero-strided stand-ins)")
            t = args[0]
            return np.broadcast_to(np.zeros(1, dtype=_numpy_dtype(t.dtype)), tuple(t.shape))
        return func(*args, **(kwargs or {}))


def _numpy_dtype(dtype: torch.dtype) -> Any:
    import numpy as np

    return {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
            torch.int64: np.int64, torch.int32: np.int32, torch.bool: np.bool_, torch.uint8: np.uint8,
            torch.int8: np.int8}.get(dtype, np.float32)


# -- building the trial's model and method on fake tensors -------------------------------------------------
def fake_model(suite: SuiteSpec, device: str, tracker: LiveBytes) -> torch.nn.Module:
    """The suite's model as the pre-flight builds it on `meta`, each parameter and buffer then replaced by a fake
    tensor on `device` (tied weights stay tied); call inside the fake mode and `tracker`."""
    from memft_bench.harness.trial.meta_model import build_meta_model

    model = build_meta_model(suite.model)
    made: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table, as_parameter in ((module._parameters, True), (module._buffers, False)):
            for name, t in list(table.items()):
                if t is None:
                    continue
                if id(t) not in made:
                    fake = torch.empty(t.shape, dtype=t.dtype, device=device)
                    made[id(t)] = torch.nn.Parameter(fake, requires_grad=t.requires_grad) if as_parameter else fake
                table[name] = made[id(t)]
    for t in made.values():
        tracker.reclassify(t, "weights")
    return model


def synthetic_batches(suite: SuiteSpec, steps: int, target_tokens: int | None = None) -> list[Batch]:
    """`steps` batches of the budget's shape: `grad_accum` micro-batches of micro_batch_size x cutoff_len tokens,
    the last `target_tokens` of every row targets (None: every position, the upper bound the loss's logits can
    reach), the first row left-padded by one token so that the attention mask is not trivial, as a real
    left-padded batch's is not."""
    from memft_bench.methods.base import Batch

    budget = suite.budget
    rows, length = budget.micro_batch_size, budget.cutoff_len
    targets = length if target_tokens is None else max(1, min(target_tokens, length))
    ids = torch.full((rows, length), 5, dtype=torch.long)
    labels = ids.clone()
    labels[:, : length - targets] = -100
    attention = torch.ones(rows, length, dtype=torch.long)
    attention[0, 0] = 0
    labels[0, 0] = -100
    micro = {"input_ids": ids, "labels": labels, "attention_mask": attention}
    return [Batch([dict(micro) for _ in range(budget.grad_accum)]) for _ in range(steps)]


class _LazyExamples(Sequence):
    """Training records encoded only when a batch takes them (`training_batches` reads a few per step)."""

    def __init__(self, records: list[dict[str, Any]], encode: Callable[[dict[str, Any]], dict[str, list[int]]]):
        self.records, self.encode, self.cache = records, encode, {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # type: ignore[override]
        if i not in self.cache:
            self.cache[i] = self.encode(self.records[i])
        return self.cache[i]


def task_batches(suite: SuiteSpec, steps: int, task: str | None = None, seed: int = 0) -> list[Batch]:
    """The first `steps` batches a trial of `task` (default: the suite's first) with `seed` trains on: the same
    records, prompt, tokenisation, truncation and left padding as the worker (`trial.data`), on the CPU."""
    from memft_bench.harness.sources.prompts import build_prompt
    from memft_bench.harness.trial import llm_adapters
    from memft_bench.harness.trial.data import encode_example, load_task, training_batches
    from memft_bench.harness.trial.models import build_tokenizer

    task_spec = suite.task(task) if task else suite.tasks[0]
    tokenizer = build_tokenizer(suite.model)
    data = load_task(task_spec, suite, seed)
    prompt_of = llm_adapters.train_prompt if suite.evaluation.mode == "llm-adapters" else build_prompt
    examples = _LazyExamples(data.train, lambda r: encode_example(tokenizer, r, suite.budget.cutoff_len, prompt_of))
    stream = training_batches(examples, suite.budget.micro_batch_size, suite.budget.grad_accum, seed,
                              tokenizer.pad_token_id, "cpu")
    return [next(stream) for _ in range(steps)]


def peak_batches(suite: SuiteSpec, task: str | None = None, seed: int = 0) -> list[Batch]:
    """The batches to trace for a trial's peak: its first batch and, when the data's lengths vary, the largest
    (most tokens) of the batches its budget's steps take (`task_batches`); left padding makes a batch as long as
    its longest record, so the peak step is the one with the largest batch."""
    return pick_peak_batches(task_batches(suite, suite.budget.steps, task, seed))


def pick_peak_batches(batches: Iterable[Batch]) -> list[Batch]:
    """The first of a trial's batches, the largest of the others (the one whose largest micro-batch has the most
    tokens, since activations are made one micro-batch at a time, then the most tokens in all) and, when another
    batch projects more positions onto the vocabulary, that one too (`causal_lm_loss` takes the float32 logits
    of every position from a micro-batch's first target on: with a large vocabulary a batch with longer
    answers can set the peak though it holds fewer tokens). Streams: only the batches kept are held."""
    def size(batch: Batch) -> tuple[int, int]:
        counts = [int(mb["input_ids"].numel()) for mb in batch.micro_batches]
        return max(counts), sum(counts)

    stream = iter(batches)
    first = next(stream)
    largest, largest_size = None, (-1, -1)
    widest, widest_span = None, logit_positions(first)
    for batch in stream:
        if (batch_size := size(batch)) > largest_size:
            largest, largest_size = batch, batch_size
        if (span := logit_positions(batch)) > widest_span:
            widest, widest_span = batch, span
    picked = [first, largest if largest is not None else first]
    if widest is not None and widest is not largest and logit_positions(widest) > logit_positions(picked[1]):
        picked.append(widest)
    return picked


def logit_positions(batch: Batch) -> int:
    """The most positions one of the batch's micro-batches projects onto the vocabulary in `causal_lm_loss`:
    rows x the span from its first target position to its end."""
    most = 0
    for mb in batch.micro_batches:
        labels = mb.get("labels")
        if labels is None:
            continue
        targets = (labels[:, 1:] != -100).any(0)
        span = int(targets.numel() - int(targets.int().argmax())) if bool(targets.any()) else 1
        most = max(most, int(labels.shape[0]) * span)
    return most


def _describe(batch: Batch) -> list[int]:
    first = batch.micro_batches[0]["input_ids"]
    return [len(batch.micro_batches), int(first.shape[0]), max(int(mb["input_ids"].shape[1]) for mb in
            batch.micro_batches), batch.target_tokens]


# -- periodic events ---------------------------------------------------------------------------------------
def _event_plan(method: Method, budget_steps: int, steps: int) -> tuple[int, Callable[[int], None]]:
    """(steps to trace, a function run before traced step i) so that the trace reaches the method's periodic
    events that the trial's budget reaches: RSO's merge and SMT's switch to its sparse phase."""
    name = getattr(method, "name", "")
    options = method.options
    if name == "rso" and budget_steps >= options.inner_steps:
        def before(i: int) -> None:
            if i == steps - 1:  # the last traced step merges B P^T into W0 and draws a new subspace
                method.inner += options.inner_steps - 1 - method.inner % options.inner_steps
        return steps, before
    if name == "smt" and budget_steps > options.warmup_steps:
        total = max(steps, 2) + 2  # warm-up steps, then the step that switches, then a sparse step

        def before_smt(i: int) -> None:
            if i == total - 2:  # this step ends the warm-up (unless an earlier one did), the next is sparse
                method.steps_done = max(method.steps_done, options.warmup_steps - 1)
        return total, before_smt
    return steps, lambda i: None


# -- the prediction ----------------------------------------------------------------------------------------
def predict_training_peak(suite: SuiteSpec, method: str, params: dict[str, Any] | None = None, *,
                          batches: Sequence[Batch] | None = None, steps: int = 2, target_tokens: int | None = None,
                          device: str = "cpu", seed: int = 0, time_limit_s: float | None = None) -> PeakPrediction:
    """The peak of live tensor bytes over the first `steps` training steps of `method` (options `params`, as
    the suite gives them) on the suite's model, traced on fake tensors; see the module docstring.

    `batches`: the batches to step on (`task_batches` gives a trial's own); default `synthetic_batches`, the
    budget's micro_batch_size x cutoff_len with `target_tokens` targets per row (None: every position, an
    upper bound). The budget's `gradient_checkpointing` and `grad_accum`, and the model's precision, apply
    as in the trial. Raises CannotTrace when the method's step cannot run on fake tensors, when the method says it
    must not (`Method.memory_traceable`), or after `time_limit_s`."""
    from memft_bench.harness.core.precision import Precision

    started = time.perf_counter()
    precision = Precision(suite.model.precision)
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise CannotTrace("fake CUDA tensors need a CUDA build of torch and a GPU to read kernel metadata from; "
                          "trace on 'cpu' (the same tensors, but CPU autocast's op lists and kernel choices)")
    from memft_bench.methods.base import get_method_class

    if not getattr(get_method_class(method), "memory_traceable", True):
        raise CannotTrace(f"{method} says its step must not run on fake tensors (memory_traceable = False)")
    with warnings.catch_warnings(), time_limit(time_limit_s):  # the set-up's warnings are the trial's to give
        warnings.simplefilter("ignore")
        return _trace(suite, method, params, batches, steps, target_tokens, device, seed, started, precision)


#: The device type whose optimizer kernels the trace follows (`optimizers_as_on`); None: the traced device's.
_optimizers_device: str | None = None


@contextlib.contextmanager
def optimizers_as_on(device_type: str | None) -> Iterator[None]:
    """Trace torch's optimizers as they run on `device_type` ("cuda": their default multi-tensor path; "cpu": the
    per-tensor loop), whatever device the fake tensors are on: a GPU trial traced on fake CPU tensors, a dry run
    on a CPU answering for a GPU (`--gpu`, `--memory`)."""
    global _optimizers_device
    previous, _optimizers_device = _optimizers_device, device_type
    try:
        yield
    finally:
        _optimizers_device = previous


@contextlib.contextmanager
def optimizer_kernels_as_on(device_type: str) -> Iterator[None]:
    """Inside it, torch's optimizers choose `foreach` by `device_type`'s rule rather than by the fake tensors'
    type (which never qualifies): on CUDA, foreach unless `differentiable`, never fused unless asked for, as
    `_default_to_fused_or_foreach` decides for plain CUDA parameters. Nothing changes for a CPU."""
    import sys

    if device_type != "cuda":
        yield
        return

    def cuda_rule(params: Any, differentiable: bool, use_fused: bool = False) -> tuple[bool, bool]:
        return False, not differentiable

    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("torch.optim") and hasattr(m, "_default_to_fused_or_foreach")]
    originals = [m._default_to_fused_or_foreach for m in patched]
    for module in patched:
        module._default_to_fused_or_foreach = cuda_rule
    try:
        yield
    finally:
        for module, original in zip(patched, originals, strict=True):
            module._default_to_fused_or_foreach = original


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise CannotTrace in the main thread after `seconds` (SIGALRM; nothing elsewhere or with None): a trace
    that runs a method's unknown code in the sweep's own process must not hang it."""
    import signal
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise CannotTrace(f"the trace took longer than {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _trace(suite: SuiteSpec, method: str, params: dict[str, Any] | None, batches: Sequence[Batch] | None,
           steps: int, target_tokens: int | None, device: str, seed: int, started: float,
           precision: Any) -> PeakPrediction:
    """`predict_training_peak`'s work, with warnings already silenced."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memft_bench.harness.core.errors import BenchError, describe_exception
    from memft_bench.harness.trial.models import causal_lm_loss, enable_gradient_checkpointing
    from memft_bench.methods.base import create

    tracker = LiveBytes()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:  # as the trial sets up (worker.run_trial): create, checkpointing, prepare, precision
        with fake_mode, tracker, _NumpyOfFake(tracker), _FakeModuleConversion():
            model = fake_model(suite, device, tracker)
            instance = create(method, params if params is not None else suite.methods.get(method), causal_lm_loss,
                              seed=seed, precision=precision)
            instance.total_steps = suite.budget.steps
            checkpointing: bool | None = False
            if suite.budget.gradient_checkpointing:
                checkpointing = enable_gradient_checkpointing(model) > 0 if instance.uses_backward else None
            instance.prepare(model)
            instance.apply_precision()
    except (BenchError, ValueError):  # the options do not fit the model: the pre-flight's own problem lines
        raise
    except Exception as exc:
        raise CannotTrace(f"{method} cannot be prepared on fake tensors: {describe_exception(exc)}") from exc
    weights = tracker.by_phase["weights"]
    total_steps, before = _event_plan(instance, suite.budget.steps, min(steps, suite.budget.steps))
    source = "given batches"
    if batches is None:
        batches = synthetic_batches(suite, total_steps, target_tokens)
        source = (f"synthetic: {suite.budget.micro_batch_size} x {suite.budget.cutoff_len} tokens, "
                  + ("every position a target (upper bound)" if target_tokens is None else
                     f"{target_tokens} targets per row"))
    batches = list(batches)
    if len(batches) < total_steps:  # events need more steps than batches were given: repeat the last
        batches += [batches[-1]] * (total_steps - len(batches))
    batches = batches[:total_steps]
    loss_fn = instance.loss_fn

    def loss_marking_forward(model: torch.nn.Module, batch: dict[str, Any]) -> Any:
        tracker.phase = "forward"
        try:
            return loss_fn(model, batch)
        finally:  # what runs outside backward from here on is the update (until the next micro-batch's loss)
            tracker.phase = "update"

    instance.loss_fn = loss_marking_forward
    start_bytes = tracker.current
    optimizers_device = _optimizers_device or torch.device(device).type
    try:
        with fake_mode, tracker, _NumpyOfFake(tracker), optimizer_kernels_as_on(optimizers_device):
            assert instance.model is not None
            instance.model.train()
            for i, batch in enumerate(batches):
                before(i)
                _age(tracker)
                tracker.step, tracker.phase = i, "state"
                if i == 0:
                    start_bytes = tracker.current
                    tracker.reset_peak()
                for micro in batch.micro_batches:  # the batch is on the device during its step, as in a trial
                    for t in micro.values():
                        if isinstance(t, torch.Tensor):
                            tracker.add(t, "batch")
                instance.set_lr_scale(1.0)
                instance.step(batch)
    except CannotTrace:
        raise
    except Exception as exc:
        raise CannotTrace(f"{method}'s step does not run on fake tensors: {describe_exception(exc)}") from exc
    finally:
        instance.loss_fn = loss_fn
        try:
            _release(instance, fake_mode)
        finally:
            _forget_compilations()
    phase, step = tracker.peak_where
    result = PeakPrediction(
        method=method, peak_bytes=tracker.peak, at_peak=dict(tracker.peak_by_phase), start_bytes=start_bytes,
        weights_bytes=weights, peak_step=step, peak_phase=phase, steps=len(batches),
        batch_shapes=[_describe(b) for b in batches], batch_source=source, gradient_checkpointing=checkpointing,
        seconds=time.perf_counter() - started, notes=dict(tracker.notes))
    return result


def _release(instance: Method, fake_mode: Any) -> None:
    """Let the traced method and its fake model go once the peak is read: `release_training_state()`, as the
    trial calls it after training, removes the hooks a method registered on its parameters (SGC's
    post-accumulate-grad hooks). A hook lives in the parameter's C++ tensor and holds the method, which holds
    the model, a cycle the garbage collector cannot see; the fake model, the method and the fake mode would
    otherwise outlive the trace in the trial's own process (where an older `live_cpu_tensor_bytes` counted the
    largest fake storage, SGC's 108 MiB embedding on smollm2's shapes, as real memory), once per trace."""
    with contextlib.suppress(Exception), fake_mode:
        instance.release_training_state()


def _forget_compilations() -> None:
    """Reset torch.compile's caches after a trace: a compile attempted on fake tensors (torchao's optimizers
    compile their step with fullgraph) fails and leaves its frame marked as skipped, and the trial's real step in
    the same process would then fail with 'found no compiled frames'. Nothing compiled before a trace is kept."""
    import sys

    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


def _age(tracker: LiveBytes) -> None:
    """What earlier steps made and is still alive (Adam's moments) is state from now on."""
    for key, (nbytes, phase) in list(tracker.sizes.items()):
        if phase in ("forward", "backward", "update"):
            tracker.sizes[key] = (nbytes, "state")
            tracker.by_phase[phase] -= nbytes
            tracker.by_phase["state"] += nbytes


__all__ = ["CannotTrace", "LiveBytes", "PeakPrediction", "fake_model", "peak_batches", "pick_peak_batches",
           "optimizer_kernels_as_on", "optimizers_as_on", "predict_training_peak", "synthetic_batches", "task_batches"]
