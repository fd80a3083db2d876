"""Suite files (suites/*.yaml) and `--set` overrides, parsed as data and validated against one schema.

A suite names a model, its tasks, the training budget, the evaluation and per-method options. The
schema is the dataclasses below; `harness.core.options.build` checks types, ranges and unknown keys, and
every error names the file and field. Nothing here imports torch.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from memft_bench.harness.core.errors import ConfigError, UnknownNameError
from memft_bench.harness.core.options import build, option, to_dict

SUITE_SUFFIX = ".yaml"


def looks_like_model_reference(path: str) -> bool:
    """An existing directory, or something shaped like a hub id (`name` or `owner/name`, no path tricks)."""
    if Path(path).expanduser().is_dir():
        return True
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", path)) and ".." not in path


@dataclass
class ModelSpec:
    kind: str = option(
        "tiny-llama",
        "tiny-llama: a Llama-shaped model built from this config with a seeded random init (no download); "
        "llama-shape: a real model's shapes (these fields, vocab_size, tie_word_embeddings), random init, built "
        "directly on the trial's device, for memory and speed at scale (its outputs mean nothing); "
        "pretrained: `path` is a local directory or a Hugging Face id",
        choices=("tiny-llama", "llama-shape", "pretrained"),
    )
    path: str | None = option(None, "local directory or hub id when kind is pretrained")
    trust_remote_code: bool = option(
        False, "pretrained: let the model directory's own Python code run (arbitrary code: off unless asked)"
    )
    hidden_size: int = option(64, "tiny-llama: width", min=8)
    intermediate_size: int = option(128, "tiny-llama: MLP width", min=8)
    num_hidden_layers: int = option(2, "tiny-llama: decoder layers", min=1)
    num_attention_heads: int = option(4, "tiny-llama: attention heads", min=1)
    num_key_value_heads: int = option(4, "tiny-llama: key/value heads (grouped-query attention)", min=1)
    max_position_embeddings: int = option(256, "tiny-llama: longest sequence", min=16)
    vocab_size: int = option(
        32000, "llama-shape: vocabulary size (tiny-llama takes its word tokenizer's; the embedding and output "
        "projection are vocab_size x hidden_size, so at 128k words they are a large share of a 1B model)", min=2)
    tie_word_embeddings: bool = option(
        False, "llama-shape: the output projection shares the input embedding's weight (Llama-3.2 1B and 3B do, "
        "Llama-2 does not)")
    precision: str = option(
        "fp32", "one policy for every method: fp32; bf16-mixed (frozen weights bf16, trained weights and optimizer "
        "state fp32, bf16 autocast); bf16 (everything bf16)")
    pretrain_steps: int = option(
        0, "tiny-llama: steps of full AdamW pre-training on the synthetic corpus before fine-tuning "
        "(cached; methods such as LoRA and MeZO assume a pretrained start)", min=0)
    pretrain_lr: float = option(3e-3, "tiny-llama: pre-training learning rate", gt=0.0)
    pretrain_batch_size: int = option(32, "tiny-llama: pre-training sequences per step", min=1)

    def validate(self, where: str) -> None:
        from memft_bench.harness.core.precision import PRECISIONS, REFUSED

        if self.precision in REFUSED:
            raise ConfigError(f"{where}.precision: {self.precision} is not supported: {REFUSED[self.precision]}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}.precision: must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.kind == "pretrained" and not self.path:
            raise ConfigError(f"{where}.path: required when kind is pretrained (a local directory or hub id)")
        if self.kind == "pretrained" and not looks_like_model_reference(str(self.path)):
            raise ConfigError(
                f"{where}.path: {self.path!r} is neither a directory nor a hub id of the form owner/name"
            )
        if self.kind == "llama-shape" and self.pretrain_steps:
            raise ConfigError(f"{where}.pretrain_steps: a llama-shape model is never pre-trained (its values are "
                              "random on purpose: only its shapes are measured); set it to 0")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"{where}.num_attention_heads: must divide hidden_size ({self.hidden_size})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{where}.num_key_value_heads: must divide num_attention_heads ({self.num_attention_heads})"
            )

    @property
    def label(self) -> str:
        """What the model really is, for the result row's `model` field."""
        if self.kind == "pretrained":
            from memft_bench.harness.sources.pretrained import label

            return label(str(self.path))
        if self.kind == "llama-shape":
            return (
                f"llama-shape (random init, shapes only: {self.num_hidden_layers} layers, hidden {self.hidden_size}, "
                f"mlp {self.intermediate_size}, {self.num_attention_heads} heads, {self.num_key_value_heads} kv heads, "
                f"vocab {self.vocab_size}, {'tied' if self.tie_word_embeddings else 'untied'} embeddings)"
            )
        start = "random init"
        if self.pretrain_steps:
            start = f"pre-trained {self.pretrain_steps} steps on the synthetic corpus"
        return (
            f"tiny-llama ({start}, {self.num_hidden_layers} layers, hidden {self.hidden_size}, "
            f"mlp {self.intermediate_size}, {self.num_attention_heads} heads)"
        )


