"""Encoding passages into cached states: batched, right-padded, each passage independent."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ragsoup.model import Mamba2LM, States
from ragsoup.store import flatten_states
from ragsoup.tokenizer import Tokenizer, passage_ids


def pad_batch(seqs: Sequence[list[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Right-pad token lists -> (ids [b, L], lengths [b])."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids.to(device), torch.tensor([len(s) for s in seqs], device=device)


T = TypeVar("T")


def run_groups(fn: Callable[[Tensor, Tensor], T], batches: Iterable[tuple[Tensor, Tensor]], checkpointed: bool,
               grad: bool) -> list[T]:
    """Apply fn(ids, lengths) to each group: activation-checkpointed when training with ``checkpointed``,
    plainly when training without it, and without autograd when ``grad`` is False."""
    out = []
    for ids, lengths in batches:
        if not grad:
            with torch.no_grad():
                out.append(fn(ids, lengths))
        elif checkpointed:
            out.append(checkpoint(fn, ids, lengths, use_reentrant=False))
        else:
            out.append(fn(ids, lengths))
    return out


def encode_token_batch(model: Mamba2LM, seqs: Sequence[list[int]], pad_id: int) -> States:
    """Final states of each token sequence, encoded independently from the zero state."""
    ids, lengths = pad_batch(seqs, pad_id, model.device)
    return model.encode(ids, lengths)


def encode_passages(
    model: Mamba2LM,
    tok: Tokenizer,
    texts: Sequence[str],
    batch_size: int = 16,
    max_tokens: int = 1024,
    dtype: torch.dtype = torch.float16,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Yield (start, rows [b, D]) for consecutive batches of passages, rows cast to ``dtype`` on the CPU.

    On a GPU the encode runs under bf16 autocast (matmuls in bf16, the scan's state accumulation in fp32).
    """
    seqs = [passage_ids(tok, t, max_tokens) for t in texts]
    on_gpu = model.device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
        for start in range(0, len(seqs), batch_size):
            batch = seqs[start : start + batch_size]
            rows = flatten_states(encode_token_batch(model, batch, tok.pad_id))
            yield start, rows.to("cpu", dtype)
            if on_batch:
                on_batch(len(batch))
