"""The Alpaca instruction prompt, as LLM-Adapters uses it for the commonsense tasks (no torch here)."""

from __future__ import annotations

# The Alpaca instruction template (Taori et al. 2023), as LLM-Adapters uses it.
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def build_prompt(record: dict[str, str]) -> str:
    """The prompt up to and including the response header; the output follows it directly."""
    if record.get("input"):
        return PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=record["input"])
    return PROMPT_NO_INPUT.format(instruction=record["instruction"])