#: The test sets each data source scores when a task names none (`eval_tasks`).
DEFAULT_EVAL_TASKS = {
    "commonsense": ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Challenge", "ARC-Easy",
                    "openbookqa"),
    "math": ("gsm8k",),
}
#: The family a task's test sets belong to in reports, when the task names none (`family`).
SOURCE_FAMILIES = {"commonsense": "commonsense", "math": "math", "synthetic": "synthetic", "tokens": "tokens"}


@dataclass
class TaskSpec:
    name: str = option(help="task name, as it appears in result rows")
    source: str = option(
        "synthetic", "synthetic: generated records; commonsense: LLM-Adapters files; math: GSM8K's train and test "
        "files, and LLM-Adapters' arithmetic test sets as extra test sets; file: your own data file (train_file, "
        "columns, scoring); tokens: sequences of uniformly random token ids, cutoff_len long, loss on every token "
        "(llama-shape models: memory and speed only, its accuracy means nothing)",
        choices=("synthetic", "commonsense", "math", "file", "tokens"))
    generator: str = option("", "synthetic: the generator's name (see harness/sources/synthetic.py)")
    train_size: int = option(2000, "synthetic: training records", min=1)
    test_size: int = option(200, "synthetic: test records", min=1)
    data_dir: str | None = option(
        None, "commonsense: <dir>/<task>/{train,test}.json; math: <dir>/gsm8k/{train,test}.jsonl and "
        "<dir>/math/<set>/test.json (else --data-dir or $BENCH_DATA_DIR, else fetched once)")
    eval_tasks: list[str] = option(
        default_factory=lambda: list(DEFAULT_EVAL_TASKS["commonsense"]),
        help="commonsense and math: the test sets scored after training (default: the 8 commonsense tasks; "
             "math: gsm8k, and any of AddSub, MultiArith, SingleEq, SVAMP, AQuA, mawps)")
    limit_train: int = option(0, "commonsense, math, file: train on this many records of the shuffled training "
                              "data (0: all)", min=0)
    limit_eval: int = option(0, "commonsense, math, file: score a seeded subset of this many items per test set "
                             "(0: all)", min=0)
    train_file: str | None = option(
        None, "file: your training data, a .json (a list of objects), .jsonl, .csv or .parquet file, or a "
        "directory saved with datasets' save_to_disk (relative paths: from the suite file's folder)")
    test_file: str | None = option(None, "file: a separate test file in the same format (else a seeded split of "
                                   "train_file, test_fraction of it)")
    test_fraction: float = option(0.2, "file without test_file: share of train_file's rows held out as the test "
                                  "set (a seeded split)", gt=0.0, max=0.9)
    columns: dict = option(default_factory=dict, help="file: which column holds what: prompt (required), input "
                           "(optional context), response (the training target; default: the answer), answer "
                           "(required)")
    scoring: str = option(
        "", "file: choice (listed options: ranked by log-likelihood, or read from generated text), exact, number "
        "(the final number) or regex (answer_regex): the last three score greedy generations")
    options: list[str] = option(default_factory=list, help="file, scoring choice: the answer options")
    answer_regex: str | None = option(None, "file, scoring regex: its first match in the generated text (group 1 "
                                      "when it has groups) is the prediction")
    family: str = option("", "the task family reports group its test sets under (default: the source's: "
                         "commonsense, math, synthetic; a file task's: its name)")
    validation_size: int = option(
        0, "records held out of the training data (a seeded choice, the same for every seed and method) as the "
        "validation split a tuning search scores; never trained on, never a test item (0: none; tuning: 200)", min=0)

    def validate(self, where: str) -> None:
        from memft_bench.harness.sources.synthetic import GENERATORS

        if self.source == "synthetic" and self.generator not in GENERATORS:
            raise ConfigError(
                f"{where}.generator: must be one of {', '.join(sorted(GENERATORS))}; got {self.generator!r}"
            )
        if self.source in DEFAULT_EVAL_TASKS:
            known = self.known_test_sets()
            if self.source != "commonsense" and self.eval_tasks == list(DEFAULT_EVAL_TASKS["commonsense"]):
                # the field's default is the commonsense suite's (so that trial fingerprints recorded before other
                # sources existed stay the same); another source's default replaces it
                self.eval_tasks = list(DEFAULT_EVAL_TASKS[self.source])
            unknown = [t for t in self.eval_tasks if t not in known]
            if unknown or not self.eval_tasks:
                raise ConfigError(f"{where}.eval_tasks: each must be one of {', '.join(known)}; got {unknown}")
        if self.source == "file":
            self.validate_file_task(where)
        elif self.train_file or self.test_file or self.columns or self.scoring or self.options or self.answer_regex:
            raise ConfigError(f"{where}: train_file, test_file, columns, scoring, options and answer_regex are for "
                              f"source: file (this task's source is {self.source})")

    def known_test_sets(self) -> tuple[str, ...]:
        if self.source == "math":
            from memft_bench.harness.sources.math_data import TEST_SETS

            return TEST_SETS
        from memft_bench.harness.sources.commonsense import TASKS

        return TASKS

    def validate_file_task(self, where: str) -> None:
        from memft_bench.harness.sources.scoring import FILE_SCORINGS

        if not self.train_file:
            raise ConfigError(f"{where}.train_file: required for source: file (a .json, .jsonl, .csv or .parquet "
                              "file, or a saved datasets directory)")
        if self.scoring not in FILE_SCORINGS:
            raise ConfigError(f"{where}.scoring: required for source: file, one of {', '.join(FILE_SCORINGS)}; "
                              f"got {self.scoring!r}")
        unknown = [k for k in self.columns if k not in FILE_COLUMNS]
        if unknown:
            raise ConfigError(f"{where}.columns: unknown key {unknown[0]!r}; keys: {', '.join(FILE_COLUMNS)}")
        for key in ("prompt", "answer"):
            if not isinstance(self.columns.get(key), str) or not self.columns[key]:
                raise ConfigError(f"{where}.columns.{key}: required: the name of the file's column that holds the "
                                  f"{key}")
        if not all(isinstance(v, str) and v for v in self.columns.values()):
            raise ConfigError(f"{where}.columns: each value must be a column name; got {self.columns}")
        if self.scoring == "choice" and len(set(self.options)) < 2:
            raise ConfigError(f"{where}.options: scoring choice needs at least two distinct answer options; got "
                              f"{self.options}")
        if self.scoring != "choice" and self.options:
            raise ConfigError(f"{where}.options: only scoring choice has options (this task's is {self.scoring})")
        if self.scoring == "regex":
            if not self.answer_regex:
                raise ConfigError(f"{where}.answer_regex: required for scoring regex")
            try:
                re.compile(self.answer_regex)
            except re.error as exc:
                raise ConfigError(f"{where}.answer_regex: not a valid regular expression ({exc})") from None
        elif self.answer_regex:
            raise ConfigError(f"{where}.answer_regex: only scoring regex reads one (this task's is {self.scoring})")

    @property
    def task_family(self) -> str:
        return self.family or SOURCE_FAMILIES.get(self.source, self.name)


