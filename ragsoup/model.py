"""Mamba2 language model in plain PyTorch, with recurrent state as explicit data.

Parameter names follow mamba_ssm's ``MambaLMHeadModel`` layout (backbone.embedding, backbone.layers.i.norm,
backbone.layers.i.mixer.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}, backbone.norm_f, lm_head).

State is data, never hidden in modules: ``States`` is a list (one per layer) of ``LayerState(conv, ssm)``:
    conv [B, conv_dim, d_conv-1]      the last d_conv-1 inputs of the depthwise conv
    ssm  [B, nheads, headdim, d_state] the SSM recurrent state
so souping passages is plain arithmetic on these tensors (see ``soup.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ragsoup import kernels


@dataclass
class Mamba2Config:
    d_model: int = 256
    n_layer: int = 6
    vocab_size: int = 264
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 64
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    def to_dict(self) -> dict:
        """Plain dict for config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Mamba2Config":
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def state_numel(self) -> int:
        """Number of state values per sequence, all layers (conv + ssm)."""
        per_layer = self.conv_dim * (self.d_conv - 1) + self.nheads * self.headdim * self.d_state
        return self.n_layer * per_layer


class LayerState(NamedTuple):
    conv: Tensor  # [B, conv_dim, d_conv-1]
    ssm: Tensor  # [B, nheads, headdim, d_state]


States = list[LayerState]


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps
        self.group_size = group_size or d

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """RMS-normalise x (gated by silu(z) first when z is given, as mamba_ssm's norm_before_gate=False)."""
        if z is not None:
            x = x * F.silu(z)
        if self.group_size == x.shape[-1]:  # one group: torch's fused op (the common case, and the per-token step's)
            return F.rms_norm(x, (self.group_size,), self.weight, self.eps)
        shape = x.shape
        xg = x.reshape(*shape[:-1], -1, self.group_size)
        xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)
        return xg.reshape(shape) * self.weight


DT_RANGE = (1e-3, 1e-1)  # initial dt, log-uniform
A_RANGE = (1.0, 16.0)  # initial -A, uniform


def dt_at_quantile(u: Tensor) -> Tensor:
    """The initial dt at quantiles ``u`` in [0, 1) of its log-uniform range DT_RANGE."""
    lo, hi = math.log(DT_RANGE[0]), math.log(DT_RANGE[1])
    return torch.exp(u * (hi - lo) + lo)


