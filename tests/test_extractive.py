"""Extractive decoding: answers as spans of the passages (generate's ``spans_of``)."""

from __future__ import annotations

import torch

from ragsoup.evaluate import predict, soup_state
from ragsoup.generate import PASSAGE_SEP, generate, span_tokens
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tasks import generate_example
from ragsoup.tokenizer import ByteTokenizer

TEXT = "Poustead is the capital of Trikedistan. Quoustead is far."


def _model() -> Mamba2LM:
    torch.manual_seed(0)
    return Mamba2LM(Mamba2Config(vocab_size=264, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=8)).eval()


class _Ranking(torch.nn.Module):
    """An lm_head whose logits ignore the state: the same fixed ranking of tokens at every step."""

    def __init__(self, vocab: int, ranked: list[int]) -> None:
        super().__init__()
        self.logits = torch.full((vocab,), -10.0)
        for i, t in enumerate(dict.fromkeys(ranked)):  # each token at its first place
            self.logits[t] = 100.0 - i

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*h.shape[:-1], -1).clone()


def _chars(tok: ByteTokenizer, s: str) -> set[int]:
    return {tok.encode(c)[0] for c in s}


def test_span_tokens_follow_the_text_from_word_starts():
    tok = ByteTokenizer()
    first, can_end = span_tokens(tok, TEXT, "")
    assert first and set(first) == _chars(tok, "PitcoTQf") and not can_end  # the first letters of its words
    after, can_end = span_tokens(tok, TEXT, "Tri")
    assert after == tok.encode("k") and not can_end  # "Tri" continues only as "Trik..."; not a whole word
    after, can_end = span_tokens(tok, TEXT, "Trikedistan")
    assert after == tok.encode(".") and can_end
    assert span_tokens(tok, TEXT, "ikedistan") == ([], False)  # not from a word's start
    assert span_tokens(tok, TEXT, "Zürich") == ([], False)


def test_extractive_decoding_takes_the_best_scored_span():
    tok, m = ByteTokenizer(), _model()
    # "k" and "a" outrank everything, then <eos>; neither starts a word of TEXT, and "a" never follows the answer
    ranked = tok.encode("ka") + [tok.eos_id] + tok.encode("Trikedistn")
    m.lm_head = _Ranking(m.cfg.vocab_size, ranked)
    st = soup_state(m, tok, [TEXT])
    assert generate(m, tok, st, ["Where?"], max_new_tokens=8) == ["k" * 8]  # free decoding: the top token
    assert generate(m, tok, st, ["Where?"], max_new_tokens=20, spans_of=[[TEXT]]) == ["Trikedistan"]
    # <eos> only where a word ends: "Trike" alone is never an answer, however high <eos> ranks
    m.lm_head = _Ranking(m.cfg.vocab_size, [tok.eos_id] + tok.encode("Trikedistn"))
    assert generate(m, tok, st, ["Where?"], max_new_tokens=20, spans_of=[[TEXT]]) == ["Trikedistan"]
    # when the text ends mid-word the answer stops there instead of leaving it
    assert generate(m, tok, st, ["Where?"], max_new_tokens=20, spans_of=[["Trike"]]) == ["Trike"]
    # nor into the next passage, whatever token would join them
    m.lm_head = _Ranking(m.cfg.vocab_size, tok.encode(PASSAGE_SEP + "\nTrikedistn ") + [tok.eos_id])
    assert generate(m, tok, st, ["Where?"], max_new_tokens=20, spans_of=[["Tri", "kedistan"]]) == ["Tri"]
    assert generate(m, tok, st, ["Where?"], max_new_tokens=20, spans_of=[["Tri kedistan"]]) == ["Tri kedistan"]


def test_extractive_answers_of_a_random_model_are_spans_of_their_own_passages():
    tok, m = ByteTokenizer(), _model()
    import random

    rng = random.Random(4)
    exs = [generate_example("needle", rng, 3, passage_chars=80) for _ in range(4)]
    free = predict(m, tok, exs, max_new_tokens=10)
    spans = predict(m, tok, exs, max_new_tokens=10, extractive=True)
    assert any(f not in "\n".join(ex.docs) for f, ex in zip(free, exs))  # an untrained model's free answers are not
    for ans, ex in zip(spans, exs):
        assert ans and ans in "\n".join(ex.docs)
