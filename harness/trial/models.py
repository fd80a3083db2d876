"""Model and tokenizer construction, and the one loss function every method is given.

The harness builds the model, never a method: the same seed gives every method the same initial
weights. `tiny-llama` builds a small `LlamaForCausalLM` from the suite's config with a word-level
tokenizer over the synthetic tasks' vocabulary (no download). `llama-shape` builds a real model's shapes
(Llama-3.2-1B, Llama-2-7B, ...) with random values, directly on the trial's device and in the storage
dtype, for memory and speed at scale: a 7B model never passes through host memory, and its outputs mean
nothing (its tasks are random token ids, `harness.trial.data`). `pretrained` loads a local directory or hub id
with safetensors only, and `trust_remote_code=False` unless the user passed `--trust-remote-code`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from memft_bench.harness.core.cache import cache_dir
from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.sources.synthetic import vocabulary_text
from memft_bench.harness.spec.config import ModelSpec

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def build_word_tokenizer(text: str) -> Any:
    """A lower-casing word-level tokenizer (`tokenizers` WordLevel) over the words of `text`, adding BOS.

    The vocabulary is sorted, so the same text always gives the same ids.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Lowercase()
    pre_tokenizer = pre_tokenizers.Whitespace()
    words = sorted({w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))})
    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.normalizer = normalizer
    core.pre_tokenizer = pre_tokenizer
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def build_tokenizer(spec: ModelSpec) -> Any:
    if spec.kind == "tiny-llama":
        return build_word_tokenizer(vocabulary_text())
    if spec.kind == "llama-shape":
        # Its tasks are token ids, never text: the tokenizer only names the special ids (padding, BOS, EOS),
        # which are ids 0-3 of the model's own vocab_size.
        return build_word_tokenizer("")
    from transformers import AutoTokenizer

    from memft_bench.harness.sources.pretrained import check_model_files, resolve

    local = resolve(spec.path)
    check_model_files(local)
    try:
        tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=spec.trust_remote_code)
    except Exception as exc:  # tokenizers and sentencepiece raise their own exception types
        raise BenchError(f"model.path {spec.path!r}: cannot load its tokenizer ({_first_line(exc)})") from None
    if tokenizer.pad_token_id is None:
        # Padding never enters the loss or the scores, so any id serves; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token else tokenizer.unk_token
    return tokenizer


def model_config(spec: ModelSpec, tokenizer: Any) -> Any:
    """The LlamaConfig of a model the harness builds itself, for the trial and for the pre-flight's meta model
    alike, so both build the same shapes.

    `tiny-llama` takes the word tokenizer's vocabulary and untied embeddings; `llama-shape` a real model's
    vocabulary size and tying. Only what decides memory and time is set: Llama's rotary base and scaling, norm
    epsilon and context length change neither the parameters nor the step's tensors at a fixed length."""
    from transformers import LlamaConfig

    shape_only = spec.kind == "llama-shape"
    return LlamaConfig(
        vocab_size=spec.vocab_size if shape_only else len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=spec.tie_word_embeddings if shape_only else False,
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create floating parameters in `dtype`: a model built in its storage dtype never exists in float32
    (a 7B model would hold 27 GB for a moment). Rotary frequencies are made float32 explicitly by
    transformers, so buffers stay as `from_pretrained(dtype=...)` leaves them."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(spec: ModelSpec, tokenizer: Any, seed: int, device: torch.device | str) -> torch.nn.Module:
    """The trial's starting model: identical for every method given the same spec and seed.

    Weights are in the precision policy's storage dtype (float32, or bf16 for both bf16 policies): every
    method starts from the same rounded weights, and `Precision.apply` upcasts those a method trains.
    """
    from transformers import LlamaForCausalLM

    from memft_bench.harness.core.precision import Precision

    dtype = Precision(spec.precision).storage_dtype
    torch.manual_seed(seed)
    if spec.kind == "llama-shape":
        # On the device itself, in the storage dtype: parameters are allocated and initialised where they will
        # be trained, with no host copy and no float32 detour. The seed fixes the values on the device's own
        # generator, so every method of a trial starts from the same (meaningless) weights.
        with torch.device(device), default_dtype(dtype):
            model = LlamaForCausalLM(model_config(spec, tokenizer))
        model.config.use_cache = False
        return model
    if spec.kind == "tiny-llama":
        model = LlamaForCausalLM(model_config(spec, tokenizer))
        if spec.pretrain_steps:
            load_or_pretrain(model, spec, tokenizer, seed, device)
        for p in model.parameters():  # parameters only: buffers (rotary frequencies) stay float32, as
            p.data = p.data.to(dtype)  # transformers' from_pretrained(dtype=...) leaves them
    else:
        from transformers import AutoModelForCausalLM

        from memft_bench.harness.sources.pretrained import check_model_files, resolve

        local = resolve(spec.path)
        check_model_files(local)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                local, trust_remote_code=spec.trust_remote_code, use_safetensors=True, dtype=dtype
            )
        except (OSError, ValueError) as exc:
            raise BenchError(f"model.path {spec.path!r}: cannot load it ({_first_line(exc)})") from None
    model.config.use_cache = False
    return model.to(device)


