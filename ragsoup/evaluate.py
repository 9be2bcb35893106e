"""Answer quality on examples that carry their own passages (no retrieval): soup or concat."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ragsoup import kvsoup
from ragsoup.encode import encode_rows
from ragsoup.errors import RagsoupError
from ragsoup.generate import batch_states, concat_states, generate
from ragsoup.metrics import best_em_f1
from ragsoup.model import Mamba2LM, States
from ragsoup.soup import pool_states
from ragsoup.store import unflatten_states
from ragsoup.tasks.base import SoupExample
from ragsoup.tokenizer import Tokenizer, passage_ids

MODES = ("soup", "concat")


@torch.inference_mode()
def soup_state(model: Mamba2LM, tok: Tokenizer, docs: Sequence[str], pool: str = "mean",
               max_tokens: int = 1024, batch_size: int = 32, background: States | None = None,
               weights: Tensor | None = None) -> States:
    """Encode each passage independently (in length-sorted batches) and pool the final states.

    ``background``: for centered; ``weights`` [k]: a weighted mean or centered soup.
    """
    if kvsoup.is_kv_model(model):  # transformer baseline: average the passages' KV caches (ragsoup.kvsoup)
        if weights is not None:
            raise RagsoupError("the KV-cache baseline soups with equal weights only: use --weights uniform")
        return kvsoup.soup_state(model, tok, docs, pool, max_tokens, batch_size)
    seqs = [passage_ids(tok, d, max_tokens) for d in docs]
    states = unflatten_states(encode_rows(model, seqs, tok.pad_id, batch_size), model.cfg)
    return pool_states(states, len(docs), pool, background, None if weights is None else weights.reshape(1, -1))


def predict(model: Mamba2LM, tok: Tokenizer, examples: Sequence[SoupExample], mode: str = "soup", pool: str = "mean",
            batch_size: int = 16, max_new_tokens: int = 32, max_tokens: int = 1024,
            on_batch: Callable[[int], None] | None = None, encoder: Mamba2LM | None = None,
            background: States | None = None, weights: Sequence[Tensor] | None = None,
            extractive: bool = False) -> list[str]:
    """Greedy answers for each example, reading its docs by souping or by concatenation.

    ``encoder``: a separate model that encodes the passages (decoder-only finetuning keeps the original one).
    ``background``: the model's background state, for ``pool="centered"``.
    ``weights``: per example, its passages' soup weights [k] (``relevance_weights``); None: equal weights.
    ``extractive``: each answer is decoded as a span of its example's passages (``generate``'s ``spans_of``).
    """
    out: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        if mode == "soup":
            states = [soup_state(encoder or model, tok, ex.docs, pool, max_tokens, background=background,
                                 weights=None if weights is None else weights[i + j])
                      for j, ex in enumerate(chunk)]
        else:
            states = [concat_states(model, tok, ex.docs, max_tokens) for ex in chunk]
        batched = kvsoup.batch_kv(states) if kvsoup.is_kv_model(model) else batch_states(states)  # KV: pad lengths
        out += generate(model, tok, batched, [ex.question for ex in chunk], max_new_tokens,
                        spans_of=[ex.docs for ex in chunk] if extractive else None)
        if on_batch:
            on_batch(len(chunk))
    return out


def prediction_records(predictions: Sequence[str], examples: Sequence[SoupExample]) -> list[dict]:
    """One record per example: question, accepted answers, prediction, its EM/F1 (0/1 and 0-1), gold passage
    indices, and the answers of the other questions its passages answer (other needles' values)."""
    out = []
    for p, ex in zip(predictions, examples):
        em, f1 = best_em_f1(p, ex.answers)
        out.append({"question": ex.question, "answers": ex.answers, "prediction": p, "em": em, "f1": f1,
                    "gold": ex.gold, "others": [a for _, a in ex.extra]})
    return out


def score(predictions: Sequence[str], examples: Sequence[SoupExample]) -> dict:
    """EM and F1 in percent (best over each example's accepted answers)."""
    pairs = [best_em_f1(p, ex.answers) for p, ex in zip(predictions, examples)]
    n = max(len(pairs), 1)
    return {"n": len(pairs), "em": 100 * sum(e for e, _ in pairs) / n, "f1": 100 * sum(f for _, f in pairs) / n}
