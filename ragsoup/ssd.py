"""Reference Mamba2 operators in plain PyTorch: the chunked SSD scan, its per-token twin, the causal conv.

Shapes (b = batch, l = length, h = heads, p = headdim, n = d_state, g = groups, d = channels):
    x  [b, l, h, p]   dt [b, l, h]   A [h]   B, C [b, l, g, n]   D [h]
    ssm state [b, h, p, n]           conv state [b, d, w-1] (the last w-1 inputs)
These are the ground truth that any fused kernel (see ``kernels.py``) is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _segsum(a: Tensor) -> Tensor:
    """Stable segment sums: out[..., i, j] = sum(a[..., j+1 : i+1]) for j <= i, else -inf."""
    T = a.size(-1)
    a = a[..., None].expand(*a.shape, T)  # [..., T(i), T(j)] holding a[i]
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), -1)
    a = a.masked_fill(~lower, 0.0)
    s = torch.cumsum(a, dim=-2)
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), 0)
    return s.masked_fill(~keep, float("-inf"))


def _heads(t: Tensor, h: int) -> Tensor:
    """Broadcast group-shared B or C [b, l, g, n] to heads [b, l, h, n]."""
    g = t.size(2)
    return t if g == h else t.repeat_interleave(h // g, dim=2)


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """SSD scan: quadratic attention-like form inside chunks, linear recurrence across chunks.

    Returns (y [b, l, h, p] without the D skip, final ssm state [b, h, p, n]).
    A position with dt == 0 leaves the state untouched, which is how padding is made inert.
    """
    b, l, h, p = x.shape
    n = B.size(-1)
    chunk_size = max(1, min(chunk_size, l))  # any chunk size gives the same result; a short prompt needs no padding
    pad = (-l) % chunk_size
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = x.size(1) // chunk_size
    Bh, Ch = _heads(B, h), _heads(C, h)
    # -> [b, c, h, L, ...] so that per-chunk products are batched matmuls
    xs = (x * dt[..., None]).view(b, c, chunk_size, h, p).transpose(2, 3)  # [b,c,h,L,p]
    Bs = Bh.reshape(b, c, chunk_size, h, n).transpose(2, 3)  # [b,c,h,L,n]
    Cs = Ch.reshape(b, c, chunk_size, h, n).transpose(2, 3)  # [b,c,h,L,n]
    a = (dt * A).view(b, c, chunk_size, h).transpose(2, 3)  # [b,c,h,L]
    a_cs = torch.cumsum(a, dim=-1)  # [b,c,h,L]

    # 1. within chunks: y_i = sum_{j<=i} C_i.B_j exp(a_{j+1..i}) x_j
    Lmat = torch.exp(_segsum(a))  # [b,c,h,L,L]
    y = ((Cs @ Bs.transpose(-1, -2)) * Lmat) @ xs  # [b,c,h,L,p]

    # 2. each chunk's own contribution to the state at its end
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs)  # [b,c,h,L]
    chunk_states = xs.transpose(-1, -2) @ (Bs * decay_to_end[..., None])  # [b,c,h,p,n]

    # 3. carry states across chunks (linear in c)
    s = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(x.dtype)
    chunk_decay = torch.exp(a_cs[..., -1])  # [b,c,h]
    entering = []
    for j in range(c):
        entering.append(s)
        s = s * chunk_decay[:, j, :, None, None] + chunk_states[:, j]
    states_in = torch.stack(entering, dim=1)  # [b,c,h,p,n]

    # 4. contribution of the state entering each chunk
    y = y + (Cs @ states_in.transpose(-1, -2)) * torch.exp(a_cs)[..., None]  # [b,c,h,L,p]
    y = y.transpose(2, 3).reshape(b, c * chunk_size, h, p)[:, :l]
    return y, s


def ssd_recurrent(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence, the test twin of ``ssd_chunked`` (same inputs and outputs)."""
    b, l, h, p = x.shape
    Bh, Ch = _heads(B, h), _heads(C, h)
    s = x.new_zeros(b, h, p, B.size(-1)) if initial_state is None else initial_state.to(x.dtype)
    ys = []
    for t in range(l):
        y_t, s = ssm_step(s, x[:, t], dt[:, t], A, Bh[:, t], Ch[:, t])
        ys.append(y_t)
    return torch.stack(ys, dim=1), s


def ssm_step(s: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrence step. s [b,h,p,n], x [b,h,p], dt [b,h], B/C [b,h,n] per head (or [b,1,n], shared) -> (y, s')."""
    decay = torch.exp(dt * A)[..., None, None]  # [b,h,1,1]
    s = torch.addcmul(s * decay, (x * dt[..., None])[..., None], B[:, :, None, :])
    y = (s @ C[..., None]).squeeze(-1)  # [b,h,p]
    return y, s


def causal_conv(
    u: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv over time. u [b, l, d], weight [d, 1, w] -> (out [b, l, d], padded input [b, d, w-1+l]).

    The padded input is returned so that callers can read the final conv state at any length.
    """
    padded = conv_input(u, weight.size(-1), initial_state)
    out = F.conv1d(padded, weight, bias, groups=u.size(-1))  # [b, d, l]
    return out.transpose(1, 2), padded


def conv_input(u: Tensor, width: int, initial_state: Tensor | None = None) -> Tensor:
    """The conv's input: the w-1 state inputs (zeros without a state) then u [b, l, d] -> [b, d, w-1+l]."""
    b, _, d = u.shape
    prefix = u.new_zeros(b, d, width - 1) if initial_state is None else initial_state.to(u.dtype)
    return torch.cat([prefix, u.transpose(1, 2)], dim=-1)


def conv_state_at(padded: Tensor, lengths: Tensor | None, width: int) -> Tensor:
    """The conv state (last w-1 inputs) after ``lengths`` tokens, from ``causal_conv``'s padded input."""
    if lengths is None:
        return padded[..., padded.size(-1) - (width - 1) :].contiguous()
    idx = lengths.to(padded.device)[:, None] + torch.arange(width - 1, device=padded.device)  # [b, w-1]
    return padded.gather(2, idx[:, None, :].expand(-1, padded.size(1), -1))


def conv_step(state: Tensor, u: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """One causal conv step. state [b, d, w-1], u [b, d] -> (out [b, d], new state)."""
    window = torch.cat([state, u[..., None]], dim=-1)  # [b, d, w]
    out = (window * weight[:, 0, :]).sum(-1)
    if bias is not None:
        out = out + bias
    return out, window[..., 1:]
