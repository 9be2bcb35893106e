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
Weights (``mean`` and ``centered`` only): a weighted soup sum(w_i x_i), sum(w) = 1, e.g. relevance weights
softmax(score_i / T) from the retriever's scores (``relevance_weights``). Weighted ``centered`` is
b + sum(w_i (x_i - b)) / |w|_2, which is the unweighted formula when every w_i = 1/k (1/|w|_2 = sqrt(k_eff),
k_eff = 1/sum(w^2) the effective number of passages).
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
WEIGHTINGS = ("uniform", "retrieval")  # how a soup weighs its passages: equally, or by retrieval score
WEIGHTED_POOLS = ("mean", "centered")
DEFAULT_TEMPERATURE = 0.05  # relevance weights' softmax temperature, for cosine scores (docs/results.md)
_EPS = 1e-8


def check_pool(op: str) -> str:
    """Validate a pooling name (error lists the valid ones)."""
    if op not in POOLS:
        raise RagsoupError(f"unknown pooling '{op}': use one of {', '.join(POOLS)}")
    return op


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:  # also refuses NaN
        raise RagsoupError(f"--temperature must be positive (got {temperature}): larger is closer to the plain mean")


def check_weighting(weights: str | None, op: str, temperature: float) -> str:
    """Validate a weighting name against the pooling it is used with (errors say what works); returns it.

    None picks the default: retrieval weights where the pooling takes weights (mean, centered), else uniform.
    """
    if weights is None:
        weights = "retrieval" if op in WEIGHTED_POOLS else "uniform"
    if weights not in WEIGHTINGS:
        raise RagsoupError(f"unknown weighting '{weights}': use one of {', '.join(WEIGHTINGS)}")
    if weights == "retrieval":
        if op not in WEIGHTED_POOLS:
            raise RagsoupError(f"retrieval weights work with --pool mean or centered, not '{op}': "
                               "use --weights uniform with this pooling")
        _check_temperature(temperature)
    return weights


def relevance_weights(scores: np.ndarray | Tensor | Sequence[float], temperature: float = DEFAULT_TEMPERATURE) -> Tensor:
    """Soup weights from retrieval scores [..., k]: softmax(score / temperature) over the last axis (fp32)."""
    _check_temperature(temperature)
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    return torch.softmax(s / temperature, dim=-1).float()


def normalise_weights(weights: Tensor | Sequence[float], k: int, op: str) -> Tensor:
    """Weights [..., k] as fp32 summing to 1 (checked: finite, non-negative, one per passage, a weighted pool)."""
    if op not in WEIGHTED_POOLS:
        raise RagsoupError(f"weighted souping works with mean or centered pooling, not '{op}'")
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.shape[-1] != k:
        raise RagsoupError(f"got {w.shape[-1]} weights for {k} passages")
    total = w.sum(-1, keepdim=True)
    if not (torch.isfinite(w).all() and (w >= 0).all() and (total > 0).all()):
        raise RagsoupError("soup weights must be finite, non-negative and not all zero")
    return w / total


def _no_background() -> RagsoupError:
    return RagsoupError("pooling 'centered' needs the model's background state (background.safetensors beside its "
                        "weights): create it with `ragsoup background MODEL`, or use --pool mean")


def centre(mean: Tensor, background: Tensor | None, k: float | Tensor) -> Tensor:
    """In place: mean -> background + sqrt(k) * (mean - background), the ``centered`` soup from a mean.

    ``k``: the (effective) number of passages, a number or a tensor broadcasting against ``mean`` (one per row).
    The one place that needs the background: without it, the error says how to make one.
    """
    if background is None:
        raise _no_background()
    bg = background.to(mean.device, mean.dtype)
    if not isinstance(k, Tensor):
        g = math.sqrt(k)
        return mean.mul_(g).add_(bg, alpha=1.0 - g)
    g = k.to(mean.device, mean.dtype).sqrt()
    return mean.mul_(g).add_(bg * (1.0 - g))


def effective_k(weights: Tensor) -> Tensor:
    """1 / sum(w^2) over the last axis (keepdim): k for equal weights, 1 when one passage has all the weight."""
    return 1.0 / weights.square().sum(-1, keepdim=True)


def pool(x: Tensor, op: str, background: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
    """Pool x [B, k, N] over k -> [B, N] (computed in at least fp32); ``background`` [N] or [B, N] for centered.

    ``weights`` [B, k] (mean and centered only): a weighted soup, normalised to sum to 1 per row.
    """
    check_pool(op)
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if weights is not None:
        w = normalise_weights(weights, x.shape[1], op).to(x.device, x.dtype).reshape(x.shape[0], x.shape[1])
        mean = torch.einsum("bkn,bk->bn", x, w)
        if op == "mean":
            return mean
        return centre(mean, None if background is None else background.reshape(-1, x.shape[-1]), effective_k(w))
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


def pool_states(states: States, k: int, op: str = "mean", background: States | None = None,
                weights: Tensor | None = None) -> States:
    """States of B*k passages (batch-major: example b's passages are rows b*k .. b*k+k-1) -> B pooled states.

    ``background``: the model's background state (batch 1), needed by ``centered`` only.
    ``weights`` [B, k]: a weighted soup (mean and centered only).
    """
    out: States = []
    for i, st in enumerate(states):
        comps = []
        for j, t in enumerate(st):
            bk = t.shape[0]
            bg = None if background is None else background[i][j]  # read by centered only
            pooled = pool(t.reshape(bk // k, k, -1), op, bg, weights)
            comps.append(pooled.reshape(bk // k, *t.shape[1:]).to(t.dtype))
        out.append(LayerState(*comps))
    return out


def soup_rows(rows: np.ndarray | Tensor, op: str, segments: list[tuple[int, int]],
              index: Sequence[int] | None = None, background: Tensor | None = None,
              weights: Tensor | Sequence[float] | None = None) -> Tensor:
    """Pool k flat state rows [k, D] (any float dtype) into one fp32 row [D].

    mean/sum/max stream each row once into an fp32 accumulator (``add_`` / ``maximum``), which is
    bandwidth-bound, unlike a reduction over an fp16 [k, D] tensor. With ``index``, the rows pooled are
    rows[index], read straight from ``rows`` (e.g. the memory-mapped state store): no intermediate copy.
    ``segments`` lists (offset, numel) of each state component, used by the norm-based operators.
    ``background``: the model's background row [D], needed by ``centered`` only.
    ``weights`` [k] (mean and centered only): the rows' weights, in the order pooled (``index``'s, if given).
    """
    check_pool(op)
    r = torch.from_numpy(np.asarray(rows)) if not isinstance(rows, Tensor) else rows
    order = list(range(r.shape[0])) if index is None else [int(i) for i in index]
    k = len(order)
    if k == 0:
        raise RagsoupError("cannot soup zero passages")
    if weights is not None:
        w = normalise_weights(weights, k, op)
        acc = torch.zeros(r.shape[1], dtype=torch.float32, device=r.device)
        for i, wi in zip(order, w.tolist()):
            acc.add_(r[i], alpha=wi)  # one streaming pass, fp32 accumulation, as the unweighted mean
        return acc if op == "mean" else centre(acc, background, float(effective_k(w)))
    if op == "centered":
        return centre(soup_rows(rows, "mean", segments, index), background, k)
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
