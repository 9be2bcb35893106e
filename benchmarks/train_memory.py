"""Peak training memory vs k, with and without per-group activation checkpointing (CPU RSS; CUDA when present).

Usage: python benchmarks/train_memory.py [--ks 1,4,16,64] [--groups 0,16] [--model-preset default] [--json]
Each (k, group) runs one forward+backward step in a fresh subprocess so that its peak RSS is its own; each runs
twice, with glibc's default allocator settings and with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=131072).
glibc's default raises its mmap threshold as large blocks are freed, after which freed activations stay in the
heap: peak RSS then grows with k although the live tensors do not. The fixed threshold shows the tensors' own
footprint. Goal (issue 4): with checkpointing, k = 64 uses <= 1.5 x the memory of k = 4 at the same passage length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tokenizer import ByteTokenizer
from ragsoup.train import PRESETS, TrainConfig, loss_on_batch, make_batch
k, group, preset, batch, dev = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
p = PRESETS[preset]
cfg = TrainConfig(tasks="needle:1", k_min=k, k_max=k, batch_size=batch, passage_chars=p["passage_chars"], ckpt_group=group)
torch.manual_seed(0)
model = Mamba2LM(Mamba2Config.from_dict({**p["model"], "vocab_size": 2048})).to(dev)
tok = ByteTokenizer()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
_, ex = make_batch(cfg, 0)
if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
loss, n = loss_on_batch(model, tok, cfg, k, ex)
loss.backward()
out = {"k": k, "ckpt_group": group, "batch": batch, "tokens": n,
       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_step_mb": base / 1024}
if dev == "cuda":
    out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
"""

MALLOCS = {"default": {}, "fixed_mmap": {"MALLOC_MMAP_THRESHOLD_": "131072"}}  # name -> environment


def main() -> None:
    """Run each configuration in its own process and print a table (or JSON)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,4,16,64")
    ap.add_argument("--groups", default="0,16")
    ap.add_argument("--model-preset", default="default")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mallocs", default="default,fixed_mmap", help="glibc settings to run each under (CUDA: default)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    for g in [int(x) for x in a.groups.split(",")]:
        for k in [int(x) for x in a.ks.split(",")]:
            row = None
            for malloc in a.mallocs.split(","):
                r = subprocess.run([sys.executable, "-c", CHILD, str(k), str(g), a.model_preset, str(a.batch), a.device],
                                   capture_output=True, text=True, check=True, env={**os.environ, **MALLOCS[malloc]})
                res = json.loads(r.stdout.strip().splitlines()[-1])
                row = row or {key: v for key, v in res.items() if key != "peak_rss_mb"}
                row[f"peak_rss_mb_{malloc}"] = round(res["peak_rss_mb"], 1)
            rows.append(row)
            if not a.json:
                fixed = row.get("peak_rss_mb_fixed_mmap")
                print(f"k={k:4d} ckpt_group={g:3d} tokens={row['tokens']:7d} peak RSS {row['peak_rss_mb_default']:8.1f} MB"
                      + (f" (fixed mmap threshold {fixed:8.1f} MB)" if fixed is not None else "")
                      + (f" CUDA {row['cuda_peak_mb']:.1f} MB" if "cuda_peak_mb" in row else ""), flush=True)
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
