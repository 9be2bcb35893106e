"""Decoding answers from (souped) states, and the concatenation baseline's state."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterator, Sequence

import torch

from ragsoup.encode import pad_batch
from ragsoup.errors import RagsoupError
from ragsoup.model import LayerState, Mamba2LM, States
from ragsoup.tokenizer import Tokenizer, passage_ids, prompt_ids


def _cast(states: States, dtype: torch.dtype) -> States:
    """Cast every floating-point field of each layer's state, keeping its type (LayerState, KVState, ...)."""
    return [type(s)(*(t.to(dtype) if t.is_floating_point() else t for t in s)) for s in states]


@lru_cache(maxsize=8)
def _pieces(tok: Tokenizer) -> tuple[str, ...]:
    """Each token id's text alone ('' for special tokens and pieces of a UTF-8 character, which cannot be spans)."""
    out = []
    for t in range(tok.vocab_size):
        p = tok.decode([t])
        out.append("" if "\ufffd" in p else p)
    return tuple(out)


@lru_cache(maxsize=8)
def _longest(tok: Tokenizer) -> int:
    """The longest token piece: no token reaches further into a text than this."""
    return max(map(len, _pieces(tok)))


# joins a question's passages into one text for extractive decoding; no span may hold it (_Spans.allows), so an
# answer never runs from one passage into the next
PASSAGE_SEP = "\x1e"


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _at_word_starts(text: str, s: str) -> Iterator[int]:
    """Every index where ``s`` (non-empty) occurs in ``text`` starting a word, in order."""
    i = text.find(s)
    while i >= 0:
        if i == 0 or not _word_char(text[i - 1]):
            yield i
        i = text.find(s, i + 1)


class _Spans:
    """Where an answer so far (leading spaces dropped) may go next in ``text``: the rule extractive decoding keeps."""

    def __init__(self, text: str, sofar: str, longest: int) -> None:
        self.text, self.sofar = text, sofar
        ends = [i + len(sofar) for i in _at_word_starts(text, sofar)] if sofar else []
        self.rests = {text[e : e + longest] for e in ends}  # what follows each place the answer starts a word
        self.can_end = any(not r or not _word_char(r[0]) for r in self.rests)  # <eos>: the answer ends a word there

    def allows(self, piece: str) -> bool:
        """Whether the answer followed by ``piece`` is still a span starting at a word's start."""
        if PASSAGE_SEP in piece:
            return False
        if self.sofar:
            return bool(piece) and any(r.startswith(piece) for r in self.rests)
        word = piece.lstrip()
        return bool(word) and next(_at_word_starts(self.text, word), None) is not None


def span_tokens(tok: Tokenizer, text: str, sofar: str) -> tuple[list[int], bool]:
    """Tokens that extend ``sofar`` (the answer so far, leading spaces dropped) to a span of ``text`` starting at a
    word's start, and whether <eos> may follow (``sofar`` is non-empty and ends where a word ends)."""
    pieces = _pieces(tok)
    spans = _Spans(text, sofar, _longest(tok))
    return [t for t, p in enumerate(pieces) if spans.allows(p)], spans.can_end


def _best_first(logits: torch.Tensor, first: int = 16) -> Iterator[int]:
    """Token ids by falling score, -inf ones left out: the top ``first`` (usually enough), then the rest, sorted."""
    top = logits.topk(min(first, logits.numel()))
    for v, t in zip(top.values.tolist(), top.indices.tolist()):
        if not math.isfinite(v):
            return
        yield t
    vals, ids = logits.sort(descending=True)
    for v, t in zip(vals.tolist()[first:], ids.tolist()[first:]):
        if not math.isfinite(v):
            return
        yield t


