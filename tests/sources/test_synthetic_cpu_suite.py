"""The synthetic-cpu suite: it loads with its tuning search, its tasks hold out validation questions disjoint from
the test items at the configured sizes, and its generators (majority, plurality) are deterministic, answer right,
stay inside the tiny tokenizer's vocabulary and ask new questions in their test sets; the generators that were
there before them give exactly what they gave (committed baselines and the cached pre-trained model depend on it)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from memft_bench.harness.sources.prompts import build_prompt
from memft_bench.harness.sources.synthetic import (
    CATEGORIES,
    GENERATORS,
    VOCABULARY_GENERATORS,
    generate,
    generate_split,
    pretraining_text,
    vocabulary_text,
)
from memft_bench.harness.spec.config import load_suite
from memft_bench.harness.trial.data import item_key, load_task

NEW_GENERATORS = ("majority", "plurality")
KIND_OF = {word: category for category, words in CATEGORIES.items() for word in words}

#: sha256 of json.dumps(generate_split(g, 2000, 200, 1234), sort_keys=True), as it was before the suite's
#: generators were added; and of vocabulary_text() (the tiny tokenizer's words).
BEFORE = {
    "kind": "1f88ab6149c94e025336fcb70522124eb500ed32a7205ffa897616c6d6972132",
    "category": "523f168b592b3d04b0fe679973aee9fb3181e9d0cc9d04e8c325e747a4e4ccca",
    "alive": "d11232b8c2043c1331461b14f1885675c811d3a693dae10d469849201ddb7bca",
    "membership": "a44ae8bb62f23f53df3d8bbec990ad22f5bef924d61c4683867985563298dc2a",
    "odd_one_out": "c2280295ada5aaf1c1148f0c52c8b248d568ac67b722e8dd96c9dc65efa655ff",
}
VOCABULARY_BEFORE = "9b8d611aa75851403b66a589334636b9931d42a3750813d0fb254bd3ac92db66"
#: sha256 of json.dumps(pretraining_text(4096, 0)): the tiny model's pre-training corpus (models.pretrain)
PRETRAINING_BEFORE = "c42ade1d5c0728698e94222f85bd563654e3c18381453caf9cc031c9f6a391c9"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def suite():
    return load_suite("synthetic-cpu")


def test_suite_loads_with_tiny_model_methods_and_a_tuning_search(suite):
    tiny = load_suite("tiny")
    assert suite.model == tiny.model  # the same pre-trained weights, cached once
    assert suite.default_methods == tiny.default_methods
    assert [t.generator for t in suite.tasks] == list(NEW_GENERATORS)
    tuning = suite.tuning_spec()
    assert tuning is not None and list(tuning.knobs) == ["lr"]
    assert tuning.search_steps(suite.budget.steps) == suite.budget.steps
    for method in suite.default_methods:  # every method has an lr to scale and the same number of configurations
        assert suite.methods[method]["lr"] > 0


@pytest.mark.parametrize("index", [0, 1])
def test_validation_is_disjoint_by_question_from_tests_and_training(suite, index):
    task = suite.tasks[index]
    data = load_task(task, suite)
    test = data.tests[task.name]
    assert len(data.validation) == task.validation_size == 200
    assert len(test) == task.test_size == 400
    validation = {item_key(r) for r in data.validation}
    assert len(validation) == task.validation_size  # distinct questions
    assert not validation & {item_key(r) for r in test}
    assert not validation & {item_key(r) for r in data.train}
    assert len(data.train) >= task.train_size - 2 * task.validation_size


@pytest.mark.parametrize("name", NEW_GENERATORS)
def test_new_generators_are_deterministic_and_right(name):
    records = generate(name, 300, 7)
    assert records == generate(name, 300, 7)
    assert records != generate(name, 300, 8)
    options = GENERATORS[name].options
    for record in records:
        assert record["answer"] in options
        assert record["output"] == f"the correct answer is {record['answer']}"
        words = record["instruction"].split("these: ")[1].split("?")[0].split()
        counts = Counter(KIND_OF[w] for w in words)
        assert len(words) == 5 and counts.most_common(1) == [(record["answer"], 3)]
    # every answer occurs (no degenerate label)
    assert set(Counter(r["answer"] for r in records)) == set(options)


@pytest.mark.parametrize("name", NEW_GENERATORS)
def test_test_sets_ask_new_questions(suite, name):
    task = next(t for t in suite.tasks if t.generator == name)
    train, test = generate_split(name, task.train_size, task.test_size, suite.data_seed)
    trained = {item_key(r) for r in train}
    new = [r for r in test if item_key(r) not in trained]
    assert len(new) == len(test)  # no test question is a training question
    assert len({item_key(r) for r in train}) == len(train)  # nor is any training question repeated


@pytest.mark.parametrize("name", NEW_GENERATORS)
def test_new_generators_stay_inside_the_tiny_vocabulary(name):
    from memft_bench.harness.trial.models import build_word_tokenizer

    tokenizer = build_word_tokenizer(vocabulary_text())
    for record in generate(name, 200, 0):
        ids = tokenizer(build_prompt(record) + record["output"])["input_ids"]
        assert tokenizer.unk_token_id not in ids


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_earlier_generators_are_unchanged(name):
    assert sha(json.dumps(generate_split(name, 2000, 200, 1234), sort_keys=True)) == BEFORE[name]


def test_vocabulary_and_pretraining_corpus_are_unchanged_by_the_new_generators():
    assert VOCABULARY_GENERATORS == ("kind", "category", "alive", "membership", "odd_one_out")
    assert sha(vocabulary_text()) == VOCABULARY_BEFORE
    assert sha(json.dumps(pretraining_text(4096, 0))) == PRETRAINING_BEFORE
