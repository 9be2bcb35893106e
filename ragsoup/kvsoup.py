"""The transformer baseline of arXiv 2505.24033: a small causal transformer whose per-passage KV caches are averaged.

The paper contrasts souping Mamba2 states with the obvious transformer analogue, averaging the passages' KV caches,
which fails (0.53 EM against 48.50 for concatenation). This module is that baseline, built so that the training and
evaluation code paths of the Mamba2 model work with it (``ragsoup train --preset ablation-reader-transformer``, then
the ``kv-transformer`` arm of benchmarks/ablations.py; ``ragsoup eval``). Results: docs/results.md section 2b.

Model (``TransformerLM``): nanoGPT-style pre-norm decoder. RMSNorm (ragsoup.model.RMSNorm, no biases anywhere),
rotary position embeddings (half-split "GPT-NeoX" form, base ``rope_base``) applied to q and k before caching,
multi-head causal attention via ``F.scaled_dot_product_attention``, GELU MLP of width ``mlp_ratio * d_model``, final
RMSNorm, tied input/output embeddings. Parameter names mirror Mamba2LM's (``backbone.embedding``,
``backbone.layers.i.*``, ``backbone.norm_f``, ``lm_head``) so ``generate`` and ``save_checkpoint`` work unchanged.

State: the KV cache as explicit data, per layer ``KVState(k, v, mask)``:
    k, v  [B, n_head, T, head_dim]  keys (already rotated at their own positions) and values
    mask  [B, T] bool               True where position t holds a real token
Invariant: k and v are exactly zero wherever mask is False (encode/hidden zero padded positions). Sequences are
right-padded, so a row's real positions are 0..n-1 and new tokens (``hidden`` from a prefix, ``step``) are placed at
rotary position ``mask.sum(-1)`` + j, i.e. positions continue after the prefix's real tokens; new queries attend to
every masked-in prefix position and causally to the new tokens.

Souping (``pool_kv``), as literally as "averaged KV caches" allows: the k passages of one example are right-padded
with zeros to a common length T (the longest passage), then, layer by layer and position by position,
    k_soup[:, :, t] = (1/k) * sum_i k_i[:, :, t]     v_soup likewise           (op "mean", over="all": the default)
    mask_soup[t]    = any_i mask_i[t]
i.e. a plain mean over all k passages, where a passage shorter than t contributes zeros (so late positions that only
some passages reach are shrunk by the fraction of passages that have them). Key i of the soup is the average of the
passages' i-th keys, each rotated at position i, so rotary phases line up position-wise. The question then starts at
position T (the longest passage's length). ``over="present"`` divides by the number of passages that have position
t instead (an alternative, not the default). Other ``soup.POOLS`` operators are applied to k and v the same way.

Not supported for this baseline: the state store / ``ragsoup index`` (a KV cache has no fixed size per passage) and
the training filler bank (``--bank-size``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ragsoup.encode import pad_batch, run_groups
from ragsoup.errors import RagsoupError
from ragsoup.model import RMSNorm
from ragsoup.soup import check_pool
from ragsoup.soup import pool as pool_op
from ragsoup.tokenizer import Tokenizer, passage_ids

FORMAT = "ragsoup-transformer"


@dataclass
class TransformerConfig:
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    vocab_size: int = 264
    max_len: int = 2048  # advisory only: rotary positions are computed on the fly, nothing is sized by it
    mlp_ratio: float = 4.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # always tied (kept as a field for save_checkpoint)

    def __post_init__(self) -> None:
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise RagsoupError(f"d_model {self.d_model} must split into {self.n_head} heads of even size")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_mlp(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))

    def to_dict(self) -> dict:
        """Plain dict for config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def state_numel(self) -> int:
        raise RagsoupError("the transformer (averaged-KV) baseline has no fixed-size state: it cannot build a state "
                           "store; evaluate it with `ragsoup eval` instead")


class KVState(NamedTuple):
    k: Tensor  # [B, n_head, T, head_dim]
    v: Tensor  # [B, n_head, T, head_dim]
    mask: Tensor  # [B, T] bool


KVStates = list[KVState]


def is_kv_model(model) -> bool:
    """True for the transformer baseline (duck check used by train/evaluate/checkpoint)."""
    return getattr(model, "state_kind", None) == "kv"


