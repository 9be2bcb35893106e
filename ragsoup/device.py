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
