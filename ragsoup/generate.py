"""Decoding answers from (souped) states, and the concatenation baseline's state."""

from __future__ import annotations

from typing import Sequence

import torch

from ragsoup.encode import pad_batch
from ragsoup.model import LayerState, Mamba2LM, States
from ragsoup.tokenizer import Tokenizer, passage_ids, prompt_ids


def _cast(states: States, dtype: torch.dtype) -> States:
    """Cast every floating-point field of each layer's state, keeping its type (LayerState, KVState, ...)."""
    return [type(s)(*(t.to(dtype) if t.is_floating_point() else t for t in s)) for s in states]


@torch.inference_mode()
def generate(
    model: Mamba2LM, tok: Tokenizer, states: States, questions: Sequence[str], max_new_tokens: int = 32,
    min_new_tokens: int = 1,
) -> list[str]:
    """Greedy answers: run `<q> question <a>` from ``states`` (batch = len(questions)), then step to <eos>.

    ``min_new_tokens``: <eos> is not chosen before this many tokens (default 1: an answer is never empty).
    """
    dtype = model.backbone.embedding.weight.dtype
    states = _cast(states, dtype)
    ids, lengths = pad_batch([prompt_ids(tok, q) for q in questions], tok.pad_id, model.device)
    h, states = model.hidden(ids, states, lengths)
    last = h[torch.arange(len(questions), device=h.device), lengths - 1]  # [b, d]
    logits = model.lm_head(last)
    out: list[list[int]] = [[] for _ in questions]
    done = torch.zeros(len(questions), dtype=torch.bool, device=h.device)
    for t in range(max_new_tokens):
        if t < min_new_tokens:
            logits = logits.clone()
            logits[:, tok.eos_id] = float("-inf")
        nxt = logits.argmax(-1)
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

