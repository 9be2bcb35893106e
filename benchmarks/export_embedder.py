"""Save the bundled MiniLM embedder as a bf16 sentence-transformers directory (45 MB instead of 88 MB), small enough
to carry to a GPU machine (64 MiB per run) for `ragsoup index|bench --embedder DIR` there.

    python benchmarks/export_embedder.py .emb/minilm-bf16      # .emb/ is git-ignored
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ragsoup.retrieve import get_embedder


def main(out: str) -> int:
    """Write the directory and print its size."""
    model = get_embedder()._model
    model.to(torch.bfloat16)
    model.save(out)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    print(f"wrote {out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else ".emb/minilm-bf16"))
