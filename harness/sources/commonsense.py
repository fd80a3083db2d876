"""The commonsense reasoning suite's data, in the LLM-Adapters layout, and its answer extraction.

Files: `<data-dir>/<task>/{train,test}.json`, each a JSON list of records
`{"instruction", "input", "output", "answer"}` (Hu et al. 2023, LLM-Adapters). The training mix is
`<data-dir>/commonsense_170k.json` when present, else the concatenation of the eight train files,
shuffled with the run's seed; reports say which (`TrainingMix.source`). Every problem with a file gives
one `BenchError` line naming the file and what is wrong. `from_hub_records` converts the Hugging Face
hub's versions of the tasks into the same records, for users who are online (`datasets` is optional).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memft_bench.harness.core.errors import BenchError

#: Task folder names, as LLM-Adapters names them, and the answer words each uses.
ANSWER_WORDS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
    "ARC-Challenge": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "ARC-Easy": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "openbookqa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
}
TASKS = tuple(ANSWER_WORDS)
MIX_FILE = "commonsense_170k.json"
REQUIRED_KEYS = ("instruction", "output", "answer")
DATA_DIR_ENV = "BENCH_DATA_DIR"


def extract_answer(task: str, text: str) -> str | None:
    """LLM-Adapters' answer extraction: the first (case-sensitive) match of the task's answer words.

    `task` is the data folder's name. None when nothing matches (an unparseable output counts as wrong).
    """
    if task not in ANSWER_WORDS:
        raise ValueError(f"unknown commonsense task {task!r}; expected one of {', '.join(TASKS)}")
    words = sorted(ANSWER_WORDS[task], key=len, reverse=True)
    match = re.search("|".join(re.escape(w) for w in words), text.strip())
    return match.group(0) if match else None


def record_options(task: str, record: dict[str, str]) -> tuple[str, ...]:
    """The answer options of one record: its instruction's "Answer format: a/b/c" line, else the task's words."""
    found = re.findall(r"Answer format:\s*([A-Za-z0-9_/ ]+)", record.get("instruction", ""))
    if found:
        options = tuple(o.strip() for o in found[-1].split("/") if o.strip())
        if options and all(o in ANSWER_WORDS[task] for o in options):
            return options
    return ANSWER_WORDS[task][:2] if task in ("boolq", "piqa", "winogrande") else ANSWER_WORDS[task]


def resolve_data_dir(data_dir: str | None) -> Path:
    """--data-dir, else $BENCH_DATA_DIR, else LLM-Adapters' published files, fetched once into the cache
    (`harness.sources.fetch`; offline, one error line says how to bring the data)."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        from memft_bench.harness.sources.fetch import fetch_commonsense

        return fetch_commonsense()
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise BenchError(f"--data-dir {chosen}: not a directory")
    return path


