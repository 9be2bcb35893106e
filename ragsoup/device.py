"""Device choice shared by every command."""

from __future__ import annotations

import torch

from ragsoup.errors import RagsoupError


def pick_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; validates explicit names."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RagsoupError("--device cuda asked for, but torch sees no CUDA device: use --device cpu")
    if device not in ("cpu", "cuda"):
        raise RagsoupError(f"unknown device '{device}': use auto, cpu or cuda")
    return device


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads (None: torch's choice; 1 avoids OpenMP stalls on a busy machine) and flush denormals."""
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise RagsoupError(f"--threads must be at least 1 (got {threads})")
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormal state values slow CPU encoding a lot (measured up to ~40%)