#: The columns a `source: file` task maps (`columns:`).
FILE_COLUMNS = ("prompt", "input", "response", "answer")


@dataclass
class BudgetSpec:
    steps: int = option(100, "optimisation steps per trial (the same for every method)", min=1)
    micro_batch_size: int = option(8, "examples per forward pass", min=1)
    grad_accum: int = option(1, "micro-batches accumulated into one step", min=1)
    cutoff_len: int = option(256, "truncate tokenised examples to this many tokens", min=8)
    lr_schedule: str = option(
        "constant", "learning-rate schedule", choices=("constant", "linear", "cosine")
    )
    lr_warmup_steps: int = option(0, "linear warm-up steps of the schedule", min=0)
    timing_warmup_steps: int = option(3, "steps left out of the step-time statistics", min=0)
    gradient_checkpointing: bool = option(
        False, "recompute each decoder layer's activations in backward instead of keeping them "
        "(transformers' activation checkpointing, use_reentrant=False), the same for every method that "
        "backpropagates; zeroth-order methods record that it does not apply")

    time_s: float = option(
        0.0, "equal wall-clock instead of equal steps: each trial trains until this many seconds have passed (at "
        "most `steps` steps; a method with cheaper steps, such as a zeroth-order one, takes more of them); 0: off. "
        "Needs the constant schedule (a decaying one needs its length in advance)", min=0.0)

    @property
    def batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum

    def validate(self, where: str) -> None:
        if self.time_s and self.lr_schedule != "constant":
            raise ConfigError(f"{where}.lr_schedule: {self.lr_schedule} decays over `steps`, which a wall-clock budget "
                              "(time_s) does not fix in advance; use constant with time_s")
        if self.time_s and self.lr_warmup_steps:
            raise ConfigError(f"{where}.lr_warmup_steps: not with a wall-clock budget (time_s); set it to 0")