def read_records(path: Path, task: str | None) -> list[dict[str, str]]:
    """A validated list of records from one JSON file (task None: a mix, answers not checked per task)."""
    if not path.is_file():
        raise BenchError(f"{path}: file not found (expected the LLM-Adapters layout <data-dir>/<task>/<split>.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BenchError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise BenchError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise BenchError(f"{path}: the file has no records")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise BenchError(f"{path}: record {i} is not an object")
        missing = [k for k in REQUIRED_KEYS if not isinstance(record.get(k), str)]
        if missing:
            raise BenchError(f"{path}: record {i} has no string {', '.join(repr(k) for k in missing)}")
        if task is not None and record["answer"] not in record_options(task, record):
            raise BenchError(f"{path}: record {i}: answer {record['answer']!r} is not one of "
                             f"{'/'.join(record_options(task, record))}")
    return data


@dataclass
class TrainingMix:
    records: list[dict[str, str]]
    source: str  # what the mix was built from, for the report


def seeded_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """Which of n items a seeded subset of `limit` keeps, in file order (all when no limit)."""
    if not limit or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def seeded_subset(records: list[Any], limit: int | None, seed: int) -> list[Any]:
    return [records[i] for i in seeded_indices(len(records), limit, seed)]


def training_records(data_dir: Path, tasks: tuple[str, ...] = TASKS) -> TrainingMix:
    """The training mix in file order: commonsense_170k.json when present, else the eight train files."""
    mix_file = data_dir / MIX_FILE
    if mix_file.is_file():
        return TrainingMix(read_records(mix_file, None), f"{MIX_FILE}")
    records = [r for task in tasks for r in read_records(data_dir / task / "train.json", task)]
    return TrainingMix(records, f"the {len(tasks)} train files concatenated ({MIX_FILE} not found)")


def mix_options(record: dict[str, str]) -> tuple[str, ...]:
    """The options of a record of the mix, whose task is not recorded: its "Answer format" line (every LLM-Adapters
    record has one), else the answer words of the task whose words include its answer."""
    found = re.findall(r"Answer format:\s*([A-Za-z0-9_/ ]+)", record.get("instruction", ""))
    if found:
        options = tuple(o.strip() for o in found[-1].split("/") if o.strip())
        if len(options) > 1:
            return options
    for words in ANSWER_WORDS.values():
        if record.get("answer") in words:
            return words
    return (record.get("answer", ""),)


def training_mix(data_dir: Path, seed: int, limit: int | None = None, tasks: tuple[str, ...] = TASKS,
                 exclude: frozenset[int] = frozenset()) -> TrainingMix:
    """commonsense_170k.json when present, else the eight train files concatenated, shuffled with `seed`;
    `exclude`: indices (in file order) held out as the validation split, never in the mix."""
    mix = training_records(data_dir, tasks)
    records = [r for i, r in enumerate(mix.records) if i not in exclude] if exclude else mix.records
    source = mix.source + (f", less {len(exclude)} validation records" if exclude else "")
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    shuffled = [records[i] for i in order]
    if limit:
        shuffled = shuffled[:limit]
        source += f", first {len(shuffled)} after a seeded shuffle"
    return TrainingMix(shuffled, source)


def load_test_set(data_dir: Path, task: str, limit: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    return load_test_items(data_dir, task, limit, seed)[1]


def load_test_items(data_dir: Path, task: str, limit: int | None = None,
                    seed: int = 0) -> tuple[list[int], list[dict[str, str]]]:
    """(each kept item's index in the test file, the records): the index names an item in per-item records,
    so two runs, or two methods, are paired on the same test items."""
    records = read_records(data_dir / task / "test.json", task)
    indices = seeded_indices(len(records), limit, seed)
    return indices, [records[i] for i in indices]


# -- the Hugging Face hub's versions, converted to the same records ------------------------------------
def _record(instruction: str, answer: str) -> dict[str, str]:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def from_hub_records(task: str, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Convert rows of the hub data sets (boolq, piqa, social_i_qa, hellaswag, winogrande, ai2_arc,
    openbookqa, as `datasets.load_dataset` returns them) into LLM-Adapters records."""
    out = []
    for row in rows:
        if task == "boolq":
            answer = "true" if row["answer"] else "false"
            out.append(_record(f"Please answer the following question with true or false, question: "
                               f"{row['question']}?\n\nAnswer format: true/false", answer))
        elif task == "piqa":
            out.append(_record(f"Please choose the correct solution to the question: {row['goal']}\n\n"
                               f"Solution1: {row['sol1']}\n\nSolution2: {row['sol2']}\n\n"
                               "Answer format: solution1/solution2", f"solution{int(row['label']) + 1}"))
        elif task == "social_i_qa":
            out.append(_record(f"Please choose the correct answer to the question: {row['context']} "
                               f"{row['question']}\n\nAnswer1: {row['answerA']}\nAnswer2: {row['answerB']}\n"
                               f"Answer3: {row['answerC']}\n\nAnswer format: answer1/answer2/answer3",
                               f"answer{int(row['label'])}"))
        elif task == "hellaswag":
            endings = "".join(f"Ending{i + 1}: {e}\n" for i, e in enumerate(row["endings"]))
            out.append(_record(f"Please choose the correct ending to complete the given sentence: "
                               f"{row['activity_label']}: {row['ctx']}\n\n{endings}\n"
                               "Answer format: ending1/ending2/ending3/ending4", f"ending{int(row['label']) + 1}"))
        elif task == "winogrande":
            out.append(_record(f"Please choose the correct answer to fill in the blank to complete the given "
                               f"sentence: {row['sentence']}\n\nOption1: {row['option1']}\nOption2: "
                               f"{row['option2']}\n\nAnswer format: option1/option2", f"option{row['answer']}"))
        elif task in ("ARC-Challenge", "ARC-Easy", "openbookqa"):
            question = row["question"] if task != "openbookqa" else row["question_stem"]
            labels, texts = row["choices"]["label"], row["choices"]["text"]
            listing = "".join(f"Answer{i + 1}: {t}\n" for i, t in enumerate(texts))
            fmt = "/".join(f"answer{i + 1}" for i in range(len(texts)))
            out.append(_record(f"Please choose the correct answer to the question: {question}\n\n{listing}\n"
                               f"Answer format: {fmt}", f"answer{labels.index(row['answerKey']) + 1}"))
        else:
            raise ValueError(f"unknown commonsense task {task!r}")
    return out


HUB_SOURCES = {
    "boolq": ("google/boolq", None, "validation"), "piqa": ("ybisk/piqa", None, "validation"),
    "social_i_qa": ("allenai/social_i_qa", None, "validation"), "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
    "ARC-Challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"), "ARC-Easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "openbookqa": ("allenai/openbookqa", "main", "test"),
}


def load_from_hub(task: str) -> list[dict[str, str]]:  # pragma: no cover - needs the network
    """The test split of `task` from the hub, converted (needs `pip install datasets` and a connection)."""
    try:
        import datasets
    except ImportError:
        raise BenchError("loading from the hub needs the `datasets` package (pip install datasets)") from None
    name, config, split = HUB_SOURCES[task]
    return from_hub_records(task, list(datasets.load_dataset(name, config, split=split)))
