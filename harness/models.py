"""Model and tokenizer construction, and the one loss function every method is given.

The harness builds the model, never a method: the same seed gives every method the same initial
weights. `tiny-llama` builds a small `LlamaForCausalLM` from the suite's config with a word-level
tokenizer over the synthetic tasks' vocabulary (no download). `pretrained` loads a local directory
or hub id with `trust_remote_code=False` and safetensors only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.config import ModelSpec
from harness.errors import BenchError
from harness.synthetic import vocabulary_text

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def build_tokenizer(spec: ModelSpec) -> Any:
    if spec.kind == "tiny-llama":
        return build_word_tokenizer(vocabulary_text())
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise BenchError(f"model.path {spec.path!r}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        # Padding never enters the loss or the scores, so any id serves; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token else tokenizer.unk_token
    return tokenizer


def build_model(spec: ModelSpec, tokenizer: Any, seed: int, device: torch.device | str) -> torch.nn.Module:
    """The trial's starting model: identical for every method given the same spec and seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = DTYPES[spec.dtype]
    torch.manual_seed(seed)
    if spec.kind == "tiny-llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
            max_position_embeddings=spec.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config).to(dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(
                spec.path, trust_remote_code=False, use_safetensors=True, dtype=dtype
            )
        except (OSError, ValueError) as exc:
            raise BenchError(f"model.path {spec.path!r}: cannot load it ({str(exc).splitlines()[0]})") from None
    model.config.use_cache = False
    return model.to(device)


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(cross-entropy summed over target tokens, number of target tokens) of one micro-batch.

    Summed rather than averaged so that micro-batches of different sizes accumulate into the exact
    mean over all of a step's target tokens.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits = logits[:, :-1, :].float()
    shift_labels = batch["labels"][:, 1:]
    loss_sum = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss_sum, int((shift_labels != -100).sum())
