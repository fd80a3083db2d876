"""Scorings: how each kind reads a prediction out of generated text and judges it against the answer."""

from __future__ import annotations

import pytest

from memft_bench.harness.sources.scoring import CHOICE, Scoring, format_number


@pytest.mark.parametrize(("text", "answer", "prediction", "right"), [
    ("She pays 3 * 6 = 18 dollars.\n#### 18", "18", "18", True),
    ("The answer is 1,234.", "1234", "1234", True),
    ("So the total is 72.0", "72", "72", True),
    ("It costs 3.50 dollars", "3.5", "3.5", True),
    ("5 apples, then 7 more", "5", "7", False),  # the last number, not the first
    ("no number at all", "3", None, False),
    ("the temperature fell to -3", "-3", "-3", True),
    ("so 12.\n\n### Response:\nThe answer is 99", "12", "12", True),  # LLM-Adapters reads the first response only
])
def test_number_scoring_reads_the_final_number(text, answer, prediction, right):
    scoring = Scoring("number")
    got = scoring.extract(text)
    assert got == prediction
    assert scoring.is_correct({"answer": answer}, got) is right


def test_letter_exact_and_regex_scorings():
    assert Scoring("letter").extract("the answer is (C)") == "C"
    exact = Scoring("exact")
    assert exact.extract("  Paris \nand more text") == "Paris"
    assert exact.is_correct({"answer": "Paris"}, "Paris") and not exact.is_correct({"answer": "paris"}, "Paris")
    assert exact.extract("   ") is None and not exact.is_correct({"answer": ""}, None)
    grouped = Scoring("regex", r"label:\s*(\w+)")
    assert grouped.extract("... label: positive. done") == "positive"
    assert grouped.extract("nothing") is None
    assert Scoring("regex", r"answer: (\d+)?").extract("answer: none") is None
    whole = Scoring("regex", r"[A-Z]{3}")
    assert whole.extract("code XYZ here") == "XYZ"
    assert whole.is_correct({"answer": " XYZ "}, "XYZ")


def test_only_choice_items_are_ranked_and_descriptions_name_the_rule():
    assert not CHOICE.generative and Scoring("number").generative
    assert "LLM-Adapters" in Scoring("number").describe()
    assert "'x+'" in Scoring("regex", "x+").describe()
    with pytest.raises(ValueError, match="unknown scoring"):
        Scoring("fuzzy")
    with pytest.raises(ValueError, match="needs a pattern"):
        Scoring("regex")
    with pytest.raises(ValueError, match="choice items"):
        CHOICE.extract("text")


def test_numbers_print_as_gsm8k_writes_them():
    assert format_number(18.0) == "18" and format_number(-3.0) == "-3" and format_number(0.25) == "0.25"
