"""The one place that knows whether fused CUDA kernels (``ragsoup[gpu]``) or the PyTorch reference run.

Everything else calls ``ssd_scan``; which implementation runs is decided here, once, with one log
line saying why when the fused path is not used.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from torch import Tensor

from ragsoup import ssd

log = logging.getLogger("ragsoup.kernels")


_NOTE = {"why": "not checked yet"}


@lru_cache(maxsize=1)
def fused_scan():
    """Return mamba_ssm's Triton SSD scan, or None (with the reason logged once) when it cannot run."""
    if not torch.cuda.is_available():
        _NOTE["why"] = "no CUDA device: PyTorch reference scan"
        log.info("fused kernels off: %s", _NOTE["why"])
        return None
    try:  # the Triton module alone: avoids importing mamba_ssm's compiled extensions
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as exc:  # noqa: BLE001 - any import failure means: fall back
        _NOTE["why"] = f"mamba_ssm Triton scan not importable ({exc}); install ragsoup[gpu]"
        log.warning("fused kernels off: %s", _NOTE["why"])
        return None
    _NOTE["why"] = "mamba_ssm Triton SSD scan active on CUDA"
    return mamba_chunk_scan_combined


def status_note() -> str:
    """One line saying which scan runs and why."""
    fused_scan()
    return _NOTE["why"]


def active_backend(device: torch.device | str) -> str:
    """Name of the scan implementation used for tensors on ``device``."""
    return "triton" if torch.device(device).type == "cuda" and fused_scan() is not None else "torch"


def ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """SSD scan (see ``ssd.ssd_chunked``): fused on CUDA when available, reference otherwise."""
    if x.is_cuda and fused_scan() is not None:
        y, final = fused_scan()(
            x, dt, A, B, C, chunk_size, initial_states=initial_state, return_final_states=True
        )
        return y, final
    return ssd.ssd_chunked(x, dt, A, B, C, chunk_size, initial_state)
