"""The one place that knows whether fused CUDA kernels (``ragsoup[gpu]``) or the PyTorch reference run.

The model calls ``ssd_scan``, ``ssm_step``, ``causal_conv`` and ``conv_step``; which implementation runs is
decided here, once, with one log line saying why when a fused path is not used. Fused ops (CUDA tensors only):

* SSD scan and single-step state update: mamba_ssm's **Triton** kernels (``mamba_chunk_scan_combined``,
  ``selective_state_update``). They need no compiled extension, but ``import mamba_ssm`` runs its package
  ``__init__``, which imports the compiled ``selective_scan_cuda`` (2.2.x also a transformers-4 API). So the
  Triton modules are imported under a bare stand-in parent package (``import_mamba_triton``) and mamba_ssm can be
  installed without compiling anything (``MAMBA_SKIP_CUDA_BUILD=TRUE``, README).
* Causal conv1d (sequence with initial/final states, and the single step): the compiled ``causal-conv1d``
  package when it imports; otherwise the PyTorch conv (a depthwise conv of width 4: a small share of the time).

Every fused op is checked against ``ragsoup.ssd`` in tests marked ``gpu``. ``RAGSOUP_KERNELS=torch`` forces the
reference ops on CUDA too (to compare, or to rule the kernels out).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types
from functools import lru_cache
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ragsoup import ssd

log = logging.getLogger("ragsoup.kernels")

FUSED_CONV_MAX_WIDTH = 4  # causal-conv1d's kernels take widths 2-4; wider convs (d_conv > 4) use the PyTorch conv

_NOTE = {"why": "not checked yet"}


class FusedOps(NamedTuple):
    chunk_scan: Callable  # mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined
    state_update: Callable  # mamba_ssm.ops.triton.selective_state_update.selective_state_update
    conv: Callable | None  # causal_conv1d.causal_conv1d_fn (None: causal-conv1d not installed/built)
    conv_update: Callable | None  # causal_conv1d.causal_conv1d_update


def import_mamba_triton() -> tuple[Callable, Callable]:
    """mamba_ssm's Triton SSD scan and state update, imported without running ``mamba_ssm/__init__.py``."""
    spec = importlib.util.find_spec("mamba_ssm")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mamba_ssm is not installed")
    stub = None
    if "mamba_ssm" not in sys.modules:
        stub = types.ModuleType("mamba_ssm")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = stub
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    finally:
        if stub is not None and sys.modules.get("mamba_ssm") is stub:
            del sys.modules["mamba_ssm"]  # a later real `import mamba_ssm` still runs its own __init__
    return mamba_chunk_scan_combined, selective_state_update


@lru_cache(maxsize=1)
def fused_ops() -> FusedOps | None:
    """The fused ops, or None (with the reason logged once) when they cannot run."""
    if not torch.cuda.is_available():
        _NOTE["why"] = "no CUDA device: PyTorch reference scan"
        log.info("fused kernels off: %s", _NOTE["why"])
        return None
    if os.environ.get("RAGSOUP_KERNELS", "").lower() == "torch":
        _NOTE["why"] = "RAGSOUP_KERNELS=torch: PyTorch reference ops on CUDA"
        log.info("fused kernels off: %s", _NOTE["why"])
        return None
    try:
        scan, update = import_mamba_triton()
    except Exception as exc:  # noqa: BLE001 - any import failure means: fall back
        _NOTE["why"] = f"mamba_ssm Triton kernels not importable ({exc}); install ragsoup[gpu]"
        log.warning("fused kernels off: %s", _NOTE["why"])
        return None
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    except Exception as exc:  # noqa: BLE001
        conv = conv_update = None
        _NOTE["why"] = f"mamba_ssm Triton scan + step on CUDA; PyTorch conv (causal-conv1d not importable: {exc})"
        log.info("fused conv off: %s", exc)
    else:
        conv, conv_update = causal_conv1d_fn, causal_conv1d_update
        _NOTE["why"] = "mamba_ssm Triton scan + step and causal-conv1d on CUDA"
    return FusedOps(scan, update, conv, conv_update)


