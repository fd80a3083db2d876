"""LLM-Adapters' commonsense protocol, exactly: their prompt strings, their decoding, their answer reading.

`--eval-mode llm-adapters` (`evaluation.mode: llm-adapters`) reproduces what Hu et al.'s (2023) scripts do,
so a figure can be set beside their tables without the caveats of the fast modes:

- Training prompt: `finetune.py`'s `generate_prompt`, whitespace included. Its triple-quoted f-string is
  indented inside the function, so every line after the first starts with 16 spaces, the "blank" lines
  hold those 16 spaces, and the first line ends in two spaces (one with an input). The loss covers the
  output only, as the other modes (the user prompt is the same template with an empty output).
- Evaluation prompt: `commonsense_evaluate.py`'s `generate_prompt`, which differs from the training one:
  one trailing space on the first line, truly empty blank lines, and a response line that ends in 16
  spaces. Their evaluation calls it with the instruction only (`input=None`), so the record's input is
  never shown; commonsense records have an empty input anyway.
- Decoding: beam search with 4 beams (their `GenerationConfig(num_beams=4)`; temperature, top-p and top-k
  are set there but unused without sampling), 32 new tokens, one item at a time, and the prompt is never
  truncated (their tokenizer call has no `max_length`).
- Answer: the whole sequence is decoded (`skip_special_tokens=True`), split at the first "### Response:",
  stripped, and read with their per-task regular expression (`harness.sources.commonsense.extract_answer`, the
  first match of the task's answer words; none counts as wrong).

This is slow (4 beams, batch 1, no length sorting): docs/suites.md (the commonsense suite) gives its cost
against the fast modes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

_INDENT = " " * 16

#: finetune.py's template without an input (the first line ends in two spaces).
TRAIN_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
    "\n"
    f"{_INDENT}### Instruction:\n"
    f"{_INDENT}{{instruction}}\n"
    f"{_INDENT}\n"
    f"{_INDENT}### Response:\n"
    f"{_INDENT}{{output}}"
)
#: finetune.py's template with an input (the first line ends in one space).
TRAIN_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n"
    "\n"
    f"{_INDENT}### Instruction:\n"
    f"{_INDENT}{{instruction}}\n"
    f"{_INDENT}\n"
    f"{_INDENT}### Input:\n"
    f"{_INDENT}{{input}}\n"
    f"{_INDENT}\n"
    f"{_INDENT}### Response:\n"
    f"{_INDENT}{{output}}"
)
#: commonsense_evaluate.py's template without an input (the only one its evaluation uses).
EVAL_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
    "\n"
    f"{_INDENT}### Instruction:\n"
    f"{_INDENT}{{instruction}}\n"
    "\n"
    f"{_INDENT}### Response:\n"
    f"{_INDENT}"
)
RESPONSE_MARKER = "### Response:"
NUM_BEAMS = 4
MAX_NEW_TOKENS = 32


def train_prompt(record: dict[str, str]) -> str:
    """finetune.py's prompt without the output (what the loss masks); the output follows it directly."""
    template = TRAIN_PROMPT_WITH_INPUT if record.get("input") else TRAIN_PROMPT_NO_INPUT
    return template.format(instruction=record["instruction"], input=record.get("input", ""), output="")


def eval_prompt(record: dict[str, str]) -> str:
    """commonsense_evaluate.py's prompt: the instruction only, whatever the record's input."""
    return EVAL_PROMPT.format(instruction=record["instruction"])


def response_of(decoded: str) -> str:
    """Their `o.split("### Response:")[1].strip()` of the decoded prompt + generation."""
    parts = decoded.split(RESPONSE_MARKER)
    return parts[1].strip() if len(parts) > 1 else decoded.strip()


def evaluate(model: Any, tokenizer: Any, records: Sequence[dict[str, str]],
             extract: Callable[[dict[str, str], str], str | None]):
    """Accuracy under their decoding: one record at a time, 4-beam search, 32 new tokens, no truncation."""
    import torch

    from memft_bench.harness.trial.evaluate import EvalResult

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predictions: list[str] = []
    details: list[dict[str, Any]] = []
    correct = 0
    with torch.no_grad():
        for record in records:
            prompt = eval_prompt(record)
            input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 num_beams=NUM_BEAMS, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            text = response_of(tokenizer.decode(out[0], skip_special_tokens=True))
            answer = extract(record, text)
            predictions.append(answer or "")
            correct += answer == record["answer"]
            # the exact prompt too: in this mode the records show what the model was asked, byte for byte
            details.append({"prompt": prompt, "output": text, "prediction": answer or "",
                            "correct": answer == record["answer"]})
    model.train(was_training)
    return EvalResult(correct / len(records) if records else 0.0, len(records), predictions, details)
