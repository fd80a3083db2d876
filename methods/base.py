"""The method interface and the registry.

A method owns everything that differs between fine-tuning methods (adapters, optimizer, masks, hooks);
the harness owns the model, data, loss, budget, meters and evaluation, so no method gets a different
deal. Methods are registered by name with `@register("name")`, or by third-party packages through the
entry-point group `bench.methods` (`name = "package.module:MethodClass"`).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from memft_bench.harness.core.errors import UnknownNameError
from memft_bench.harness.core.options import build, option, to_dict
from memft_bench.harness.core.precision import Precision
from memft_bench.methods.builtin import BUILTIN_METHODS

if TYPE_CHECKING:  # torch is imported only by the methods that run, never by `bench list`
    import torch

ENTRY_POINT_GROUP = "bench.methods"

# (loss summed over target tokens, number of target tokens) for one micro-batch.
LossFn = Callable[["torch.nn.Module", dict[str, "torch.Tensor"]], tuple["torch.Tensor", int]]


@dataclass
class MethodOptions:
    """Options every method has. Subclasses add their own fields with `option(...)`."""

    lr: float = option(1e-4, "peak learning rate (0 is allowed: the cost of the steps without learning)", min=0.0)
    weight_decay: float = option(0.0, "decoupled weight decay", min=0.0)

    def validate(self, where: str) -> None:
        """Cross-field checks that a single field's bounds cannot express; raise ConfigError."""


@dataclass
class AdamOptions(MethodOptions):
    """Options of methods whose optimizer is Adam(W): its decays and epsilon, in one place."""

    beta1: float = option(0.9, "Adam's first-moment decay", min=0.0, max=0.999999)
    beta2: float = option(0.999, "Adam's second-moment decay", min=0.0, max=0.999999)
    eps: float = option(1e-8, "Adam's epsilon", gt=0.0)


def adamw(params: Any, options: AdamOptions) -> torch.optim.Optimizer:
    """torch's AdamW with a method's lr, decays, epsilon and decoupled weight decay."""
    import torch

    return torch.optim.AdamW(params, lr=options.lr, betas=(options.beta1, options.beta2), eps=options.eps,
                             weight_decay=options.weight_decay)


def target_linears(model: torch.nn.Module, names: Sequence[str]) -> list[tuple[str, torch.nn.Module, str, Any]]:
    """(qualified name, parent module, attribute name, Linear) of every nn.Linear whose attribute name is
    in `names`: what methods that replace or wrap projections (RSO, SMT) iterate over."""
    from torch import nn

    found = []
    for module_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in names and isinstance(child, nn.Linear):
                found.append((f"{module_name}.{child_name}".lstrip("."), module, child_name, child))
    return found


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `x` runs in: autocast's when autocast is on for x's device, else x's own.

    Custom autograd functions (RSO, SMT) use it to run their matmuls as autocast would, and to run their
    backward in the same dtype, which autocast does not do for them.
    """
    import torch

    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


@dataclass
class Batch:
    """One optimisation step's data: micro-batches whose losses are accumulated into one update."""

    micro_batches: Sequence[dict[str, Any]]

    @property
    def target_tokens(self) -> int:
        return int(sum(int((mb["labels"] != -100).sum()) for mb in self.micro_batches))

    @property
    def input_tokens(self) -> int:
        return int(sum(int(mb["attention_mask"].sum()) for mb in self.micro_batches))


