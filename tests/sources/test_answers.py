"""Final-number and option-letter scoring (harness/sources/answers.py): GSM8K references, LLM-Adapters' rule
for predictions, and the cases where peft's GSM8K scorer would give another verdict."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

import pytest

from memft_bench.harness.sources.answers import (
    LETTER_RULE,
    LLM_ADAPTERS_COMMIT,
    NUMBER_RULE,
    TOLERANCE,
    final_number,
    numbers_match,
    option_letter,
    reference_number,
)

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        (GSM8K_SOLUTION, "72"),
        ("He pays 1,000 in total.\n#### 1,000", "1000"),
        ("#### 1,234", "1234"),
        ("#### 1,234,567", "1234567"),
        ("#### -3", "-3"),
        ("#### +5", "5"),
        ("#### -0", "0"),
        ("####   18", "18"),  # any run of spaces
        ("####18", "18"),
        ("#### 18.00", "18"),
        ("#### 0.50", "0.5"),
        ("#### 3.50", "3.5"),
        ("#### .5", "0.5"),
        ("#### 007", "7"),
        ("#### 1,000.", "1000"),  # a sentence's period is not a fraction
        ("#### 18 dollars", "18"),
        ("#### 18\n", "18"),
        ("#### 5\nmore text\n#### 6", "6"),  # the last marker wins
        ("#### " + "9" * 5000, "9" * 5000),  # string work only: exact at any length
        ("The answer is 72.", None),  # no marker
        ("", None),
        ("#### ", None),
        ("#### \n72", None),  # the number must be on the marker's line
        ("#### abc", None),
        ("#### $18", None),  # GSM8K writes no units after the marker
        ("#### 72\n#### none", None),  # the last marker has no number
    ],
)
def test_reference_number(solution: str, expected: str | None) -> None:
    assert reference_number(solution) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48 + 24 = 72 clips.\nso she has 18 dollars.\n#### 18", 18.0),
        ("so she has 18 dollars.", 18.0),
        ("The answer is 1,234.", 1234.0),
        ("1,234", 1234.0),
        ("-3", -3.0),
        ("The temperature fell to -3 degrees.", -3.0),
        ("3.50", 3.5),
        ("It costs $3.50.", 3.5),
        ("1234.", 1234.0),
        ("72", 72.0),
        ("The answer is 576.", 576.0),
        ("5-3", -3.0),  # a "-" touching digits is a sign
        ("10 - 3", 3.0),
        ("1/2", 2.0),
        ("1e3", 3.0),
        (".5", 5.0),
        ("0.5.", 0.5),
        ("1.2.3", 3.0),  # "1.2", then "3" after the lone "."
        ("50%", 50.0),
        ("12 apples and 7 pears", 7.0),  # the last number, not the first
        ("twelve", None),
        ("", None),
        ("no number here.", None),
        ("-", None),
        ("1" * 400, math.inf),  # float() of a huge literal; never within the tolerance of a label
    ],
)
def test_final_number(text: str, expected: float | None) -> None:
    got = final_number(text)
    if expected is None:
        assert got is None
    else:
        assert type(got) is float
        assert got == expected


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        (576.0, "576.0", True),  # LLM-Adapters' label format
        (576.0, "576", True),
        (4.0, "4", True),
        (4, "4", True),
        (1000.0, "1,000", True),
        (1000.0, " 1,000 ", True),
        (1000.0, 1000.0, True),
        (1000.0, 1000, True),
        (-3.0, "-3", True),
        (3.5, "3.50", True),
        (0.001, "0", True),  # the tolerance is inclusive
        (-0.001, "0", True),
        (0.0011, "0", False),
        (33.3333, "33.333", True),
        (33.335, "33.333", False),
        (575.0, "576.0", False),
        (3.0, "-3", False),
        (None, "576.0", False),  # no number generated
        (math.inf, "576.0", False),
        (math.nan, "576.0", False),
    ],
)
def test_numbers_match(prediction: float | None, answer: str | float, expected: bool) -> None:
    assert numbers_match(prediction, answer) is expected


@pytest.mark.parametrize("answer", ["abc", "", "#### 18", "inf", "nan", "1/2", math.inf, None, True])
def test_numbers_match_rejects_a_broken_answer(answer: object) -> None:
    with pytest.raises(ValueError, match="reference answer"):
        numbers_match(1.0, answer)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reference answer"):
        numbers_match(None, answer)  # type: ignore[arg-type]


def test_tolerance_is_llm_adapters_miss() -> None:
    assert TOLERANCE == 0.001


@pytest.mark.parametrize(
    ("output", "solution", "expected"),
    [
        ("so she has 18 dollars.\n#### 18", "#### 18", True),
        ("The answer is 1,234.", "#### 1,234", True),
        ("The answer is 1234", "#### 1,234", True),
        ("He has 1,000 apples.", "He pays 1,000 in total.\n#### 1,000", True),
        ("-3", "#### -3", True),
        ("3.50", "#### 3.5", True),
        ("no number at all", "#### 5", False),
        ("The answer is 17.", GSM8K_SOLUTION, False),
        ("48 + 24 = 72", GSM8K_SOLUTION, True),
    ],
)
def test_gsm8k_outputs_end_to_end(output: str, solution: str, expected: bool) -> None:
    answer = reference_number(solution)
    assert answer is not None
    assert numbers_match(final_number(output), answer) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (D).", "D"),
        ("D", "D"),
        ("(C) 62 m", "C"),
        ("the answer is (b)", None),  # case-sensitive
        ("the answer is e", None),
        ("", None),
        ("no option given", None),
        ("Answer: B", "A"),  # any capital A-E counts, the first wins: LLM-Adapters' quirk, kept
        ("Each side is 4, so (C)", "E"),
        ("(A) or (E)", "A"),
        ("F G H", None),
        ("Ａ", None),  # only ASCII A-E
    ],
)
def test_option_letter(text: str, expected: str | None) -> None:
    assert option_letter(text) == expected


def test_rules_are_named_with_their_commit() -> None:
    assert LLM_ADAPTERS_COMMIT == "816657208af4db747803f87ba40a4c71383fed7a"
    for rule in (NUMBER_RULE, LETTER_RULE):
        assert "LLM-Adapters" in rule and "evaluate.py" in rule and LLM_ADAPTERS_COMMIT in rule
    assert "extract_answer_number" in NUMBER_RULE and "0.001" in NUMBER_RULE
    assert "extract_answer_letter" in LETTER_RULE


# --- Where the two reference rules differ ---------------------------------------------------------------------
#
# peft's GSM8K scorer (huggingface/peft, method_comparison/MetaMathQA/utils.py, `parse_answer`,
# `convert_to_decimal`, `get_accuracy`, unchanged from 41921013f57a3815cf6a25cf01e6ffbdd89c1292 to
# 5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40), restated here only to check the table's peft columns: it reads the
# text after the first listed answer phrase present (its last occurrence), on that line, stripped of " .!?$%",
# as a Decimal or a fraction a/b, keeps it as a string when it is not one, and compares for exact equality.

_PEFT_PHRASES = ("The answer is: ", "The answer is ", "The final answer is: ", "The final answer is ", "#### ")


def _peft_parse(text: str) -> float | str | None:
    text = text.strip().rstrip(".!?")
    phrase = next((p for p in _PEFT_PHRASES if p in text), None)
    if phrase is None:
        return None
    tail = text.rpartition(phrase)[2].strip().split("\n", 1)[0].strip(" .!?$%")
    try:
        parts = [Decimal(p.strip()) for p in tail.strip().split("/")]
    except InvalidOperation:
        return tail
    if len(parts) == 1:
        return float(parts[0])
    if len(parts) == 2 and parts[1] != 0:
        return float(parts[0] / parts[1])
    return tail


def _peft_correct(text: str, solution: str) -> bool:
    prediction, label = _peft_parse(text), _peft_parse(solution)
    assert label is not None
    return prediction is not None and prediction == label


# (generated text, GSM8K solution, LLM-Adapters' number, its verdict, peft's parsed answer, its verdict)
DIFFERING = [
    # LLM-Adapters right, peft wrong: no answer phrase, commas, trailing words, two phrases, rounding.
    ("Natalia sold 48 + 24 = 72 clips.", "#### 72", 72.0, True, None, False),
    ("72", "#### 72", 72.0, True, None, False),
    ("so she has 18 dollars.", "#### 18", 18.0, True, None, False),
    ("The answer is 1,234.", "#### 1234", 1234.0, True, "1,234", False),
    ("The answer is 1234", "#### 1,234", 1234.0, True, 1234.0, False),  # peft keeps the label "1,234" a string
    ("The answer is: 18 dollars", "#### 18", 18.0, True, "18 dollars", False),
    ("The answer is 1,000 + 234 = 1,234", "#### 1234", 1234.0, True, "1,000 + 234 = 1,234", False),
    ("The answer is 7. The final answer is 8", "#### 8", 8.0, True, "7. The final answer is 8", False),
    ("The answer is 33.3333", "#### 33.333", 33.3333, True, 33.3333, False),  # 0.001 tolerance vs exact
    ("The answer is 10-20", "#### -20", -20.0, True, "10-20", False),
    # peft right, LLM-Adapters wrong: text after the answer, fractions, exponents.
    ("#### 18\n\nQuestion: Tom has 3 apples.", "#### 18", 3.0, False, 18.0, True),
    ("The answer is 5.\nWe used 3 boxes.", "#### 5", 3.0, False, 5.0, True),
    ("The answer is 1/2", "#### 0.5", 2.0, False, 0.5, True),
    ("The answer is 1e3", "#### 1000", 3.0, False, 1000.0, True),
]

# Cases the two rules score alike (both right or both wrong), so the table above is not all of their behaviour.
AGREEING = [
    ("so she has 18 dollars.\n#### 18", "#### 18", 18.0, True, 18.0, True),
    ("The answer is 1,234", "#### 1,234", 1234.0, True, "1,234", True),  # peft: equal strings
    ("The answer is $18.00", "#### 18", 18.0, True, 18.0, True),
    ("The answer is 5%", "#### 5", 5.0, True, 5.0, True),
    ("The answer is -3", "#### -3", -3.0, True, -3.0, True),
    ("The answer is 3.50", "#### 3.5", 3.5, True, 3.5, True),
    ("The answer is .5", "#### 0.5", 5.0, False, 5.0, False),
    ("no number", "#### 5", None, False, None, False),
]


@pytest.mark.parametrize(("text", "solution", "ours", "ours_ok", "peft", "peft_ok"), DIFFERING + AGREEING)
def test_llm_adapters_rule_against_peft(
    text: str, solution: str, ours: float | None, ours_ok: bool, peft: float | str | None, peft_ok: bool
) -> None:
    answer = reference_number(solution)
    assert answer is not None
    assert final_number(text) == ours
    assert numbers_match(final_number(text), answer) is ours_ok
    assert _peft_parse(text) == peft
    assert _peft_correct(text, solution) is peft_ok


@pytest.mark.parametrize(("text", "solution", "ours", "ours_ok", "peft", "peft_ok"), DIFFERING)
def test_differing_cases_really_differ(
    text: str, solution: str, ours: float | None, ours_ok: bool, peft: float | str | None, peft_ok: bool
) -> None:
    assert ours_ok is not peft_ok
    assert numbers_match(final_number(text), reference_number(solution) or "") is not _peft_correct(text, solution)
