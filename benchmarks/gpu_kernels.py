"""Issue 6's GPU measurements in one run: state-encoding and training throughput with the fused kernels vs the
PyTorch reference on the same device, and souping k = 256 states on the device vs its memory bandwidth; also
wiki-small's LM pretraining throughput (issue 7: how many GPU minutes its stage 1 needs).

    python benchmarks/gpu_kernels.py --device cuda --json > gpu.json      # on the GPU machine
    python benchmarks/gpu_kernels.py --device cpu --quick                  # dry run of the same code path

Each path runs in its own subprocess (``RAGSOUP_KERNELS=torch`` forces the reference there), so nothing is
shared between them but the GPU. Models: the shipped ``default`` (2.25M parameters, a passage is ~50 tokens)
and the ``wiki-small`` architecture (10.7M, random weights; timing does not depend on them) on 512-token rows.
Encoding runs as ``ragsoup index`` runs it (bf16 autocast on CUDA, batches of ``--batch-size``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PRELUDE = r"""
import json, sys, time, torch
a = json.loads(sys.argv[1])
dev = a["device"]
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

def timed(fn, reps):
    fn(); sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps
"""  # shared by the measurements below, each run in its own interpreter

CHILD = r"""
from ragsoup import kernels
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.pretrain import PRETRAIN_PRESETS, lm_loss
from ragsoup.train import PRESETS, TrainConfig, loss_on_batch, make_batch
from ragsoup.tokenizer import ByteTokenizer
WIKI = PRETRAIN_PRESETS["wiki-small"]
torch.manual_seed(0)
out = {"backend": kernels.active_backend(dev), "note": kernels.status_note()}

# 1. state encoding: tokens/s of independent passages, batch as ragsoup index batches them
for name, conf, length in (("default", PRESETS["default"]["model"], 64), ("wiki-small", WIKI["model"], 512)):
    model = Mamba2LM(Mamba2Config.from_dict({**conf, "vocab_size": 8192})).to(dev).eval()
    ids = torch.randint(5, 8192, (a["batch_size"], length), device=dev)
    def enc():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev == "cuda"):
            model.encode(ids)
    s = timed(enc, a["reps"])
    out[f"encode_{name}"] = {"tokens_per_s": ids.numel() / s, "ms_per_batch": s * 1e3, "batch": a["batch_size"],
                             "tokens_per_passage": length}

# 2. training: examples/s of one soup step (forward + backward) at each k, checkpointing per 16 passages
p = PRESETS["default"]
model = Mamba2LM(Mamba2Config.from_dict({**p["model"], "vocab_size": 2048})).to(dev)
tok = ByteTokenizer()
for k in a["ks"]:
    cfg = TrainConfig(tasks="needle:1", k_min=k, k_max=k, batch_size=a["train_batch"], passage_chars=200, ckpt_group=16)
    _, batch = make_batch(cfg, 0)
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev == "cuda"):
            loss, _ = loss_on_batch(model, tok, cfg, k, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    s = timed(step, max(1, a["reps"] // 4))
    row = {"examples_per_s": a["train_batch"] / s, "ms_per_step": s * 1e3}
    if dev == "cuda":
        row["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out[f"train_k{k}"] = row

# 3. wiki-small's stage 1 (issue 7): tokens/s of one LM pretraining step, its preset's rows of 512 tokens
wiki = Mamba2LM(Mamba2Config.from_dict({**WIKI["model"], "vocab_size": 8192})).to(dev)
rows = torch.randint(5, 8192, (a["lm_batch"], WIKI["seq_len"]), device=dev)
def lm_step():
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev == "cuda"):
        loss = lm_loss(wiki, rows)
    loss.backward()
    wiki.zero_grad(set_to_none=True)
s = timed(lm_step, max(1, a["reps"] // 4))
out["pretrain_wiki-small"] = {"tokens_per_s": rows.numel() / s, "ms_per_step": s * 1e3, "batch": a["lm_batch"]}
print("RESULT " + json.dumps(out))
"""

SOUP = r"""
from ragsoup.model import Mamba2Config
from ragsoup.statecache import DeviceStateCache
from ragsoup.store import segments
from ragsoup.train import PRESETS
k = 256
cfg = Mamba2Config.from_dict(PRESETS["default"]["model"])
D, n = cfg.state_numel(), 1024
host = torch.randn(n, D).to(torch.float16)  # stands in for the memory-mapped store
cache = DeviceStateCache(host, dev, budget_mb=n * D * 2 / 2**20 + 1)
idx = torch.randperm(n)[:k].tolist()
segs = segments(cfg)
cold = timed(lambda: DeviceStateCache(host, dev, budget_mb=k * D * 2 / 2**20 + 1).soup(idx, "mean", segs), 3)
hot = timed(lambda: cache.soup(idx, "mean", segs), 50)   # every row resident after the first call
big = torch.empty(256 * 2**20 // 2, dtype=torch.float16, device=dev)
dst = torch.empty_like(big)
copy = timed(lambda: dst.copy_(big), 20)
rate = big.numel() * 2 / copy          # bytes copied per second (read once, written once), as section 1 counts it
read = k * D * 2
print("RESULT " + json.dumps({"soup_k256_hot_ms": hot * 1e3, "soup_k256_cold_ms": cold * 1e3, "state_bytes": read,
                             "copy_gbps": rate / 1e9, "bound_ms": read / rate * 1e3, "hot_ratio_to_bound": hot / (read / rate)}))
"""


def child(code: str, args: dict, env: dict) -> dict:
    """Run one measurement in a fresh interpreter; its last RESULT line as a dict."""
    r = subprocess.run([sys.executable, "-c", PRELUDE + code, json.dumps(args)], capture_output=True, text=True,
                       env={**os.environ, **env})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode or not lines:
        raise SystemExit(f"measurement failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> int:
    """Fused vs reference throughput, and the device soup against its bandwidth bound."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of the code path")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    args = dict(device=a.device, batch_size=4 if a.quick else 64, reps=2 if a.quick else 20,
                ks=[4] if a.quick else [4, 16, 64], train_batch=2 if a.quick else 8, lm_batch=2 if a.quick else 64)
    t = time.perf_counter()
    res = {"device": a.device, "fused": child(CHILD, args, {}), "torch": child(CHILD, args, {"RAGSOUP_KERNELS": "torch"})}
    res["soup"] = child(SOUP, args, {})
    for key in res["fused"]:
        if key.startswith(("encode_", "train_", "pretrain_")):
            metric = "examples_per_s" if key.startswith("train_") else "tokens_per_s"
            res.setdefault("speedup", {})[key] = res["fused"][key][metric] / res["torch"][key][metric]
    res["wall_s"] = time.perf_counter() - t
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"backends: fused run = {res['fused']['backend']} ({res['fused']['note']}); reference run = "
              f"{res['torch']['backend']}")
        for key, x in res["speedup"].items():
            print(f"{key}: fused / reference = {x:.2f}x")
        s = res["soup"]
        print(f"soup k=256 (device-resident): {s['soup_k256_hot_ms']:.3f} ms = {s['hot_ratio_to_bound']:.2f}x the bound "
              f"({s['bound_ms']:.3f} ms at {s['copy_gbps']:.0f} GB/s); from the host: {s['soup_k256_cold_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
