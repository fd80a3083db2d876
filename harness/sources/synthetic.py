"""Synthetic tasks for the `tiny` suite, in the commonsense data's record format, and the random token
sequences of the shape-only scale suites (`token_sequences`).

Each generator returns records `{"instruction", "input", "output", "answer"}` exactly like the
LLM-Adapters files (e.g. output "the correct answer is answer2", answer "answer2"), so the tiny suite
runs the same prompting, loss masking and log-likelihood scoring as the real suite. The tasks need
knowledge a randomly initialised model does not have (which word belongs to which category) and
that a few hundred steps of fine-tuning can teach, so a method's accuracy above chance is a real
signal. Generation is deterministic given the seed and never depends on torch.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from memft_bench.harness.sources.prompts import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, build_prompt

CATEGORIES: dict[str, list[str]] = {
    "animal": ["cat", "dog", "horse", "cow", "sheep", "goat", "pig", "duck", "fox", "wolf", "bear", "lion"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "brown", "black", "white", "pink",
              "gray", "gold"],
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon",
              "kiwi", "lime"],
    "tool": ["hammer", "saw", "drill", "wrench", "knife", "axe", "shovel", "rake", "chisel", "pliers",
             "ladder", "brush"],
}

Record = dict[str, str]


@dataclass(frozen=True)
class SyntheticTask:
    """A generator and the answer options its records choose between (what loglik scoring ranks)."""

    options: tuple[str, ...]
    generate_one: Callable[[random.Random], Record]
    description: str


def _kind(rng: random.Random) -> Record:
    """Four-way classification: what kind of thing a word is (chance 1/4); a lookup a tiny model learns fast."""
    category = rng.choice(sorted(CATEGORIES))
    word = rng.choice(CATEGORIES[category])
    return {
        "instruction": f"Please answer the following question: what kind of thing is {word}?\n\n"
        f"Answer format: {'/'.join(sorted(CATEGORIES))}",
        "input": "",
        "output": f"the correct answer is {category}",
        "answer": category,
    }


def _alive(rng: random.Random) -> Record:
    """BoolQ-style true/false about one word (balanced): is it alive, i.e. an animal (chance 1/2)."""
    truth = rng.random() < 0.5
    pool = CATEGORIES["animal"] if truth else [w for c, ws in sorted(CATEGORIES.items()) if c != "animal" for w in ws]
    word = rng.choice(pool)
    answer = "true" if truth else "false"
    return {
        "instruction": f"Please answer the following question with true or false, question: is {word} alive?"
        "\n\nAnswer format: true/false",
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }


def _category_choice(rng: random.Random) -> Record:
    """ARC-style three-way choice: which word belongs to the named category."""
    category = rng.choice(sorted(CATEGORIES))
    others = [c for c in sorted(CATEGORIES) if c != category]
    right = rng.choice(CATEGORIES[category])
    wrong = [rng.choice(CATEGORIES[c]) for c in rng.sample(others, 2)]
    words = [right, *wrong]
    rng.shuffle(words)
    k = words.index(right) + 1
    listing = " ".join(f"Answer{i}: {w}" for i, w in enumerate(words, 1))
    return {
        "instruction": f"Please answer the following question: which of these is a {category}?\n\n"
        f"{listing}\n\nAnswer format: answer1/answer2/answer3",
        "input": "",
        "output": f"the correct answer is answer{k}",
        "answer": f"answer{k}",
    }


def _membership(rng: random.Random) -> Record:
    """BoolQ-style true/false question: is this word a member of this category (balanced)."""
    word_category = rng.choice(sorted(CATEGORIES))
    word = rng.choice(CATEGORIES[word_category])
    truth = rng.random() < 0.5
    asked = word_category if truth else rng.choice([c for c in sorted(CATEGORIES) if c != word_category])
    answer = "true" if truth else "false"
    return {
        "instruction": f"Please answer the following question with true or false, question: is {word} a "
        f"{asked}?\n\nAnswer format: true/false",
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }


def _odd_one_out(rng: random.Random) -> Record:
    """WinoGrande-style two-way choice: which of two options differs in category from a given word."""
    category = rng.choice(sorted(CATEGORIES))
    anchor, same = rng.sample(CATEGORIES[category], 2)
    other = rng.choice(CATEGORIES[rng.choice([c for c in sorted(CATEGORIES) if c != category])])
    options = [same, other]
    rng.shuffle(options)
    k = options.index(other) + 1
    return {
        "instruction": f"Please choose the word that is not the same kind of thing as {anchor}.\n\n"
        f"Option1: {options[0]} Option2: {options[1]}\n\nAnswer format: option1/option2",
        "input": "",
        "output": f"the correct answer is option{k}",
        "answer": f"option{k}",
    }


GENERATORS: dict[str, SyntheticTask] = {
    "kind": SyntheticTask(tuple(sorted(CATEGORIES)), _kind, "what kind of thing a word is (chance 1/4)"),
    "category": SyntheticTask(("answer1", "answer2", "answer3"), _category_choice,
                              "which of three words is in a named category (chance 1/3)"),
    "alive": SyntheticTask(("true", "false"), _alive, "is a word an animal, true/false (chance 1/2)"),
    "membership": SyntheticTask(("true", "false"), _membership,
                                "is a word in a named category, true/false (chance 1/2)"),
    "odd_one_out": SyntheticTask(("option1", "option2"), _odd_one_out,
                                 "which of two words is not the same kind as a third (chance 1/2)"),
}


# Compositional tasks (the `synthetic-cpu` suite): questions over two or three words whose categories the
# pre-trained model knows, combined in a way no pre-training record does. The space of questions is large
# (tens of thousands), so a test set is almost all new combinations: answering them takes generalisation,
# not a lookup of training questions, and a validation split can be held out by question. Their words are
# all in the tiny tokenizer's vocabulary (`vocabulary_text`, which they do not change).


def _words_of(rng: random.Random, counts: list[int]) -> tuple[str, list[str]]:
    """(the first category, the words): `counts[i]` words of the i-th of distinct random categories, shuffled."""
    categories = rng.sample(sorted(CATEGORIES), len(counts))
    words = [rng.choice(CATEGORIES[c]) for c, n in zip(categories, counts) for _ in range(n)]
    rng.shuffle(words)
    return categories[0], words


def _most_record(category: str, words: list[str]) -> Record:
    return {
        "instruction": f"Please answer the following question: what kind of thing is the same kind as these: "
        f"{' '.join(words)}?\n\nAnswer format: {'/'.join(sorted(CATEGORIES))}",
        "input": "",
        "output": f"the correct answer is {category}",
        "answer": category,
    }


def _plurality(rng: random.Random) -> Record:
    """Four-way: the kind of most of five words, three of one category and one each of two others (chance 1/4)."""
    return _most_record(*_words_of(rng, [3, 1, 1]))


def _majority(rng: random.Random) -> Record:
    """Four-way: the kind of most of five words, three of one category against two of another (chance 1/4)."""
    return _most_record(*_words_of(rng, [3, 2]))


#: The generators whose samples make the tiny tokenizer's vocabulary (`vocabulary_text`): the first five, fixed,
#: so that a generator added later changes neither the tokenizer nor the cached pre-trained model.
VOCABULARY_GENERATORS = ("kind", "category", "alive", "membership", "odd_one_out")

GENERATORS.update({
    "plurality": SyntheticTask(tuple(sorted(CATEGORIES)), _plurality,
                               "the kind of most of five words, 3 against 1 and 1 (chance 1/4); new combinations"),
    "majority": SyntheticTask(tuple(sorted(CATEGORIES)), _majority,
                              "the kind of most of five words, 3 against 2 (chance 1/4); new combinations"),
})


def generate(generator: str, n: int, seed: int) -> list[Record]:
    """`n` records of `generator`, deterministic in `seed`."""
    rng = random.Random(f"{generator}:{seed}")
    return [GENERATORS[generator].generate_one(rng) for _ in range(n)]


def generate_split(generator: str, train_size: int, test_size: int, seed: int) -> tuple[list[Record], list[Record]]:
    """Train and test records from independent streams of the same generator."""
    return generate(generator, train_size, seed), generate(generator, test_size, seed + 1_000_003)


PRETRAINING_GENERATORS = ("category", "membership", "odd_one_out")


def pretraining_text(n_records: int, seed: int) -> list[str]:
    """The tiny model's "pre-training" corpus: plain facts ("apple is a fruit .") and instruction
    records of the tasks that are *not* fine-tuned in the tiny suite, formatted with the same prompt.

    Fine-tuning methods such as LoRA, DoRA and MeZO assume a pretrained model that already knows the
    language and the facts; from a random init they cannot learn anything useful. Pre-training the
    tiny model on this corpus (once, cached) gives them the same starting point the papers assume:
    the fine-tuning tasks (`kind`, `alive`) then ask for the facts in a format it has not seen.
    """
    rng = random.Random(f"pretraining:{seed}")
    facts = [f"{w} is a {c} ." for c, ws in sorted(CATEGORIES.items()) for w in ws]
    out = []
    for i in range(n_records):
        if i % 2 == 0:
            out.append(" ".join(rng.sample(facts, 6)))
        else:
            record = GENERATORS[rng.choice(PRETRAINING_GENERATORS)].generate_one(rng)
            out.append(build_prompt(record) + record["output"])
    return out


def token_sequences(n: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """`n` sequences of `length` token ids drawn uniformly from [0, vocab_size), deterministic in `seed`.

    The task of the shape-only scale suites: memory and step time depend on a batch's shape, not on its
    values, and a fixed length makes every step of every method the same size (no padding, no length
    spread between steps). There is nothing to learn in it, so no accuracy is claimed."""
    rng = random.Random(f"tokens:{seed}")
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(n)]


def vocabulary_text() -> str:
    """Every word the generators can emit, for building the tiny suite's word-level tokenizer."""
    rng = random.Random(0)
    tasks = [GENERATORS[name] for name in VOCABULARY_GENERATORS]
    samples = [task.generate_one(rng) for task in tasks for _ in range(50)]
    words = " ".join(w for ws in CATEGORIES.values() for w in ws)
    options = " ".join(o for task in tasks for o in task.options)
    fields = " ".join(r["instruction"] + " " + r["output"] for r in samples)
    return f"{words} {options} {' '.join(CATEGORIES)} {fields} {PROMPT_NO_INPUT} {PROMPT_WITH_INPUT} is a ."