def status_note() -> str:
    """One line saying which kernels run and why."""
    fused_ops()
    return _NOTE["why"]


def active_backend(device: torch.device | str) -> str:
    """Name of the scan implementation used for tensors on ``device``."""
    return "triton" if torch.device(device).type == "cuda" and fused_ops() is not None else "torch"


def _ops_for(t: Tensor) -> FusedOps | None:
    return fused_ops() if t.is_cuda else None


def _conv_ops_for(t: Tensor, width: int) -> FusedOps | None:
    """The fused ops when causal-conv1d is there and takes this conv width, else None (the PyTorch conv)."""
    ops = _ops_for(t)
    return ops if ops is not None and ops.conv is not None and 2 <= width <= FUSED_CONV_MAX_WIDTH else None


# --- the ops the model calls -----------------------------------------------------------------------------------


def ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """SSD scan (see ``ssd.ssd_chunked``): fused on CUDA when available, reference otherwise."""
    ops = _ops_for(x)
    if ops is not None:
        return ops.chunk_scan(x, dt, A, B, C, chunk_size, initial_states=initial_state, return_final_states=True)
    return ssd.ssd_chunked(x, dt, A, B, C, chunk_size, initial_state)


def fused_ssm_step(update: Callable, s: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor) -> tuple[Tensor, Tensor]:
    """``ssm_step`` through ``selective_state_update`` (which updates its state in place: it gets a copy)."""
    b, h, p = x.shape
    n = s.shape[-1]
    s = s.clone()
    y = update(
        s, x, dt[..., None].expand(b, h, p), A[:, None, None].expand(h, p, n).float(), B, C,
        D=D[:, None].expand(h, p), dt_bias=torch.zeros(h, 1, device=x.device, dtype=dt.dtype).expand(h, p),
    )  # stride-0 dt / A / dt_bias select the kernel's one-value-per-head path
    return y, s


def ssm_step(s: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrence step plus the D skip. s [b,h,p,n], x [b,h,p], dt [b,h] (after softplus), A [h], B/C [b,g,n]
    (per group), D [h] -> (y [b,h,p], s')."""
    ops = _ops_for(x)
    if ops is not None:
        return fused_ssm_step(ops.state_update, s, x, dt, A, B, C, D)
    rep = x.shape[1] // B.shape[1]
    if rep > 1 and B.shape[1] > 1:  # one group broadcasts over the heads as it is
        B, C = B.repeat_interleave(rep, dim=1), C.repeat_interleave(rep, dim=1)
    y, s = ssd.ssm_step(s, x, dt, A, B, C)
    return y + x * D[:, None], s


def causal_conv(u: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor | None = None,
                lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv over time. u [b, l, d], weight [d, 1, w] -> (out [b, l, d], conv state [b, d, w-1]
    after ``lengths`` tokens of each row, or all l)."""
    w = weight.size(-1)
    ops = _conv_ops_for(u, w)
    if ops is None:
        out, padded = ssd.causal_conv(u, weight, bias, initial_state)
        return out, ssd.conv_state_at(padded, lengths, w)
    padded = ssd.conv_input(u, w, initial_state)  # [b, d, w-1+l]: the conv state is read from it as in the reference
    x = u.contiguous().transpose(1, 2)  # [b, d, l], dense channel-last, as the kernel wants with initial states
    init = padded[..., : w - 1].transpose(1, 2).contiguous().transpose(1, 2)
    out = ops.conv(x, weight[:, 0, :], bias, initial_states=init, activation=None)
    return out.transpose(1, 2), ssd.conv_state_at(padded, lengths, w)


def conv_step(state: Tensor, u: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """One causal conv step. state [b, d, w-1], u [b, d] -> (out [b, d], new state)."""
    ops = _conv_ops_for(u, weight.size(-1))
    if ops is None:
        return ssd.conv_step(state, u, weight, bias)
    st = state.to(u.dtype).clone()  # updated in place by the kernel (shifted left, u appended)
    out = ops.conv_update(u.contiguous(), st, weight[:, 0, :], bias, activation=None)
    return out, st