@dataclass
class StepResult:
    """A step's pre-update mean loss, and what the method measured about itself (`extras`: numbers, 0-d
    tensors or zero-argument callables, read after the step's timing so a method need not synchronise)."""

    loss: float
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Method(abc.ABC):
    """Base class of every method.

    Lifecycle, driven by the trial (`harness/trial/worker.py`):
    `__init__(options, loss_fn, seed)` -> the harness sets `precision` -> `prepare(model)` ->
    `apply_precision()` -> `step(batch)` x N -> the harness reads `state_elements()` / `state_bytes()` ->
    `release_training_state()` -> the harness evaluates `self.model` and reads `hyperparameters()` and
    `info()`. `loss_fn` already runs its forward pass under the precision policy's autocast; a method
    that runs the model outside `loss_fn` must enter `self.precision.autocast(...)` itself.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: forward passes per step (1 forward + backward for first-order methods; 2 for SPSA).
    forward_passes_per_step: ClassVar[int] = 1
    #: whether the method runs backward (False for zeroth-order methods: no gradient memory).
    uses_backward: ClassVar[bool] = True
    #: whether `prepare()` leaves the model's function unchanged (adapters start at zero, optimizers only
    #: add state). Then the untrained score is the base model's, measured once per run and shared; a
    #: method that changes the function when it prepares (quantisation, pruning) sets False and is scored
    #: itself. tests/methods/test_registry.py checks the claim for every built-in method.
    keeps_base_function: ClassVar[bool] = True
    #: whether the harness may predict the method's memory by running `prepare()` and `step()` on fake tensors
    #: (harness/trial/memory_trace.py), in the sweep's own process before any trial starts: a method whose step
    #: does more than compute on tensors (sleeps, signals, talks to a server) sets False and gets no prediction.
    memory_traceable: ClassVar[bool] = True

    def __init__(self, options: MethodOptions, loss_fn: LossFn, seed: int = 0) -> None:
        self.options = options
        self.loss_fn = loss_fn
        self.seed = seed  # the trial's seed: methods draw their own randomness (MeZO's z) from it
        self.model: torch.nn.Module | None = None
        self.lr_scale = 1.0
        self.precision = Precision()  # the trial sets the suite's policy before prepare()

    # -- the interface -------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, model: torch.nn.Module) -> None:
        """Wrap or patch the model and build the optimizer; set `self.model` to what is evaluated."""

    @abc.abstractmethod
    def step(self, batch: Batch) -> StepResult:
        """One optimisation step on `batch`; returns the (pre-update) mean loss over target tokens."""

    def train_every_weight(self, model: torch.nn.Module) -> None:
        """The start of `prepare` for methods that update every parameter (full fine-tuning and the
        optimizers that replace its AdamW): all of them train, and `model` is what is evaluated."""
        for p in model.parameters():
            p.requires_grad_(True)
        self.model = model

    @abc.abstractmethod
    def state_elements(self) -> dict[str, int]:
        """Exact element counts of what the method keeps.

        Keys: `trainable_params`, `gradients` (elements of gradient held at the step's peak), and one key
        per kind of optimizer/method state (`exp_avg`, `exp_avg_sq`, `projector`, ...). Everything except
        the first two counts as optimizer state.
        """

    @abc.abstractmethod
    def state_bytes(self) -> dict[str, int]:
        """Bytes of each entry of `state_elements()`, from each tensor's real element size (a bf16 weight is
        2 bytes, its fp32 Adam moments 4): reports compare these figures with measured peaks."""

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """The weights this method updates: the precision policy keeps them in its trained dtype (fp32 under
        bf16-mixed) and everything else in its storage dtype. Default: the parameters that require grad.
        Methods that update weights without autograd (zeroth-order methods, merges) override it."""
        assert self.model is not None
        return [p for p in self.model.parameters() if p.requires_grad]

    def apply_precision(self) -> None:
        """Cast the model's parameters to the policy's dtypes; the trial calls it right after `prepare()`.
        A method whose set of trained weights changes during training (SMT) calls it again then."""
        assert self.model is not None
        self.precision.apply(self.model, self.trained_parameters())

    def release_training_state(self) -> None:
        """Free what only training needs (gradients, optimizer state) before evaluation, so that the
        evaluation's memory peak is its own. Called once, after training and after the accounting was read.
        Subclasses holding other state (SGC's moments, SubZero's factors) extend it."""
        if self.model is not None:
            for p in self.model.parameters():
                p.grad = None
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:
            optimizer.state.clear()

    def warm_up_kernels(self) -> None:
        """Run, once and on throwaway data, the kernels of this method's update that a forward and backward do
        not run, before a CPU trial reads its idle baseline: a library's first call of a kernel sets up buffers
        it keeps (MKL's for SGC's triangular solves and batched products: about 3 MiB), which would otherwise
        count as the first step's memory. Must leave the method's state, the weights and every generator as they
        were. Default: nothing (an optimizer's update runs the same element-wise kernels as the backward)."""
        return None

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """What `state_bytes()` will report after training, predicted from shapes alone: the pre-flight calls
        it after `prepare()` and `apply_precision()` on a model whose parameters live on the `meta` device
        (no memory, no values), so that `bench run --dry-run` can print it and a trial that cannot fit is
        refused before it starts. `grad_accum`: micro-batches per step (the budget's), for methods whose
        gradients held depend on it (per-weight updates in hooks hold one gradient only without accumulation).
        None: this method cannot predict it (the estimate then says so)."""
        return None

    def predicted_weight_bytes(self) -> int | None:
        """The model's bytes at the end of training when they differ from the prepared model's (a method that
        re-wraps or re-casts weights mid-training, like SMT); None: the same as after `prepare()`."""
        return None

    def predicted_workspace_bytes(self) -> int:
        """Transient bytes one step needs beyond weights, gradients and state at its peak (a projection
        block, a solver's buffers), from shapes and options; called like `predicted_state_bytes()`."""
        return 0

    def hyperparameters(self) -> dict[str, Any]:
        """What goes into the result row's `method_params`."""
        return to_dict(self.options)

    def info(self) -> dict[str, Any]:
        """Facts about how the trial actually ran that are not options (the row's `method_info`): e.g. SGC's
        OMP backend that ran, and why it fell back."""
        return {}

    def set_lr_scale(self, scale: float) -> None:
        """Called by the training loop each step with the schedule's factor (1.0 for constant)."""
        self.lr_scale = scale

    # -- helpers for subclasses ----------------------------------------------------------------
    def forward_backward(self, batch: Batch, before_backward: Callable[[int], None] | None = None) -> float:
        """Run forward and backward over all micro-batches; gradients are of the batch's mean loss.

        `before_backward(i)` runs before micro-batch i's backward (per-layer updates arm their hooks for
        the last one only, so gradient accumulation stays exact)."""
        assert self.model is not None, "prepare() must run before step()"
        total = max(batch.target_tokens, 1)
        loss_total = 0.0
        for i, mb in enumerate(batch.micro_batches):
            loss_sum, _ = self.loss_fn(self.model, mb)
            if before_backward is not None:
                before_backward(i)
            (loss_sum / total).backward()
            loss_total += float(loss_sum.detach())
        return loss_total / total

    def trainable_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        assert self.model is not None
        return ((n, p) for n, p in self.model.named_parameters() if p.requires_grad)

    def apply_lr_scale(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * self.lr_scale


def tensor_counts(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(elements, bytes) of `tensors`, each at its real element size."""
    tensors = list(tensors)
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def split_inventory(inventory: dict[str, tuple[int, int]], which: int) -> dict[str, int]:
    """One view of an inventory of kind -> (elements, bytes): `which` 0 for `state_elements()`, 1 for
    `state_bytes()`, so that a method counting both from the same tensors cannot name different kinds."""
    return {kind: counts[which] for kind, counts in inventory.items()}


def optimizer_state_inventory(optimizer: torch.optim.Optimizer) -> tuple[dict[str, int], dict[str, int]]:
    """(elements, bytes) by state key over every tensor a torch optimizer keeps.

    Scalar step counters are left out: they are one number per tensor, not state that scales with the
    model, and the papers' "optimizer state" figures leave them out too. Tensors held by objects in the
    state (GaLore's projector) are found through their attributes.
    """
    import torch

    elements: dict[str, int] = {}
    nbytes: dict[str, int] = {}

    def add(key: str, t: torch.Tensor) -> None:
        elements[key] = elements.get(key, 0) + t.numel()
        nbytes[key] = nbytes.get(key, 0) + t.numel() * t.element_size()

    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                if key != "step" and value.dim() > 0:
                    add(key, value)
            elif hasattr(value, "__dict__"):
                for attr_value in vars(value).values():
                    tensors = attr_value if isinstance(attr_value, (list, tuple)) else [attr_value]
                    for t in tensors:
                        if isinstance(t, torch.Tensor):
                            add(key, t)
    return elements, nbytes


# -- registry ------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available to the harness under `name`."""

    def decorator(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) must decorate a subclass of methods.base.Method")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def plugin_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_methods() -> dict[str, str]:
    """name -> summary of every method the harness can run, without importing any method module."""
    names = {name: summary for name, (_, summary) in BUILTIN_METHODS.items()}
    for name, ep in plugin_entry_points().items():
        names.setdefault(name, f"plugin {ep.value}")
    for name, cls in _REGISTRY.items():
        names.setdefault(name, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "")
    return names


def backpropagates(name: str) -> bool:
    """Whether method `name` runs a backward pass, so that gradient checkpointing applies to it (a zeroth-order
    method runs forward passes only). True for a name no registry knows: the plan refuses it with its own error."""
    try:
        return get_method_class(name).uses_backward
    except Exception:
        return True


def get_method_class(name: str) -> type[Method]:
    """The class registered under `name`, importing its module on first use."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in BUILTIN_METHODS:
        importlib.import_module(f"memft_bench.methods.{BUILTIN_METHODS[name][0]}")
    else:
        ep = plugin_entry_points().get(name)
        if ep is not None:
            loaded = ep.load()
            if isinstance(loaded, type) and issubclass(loaded, Method) and name not in _REGISTRY:
                loaded.name = name
                _REGISTRY[name] = loaded
    if name not in _REGISTRY:
        valid = ", ".join(sorted(available_methods()))
        raise UnknownNameError(f"unknown method {name!r}; available methods: {valid}")
    return _REGISTRY[name]


def build_options(name: str, values: dict[str, Any] | None, where: str) -> MethodOptions:
    """Validate `values` against the method's options dataclass (raises ConfigError)."""
    return build(get_method_class(name).Options, values or {}, where)


def create(
    name: str, options: MethodOptions | dict[str, Any] | None, loss_fn: LossFn, seed: int = 0,
    precision: Precision | None = None,
) -> Method:
    """An instance of method `name`; with `precision`, `loss_fn` is wrapped in the policy's autocast."""
    cls = get_method_class(name)
    if not isinstance(options, MethodOptions):
        options = build(cls.Options, options or {}, f"methods.{name}")
    precision = precision or Precision()
    method = cls(options, precision.wrap_loss(loss_fn), seed)
    method.precision = precision
    return method


class OptimizerMethod(Method):
    """A first-order method driven by one torch optimizer: backward, optimizer step, free gradients.

    Subclasses choose which parameters train (`prepare`; by default every one) and build the optimizer
    (`build_optimizer`). Gradients are freed with `set_to_none` after every step, so between steps none
    are held.
    """

    optimizer: torch.optim.Optimizer

    def prepare(self, model: torch.nn.Module) -> None:
        self.train_every_weight(model)
        self.optimizer = self.build_optimizer()

    @abc.abstractmethod
    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over `self.trainable_parameters()` (called at the end of `prepare`)."""

    def step(self, batch: Batch) -> StepResult:
        self.apply_lr_scale(self.optimizer)
        loss = self.forward_backward(batch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss)

    def predicted_state_bytes(self, grad_accum: int = 1) -> dict[str, int] | None:
        """One optimizer step over zero gradients on the meta device creates every state tensor the real first
        step creates, at its real shape and dtype, without memory; `state_bytes()` then counts them exactly
        as it will after training. An optimizer that cannot step on meta (custom kernels) gives None."""
        import torch

        params = [p for _, p in self.trainable_parameters()]
        if not all(p.device.type == "meta" for p in params):
            return None
        try:
            for p in params:
                p.grad = torch.zeros_like(p)
            self.optimizer.step()
            return self.state_bytes()
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            return None
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer.state.clear()

    def _trainable_inventory(self) -> tuple[int, int]:
        params = [p for _, p in self.trainable_parameters()]
        return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)

    def state_elements(self) -> dict[str, int]:
        n_trainable, _ = self._trainable_inventory()
        elements, _ = optimizer_state_inventory(self.optimizer)
        return {"trainable_params": n_trainable, "gradients": n_trainable, **elements}

    def state_bytes(self) -> dict[str, int]:
        n_trainable, trainable_bytes = self._trainable_inventory()
        _, nbytes = optimizer_state_inventory(self.optimizer)
        return {"trainable_params": trainable_bytes, "gradients": trainable_bytes, **nbytes}