def _span_choice(logits: torch.Tensor, tok: Tokenizer, sofar: list[int], text: str) -> int:
    """The best-scored token that keeps the answer a span of ``text`` (<eos> only after a whole word); <eos> once
    nothing extends it. Tokens are tried best first, so a confident model costs a check or two per step."""
    pieces = _pieces(tok)
    answer = "".join(pieces[t] for t in sofar if t < len(pieces)).lstrip()
    spans = _Spans(text, answer, _longest(tok))
    for t in _best_first(logits):
        if t == tok.eos_id:
            if spans.can_end:
                return t
        elif t < len(pieces) and spans.allows(pieces[t]):
            return t
    return tok.eos_id if answer else int(logits.argmax())


@torch.inference_mode()
def generate(
    model: Mamba2LM, tok: Tokenizer, states: States, questions: Sequence[str], max_new_tokens: int = 32,
    min_new_tokens: int = 1, spans_of: Sequence[Sequence[str]] | None = None,
) -> list[str]:
    """Greedy answers: run `<q> question <a>` from ``states`` (batch = len(questions)), then step to <eos>.

    ``min_new_tokens``: <eos> is not chosen before this many tokens (default 1: an answer is never empty).
    ``spans_of``: each question's passages; each answer is then the model's best-scored span of one of them
    (extractive decoding: at each step the best-scored token that keeps the answer a substring of a passage).
    """
    if max_new_tokens < 1:
        raise RagsoupError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    dtype = model.backbone.embedding.weight.dtype
    states = _cast(states, dtype)
    ids, lengths = pad_batch([prompt_ids(tok, q) for q in questions], tok.pad_id, model.device)
    h, states = model.hidden(ids, states, lengths)
    last = h[torch.arange(len(questions), device=h.device), lengths - 1]  # [b, d]
    logits = model.lm_head(last)
    out: list[list[int]] = [[] for _ in questions]
    done = torch.zeros(len(questions), dtype=torch.bool, device=h.device)
    texts = None if spans_of is None else [PASSAGE_SEP.join(p) for p in spans_of]
    for t in range(max_new_tokens):
        if t < min_new_tokens:
            logits = logits.clone()
            logits[:, tok.eos_id] = float("-inf")
        nxt = logits.argmax(-1)
        if texts is not None:
            for i in torch.nonzero(~done).flatten().tolist():
                nxt[i] = _span_choice(logits[i], tok, out[i], texts[i])
        done |= nxt == tok.eos_id
        for i in torch.nonzero(~done).flatten().tolist():
            out[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        logits, states = model.step(nxt, states)
    return [tok.decode(o).strip() for o in out]


def concat_ids(tok: Tokenizer, passages: Sequence[str], max_tokens: int = 1024) -> list[int]:
    """The concatenation baseline's context: p1 <doc> p2 <doc> ... (each passage truncated as when souped)."""
    ids: list[int] = []
    for p in passages:
        ids += passage_ids(tok, p, max_tokens)
    return ids


# On a CPU one encode call over a whole long concatenation is slower than the same tokens in blocks carrying the
# state (measured with the default model, 2 cores: 38,400 tokens 7.2k tok/s in one call, 17.8k in 512-token blocks;
# 12,800 tokens 13.9k vs 17.3k): the chunked scan's intermediates outgrow the caches. The result is the same.
CPU_CONCAT_BLOCK = 512


@torch.inference_mode()
def concat_states(model: Mamba2LM, tok: Tokenizer, passages: Sequence[str], max_tokens: int = 1024,
                  block: int | None = None) -> States:
    """State after reading all passages concatenated (what ordinary RAG re-encodes every query).

    ``block``: tokens per encode call, the state carried between calls (default: 512 on a CPU, all at once on a GPU).
    """
    ids = torch.tensor([concat_ids(tok, passages, max_tokens)], device=model.device)
    if block is None:
        block = CPU_CONCAT_BLOCK if model.device.type == "cpu" else ids.size(1)
    states = None
    for start in range(0, ids.size(1), max(1, block)):
        states = model.encode(ids[:, start : start + block], states=states)
    return states


def batch_states(states_list: Sequence[States]) -> States:
    """Stack single-example states into one batch."""
    return [LayerState(*(torch.cat(t, 0) for t in zip(*layer))) for layer in zip(*states_list)]