def _rope(x: Tensor, pos: Tensor, base: float) -> Tensor:
    """Rotate x [B, H, L, D] by positions pos [B, L] (half-split rotary)."""
    half = x.shape[-1] // 2
    inv = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32)[:, None, :, None] * inv  # [B, 1, L, half]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cache_k: Tensor, cache_v: Tensor, cache_mask: Tensor, pos: Tensor,
                valid: Tensor) -> tuple[Tensor, KVState]:
        """x [B, L, d] at positions pos [B, L]; cache [B, H, T, hd] with cache_mask [B, T]; valid [B, L] (new tokens).

        Returns (out [B, L, d], cache extended by the L new tokens, zeroed where not valid)."""
        c = self.cfg
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, c.n_head, c.head_dim).permute(2, 0, 3, 1, 4)  # each [B, H, L, hd]
        q, k = _rope(q, pos, c.rope_base), _rope(k, pos, c.rope_base)
        keep = valid[:, None, :, None].to(k.dtype)
        k, v = k * keep, v * keep
        k_all = torch.cat([cache_k.to(k.dtype), k], dim=2)
        v_all = torch.cat([cache_v.to(v.dtype), v], dim=2)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        T = cache_k.shape[2]
        allow = torch.cat([cache_mask[:, None, :].expand(B, L, T), causal[None].expand(B, L, L)], dim=2)
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=allow[:, None])  # every query sees itself
        y = y.transpose(1, 2).reshape(B, L, c.d_model)
        return self.proj(y), KVState(k_all, v_all, torch.cat([cache_mask, valid], dim=1))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)


class Backbone(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


class TransformerLM(nn.Module):
    """Causal transformer LM with Mamba2LM's interface; its "state" is the KV cache (``KVState`` per layer)."""

    state_kind = "kv"
    checkpoint_format = FORMAT

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for layer in self.backbone.layers:  # GPT-2 style rescale of residual-branch outputs
            for lin in (layer.attn.proj, layer.mlp.proj):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))
        self.lm_head.weight = self.backbone.embedding.weight  # tied

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    def hidden(self, input_ids: Tensor, states: Sequence | None = None,
               lengths: Tensor | None = None) -> tuple[Tensor, KVStates]:
        """input_ids [b, l] (right-padded to ``lengths``) after the cached prefix ``states`` ->
        (final-normed hidden [b, l, d_model], caches extended by the new tokens, padding masked out and zeroed)."""
        B, L = input_ids.shape
        dev = input_ids.device
        if not states:
            states = self.empty_states(B)
        prefix_mask = states[0].mask.to(dev)
        ar = torch.arange(L, device=dev)
        pos = prefix_mask.sum(-1)[:, None] + ar[None, :]
        valid = ar[None, :] < lengths.to(dev)[:, None] if lengths is not None else torch.ones(B, L, dtype=torch.bool, device=dev)
        h = self.backbone.embedding(input_ids)
        new_states: KVStates = []
        for layer, st in zip(self.backbone.layers, states):
            out, st = layer.attn(layer.norm1(h), st[0], st[1], prefix_mask, pos, valid)
            h = h + out
            h = h + layer.mlp(layer.norm2(h))
            new_states.append(st)
        return self.backbone.norm_f(h), new_states

    def forward(self, input_ids: Tensor, states: Sequence | None = None,
                lengths: Tensor | None = None) -> tuple[Tensor, KVStates]:
        """input_ids [b, l] -> (logits [b, l, vocab], extended caches)."""
        h, new_states = self.hidden(input_ids, states, lengths)
        return self.lm_head(h), new_states

    def encode(self, input_ids: Tensor, lengths: Tensor | None = None, states: Sequence | None = None) -> KVStates:
        """KV caches of right-padded sequences (positions past each length masked out and zeroed)."""
        return self.hidden(input_ids, states, lengths)[1]

    def step(self, token_ids: Tensor, states: Sequence) -> tuple[Tensor, KVStates]:
        """token_ids [b] -> (logits [b, vocab], caches with that token appended)."""
        h, new_states = self.hidden(token_ids[:, None], states)
        return self.lm_head(h[:, 0]), new_states

    def empty_states(self, batch: int, dtype: torch.dtype = torch.float32) -> KVStates:
        """Empty caches (T = 0)."""
        c = self.cfg
        z = lambda: torch.zeros(batch, c.n_head, 0, c.head_dim, device=self.device, dtype=dtype)  # noqa: E731
        return [KVState(z(), z(), torch.zeros(batch, 0, dtype=torch.bool, device=self.device)) for _ in range(c.n_layer)]

    def num_params(self) -> int:
        """Parameter count (tied weights once)."""
        return sum(p.numel() for p in self.parameters())


# --- souping and batching of KV caches ------------------------------------------------------------------------------


