"""The paper's ablations at our scale, one budget for every arm (docs/results.md section "Ablations").

Every arm starts from the same language model (`ragsoup pretrain --preset ablation-lm`: the default
architecture trained only on next-token prediction over task examples in the concat layout, so it can answer
from concatenated passages in context but has never seen a soup) and gets the same soup-finetuning budget
(steps, batch, learning rate, data seed); arms differ in one switch each:

  no-finetune     the LM itself, souped at inference (no-finetune-concat: the LM reading the concatenation)
  full            full encoder + decoder finetuning, mean pooling, k <= 8 (1 -> 8 over the first 300 steps)
  decoder-only    the encoder frozen at the LM's weights (--freeze-encoder)
  concat          trained and evaluated on concatenated passages (--mode concat)
  full-k64        as full but k <= 64 (generalisation in k)
  sum|max|sum-norm|norm-mean   trained and evaluated with that pooling operator
  kv-transformer  a causal transformer of the same width/depth (LM-pretrained the same way) whose per-passage
                  KV caches are averaged (ragsoup.kvsoup)

Each arm is a plain `ragsoup train` run (printed), so any one can be rerun alone; finished runs are reused.
Evaluation: `ragsoup eval` on fresh examples (seed 12345, disjoint from training's), EM in %.

    python benchmarks/ablations.py                       # everything (~1.5 h on the 2-core CPU)
    python benchmarks/ablations.py --arms full,concat    # a subset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ragsoup.bench import run_eval
from ragsoup.pretrain import PRETRAIN_PRESETS, PretrainConfig, pretrain
from ragsoup.train import TrainConfig, train

BUDGET = dict(tasks="needle:1,needle-distractor:1", k_min=1, k_max=8, k_ramp_steps=300, steps=1000, batch_size=8,
              lr=2e-3, warmup_steps=50, passage_chars=200, eval_every=0, save_every=250, ckpt_group=0, seed=0)
LM, LM_T = "runs/ablation-lm/last", "runs/ablation-lm-transformer/last"
ARMS: dict[str, dict] = {
    "full": dict(init=LM),
    "decoder-only": dict(init=LM, freeze_encoder=True),
    "concat": dict(init=LM, mode="concat"),
    "kv-transformer": dict(init=LM_T),
    "sum": dict(init=LM, pool="sum"),
    "max": dict(init=LM, pool="max"),
    "sum-norm": dict(init=LM, pool="sum-norm"),
    "norm-mean": dict(init=LM, pool="norm-mean"),
    "full-k64": dict(init=LM, k_max=64),
}
EVAL = [("needle", 1), ("needle", 4), ("needle", 8), ("needle", 16), ("needle", 64), ("needle", 256),
        ("needle-distractor", 4), ("longdoc", 16), ("longdoc", 64)]


def command(arm: str, cfg: dict) -> str:
    """The `ragsoup train` command line of one arm."""
    flags = []
    for key, value in cfg.items():
        if key == "freeze_encoder":
            flags.append("--freeze-encoder")
        elif key not in ("passage_chars", "warmup_steps"):
            flags.append(f"--{key.replace('_', '-')} {value}")
    return "ragsoup train " + " ".join(flags) + f" --out runs/ablation-{arm}"


def ensure_lm(preset: str) -> None:
    """Pretrain the shared starting LM once."""
    cfg = PretrainConfig.from_dict(PRETRAIN_PRESETS[preset])
    done = Path(cfg.out) / "trainer.pt"
    if done.exists() and torch.load(done, weights_only=False)["step"] >= cfg.steps:
        return
    print(f"$ ragsoup pretrain --preset {preset}", flush=True)
    t = time.perf_counter()
    pretrain(cfg, resume=done.exists())
    print(f"  {time.perf_counter() - t:.0f} s", flush=True)


def ensure_arm(arm: str) -> tuple[str, str | None, float]:
    """Train one arm unless done; returns (model path, encoder path or None, wall seconds)."""
    cfg = {**BUDGET, **ARMS[arm]}
    out = Path(f"runs/ablation-{arm}")
    done = out / "trainer.pt"
    enc = str(out / "encoder") if cfg.get("freeze_encoder") else None
    if done.exists() and torch.load(done, weights_only=False)["step"] >= cfg["steps"]:
        return str(out / "last"), enc, float("nan")
    print(f"$ {command(arm, cfg)}", flush=True)
    t = time.perf_counter()
    train(TrainConfig.from_dict({**cfg, "out": str(out)}), resume=done.exists())
    wall = time.perf_counter() - t
    print(f"  {wall:.0f} s", flush=True)
    return str(out / "last"), enc, wall


def evaluate(model: str, encoder: str | None, mode: str, pool: str, n: int) -> dict[str, float]:
    """EM per (task, k) of the EVAL grid."""
    out = {}
    for task, k in EVAL:
        r = run_eval(task, None, k=k, mode=mode, pool=pool, limit=n, model=model, seed=12345, device="cpu",
                     batch_size=8, encoder=encoder)
        out[f"{task}@{k}"] = round(r.em, 1)
        print(f"  {task} k={k}: EM {r.em:.1f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate the arms; write JSON results and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", default="no-finetune,no-finetune-concat," + ",".join(ARMS))
    ap.add_argument("--n", type=int, default=64, help="examples per eval cell")
    ap.add_argument("--out", default="docs/data/ablations.json")
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    for arm in arms:
        if arm in ("no-finetune", "no-finetune-concat"):
            ensure_lm("ablation-lm")
            model, enc, wall, pool = LM, None, 0.0, "mean"
            mode = "concat" if arm == "no-finetune-concat" else "soup"
        else:
            if arm not in ARMS:
                print(f"unknown arm {arm}: use {', '.join(ARMS)}", file=sys.stderr)
                return 1
            ensure_lm("ablation-lm-transformer" if arm == "kv-transformer" else "ablation-lm")
            model, enc, wall = ensure_arm(arm)
            cfg = {**BUDGET, **ARMS[arm]}
            mode, pool = cfg.get("mode", "soup"), cfg.get("pool", "mean")
        print(f"[{arm}] eval ({mode}, {pool})", flush=True)
        prev = results.get(arm, {})
        results[arm] = {"mode": mode, "pool": pool, "train_wall_s": prev.get("train_wall_s") if wall != wall else wall,
                        "command": "ragsoup pretrain --preset ablation-lm" if arm.startswith("no-finetune")
                        else command(arm, {**BUDGET, **ARMS[arm]}),
                        "em": evaluate(model, enc, mode, pool, args.n)}
        path.parent.mkdir(parents=True, exist_ok=True)
        results = {**(json.loads(path.read_text()) if path.exists() else {}), arm: results[arm]}  # merge
        path.write_text(json.dumps(results, indent=1))
    cols = [f"{t}@{k}" for t, k in EVAL]
    print("| arm | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for arm, r in results.items():
        print(f"| {arm} | " + " | ".join(f"{r['em'].get(c, float('nan')):.1f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
