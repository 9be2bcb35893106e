"""Index throughput: embedding alone, state encoding alone, and the concurrent build (ragsoup index).

Usage: python benchmarks/index_throughput.py [--passages 10000] [--model default] [--batch-size 16] [--json]
Goal (issue 3): concurrent build wall time <= 1.1 x the slower of the two stages run alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ragsoup.build import build_index
from ragsoup.checkpoint import load_model
from ragsoup.corpus import load_corpus
from ragsoup.encode import encode_passages
from ragsoup.retrieve import get_embedder
from ragsoup.tasks.files import make_corpus


def main() -> None:
    """Generate a needle corpus, time each stage alone, then the concurrent build."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=10000)
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--corpus", default=None, help="index this corpus instead of a generated one")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    tmp = Path(tempfile.mkdtemp(prefix="ragsoup-bench-"))
    try:
        corpus = Path(a.corpus) if a.corpus else make_corpus("needle", a.passages, max(1, a.passages // 50), 0, tmp / "corpus", passage_chars=200)
        texts = [p.text for p in load_corpus(corpus).passages]
        loaded = load_model(a.model)
        emb = get_embedder(None, "cpu")
        emb.encode(texts[:64])  # warm-up
        t = time.perf_counter()
        for s in range(0, len(texts), 256):
            emb.encode(texts[s : s + 256])
        t_embed = time.perf_counter() - t
        t = time.perf_counter()
        for _ in encode_passages(loaded.model, loaded.tokenizer, texts, a.batch_size):
            pass
        t_encode = time.perf_counter() - t
        t = time.perf_counter()
        rep = build_index(corpus, tmp / "index", model=a.model, batch_size=a.batch_size, device="cpu")
        t_build = time.perf_counter() - t
        res = {
            "passages": len(texts), "threads": torch.get_num_threads(), "batch_size": a.batch_size,
            "embed_s": round(t_embed, 2), "embed_passages_per_s": round(len(texts) / t_embed, 1),
            "encode_s": round(t_encode, 2), "encode_passages_per_s": round(len(texts) / t_encode, 1),
            "build_s": round(t_build, 2), "build_passages_per_s": round(len(texts) / t_build, 1),
            "build_stage_s": {k: round(v, 2) for k, v in rep.seconds.items()},
            "build_over_slower_stage": round(t_build / max(t_embed, t_encode), 3),
        }
        print(json.dumps(res) if a.json else json.dumps(res, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