@dataclass
class EvalSpec:
    mode: str = option(
        "loglik", "loglik: pick the answer option with the highest log-likelihood (batched, fast); generate: "
        "greedy decoding, then LLM-Adapters' answer extraction; llm-adapters: their protocol exactly (their "
        "prompts, 4-beam search, 32 new tokens, batch 1, no truncation; slow)",
        choices=("loglik", "generate", "llm-adapters"))
    batch_size: int = option(32, "sequences per scoring or generation batch", min=1)
    max_new_tokens: int = option(32, "generate: tokens decoded per answer", min=1)
    before_training: bool = option(False, "also score the untrained model (accuracy_before columns)")


@dataclass
class SuiteSpec:
    name: str = option(help="suite name")
    description: str = option("", "one line for `bench list suites`")
    model: ModelSpec = option(default_factory=ModelSpec, help="the model every method starts from")
    tasks: list[TaskSpec] = option(default_factory=list, help="one trial per task, method and seed")
    budget: BudgetSpec = option(default_factory=BudgetSpec, help="training budget")
    evaluation: EvalSpec = option(default_factory=EvalSpec, help="how test items are scored")
    seeds: list[int] = option(default_factory=lambda: [0], help="seeds: model init, data order, method RNG")
    data_seed: int = option(1234, "seed of synthetic data generation (fixed across trial seeds)")
    default_methods: list[str] = option(default_factory=list, help="methods run when --methods is not given")
    methods: dict = option(default_factory=dict, help="per-method option values (method name -> options)")
    sweeps: dict = option(default_factory=dict,
                          help="method -> option -> list of values: one variant per combination (a size knob); "
                               "budget -> field -> values: every method once per value (cutoff_len, "
                               "micro_batch_size, gradient_checkpointing)")
    trial_timeout_s: float | None = option(None, "seconds before a trial is stopped as hung", gt=0)
    slurm: dict = option(default_factory=dict, help="cluster settings for --executor slurm (spec/slurm_settings.py)")
    trackers: dict = option(default_factory=dict, help="experiment trackers every trial is logged to: log_to: [mlflow, "
                            "tensorboard, wandb] and each one's settings (harness/trackers/settings.py); never part "
                            "of a trial's fingerprint")
    tuning: dict = option(default_factory=dict, help="an equal-budget search per method on a validation split before "
                          "the final run: knobs, methods, steps, validation_size, seed (harness/spec/tuning.py)")
    state_budgets: dict = option(
        default_factory=dict, help='method -> {state: "0.4x lora" or "0.08%", s_ratio}: SGC\'s k and s resolved '
        "from an optimizer-state budget and the model's shapes before trials run (harness/run/budget_resolution.py)")

    def validate(self, where: str) -> None:
        if not self.tasks:
            raise ConfigError(f"{where}.tasks: a suite needs at least one task")
        for task in self.tasks:
            if task.source == "tokens" and self.model.kind != "llama-shape":
                raise ConfigError(f"{where}.tasks.{task.name}: a tokens task draws ids from model.vocab_size, "
                                  "which only model.kind llama-shape has")
            if self.evaluation.mode == "llm-adapters" and task.source in ("math", "file") and task.scoring != "choice":
                raise ConfigError(f"{where}.evaluation.mode: llm-adapters reproduces LLM-Adapters' commonsense "
                                  f"protocol (32 new tokens, their answer words); task {task.name} is scored from "
                                  "generated text by its own rule: use mode generate")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.tasks: task names must be unique; got {names}")
        scored = [name for t in self.tasks for name in (t.eval_tasks if t.source in DEFAULT_EVAL_TASKS else [t.name])]
        repeated = sorted({name for name in scored if scored.count(name) > 1})
        if repeated:
            raise ConfigError(f"{where}.tasks: test set {repeated[0]!r} is scored by two tasks; reports name test sets "
                              "by name, so rename one task (or drop the test set from one task's eval_tasks)")
        if not self.seeds:
            raise ConfigError(f"{where}.seeds: give at least one seed")
        for method, values in self.methods.items():
            if values is not None and not isinstance(values, dict):
                raise ConfigError(f"{where}.methods.{method}: expected a mapping of options, got {values!r}")
        from memft_bench.harness.spec.budgets import parse_budgets

        parse_budgets(self.state_budgets, f"{where}.state_budgets")
        for method, values in self.sweeps.items():
            if not isinstance(values, dict) or not all(isinstance(v, list) and v for v in values.values()):
                raise ConfigError(f"{where}.sweeps.{method}: expected option: [value, ...] lists, got {values!r}")
            if method == "budget":  # a sweep of the suite's budget (sequence length, batch, checkpointing)
                for field in values:
                    check_budget_field(field, f"{where}.sweeps.budget.{field}")
        if self.slurm:
            from memft_bench.harness.spec.slurm_settings import SlurmSpec

            build(SlurmSpec, self.slurm, f"{where}.slurm")
        if self.tuning:
            self.tuning_spec(where)
        if self.trackers:
            from memft_bench.harness.trackers.settings import TrackersSpec

            build(TrackersSpec, self.trackers, f"{where}.trackers")

    def tuning_spec(self, where: str | None = None):
        """The validated `tuning:` section (None when the suite has none)."""
        from memft_bench.harness.spec.tuning import TuningSpec

        if not self.tuning:
            return None
        spec = build(TuningSpec, self.tuning, f"{where or self.name}.tuning")
        steps = spec.search_steps(self.budget.steps)
        if steps <= self.budget.timing_warmup_steps:
            raise ConfigError(f"{where or self.name}.tuning.steps: {steps} search steps leave none to time after the "
                              f"{self.budget.timing_warmup_steps} warm-up steps (budget.timing_warmup_steps); give "
                              "more steps")
        for task in self.tasks:
            if task.source == "tokens":
                raise ConfigError(f"{where or self.name}.tuning: task {task.name} is random tokens (memory and speed "
                                  "only): it has no accuracy to tune on")
        return spec

    def to_data(self) -> dict[str, Any]:
        return to_dict(self)

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise UnknownNameError(f"unknown task {name!r} in suite {self.name}")