def pool_kv(states: Sequence, k: int, op: str = "mean", over: str = "all") -> KVStates:
    """Caches of B*k passages (batch-major, common padded length T) -> B souped caches (see the module docstring).

    over="all": op over all k passages, padded positions counting as zero keys/values (the literal average);
    over="present" (op mean only): divide each position by the number of passages that have it.
    """
    check_pool(op)
    if over not in ("all", "present") or (over == "present" and op != "mean"):
        raise RagsoupError(f"bad KV pooling over='{over}' with op '{op}': use 'all', or 'present' with mean")
    out: KVStates = []
    for st in states:
        kk, vv, m = st
        bk, H, T, D = kk.shape
        B = bk // k
        mask = m.reshape(B, k, T)
        pm = mask.any(1)
        pooled = []
        for t in (kk, vv):
            if over == "present":
                cnt = mask.sum(1).clamp(min=1).to(torch.float32)  # [B, T]
                p = t.float().reshape(B, k, H, T, D).sum(1) / cnt[:, None, :, None]
            else:
                p = pool_op(t.reshape(B, k, -1), op).reshape(B, H, T, D)
            pooled.append((p * pm[:, None, :, None]).to(t.dtype))
        out.append(KVState(pooled[0], pooled[1], pm))
    return out


def pad_kv(states: Sequence, T: int) -> KVStates:
    """Right-pad every layer's cache to length T (zeros, mask False)."""
    out: KVStates = []
    for st in states:
        kk, vv, m = st
        extra = T - kk.shape[2]
        if extra < 0:
            raise ValueError(f"cannot pad a cache of length {kk.shape[2]} to {T}")
        out.append(KVState(F.pad(kk, (0, 0, 0, extra)), F.pad(vv, (0, 0, 0, extra)), F.pad(m, (0, extra))))
    return out


def batch_kv(states_list: Sequence[Sequence]) -> KVStates:
    """Stack caches of different examples (any lengths) into one batch, right-padded to the longest."""
    T = max(s[0][0].shape[2] for s in states_list)
    padded = [pad_kv(s, T) for s in states_list]
    return [KVState(*(torch.cat(t, 0) for t in zip(*layer))) for layer in zip(*padded)]


def encode_groups(model: TransformerLM, seqs: list[list[int]], pad_id: int, group: int, grad: bool) -> KVStates:
    """Encode passages independently (all right-padded to the longest), ``group`` at a time, each group
    activation-checkpointed when training (group 0: one batch, no checkpointing)."""
    ids, lengths = pad_batch(seqs, pad_id, model.device)  # every group keeps the global padded length

    def fn(ids: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for st in model.encode(ids, lengths) for t in st)

    size = group if group > 0 else len(seqs)
    batches = ((ids[i : i + size], lengths[i : i + size]) for i in range(0, len(seqs), size))
    parts = run_groups(fn, batches, group > 0, grad)
    flat = [torch.cat(ts, 0) for ts in zip(*parts)]
    return [KVState(*flat[3 * i : 3 * i + 3]) for i in range(len(flat) // 3)]


def encode_pool(model: TransformerLM, seqs: list[list[int]], pad_id: int, group: int, grad: bool, k: int,
                op: str = "mean") -> KVStates:
    """Training's soup step for the baseline: encode B*k passages (batch-major), average each example's k caches."""
    return pool_kv(encode_groups(model, seqs, pad_id, group, grad), k, op)


@torch.inference_mode()
def soup_state(model: TransformerLM, tok: Tokenizer, docs: Sequence[str], pool: str = "mean",
               max_tokens: int = 1024, batch_size: int = 32) -> KVStates:
    """Encode each passage alone and average the KV caches (batch of one)."""
    seqs = [passage_ids(tok, d, max_tokens) for d in docs]
    return pool_kv(encode_groups(model, seqs, tok.pad_id, batch_size, grad=False), len(docs), pool)


# --- checkpoints ---------------------------------------------------------------------------------------------------


def load_transformer(path: Path, conf: dict, device: str | torch.device = "cpu"):
    """Load a "ragsoup-transformer" checkpoint directory (called by checkpoint.load_model)."""
    from ragsoup.checkpoint import Loaded, fingerprint
    from ragsoup.external import read_weights
    from ragsoup.tokenizer import load_tokenizer

    try:
        cfg = TransformerConfig.from_dict(conf["model"])
        sd = read_weights(Path(path))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise RagsoupError(f"cannot load model from {path}: {exc}") from exc
    model = TransformerLM(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise RagsoupError(f"checkpoint {path} does not match its config: missing {missing}, unexpected {unexpected}")
    model.to(device).eval()
    tok = load_tokenizer(Path(path) / "tokenizer.json")
    meta = {k: v for k, v in conf.items() if k not in ("model", "format")}
    return Loaded(model, tok, Path(path), fingerprint(path), meta)
