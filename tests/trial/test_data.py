"""Prompting, response-only labels, padding and the seeded data order."""

from __future__ import annotations

from memft_bench.harness.sources.prompts import build_prompt
from memft_bench.harness.sources.synthetic import GENERATORS, generate, generate_split
from memft_bench.harness.trial.data import IGNORE_INDEX, collate, encode_example, training_batches
from memft_bench.harness.trial.models import build_tokenizer


def test_alpaca_prompt_with_and_without_input():
    assert build_prompt({"instruction": "Do X"}).endswith("### Instruction:\nDo X\n\n### Response:\n")
    with_input = build_prompt({"instruction": "Do X", "input": "ctx"})
    assert "### Input:\nctx\n\n### Response:\n" in with_input


def test_labels_cover_only_the_response_and_eos(small_suite):
    tok = build_tokenizer(small_suite.model)
    record = {"instruction": "what kind of thing is apple?", "input": "", "output": "the correct answer is fruit",
              "answer": "fruit"}
    ex = encode_example(tok, record, cutoff_len=96)
    n_prompt = len(tok(build_prompt(record))["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(ex["labels"][n_prompt:-1]) == "the correct answer is fruit"


def test_truncation_to_cutoff_len(small_suite):
    tok = build_tokenizer(small_suite.model)
    record = generate("kind", 1, 0)[0]
    ex = encode_example(tok, record, cutoff_len=10)
    assert len(ex["input_ids"]) == len(ex["labels"]) == 10
    assert all(label == IGNORE_INDEX for label in ex["labels"])  # the response was cut: nothing to learn


def test_padding_never_enters_the_loss():
    a = {"input_ids": [1, 5, 6], "labels": [-100, 5, 6]}
    b = {"input_ids": [1, 7], "labels": [-100, 7]}
    batch = collate([a, b], pad_id=0, device="cpu")
    assert batch["input_ids"].tolist() == [[1, 5, 6], [0, 1, 7]]  # left: responses end every row
    assert batch["labels"].tolist() == [[-100, 5, 6], [-100, -100, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]


def test_batched_loss_equals_each_example_alone(tiny_model_and_batch):
    """Left padding, position ids and the last-positions-only logits change neither the loss nor its gradient."""
    import torch
    import torch.nn.functional as F

    from memft_bench.harness.trial.models import causal_lm_loss

    model, tok, _ = tiny_model_and_batch
    records = generate("kind", 3, 2)
    examples = [encode_example(tok, r, 96) for r in records]
    examples[1] = {"input_ids": examples[1]["input_ids"][:-4], "labels": examples[1]["labels"][:-4]}  # shorter
    examples.append({"input_ids": examples[0]["input_ids"], "labels": examples[0]["input_ids"]})  # all targets
    assert len({len(e["input_ids"]) for e in examples}) > 1
    weight = model.model.layers[0].self_attn.q_proj.weight

    model.zero_grad()
    loss, n = causal_lm_loss(model, collate(examples, tok.pad_token_id, "cpu"))
    loss.backward()
    batched_grad = weight.grad.clone()

    model.zero_grad()
    ref_loss, ref_n = 0.0, 0
    for e in examples:
        logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
        labels = torch.tensor(e["labels"][1:])
        one = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        one.backward()
        ref_loss, ref_n = ref_loss + one.item(), ref_n + int((labels != IGNORE_INDEX).sum())
    assert n == ref_n
    torch.testing.assert_close(float(loss), ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(batched_grad, weight.grad, rtol=1e-4, atol=1e-6)


def test_batches_are_seeded_and_accumulate():
    examples = [{"input_ids": [1, i], "labels": [-100, i]} for i in range(10)]
    def order(seed: int) -> list[list[int]]:
        batches = _take(training_batches(examples, 3, 2, seed, 0, "cpu"), 4)
        return [b.micro_batches[0]["input_ids"][:, 1].tolist() for b in batches]

    first, again, other = order(0), order(0), order(1)
    assert first == again and first != other
    batch = next(training_batches(examples, 3, 2, 0, 0, "cpu"))
    assert len(batch.micro_batches) == 2 and batch.target_tokens == 6


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_synthetic_tasks_are_deterministic_and_answer_is_an_option():
    for name, task in GENERATORS.items():
        train, test = generate_split(name, 50, 20, seed=3)
        assert train == generate_split(name, 50, 20, seed=3)[0]
        assert train != test
        for record in train + test:
            assert record["answer"] in task.options
            assert record["output"].endswith(record["answer"])


def test_tokenizer_knows_every_word_the_tasks_use(small_suite):
    tok = build_tokenizer(small_suite.model)
    for name in GENERATORS:
        for record in generate(name, 30, 0):
            ids = tok(build_prompt(record) + record["output"])["input_ids"]
            assert tok.unk_token_id not in ids, (name, record)
