"""Scoring a generated answer by its final number (GSM8K and LLM-Adapters' math sets) or option letter (AQuA).

References use GSM8K's convention: the solution's last line is `#### <number>`, sometimes with thousands
separators (`#### 1,234`); `reference_number` returns that number as a canonical string ("1234").

Predictions use one named rule, LLM-Adapters' `extract_answer_number` and its comparison in `main`
(AGI-Edgerunners/LLM-Adapters, `evaluate.py`, commit 816657208af4db747803f87ba40a4c71383fed7a):

* drop every comma from the generated text, then take the LAST match of `-?<digits>[.<digits>]` anywhere in
  it (a sign only when a "-" touches the digits, so "5-3" ends in -3; no exponent, so "1e3" ends in 3; no
  leading-dot decimals, so ".5" is 5; "1/2" ends in 2);
* no number at all: LLM-Adapters returns `float("inf")`, which is never within the tolerance of a finite
  label; here `final_number` returns None and `numbers_match` scores it wrong, the same verdict;
* correct when `abs(label - prediction) <= 0.001`, the label read with `float` (a string such as "576.0").

Why this rule and not peft's GSM8K scorer (huggingface/peft, `method_comparison/MetaMathQA/utils.py`:
`parse_answer`, `convert_to_decimal`, `get_accuracy`; unchanged from commit
41921013f57a3815cf6a25cf01e6ffbdd89c1292 to 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40, which was read):

1. Provenance: the suite's optional extra test sets (AddSub, MultiArith, SingleEq, SVAMP, AQuA) are
   LLM-Adapters' files, their labels ("576.0") are written for this comparison, and the published accuracies
   on them were computed with it. AQuA's letter rule (`option_letter`) comes from the same file, and the
   commonsense suite already scores with LLM-Adapters' extraction, so one suite report uses one provenance.
2. peft only looks after an answer phrase ("The answer is: ", "The answer is ", "The final answer is: ",
   "The final answer is ", "#### ", the first of these present, its last occurrence, that line only), tuned,
   its comment says, to Llama-3.1-8B-Instruct samples. A model without that phrase scores zero under peft
   even when it ends on the right number ("so she has 18 dollars."); the small models a memory benchmark
   fine-tunes often do.
3. peft keeps thousands separators and trailing words in the prediction ("1,234", "18 dollars" are not
   numbers to it, so they are wrong against 1234 and 18); LLM-Adapters drops commas and ignores words.
4. peft compares floats exactly; LLM-Adapters allows 0.001, so a rounded "33.3333" matches 33.333.

What this rule gets wrong that peft's gets right (tests/sources/test_answers.py tabulates both): text
generated after the answer ("#### 18\\n\\nQuestion: ... 3 apples" gives 3), fractions ("1/2" gives 2) and
exponents ("1e3" gives 3). Reports name the rule with `NUMBER_RULE`.

Pure standard library (no torch, no project imports): written from the rule's description, not copied.
"""

from __future__ import annotations

import math
import re

LLM_ADAPTERS_COMMIT = "816657208af4db747803f87ba40a4c71383fed7a"

#: The prediction rule's name, for reports.
NUMBER_RULE = (
    "LLM-Adapters evaluate.py extract_answer_number: commas dropped, last -?digits[.digits], "
    f"|label - prediction| <= 0.001 (AGI-Edgerunners/LLM-Adapters@{LLM_ADAPTERS_COMMIT})"
)
#: The AQuA rule's name, for reports.
LETTER_RULE = (
    "LLM-Adapters evaluate.py extract_answer_letter: first capital A-E anywhere, case-sensitive "
    f"(AGI-Edgerunners/LLM-Adapters@{LLM_ADAPTERS_COMMIT})"
)
#: The reference convention's name, for reports.
REFERENCE_RULE = "GSM8K: the number after the last '####', commas removed"

#: LLM-Adapters' `miss`: a prediction within this of the label (inclusive) is correct.
TOLERANCE = 0.001
#: AQuA's options.
OPTION_LETTERS = ("A", "B", "C", "D", "E")

