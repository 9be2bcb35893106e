"""Souping: pool k passages' states into one, layer by layer and component by component.

Operators (per state component x_1..x_k, e.g. layer 3's ssm state):
    mean       sum(x) / k                       (the paper's best; the default)
    sum        sum(x)
    max        elementwise max
    sum-norm   sum(x) rescaled to the inputs' mean Frobenius norm
    norm-mean  mean(x_i / |x_i|) rescaled to the inputs' mean norm
    centered   b + sum(x - b) / sqrt(k), b = the model's background state (ragsoup.background): the mean, with
               every passage's deviation from the background amplified by sqrt(k), so the soup's spread around b
               is that of one passage at every k (variance-preserving). k = 1 gives x itself.
Two entry points: ``pool_states`` for batched model states (differentiable, used in training) and
``soup_rows`` for rows read from the state store (fp32 accumulation, bandwidth-bound, used per query).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ragsoup.errors import RagsoupError
from ragsoup.model import LayerState, States

POOLS = ("mean", "sum", "max", "sum-norm", "norm-mean", "centered")
_EPS = 1e-8


def check_pool(op: str) -> str:
    """Validate a pooling name (error lists the valid ones)."""
    if op not in POOLS:
        raise RagsoupError(f"unknown pooling '{op}': use one of {', '.join(POOLS)}")
    return op


def _no_background() -> RagsoupError:
    return RagsoupError("pooling 'centered' needs the model's background state (background.safetensors beside its "
                        "weights): create it with `ragsoup background MODEL`, or use --pool mean")


def centre(mean: Tensor, background: Tensor | None, k: int) -> Tensor:
    """In place: mean -> background + sqrt(k) * (mean - background), the ``centered`` soup from a mean.

    The one place that needs the background: without it, the error says how to make one.
    """
    if background is None:
        raise _no_background()
    g = math.sqrt(k)
    return mean.mul_(g).add_(background.to(mean.device, mean.dtype), alpha=1.0 - g)


def pool(x: Tensor, op: str, background: Tensor | None = None) -> Tensor:
    """Pool x [B, k, N] over k -> [B, N] (computed in at least fp32); ``background`` [N] or [B, N] for centered."""
    check_pool(op)
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if op == "centered":
        bg = None if background is None else background.reshape(-1, x.shape[-1])
        return centre(x.mean(1), bg, x.shape[1])
    if op == "mean":
        return x.mean(1)
    if op == "sum":
        return x.sum(1)
    if op == "max":
        return x.amax(1)
    norms = x.norm(dim=-1, keepdim=True)  # [B, k, 1]
    scale = norms.mean(1)  # [B, 1]
    if op == "sum-norm":
        s = x.sum(1)
        return s / (s.norm(dim=-1, keepdim=True) + _EPS) * scale
    return (x / (norms + _EPS)).mean(1) * scale  # norm-mean


def pool_states(states: States, k: int, op: str = "mean", background: States | None = None) -> States:
    """States of B*k passages (batch-major: example b's passages are rows b*k .. b*k+k-1) -> B pooled states.

    ``background``: the model's background state (batch 1), needed by ``centered`` only.
    """
    out: States = []
    for i, st in enumerate(states):
        comps = []
        for j, t in enumerate(st):
            bk = t.shape[0]
            bg = None if background is None else background[i][j]  # read by centered only
            pooled = pool(t.reshape(bk // k, k, -1), op, bg)
            comps.append(pooled.reshape(bk // k, *t.shape[1:]).to(t.dtype))
        out.append(LayerState(*comps))
    return out


def soup_rows(rows: np.ndarray | Tensor, op: str, segments: list[tuple[int, int]],
              index: Sequence[int] | None = None, background: Tensor | None = None) -> Tensor:
    """Pool k flat state rows [k, D] (any float dtype) into one fp32 row [D].

    mean/sum/max stream each row once into an fp32 accumulator (``add_`` / ``maximum``), which is
    bandwidth-bound, unlike a reduction over an fp16 [k, D] tensor. With ``index``, the rows pooled are
    rows[index], read straight from ``rows`` (e.g. the memory-mapped state store): no intermediate copy.
    ``segments`` lists (offset, numel) of each state component, used by the norm-based operators.
    ``background``: the model's background row [D], needed by ``centered`` only.
    """
    check_pool(op)
    if op == "centered":
        return centre(soup_rows(rows, "mean", segments, index), background, len(rows) if index is None else len(index))
    r = torch.from_numpy(np.asarray(rows)) if not isinstance(rows, Tensor) else rows
    order = list(range(r.shape[0])) if index is None else [int(i) for i in index]
    k = len(order)
    if k == 0:
        raise RagsoupError("cannot soup zero passages")
    if op in ("mean", "sum", "max"):
        acc = r[order[0]].to(torch.float32, copy=True)
        for i in order[1:]:
            if op == "max":
                torch.maximum(acc, r[i].float(), out=acc)
            else:
                acc.add_(r[i])
        return acc.mul_(1.0 / k) if op == "mean" else acc
    if index is not None:
        r = r.index_select(0, torch.as_tensor(order))
    acc = r[0].to(torch.float32, copy=True)
    # norm-based operators, per component
    norms = torch.stack([r[:, o : o + n].float().norm(dim=1) for o, n in segments], dim=1)  # [k, S]
    scale = norms.mean(0)  # [S]
    if op == "norm-mean":
        w = 1.0 / (norms + _EPS)
        acc.zero_()
        for i in range(k):
            for s, (o, n) in enumerate(segments):
                acc[o : o + n].add_(r[i, o : o + n], alpha=float(w[i, s]))
        for s, (o, n) in enumerate(segments):
            acc[o : o + n].mul_(float(scale[s]) / k)
        return acc
    for i in range(1, k):  # sum-norm
        acc.add_(r[i])
    for s, (o, n) in enumerate(segments):
        seg = acc[o : o + n]
        seg.mul_(float(scale[s]) / (float(seg.norm()) + _EPS))
    return acc