def softplus_inverse(x: Tensor) -> Tensor:
    """The y with softplus(y) = x (x > 0): how dt_bias stores an initial dt."""
    return x + torch.log(-torch.expm1(-x))


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.cfg = cfg
        d_in_proj = 2 * cfg.d_inner + 2 * cfg.ngroups * cfg.d_state + cfg.nheads  # z, xBC, dt
        self.in_proj = nn.Linear(cfg.d_model, d_in_proj, bias=False)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=True)
        # dt initialised log-uniform in DT_RANGE through its softplus inverse; -A uniform in A_RANGE
        # (Mamba2LM.spread_timescales redraws both stratified and paired)
        self.dt_bias = nn.Parameter(softplus_inverse(dt_at_quantile(torch.rand(cfg.nheads))))
        self.A_log = nn.Parameter(torch.log(torch.empty(cfg.nheads).uniform_(*A_RANGE)))
        self.D = nn.Parameter(torch.ones(cfg.nheads))
        self.norm = RMSNorm(cfg.d_inner, cfg.norm_eps, group_size=cfg.d_inner // cfg.ngroups)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.cfg
        return torch.split(zxbcdt, [c.d_inner, c.conv_dim, c.nheads], dim=-1)

    def _ssm_inputs(self, xBC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.cfg
        x, B, C = torch.split(xBC, [c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)
        return x, B, C

    def forward(
        self, u: Tensor, state: LayerState | None = None, mask: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, LayerState]:
        """u [b, l, d_model] -> (out [b, l, d_model], final state). mask [b, l] (1 = real token) makes padding inert."""
        c = self.cfg
        b, l, _ = u.shape
        z, xBC, dt = self._split(self.in_proj(u))
        xBC_conv, conv_state = kernels.causal_conv(xBC, self.conv1d.weight, self.conv1d.bias,
                                                   state.conv if state else None, lengths)
        x, B, C = self._ssm_inputs(F.silu(xBC_conv))
        dt = F.softplus(dt + self.dt_bias)  # [b, l, h]
        if mask is not None:
            dt = dt * mask[..., None].to(dt.dtype)
        A = -torch.exp(self.A_log.float())
        xh = x.reshape(b, l, c.nheads, c.headdim)
        y, ssm_state = kernels.ssd_scan(
            xh,
            dt,
            A,
            B.reshape(b, l, c.ngroups, c.d_state),
            C.reshape(b, l, c.ngroups, c.d_state),
            c.chunk_size,
            state.ssm if state else None,
        )
        y = y + xh * self.D[:, None]
        y = self.norm(y.reshape(b, l, c.d_inner), z)
        return self.out_proj(y), LayerState(conv_state, ssm_state)

    def step(self, u: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """One token: u [b, d_model] -> (out [b, d_model], new state). O(1) in the sequence length."""
        c = self.cfg
        z, xBC, dt = self._split(self.in_proj(u))
        xBC, conv_state = kernels.conv_step(state.conv, xBC, self.conv1d.weight, self.conv1d.bias)
        x, B, C = self._ssm_inputs(F.silu(xBC))
        dt = F.softplus(dt + self.dt_bias)  # [b, h]
        A = -torch.exp(self.A_log.float())
        xh = x.reshape(-1, c.nheads, c.headdim)
        y, ssm_state = kernels.ssm_step(state.ssm.to(xh.dtype), xh, dt, A, B.reshape(-1, c.ngroups, c.d_state),
                                        C.reshape(-1, c.ngroups, c.d_state), self.D)  # y includes the D skip
        y = self.norm(y.reshape(-1, c.d_inner), z)
        return self.out_proj(y), LayerState(conv_state, ssm_state)


class Block(nn.Module):
    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg)


class Backbone(nn.Module):
    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


class Mamba2LM(nn.Module):
    """Mamba2 language model: ``forward`` over sequences (from optional states), ``step`` one token at a time."""

    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for layer in self.backbone.layers:  # GPT-2 style rescale of residual-branch outputs
            nn.init.normal_(layer.mixer.out_proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    def hidden(
        self, input_ids: Tensor, states: States | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, States]:
        """input_ids [b, l] -> (final-normed hidden [b, l, d_model], per-layer states after ``lengths`` tokens).

        With ``lengths`` [b] (right padding), positions past each length leave the state untouched.
        """
        mask = None
        if lengths is not None:
            mask = torch.arange(input_ids.size(1), device=input_ids.device)[None, :] < lengths.to(input_ids.device)[:, None]
        h = self.backbone.embedding(input_ids)
        new_states: States = []
        for i, layer in enumerate(self.backbone.layers):
            out, st = layer.mixer(layer.norm(h), states[i] if states else None, mask, lengths)
            h = h + out
            new_states.append(st)
        return self.backbone.norm_f(h), new_states

    def forward(
        self, input_ids: Tensor, states: States | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, States]:
        """input_ids [b, l] -> (logits [b, l, vocab], final states)."""
        h, new_states = self.hidden(input_ids, states, lengths)
        return self.lm_head(h), new_states

    def encode(self, input_ids: Tensor, lengths: Tensor | None = None, states: States | None = None) -> States:
        """Run sequences and return only every layer's final state (no logits)."""
        return self.hidden(input_ids, states, lengths)[1]

    def step(self, token_ids: Tensor, states: States) -> tuple[Tensor, States]:
        """token_ids [b] -> (logits [b, vocab], states after that token)."""
        h = self.backbone.embedding(token_ids)
        new_states: States = []
        for layer, st in zip(self.backbone.layers, states):
            out, st = layer.mixer.step(layer.norm(h), st)
            h = h + out
            new_states.append(st)
        return self.lm_head(self.backbone.norm_f(h)), new_states

    def empty_states(self, batch: int, dtype: torch.dtype = torch.float32) -> States:
        """All-zero states (the state before any token)."""
        c = self.cfg
        dev = self.device
        return [
            LayerState(
                torch.zeros(batch, c.conv_dim, c.d_conv - 1, device=dev, dtype=dtype),
                torch.zeros(batch, c.nheads, c.headdim, c.d_state, device=dev, dtype=dtype),
            )
            for _ in range(c.n_layer)
        ]

    @torch.no_grad()
    def spread_timescales(self, gen: torch.Generator | None = None) -> None:
        """Redraw each layer's dt and A one per stratum and pair them in order, so every layer has heads from the
        longest memory (smallest dt with smallest -A; with 8 heads 1/(dt*-A) >= 195 tokens) to the shortest.

        The default draws them independently per head: a layer of 8 heads then lacks one of 100 tokens or more about 4
        times in 10. An ablation: in docs/models.md (t) it did not make stage 1 copy, nor leave the loss plateau.
        """
        h = self.cfg.nheads
        for layer in self.backbone.layers:
            strata = torch.arange(h) / h  # head i draws its quantile in [i/h, (i+1)/h), for dt and for -A alike
            u_dt, u_a = strata + torch.rand(h, generator=gen) / h, strata + torch.rand(h, generator=gen) / h
            layer.mixer.dt_bias.copy_(softplus_inverse(dt_at_quantile(u_dt)))
            layer.mixer.A_log.copy_(torch.log(A_RANGE[0] + u_a * (A_RANGE[1] - A_RANGE[0])))

    def num_params(self) -> int:
        """Parameter count (tied weights once)."""
        return sum(p.numel() for p in self.parameters())