def suite_from_data(data: Any, where: str) -> SuiteSpec:
    return build(SuiteSpec, data, where)


def builtin_suite_dir() -> Path:
    """The folder of the built-in suites, installed as the data-only package `memft_bench.suites`.

    Looked up through the import system rather than `importlib.resources`: the folder is a namespace
    package (no `__init__.py`, so that no generic top-level `suites` package of ours exists), and an
    editable install lists a non-directory placeholder among its locations, which resources refuses."""
    spec = importlib.util.find_spec("memft_bench.suites")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location, "tiny.yaml").is_file():
            return Path(location)
    raise ConfigError("the built-in suites are not installed (reinstall the project: pip install -e .)")


def _builtin_suite_files() -> dict[str, Path]:
    return {entry.name[: -len(SUITE_SUFFIX)]: entry for entry in builtin_suite_dir().iterdir()
            if entry.name.endswith(SUITE_SUFFIX)}


def _read_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None


def load_suite(name_or_path: str) -> SuiteSpec:
    """A built-in suite by name (`tiny`) or a suite file by path (`my/suite.yaml`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{name_or_path}: suite file not found")
        suite = suite_from_data(_read_yaml(path.read_text(encoding="utf-8"), str(path)), str(path))
        return with_data_paths_from(suite, path.resolve().parent)
    files = _builtin_suite_files()
    if name_or_path not in files:
        raise UnknownNameError(
            f"unknown suite {name_or_path!r}; available suites: {', '.join(sorted(files))} "
            "(or give the path of a .yaml file)"
        )
    where = f"suites/{name_or_path}{SUITE_SUFFIX}"
    suite = suite_from_data(_read_yaml(files[name_or_path].read_text(encoding="utf-8"), where), where)
    return with_data_paths_from(suite, files[name_or_path].parent)


def with_data_paths_from(suite: SuiteSpec, folder: Path) -> SuiteSpec:
    """A file task's relative train_file/test_file made absolute from the suite file's folder, so that a suite
    and its data travel together and every trial (whatever its working directory) reads the same files."""
    for task in suite.tasks:
        for field in ("train_file", "test_file"):
            value = getattr(task, field)
            if value and not Path(value).expanduser().is_absolute():
                setattr(task, field, str(folder / value))
            elif value:
                setattr(task, field, str(Path(value).expanduser()))
    return suite


def list_suites() -> dict[str, str]:
    """name -> description of every built-in suite (reads the YAML files; imports no torch)."""
    out = {}
    for name, entry in sorted(_builtin_suite_files().items()):
        try:
            data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
            out[name] = str(data.get("description", "")) if isinstance(data, dict) else ""
        except yaml.YAMLError:
            out[name] = "(unreadable suite file)"
    return out


def check_budget_field(field: str, where: str) -> None:
    """A budget sweep's field must be one of the budget's: a typo would otherwise sweep nothing."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(BudgetSpec)]
    if field not in names:
        raise ConfigError(f"{where}: the budget has no field {field!r}; fields: {', '.join(names)}")


