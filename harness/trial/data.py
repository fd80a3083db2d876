"""Task data: records, the instruction prompt, tokenisation with response-only loss, and batches.

Records follow the LLM-Adapters format `{"instruction", "input", "output", "answer"}`. Training
examples are the prompt followed by the output; the loss covers the response tokens only (prompt
labels are -100) and padding never enters the loss. The data order is a seeded shuffle, so every
method of a trial sees the same examples in the same order. A `tokens` task (the scale suites) is records
of ready token ids, `{"token_ids": [...]}`, all `cutoff_len` long, with the loss on every token.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.sources.prompts import build_prompt
from memft_bench.harness.sources.scoring import CHOICE, Scoring
from memft_bench.harness.sources.synthetic import GENERATORS, generate_split, token_sequences
from memft_bench.harness.spec.config import SuiteSpec, TaskSpec
from memft_bench.methods.base import Batch

IGNORE_INDEX = -100

@dataclass
class TaskData:
    """A trial's training records and its test sets (name -> records), with each record's answer options."""

    name: str
    train: list[dict[str, Any]]
    tests: dict[str, list[dict[str, Any]]]
    options: Callable[[str, dict[str, str]], tuple[str, ...]]
    source: str = ""
    #: test set name -> each item's index in its source file (default: its position in `tests`)
    test_indices: dict[str, list[int]] = field(default_factory=dict)
    #: records are token ids (`{"token_ids": [...]}`), scored by next-token accuracy, which means nothing
    tokens: bool = False
    #: test set name -> how its items are scored (default: multiple choice); VALIDATION: the validation split's
    scorings: dict[str, Scoring] = field(default_factory=dict)
    #: records held out of the training data (`validation_size`), scored by tuning searches instead of the tests
    validation: list[dict[str, Any]] = field(default_factory=list)
    #: each validation record's index in the training data it was held out of (file order)
    validation_indices: list[int] = field(default_factory=list)

    def indices(self, test_name: str) -> list[int]:
        if test_name == VALIDATION:
            return self.validation_indices
        return self.test_indices.get(test_name) or list(range(len(self.tests[test_name])))

    def scoring(self, test_name: str) -> Scoring:
        return self.scorings.get(test_name, CHOICE)


def load_task(task: TaskSpec, suite: SuiteSpec, seed: int = 0) -> TaskData:
    """Synthetic records, random token ids, the commonsense or math data, or the user's own file (`seed`
    shuffles the training data; `suite.data_seed` picks test subsets and splits, the same for every seed)."""
    if task.source == "tokens":
        length, vocab = suite.budget.cutoff_len, suite.model.vocab_size
        train = token_sequences(task.train_size, length, vocab, suite.data_seed)
        test = token_sequences(task.test_size, length, vocab, suite.data_seed + 1_000_003)
        return TaskData(task.name, [{"token_ids": ids} for ids in train],
                        {task.name: [{"token_ids": ids} for ids in test]}, lambda _name, _record: (),
                        f"uniformly random token ids (vocabulary {vocab}, length {length}): memory and speed only",
                        tokens=True)
    if task.source == "synthetic":
        train, test = generate_split(task.generator, task.train_size, task.test_size, suite.data_seed)
        options = GENERATORS[task.generator].options
        held, train, source = hold_out(train, task, suite, f"synthetic generator {task.generator!r}", test)
        return TaskData(task.name, train, {task.name: test}, lambda _name, _record: options, source,
                        validation=[r for _, r in held], validation_indices=[i for i, _ in held])
    if task.source == "math":
        return load_math_task(task, suite, seed)
    if task.source == "file":
        return load_file_task(task, suite, seed)
    from memft_bench.harness.sources import commonsense

    data_dir = commonsense.resolve_data_dir(task.data_dir)
    items = {name: commonsense.load_test_items(data_dir, name, task.limit_eval or None, suite.data_seed)
             for name in task.eval_tasks}
    tests = {name: records for name, (_, records) in items.items()}
    held: list[tuple[int, dict[str, Any]]] = []
    exclude: frozenset[int] = frozenset()
    if task.validation_size:
        full = commonsense.training_records(data_dir).records
        held, rest, _ = hold_out(full, task, suite, "", [r for records in tests.values() for r in records])
        kept = {id(r) for r in rest}
        exclude = frozenset(i for i, r in enumerate(full) if id(r) not in kept)
    mix = commonsense.training_mix(data_dir, seed, task.limit_train or None, exclude=exclude)

    def options(name: str, record: dict[str, str]) -> tuple[str, ...]:
        return commonsense.mix_options(record) if name == VALIDATION else commonsense.record_options(name, record)

    return TaskData(task.name, mix.records, tests, options, f"{data_dir}: {mix.source}",
                    {name: indices for name, (indices, _) in items.items()},
                    validation=[r for _, r in held], validation_indices=[i for i, _ in held])


#: The name the validation split is scored under (it is never one of a task's test sets).
VALIDATION = "validation"


def item_key(record: dict[str, Any]) -> tuple[str, str]:
    """What makes two records the same item: the question asked (instruction and input), whatever the response."""
    return str(record.get("instruction", "")).strip(), str(record.get("input", "")).strip()


def hold_out(records: list[dict[str, Any]], task: TaskSpec, suite: SuiteSpec, source: str,
             tests: list[dict[str, Any]] = ()) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]], str]:
    """(the validation split as (index, record) pairs, the training records left, the source line) of a task with a
    `validation_size`; nothing is held out without one.

    A seeded choice that depends on the data seed only, so every seed and method of a run, the search and the final
    trials alike, hold out the same records. Disjoint by content, not only by position: a question that is also a
    test item (GSM8K's train and test share 10; synthetic tasks repeat items) is never chosen, and every copy of a
    chosen question leaves the training data, so no validation item is trained on or tested. A task that repeats a
    few questions by design (fewer distinct questions than half its records) cannot be split that way: its records
    are held out by position, and the source line says so."""
    size = task.validation_size
    if not size:
        return [], records, source
    tested = {item_key(r) for r in tests}
    order = list(range(len(records)))
    random.Random(f"validation:{suite.data_seed}").shuffle(order)
    chosen: dict[tuple[str, str], int] = {}
    for i in order:
        key = item_key(records[i])
        if key not in tested and key not in chosen:
            chosen[key] = i
            if len(chosen) == size:
                break
    rest = [r for r in records if item_key(r) not in chosen]
    distinct = {item_key(r) for r in records}
    if (len(chosen) < size or not rest) and len(distinct) < len(records) / 2 and size < len(records):
        # A task that repeats a few questions by design (tiny's kind and alive: 48 questions, 47 of them in the test
        # too): no split can keep its questions apart, as its test and training cannot either. Hold out records,
        # and say so wherever the split is described.
        held = sorted(order[:size])
        taken = set(held)
        note = (f", less {size} validation records held out by record, not by question (the task asks only "
                f"{len(distinct)} distinct questions, {len(distinct & tested)} of them test items: validation, test "
                "and training share questions)")
        return [(i, records[i]) for i in held], [r for i, r in enumerate(records) if i not in taken], source + note
    if len(chosen) < size or not rest:
        raise BenchError(f"tasks.{task.name}.validation_size: {size} is too many: the task's {len(records)} training "
                         f"records ask {len(distinct)} distinct questions, {len(distinct & tested)} of them test items "
                         f"(never validated on), so {len(chosen)} can be held out and some must remain to train on; "
                         "lower it, or tune on a task whose test items are new questions")
    held = sorted(chosen.values())
    dropped = len(records) - len(rest) - len(held)
    note = f", less {len(held)} validation records" + (f" (and {dropped} copies of them)" if dropped else "")
    return [(i, records[i]) for i in held], rest, source + note


def shuffled(records: list[dict[str, Any]], seed: int, limit: int) -> list[dict[str, Any]]:
    """A seeded shuffle of the training records, cut to `limit` (0: all): the same records for every method."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order[: limit or None]]


def load_math_task(task: TaskSpec, suite: SuiteSpec, seed: int) -> TaskData:
    """GSM8K's training file (worked solutions as responses) and the chosen test sets, scored by generation."""
    from memft_bench.harness.sources import math_data

    root = math_data.resolve_math_dir(task.data_dir)
    items = {name: math_data.load_math_test_items(root, name, task.limit_eval or None, suite.data_seed)
             for name in task.eval_tasks}
    tested = [r for _, records in items.values() for r in records]
    # GSM8K's train split repeats 10 of its test questions: never trained on, whatever the subset scored
    test_questions = {item_key(r) for r in math_data.load_math_test(root, "gsm8k")} | {item_key(r) for r in tested}
    full = math_data.load_gsm8k_split(root, "train")
    clean = [r for r in full if item_key(r) not in test_questions]
    held, rest, _ = hold_out(clean, task, suite, "", tested)
    train = shuffled(rest, seed, task.limit_train)
    scorings = {name: Scoring("letter" if name == "AQuA" else "number") for name in task.eval_tasks}
    scorings[VALIDATION] = Scoring("number")
    source = (f"{root}: GSM8K train ({len(train)} records after a seeded shuffle; {len(full) - len(clean)} that "
              "repeat a test question left out")
    source += f", less {len(held)} validation records)" if held else ")"
    return TaskData(task.name, train, {name: records for name, (_, records) in items.items()},
                    lambda _name, _record: (), source, {name: indices for name, (indices, _) in items.items()},
                    scorings=scorings, validation=[r for _, r in held], validation_indices=[i for i, _ in held])


def load_file_task(task: TaskSpec, suite: SuiteSpec, seed: int) -> TaskData:
    """The user's own file: rows mapped to records by `columns`, a test file or a seeded split (data_seed)."""
    from memft_bench.harness.sources import user_files
    from memft_bench.harness.sources.commonsense import seeded_indices

    loaded = user_files.load_file_task(task.train_file, task.test_file, task.columns, task.scoring, task.options,
                                       task.answer_regex, task.test_fraction, suite.data_seed)
    keep = seeded_indices(len(loaded.test), task.limit_eval or None, suite.data_seed)
    options = tuple(task.options)
    held, rest, source = hold_out(loaded.train, task, suite, loaded.source, [loaded.test[i] for i in keep])
    scoring = Scoring(task.scoring, task.answer_regex)
    return TaskData(task.name, shuffled(rest, seed, task.limit_train),
                    {task.name: [loaded.test[i] for i in keep]}, lambda _name, _record: options, source,
                    {task.name: [loaded.test_indices[i] for i in keep]},
                    scorings={task.name: scoring, VALIDATION: scoring},
                    validation=[r for _, r in held], validation_indices=[i for i, _ in held])


def encode_example(tokenizer: Any, record: dict[str, Any], cutoff_len: int,
                   prompt_of: Callable[[dict[str, str]], str] = build_prompt) -> dict[str, list[int]]:
    """Token ids and labels of prompt + output (+ EOS), with the prompt's labels masked.

    As LLM-Adapters does it: the full text is tokenised with truncation to `cutoff_len`, EOS is
    appended when there is room, and the first len(tokenise(prompt)) labels become -100. `prompt_of`
    is the Alpaca prompt, or LLM-Adapters' own whitespace under `--eval-mode llm-adapters`.
    """
    if "token_ids" in record:  # a tokens task: the ids are the example, and every token is a target
        ids = list(record["token_ids"][:cutoff_len])
        return {"input_ids": ids, "labels": list(ids)}
    prompt = prompt_of(record)
    full_ids = tokenizer(prompt + record["output"], truncation=True, max_length=cutoff_len)["input_ids"]
    if tokenizer.eos_token_id is not None and len(full_ids) < cutoff_len and (
        not full_ids or full_ids[-1] != tokenizer.eos_token_id
    ):
        full_ids = [*full_ids, tokenizer.eos_token_id]
    n_prompt = len(tokenizer(prompt, truncation=True, max_length=cutoff_len)["input_ids"])
    labels = [IGNORE_INDEX] * n_prompt + full_ids[n_prompt:]
    return {"input_ids": full_ids, "labels": labels[: len(full_ids)]}


def left_pad(rows: Sequence[Sequence[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows left-padded with `fill` to the longest, attention mask: 1 on real tokens, 0 on padding).

    Left, so that every row ends at the same column: the responses a loss or a score reads line up at the
    end, and generation continues all rows from there. Position ids follow the attention mask
    (`harness.trial.models.logits_of_last`, `generate`), so the padding side does not change any result.
    """
    width = max(len(r) for r in rows)
    padded = torch.full((len(rows), width), fill, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        padded[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attention[i, width - len(r):] = 1
    return padded, attention


def collate(
    examples: Sequence[dict[str, list[int]]], pad_id: int, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Left-pad a list of encoded examples; pads get attention 0 and label -100.

    Left, so that the loss needs the logits of only the last few positions (`harness.trial.models.causal_lm_loss`).
    """
    input_ids, attention = left_pad([e["input_ids"] for e in examples], pad_id)
    labels, _ = left_pad([e["labels"] for e in examples], IGNORE_INDEX)
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": attention.to(device)}


def training_batches(
    examples: Sequence[dict[str, list[int]]],
    micro_batch_size: int,
    grad_accum: int,
    seed: int,
    pad_id: int,
    device: torch.device | str,
) -> Iterator[Batch]:
    """Endless stream of steps: a seeded reshuffle each epoch, `grad_accum` micro-batches per step."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        micro_batches = []
        for _ in range(grad_accum):
            chunk = []
            while len(chunk) < micro_batch_size:
                if not order:
                    order = list(range(len(examples)))
                    rng.shuffle(order)
                chunk.append(examples[order.pop()])
            micro_batches.append(collate(chunk, pad_id, device))
        yield Batch(micro_batches)
