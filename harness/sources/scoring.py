"""How a test item's answer is read and judged: multiple choice, or generated text scored by a rule.

Every test set of a task has one `Scoring`. `choice` items have answer options: log-likelihood mode ranks
them, generate mode reads the first option out of the generated text (LLM-Adapters' rule for their
commonsense tasks). The other kinds always generate (greedy decoding), and read the prediction out of the
text with a named rule:

- `number`: the final number (`harness.sources.answers.final_number`, the rule named by `NUMBER_RULE`),
  equal to the reference number as that rule compares them (GSM8K and LLM-Adapters' arithmetic sets);
- `letter`: an option letter A-E (LLM-Adapters' AQuA rule);
- `exact`: the first line of the output, stripped, equal to the answer (case-sensitive);
- `regex`: the first match of a regular expression in the output (its first group when it has one),
  stripped, equal to the answer.

No torch here: the suite validation and the report read these descriptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from memft_bench.harness.sources import answers

#: The Alpaca template's response header: a generation that writes it again has started another turn.
RESPONSE_MARKER = "### Response:"
#: Kinds a suite may name for its own data (`scoring:` of a `source: file` task); `letter` is AQuA's.
FILE_SCORINGS = ("choice", "exact", "number", "regex")
KINDS = (*FILE_SCORINGS, "letter")


@dataclass(frozen=True)
class Scoring:
    kind: str = "choice"
    #: regex kind: the pattern whose first match (group 1 when it has groups) is the prediction
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scoring {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind == "regex" and not self.pattern:
            raise ValueError("regex scoring needs a pattern")

    @property
    def generative(self) -> bool:
        """Scored from generated text whatever the evaluation mode (only choice items have options to rank)."""
        return self.kind != "choice"

    def describe(self) -> str:
        """One phrase for reports: how this test set was scored."""
        return {
            "choice": "multiple choice",
            "number": f"final number ({answers.NUMBER_RULE})",
            "letter": "option letter (LLM-Adapters' AQuA rule)",
            "exact": "exact match of the output's first line",
            "regex": f"regular expression {self.pattern!r}, exact match",
        }[self.kind]

    def extract(self, text: str) -> str | None:
        """The prediction read from generated text (None: nothing could be read, which counts as wrong).

        The number and letter rules read only the first response, as LLM-Adapters' evaluate.py does
        (`output.split("### Response:")[1]` of prompt + generation): a model that goes on to write another
        "### Response:" turn is judged on its first answer."""
        if self.kind in ("number", "letter"):
            text = text.split(RESPONSE_MARKER)[0]
        if self.kind == "number":
            value = answers.final_number(text)
            return None if value is None else format_number(value)
        if self.kind == "letter":
            return answers.option_letter(text)
        if self.kind == "exact":
            lines = text.strip().splitlines()
            return lines[0].strip() if lines else None
        if self.kind == "regex":
            match = re.search(str(self.pattern), text)
            if match is None:
                return None
            found = match.group(1) if match.re.groups else match.group(0)
            return found.strip() if found is not None else None  # an optional group that did not take part
        raise ValueError("choice items are read with their options (harness.trial.worker.extractor)")

    def is_correct(self, record: dict[str, Any], prediction: str | None) -> bool:
        if prediction is None or prediction == "":
            return False
        if self.kind == "number":
            return answers.numbers_match(float(prediction), str(record["answer"]))
        return prediction == str(record["answer"]).strip()


def format_number(value: float) -> str:
    """A number as a prediction string: integers without ".0" (so "18" reads as GSM8K writes it)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


CHOICE = Scoring("choice")