# -- overrides -------------------------------------------------------------------------------------
SUITE_SECTIONS = ("model", "budget", "evaluation")


def parse_override(text: str) -> tuple[list[str], str]:
    """`lora.r=16` -> (["lora", "r"], "16"); `budget.steps=50` -> (["budget", "steps"], "50")."""
    key, sep, value = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"--set {text!r}: expected METHOD.OPTION=VALUE (e.g. lora.r=16) or SECTION.FIELD=VALUE "
            f"with SECTION one of {', '.join(SUITE_SECTIONS)}"
        )
    return parts, value.strip()


def check_override_section(section: str, text: str) -> None:
    """A `--set` section must be a suite section or a registered method: a typo would otherwise change
    nothing and say nothing."""
    from memft_bench.methods.base import available_methods

    if section in SUITE_SECTIONS:
        return
    methods = available_methods()
    if section not in methods:
        raise ConfigError(f"--set {text!r}: {section!r} is neither a suite section ({', '.join(SUITE_SECTIONS)}) "
                          f"nor a method; methods: {', '.join(sorted(methods))} (a plugin's: pass --plugin MODULE)")


def apply_overrides(suite: SuiteSpec, overrides: list[str]) -> SuiteSpec:
    """A new, validated suite with `--set` overrides applied (method options or suite sections)."""
    data = copy.deepcopy(suite.to_data())
    for text in overrides:
        (section, field), value = parse_override(text)
        check_override_section(section, text)
        if section in SUITE_SECTIONS:
            data[section][field] = value
        else:
            data["methods"].setdefault(section, {})
            data["methods"][section] = dict(data["methods"][section] or {}, **{field: value})
    return suite_from_data(data, f"{suite.name} (with --set)")
