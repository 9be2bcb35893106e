"""Environment report for `ragsoup doctor`: what runs where, and what is missing."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

import torch

import ragsoup
from ragsoup import kernels
from ragsoup.checkpoint import SHIPPED_DIR


def _mem_gb() -> dict:
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, val = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable"):
                info[key] = round(int(val.split()[0]) / 2**20, 2)
    except OSError:
        pass
    return {"total_gb": info.get("MemTotal"), "available_gb": info.get("MemAvailable")}


def report(path: str | Path = ".") -> dict:
    """Collect versions, devices, active kernels, the embedder and resources as a plain dict."""
    from ragsoup.retrieve import resolve_embedder

    cuda = torch.cuda.is_available()
    try:
        emb_name, emb_dir = resolve_embedder(None)
        embedder = {"name": emb_name, "path": str(emb_dir), "found": Path(emb_dir).is_dir()}
    except Exception as exc:  # noqa: BLE001 - a report, not a failure
        embedder = {"name": None, "path": None, "found": False, "error": str(exc)}
    disk = shutil.disk_usage(path)
    return {
        "ragsoup": ragsoup.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "scan_kernel": kernels.active_backend("cuda" if cuda else "cpu"),
        "kernel_note": kernels.status_note(),
        "embedder": embedder,
        "shipped_models": sorted(d.name for d in SHIPPED_DIR.glob("*") if d.is_dir()) if SHIPPED_DIR.is_dir() else [],
        "disk_free_gb": round(disk.free / 2**30, 1),
        "memory": _mem_gb(),
    }
