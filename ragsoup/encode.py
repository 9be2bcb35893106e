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


# One encode call costs about as much as this many padded tokens (forward + backward of the default model's training
# passages on the 2-core CPU: benchmarks/encode_groups.py). length_groups trades calls against padding with it.
CALL_TOKENS = 256


def length_groups(lengths: Sequence[int], max_size: int = 0, call_tokens: int = CALL_TOKENS) -> list[list[int]]:
    """Indices of ``lengths`` in groups to pad together: runs of the length-sorted order, each at most ``max_size``
    long (0 = any), chosen to minimise the padded tokens plus ``call_tokens`` per group."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    srt = [lengths[i] for i in order]
    n = len(srt)
    if n == 0:
        return []
    # without a size cap an optimal grouping cuts only where the length changes
    cuts = list(range(n + 1)) if max_size > 0 else [0] + [j for j in range(1, n) if srt[j] != srt[j - 1]] + [n]
    best: dict[int, tuple[int, int]] = {0: (0, 0)}  # cut -> (cost of the sorted prefix up to it, the cut before)
    for x, j in enumerate(cuts[1:], 1):
        before = cuts[:x] if max_size <= 0 else range(max(0, j - max_size), j)
        best[j] = min((best[i][0] + call_tokens + (j - i) * srt[j - 1], i) for i in before)
    groups: list[list[int]] = []
    j = n
    while j > 0:
        i = best[j][1]
        groups.append(order[i:j])
        j = i
    return groups[::-1]


def encode_rows(model: Mamba2LM, seqs: Sequence[list[int]], pad_id: int, group: int = 0, grad: bool = False,
                by_length: bool = True) -> Tensor:
    """Flat final states [n, D] of each sequence (input order), encoded independently in length-sorted groups.

    ``group``: at most that many sequences per encode call (0 = any), each call activation-checkpointed when ``grad``
    (training memory flat in the number of passages); without ``grad`` no autograd runs. ``by_length=False``: groups
    of consecutive sequences instead (more padding; the grouping that training runs before length grouping used).
    """
    if by_length:
        groups = length_groups([len(s) for s in seqs], group)
    else:
        size = group if group > 0 else len(seqs)
        groups = [list(range(i, min(i + size, len(seqs)))) for i in range(0, len(seqs), size)]
    batches = (pad_batch([seqs[i] for i in g], pad_id, model.device) for g in groups)
    fn = lambda ids, lengths: flatten_states(model.encode(ids, lengths))  # noqa: E731
    rows = torch.cat(run_groups(fn, batches, group > 0, grad), 0)
    if not by_length:
        return rows
    order = torch.tensor([i for g in groups for i in g], device=rows.device)
    return rows.index_select(0, torch.argsort(order))


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
) -> Iterator[tuple[list[int], Tensor]]:
    """Yield (positions, rows [b, D]): batches of at most ``batch_size`` passages of similar length
    (``length_groups``), each with its passages' positions in ``texts``, rows cast to ``dtype`` on the CPU.

    On a GPU the encode runs under bf16 autocast (matmuls in bf16, the scan's state accumulation in fp32).
    """
    seqs = [passage_ids(tok, t, max_tokens) for t in texts]
    on_gpu = model.device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
        for positions in length_groups([len(s) for s in seqs], batch_size):
            rows = flatten_states(encode_token_batch(model, [seqs[i] for i in positions], tok.pad_id))
            yield positions, rows.to("cpu", dtype)
            if on_batch:
                on_batch(len(positions))
