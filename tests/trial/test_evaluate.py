"""Log-likelihood multiple choice: scores equal a one-at-a-time computation; batching changes nothing."""

from __future__ import annotations

import torch

from memft_bench.harness.sources.prompts import build_prompt
from memft_bench.harness.sources.synthetic import GENERATORS, generate
from memft_bench.harness.trial.evaluate import candidate_response, encode_pair, evaluate_loglik, score_sequences


def _reference_score(model, ids: list[int], n: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[t - 1, ids[t]] for t in range(len(ids) - n, len(ids))))


def test_scores_match_unbatched_reference(tiny_model_and_batch):
    model, tok, _ = tiny_model_and_batch
    model.eval()
    record = generate("kind", 1, 0)[0]
    prompt = build_prompt(record)
    seqs = [encode_pair(tok, prompt, candidate_response(record, o), 96) for o in GENERATORS["kind"].options]
    seqs.append((seqs[0][0][:20], 3))  # a shorter sequence forces padding inside the batch
    batched = score_sequences(model, seqs, tok.pad_token_id, batch_size=8)
    single = score_sequences(model, seqs, tok.pad_token_id, batch_size=1)
    reference = [_reference_score(model, ids, n) for ids, n in seqs]
    assert batched == single or torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-4)
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(reference), atol=1e-4, rtol=1e-4)


def test_candidate_replaces_the_answer_in_the_output():
    record = {"output": "the correct answer is answer2", "answer": "answer2"}
    assert candidate_response(record, "answer3") == "the correct answer is answer3"


def test_accuracy_counts_the_argmax_option(tiny_model_and_batch):
    model, tok, _ = tiny_model_and_batch
    records = generate("kind", 12, 5)
    model.train()
    result = evaluate_loglik(model, tok, records, GENERATORS["kind"].options, batch_size=16, max_len=96)
    assert result.n_items == 12
    assert result.accuracy == sum(p == r["answer"] for p, r in zip(result.predictions, records)) / 12
    assert model.training  # scoring runs in eval mode and restores the mode it found


def test_response_kept_when_prompt_is_cut():
    from memft_bench.harness.trial.models import build_word_tokenizer

    tok = build_word_tokenizer("a b c d e f")
    ids, n = encode_pair(tok, "a b c d e", " f f", max_len=4)
    assert len(ids) == 4 and n == 2 and ids[-2:] == tok(" f f", add_special_tokens=False)["input_ids"]


def test_options_differing_in_their_last_token_share_one_forward_pass(tiny_model_and_batch):
    model, tok, _ = tiny_model_and_batch
    model.eval()
    records = generate("kind", 3, 1)
    seqs = [encode_pair(tok, build_prompt(r), candidate_response(r, o), 96)
            for r in records for o in GENERATORS["kind"].options]
    assert all(len({tuple(ids[:-1]) for ids, _ in seqs[i:i + 4]}) == 1 for i in range(0, 12, 4))
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        scores = score_sequences(model, seqs, tok.pad_token_id, batch_size=1)
    finally:
        handle.remove()
    assert len(calls) == 3  # one pass per record, not one per option
    reference = [_reference_score(model, ids, n) for ids, n in seqs]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(reference), atol=1e-4, rtol=1e-4)


def test_batched_generation_equals_one_at_a_time(tiny_model_and_batch):
    """Left padding with an attention mask leaves each record's greedy output as if decoded alone."""
    from memft_bench.harness.trial.evaluate import evaluate_generate, first_option_in

    model, tok, _ = tiny_model_and_batch
    records = generate("kind", 5, 3)
    long_tail = " " + " ".join(["and the word is a kind of thing"] * 4)
    records[1] = dict(records[1], instruction=records[1]["instruction"] + long_tail)  # pads the others by ~30
    texts: list[str] = []

    def extract(record, text):
        texts.append(text)
        return first_option_in(text, GENERATORS["kind"].options)

    batched = evaluate_generate(model, tok, records, extract, batch_size=5, max_len=96, max_new_tokens=12)
    batched_texts, texts[:] = list(texts), []
    single = evaluate_generate(model, tok, records, extract, batch_size=1, max_len=96, max_new_tokens=12)
    assert batched_texts == texts and batched.predictions == single.predictions
    assert batched.accuracy == sum(p == r["answer"] for p, r in zip(batched.predictions, records)) / 5