REFERENCE_MARKER = "####"

# LLM-Adapters' pattern: an optional "-" touching the digits, digits, an optional "." and more digits.
# `\d` is Python's Unicode digit class there as here (float() reads every such digit).
_PREDICTION_NUMBER = re.compile(r"-?\d+\.?\d*")
# After the GSM8K marker: spaces, then a sign, digits with thousands commas, an optional fraction.
_REFERENCE_NUMBER = re.compile(r"[ \t]*([-+]?)([0-9][0-9,]*(?:\.[0-9]*)?|\.[0-9]+)")
_OPTION_LETTER = re.compile(r"[A-E]")


def reference_number(solution: str) -> str | None:
    """The reference answer of a GSM8K solution, as a canonical decimal string; None when there is none.

    The number right after the last "####" (GSM8K's final line, "#### 72"), commas removed ("#### 1,000" ->
    "1000"), normalised without arithmetic so any length stays exact: no "+", no leading zeros, no trailing
    fractional zeros, no "." without digits after it, no "-0" ("#### 18.00" -> "18", "#### 0.50" -> "0.5").
    Equal numbers give equal strings, and `float` of the result is the label LLM-Adapters would read.
    None when there is no "####" or no number follows the last one.
    """
    at = solution.rfind(REFERENCE_MARKER)
    if at < 0:
        return None
    match = _REFERENCE_NUMBER.match(solution, at + len(REFERENCE_MARKER))
    if match is None:
        return None
    sign, body = match.group(1), match.group(2).replace(",", "")
    whole, _, fraction = body.partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    canonical = f"{whole}.{fraction}" if fraction else whole
    if sign == "-" and canonical != "0":
        canonical = "-" + canonical
    return canonical


def final_number(text: str) -> float | None:
    """The number LLM-Adapters' `extract_answer_number` takes from generated text; None when there is none.

    Commas are dropped first ("1,234" is 1234), then the last `-?digits[.digits]` is read with `float`
    ("3.50" -> 3.5, "1234." -> 1234.0, "-3" -> -3.0, "5-3" -> -3.0). The last number, not the first, because
    chain-of-thought outputs end on their answer; see the module docstring for where that goes wrong.
    """
    numbers = _PREDICTION_NUMBER.findall(text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def numbers_match(prediction: float | None, answer: str | float) -> bool:
    """LLM-Adapters' verdict: `abs(label - prediction) <= 0.001`, the label read from `answer` with `float`.

    `answer` is a label such as "576.0" (LLM-Adapters' files), "4", or a GSM8K number with commas ("1,000"),
    or already a number. A None prediction (no number generated) is wrong, as LLM-Adapters' inf is; so are
    inf and nan. An answer that is not a finite number raises ValueError: the data is broken, not the model.
    """
    label = _label(answer)
    if prediction is None:
        return False
    return abs(label - prediction) <= TOLERANCE


def option_letter(text: str) -> str | None:
    """LLM-Adapters' `extract_answer_letter` (AQuA): the first capital A-E anywhere in the text; None when none.

    Exactly that rule, quirks included: it is case-sensitive ("(b)" is no answer) and does not look for an
    answer phrase, so any capital A-E counts, even inside a word ("Answer: B" gives "A", "Each ... C" gives
    "E"). LLM-Adapters returns "" for no letter, which never equals a label; None here.
    """
    match = _OPTION_LETTER.search(text)
    return match.group(0) if match else None


def _label(answer: str | float) -> float:
    """The label as a float: a string has its whitespace and commas dropped; non-finite or unreadable raises."""
    if isinstance(answer, str):
        try:
            value = float(answer.strip().replace(",", ""))
        except ValueError:
            raise ValueError(f"reference answer {answer!r} is not a number") from None
    elif isinstance(answer, int | float) and not isinstance(answer, bool):
        value = float(answer)
    else:
        raise ValueError(f"reference answer {answer!r} is not a number")
    if not math.isfinite(value):
        raise ValueError(f"reference answer {answer!r} is not a finite number")
    return value