def pretrain(model: torch.nn.Module, spec: ModelSpec, tokenizer: Any, seed: int) -> None:
    """Full AdamW language-model training of the tiny model on `synthetic.pretraining_text` (fp32, CPU).

    Deterministic in (spec, seed), so the cached result is the same whoever computes it first.
    """
    from memft_bench.harness.sources.synthetic import pretraining_text

    generator = torch.Generator().manual_seed(seed)
    corpus = pretraining_text(4096, seed)
    encoded = [tokenizer(t, truncation=True, max_length=spec.max_position_embeddings)["input_ids"] for t in corpus]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.0)
    model.train()
    for _ in range(spec.pretrain_steps):
        idx = torch.randint(len(encoded), (spec.pretrain_batch_size,), generator=generator).tolist()
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, i in enumerate(idx):
            input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            attention[row, : len(encoded[i])] = 1
        labels = input_ids.masked_fill(attention == 0, -100)
        loss_sum, n = causal_lm_loss(model, {"input_ids": input_ids, "attention_mask": attention, "labels": labels})
        (loss_sum / max(n, 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def load_or_pretrain(model: torch.nn.Module, spec: ModelSpec, tokenizer: Any, seed: int, device: Any) -> None:
    """Load the pre-trained tiny weights from the cache, or pre-train and cache them (safetensors, atomic)."""
    from safetensors.torch import load_file, save_file

    from memft_bench.harness.core.fingerprint import fingerprint
    from memft_bench.harness.core.options import to_dict

    key = fingerprint({"spec": to_dict(spec), "seed": seed, "vocab": tokenizer.get_vocab(), "version": 1})
    path = cache_dir() / "tiny-llama" / f"{key}.safetensors"
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    pretrain(model, spec, tokenizer, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def logits_of_last(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int
) -> torch.Tensor:
    """Logits of each row's last `keep` positions, without projecting the others onto the vocabulary.

    Position ids count from each row's first real token, so left and right padding give the same
    result. The vocabulary projection of positions nobody reads costs compute and batch x length x
    vocabulary floats (hundreds of MB for a 49k vocabulary); `logits_to_keep` skips it. Models whose
    forward lacks that argument get their full logits, sliced.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError:
        logits = model(**inputs).logits
    return logits[:, -keep:]


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(cross-entropy summed over target tokens, number of target tokens) of one micro-batch.

    Summed rather than averaged so that micro-batches of different sizes accumulate into the exact
    mean over all of a step's target tokens. Only positions from the batch's first target on are
    projected onto the vocabulary: batches are left-padded (`harness.trial.data.collate`), so the responses
    line up at the end and that is a few positions, not the whole prompt. The loss is the same.
    """
    labels = batch["labels"][:, 1:]
    has_target = (labels != -100).any(0)
    keep = labels.size(1) - int(has_target.int().argmax()) if bool(has_target.any()) else 1
    logits = logits_of_last(model, batch["input_ids"], batch["attention_mask"], keep + 1)[:, :-1].float()
    labels = labels[:, -keep:]
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                               reduction="sum")
    return loss_sum, int((labels != -100).sum())


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Turn on activation checkpointing (non-reentrant) on a transformers model; returns how many of its modules
    now recompute their activations in backward, read back from the model, so a row records what reached it.

    Non-reentrant, because the reentrant form needs an input that requires grad (frozen embeddings under LoRA
    give none) and re-runs parameter hooks differently. transformers 5 renamed the method
    `activation_checkpointing_enable` and kept `gradient_checkpointing_enable` as a deprecated alias (its
    FutureWarning would only add noise to every trial log)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise BenchError(f"{type(model).__name__} has no gradient checkpointing switch; set "
                         "budget.gradient_checkpointing=false")
    return checkpointed_modules(model)


def checkpointed_modules(model: torch.nn.Module) -> int:
    """Decoder layers whose `gradient_checkpointing` flag is set: 0 when checkpointing is off.

    transformers' checkpointed layers derive from `GradientCheckpointingLayer`; the model class above them
    carries the flag too but recomputes nothing itself, so it is not counted (older transformers: every
    flagged module)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        GradientCheckpointingLayer = torch.nn.Module  # noqa: N806 (a class, as the import names it)
    return sum(1 for m in model.modules()
               if isinstance(m, GradientCheckpointingLayer) and getattr(m, "gradient_checkpointing", False) is True)


@torch.no_grad()
def next_token_accuracy(model: torch.nn.Module, sequences: Sequence[Sequence[int]], batch_size: int,
                        device: torch.device | str) -> tuple[int, int]:
    """(correctly predicted next tokens, tokens predicted) over `sequences` (equal lengths), top-1.

    The evaluation of a random-token task: on uniformly random tokens nothing can be learnt, so its
    accuracy is chance (1 / vocabulary) whatever the method; it is measured, not assumed, so a row keeps an
    accuracy like every other and the evaluation phase's memory is real, and it is never read as quality."""
    correct = total = 0
    for start in range(0, len(sequences), batch_size):
        ids = torch.tensor([list(s) for s in sequences[start:start + batch_size]], dtype=torch.long, device=device)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
        correct += int((logits.argmax(-1) == ids[:, 1:]).sum())
        total += ids[:, 1:].numel()
    return correct, total
