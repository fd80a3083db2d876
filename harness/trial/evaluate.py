"""Evaluation: log-likelihood multiple choice over a task's answer options, or generation + extraction.

For each test record the prompt is the instruction prompt without the output; each answer option
gives a candidate response (the record's output with its answer replaced by the option, e.g. "the
correct answer is solution2"), and the option whose candidate has the highest summed log-probability
after the prompt is the prediction. Candidates of one record share everything but the answer, so
this ranks the answer tokens; when they differ only in their last token (every LLM-Adapters task)
one forward pass scores them all. Scoring is batched (sorted by length, left-padded) and
deterministic: the model runs in eval mode under `torch.no_grad()`.

`generate` mode decodes greedily (batched, left padding with an attention mask) and extracts the answer
as LLM-Adapters does (`sources/commonsense.py: extract_answer`). Test sets scored by a rule on generated text
(a final number, an option letter, exact match, a regular expression: `sources/scoring.py`) always generate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from memft_bench.harness.sources.prompts import build_prompt
from memft_bench.harness.trial.data import left_pad
from memft_bench.harness.trial.models import logits_of_last


@dataclass
class EvalResult:
    accuracy: float
    n_items: int
    predictions: list[str]
    #: One dict per item, for the per-item records: the extracted `prediction`, `correct`, and the option
    #: `scores` (loglik) or the generated `output` text (generate).
    details: list[dict[str, Any]] = field(default_factory=list)


def candidate_response(record: dict[str, str], option: str) -> str:
    output, answer = record.get("output", ""), record["answer"]
    if answer and answer in output:
        return output.replace(answer, option)
    return option


def encode_pair(tokenizer: Any, prompt: str, response: str, max_len: int) -> tuple[list[int], int]:
    """Token ids of prompt + response and how many trailing ids belong to the response."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + response)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        n_response = len(full_ids) - len(prompt_ids)
    else:  # the tokenizer merged across the boundary: score the response tokenised on its own
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        full_ids, n_response = prompt_ids + response_ids, len(response_ids)
    if len(full_ids) > max_len:  # keep the response, cut the prompt from the left
        full_ids = full_ids[-max_len:]
        n_response = min(n_response, max_len - 1)
    return full_ids, n_response


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module, sequences: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int
) -> list[float]:
    """Summed log-probability of the last n tokens of each (ids, n) given the tokens before them.

    Sequences that differ only in their last token share one forward pass: the model reads ids[:-1]
    once and the last n positions' logits score every such sequence. The options of an LLM-Adapters
    record ("...answer is answer1" / "answer2" / ...) are exactly that, so a record costs one pass
    instead of one per option. Passes are batched by length (left-padded) and only the scored
    positions go through the vocabulary projection.
    """
    device = next(model.parameters()).device
    groups: dict[tuple[tuple[int, ...], int], list[int]] = {}
    for i, (ids, n) in enumerate(sequences):
        if not 1 <= n < len(ids):
            raise ValueError(f"sequence {i}: cannot score its last {n} of {len(ids)} tokens")
        groups.setdefault((tuple(ids[:-1]), n), []).append(i)
    inputs = sorted(groups, key=lambda key: len(key[0]))
    scores = [0.0] * len(sequences)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        keep = max(n for _, n in chunk)
        input_ids, attention = left_pad([context for context, _ in chunk], pad_id)
        logits = logits_of_last(model, input_ids.to(device), attention.to(device), keep)
        for row, key in enumerate(chunk):
            n = key[1]
            logprobs = torch.log_softmax(logits[row, keep - n:].float(), dim=-1)  # (n, vocabulary)
            for i in groups[key]:
                targets = torch.tensor(sequences[i][0][-n:], device=logprobs.device)
                scores[i] = float(logprobs.gather(1, targets.unsqueeze(1)).sum())
        del logits
    return scores


OptionsOf = Sequence[str] | Callable[[dict[str, str]], Sequence[str]]


def _options(options: OptionsOf, record: dict[str, str]) -> Sequence[str]:
    return options(record) if callable(options) else options


def evaluate_loglik(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, str]],
    options: OptionsOf,
    batch_size: int,
    max_len: int,
) -> EvalResult:
    """Accuracy of picking the highest-likelihood option, over `records` (options fixed or per record)."""
    was_training = model.training
    model.eval()
    sequences, spans = [], []
    for record in records:
        prompt = build_prompt(record)
        opts = list(_options(options, record))
        spans.append((len(sequences), opts))
        for option in opts:
            sequences.append(encode_pair(tokenizer, prompt, candidate_response(record, option), max_len))
    scores = score_sequences(model, sequences, tokenizer.pad_token_id, batch_size)
    predictions, details, correct = [], [], 0
    for (start, opts), record in zip(spans, records):
        row = scores[start : start + len(opts)]
        best = opts[max(range(len(opts)), key=row.__getitem__)]  # ties: the first option
        predictions.append(best)
        correct += best == record["answer"]
        details.append({"scores": dict(zip(opts, row)), "prediction": best, "correct": best == record["answer"]})
    model.train(was_training)
    return EvalResult(correct / len(records) if records else 0.0, len(records), predictions, details)


def first_option_in(text: str, options: Sequence[str]) -> str | None:
    """The option that occurs first in `text` (longest first at the same place); None when none does."""
    found = [(text.find(o), -len(o), o) for o in options if o in text]
    return min(found)[2] if found else None


@torch.no_grad()
def evaluate_generate(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, str]],
    extract: Callable[[dict[str, str], str], str | None],
    batch_size: int,
    max_len: int,
    max_new_tokens: int,
    is_correct: Callable[[dict[str, str], str | None], bool] | None = None,
) -> EvalResult:
    """Greedy decoding of each response (left-padded batches with attention masks), then `extract`.

    An output from which no answer can be extracted counts as wrong (its prediction is ""). `is_correct`
    judges a prediction (default: equal to the record's answer; a final number compares as a number).
    """
    judge = is_correct or (lambda record, answer: answer == record["answer"])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    predictions: list[str] = []
    details: list[dict[str, Any]] = []
    correct = 0
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        prompts = [tokenizer(build_prompt(r))["input_ids"][-(max_len - 1):] for r in chunk]
        input_ids, attention = left_pad(prompts, pad_id)
        width = input_ids.size(1)
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        for record, generated in zip(chunk, out[:, width:]):
            text = tokenizer.decode(generated, skip_special_tokens=True)
            answer = extract(record, text)
            right = bool(judge(record, answer))
            predictions.append(answer or "")
            correct += right
            details.append({"output": text, "prediction": answer or "", "correct": right})
    model.train(was_training)
    return EvalResult(correct / len(records) if records else 0.0, len(records), predictions, details)


@torch.no_grad()
def mean_response_loss(model: torch.nn.Module, tokenizer: Any, records: Sequence[dict[str, str]], max_len: int,
                       batch_size: int, prompt_of: Callable[[dict[str, str]], str] = build_prompt) -> float:
    """Cross-entropy per response token of `records` (prompt + output, the loss training minimises), in eval mode:
    the validation loss that breaks ties between configurations of equal validation accuracy."""
    from memft_bench.harness.trial.data import collate, encode_example
    from memft_bench.harness.trial.models import causal_lm_loss

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    examples = [encode_example(tokenizer, r, max_len, prompt_of) for r in records]
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        loss_sum, n = causal_lm_loss(model, collate(examples[start:start + batch_size], tokenizer.pad_token_id,
                                                    device))
        total, tokens = total + float(loss_sum), tokens + n
    model.train(was_training)
    return total / max(tokens, 1)
