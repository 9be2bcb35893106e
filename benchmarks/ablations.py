"""The paper's ablations at our scale, one budget for every arm (docs/results.md section "Ablations").

Every arm starts from the same base model and gets the same soup-finetuning budget (steps, batch, learning
rate, data seed); arms differ in one switch each. The base stands in for the paper's pretrained LM: the default
architecture trained from scratch to answer from **concatenated** passages (`ragsoup train --preset
ablation-reader`, an in-context reader that has never seen a soup). A plain next-token LM was tried first
(`ragsoup pretrain --preset ablation-lm`, 4.1M tokens): it could not answer even from concatenated passages
(0 EM at k = 1), so it could not serve as the base.

  plain-lm        the next-token LM, souped (plain-lm-concat: reading the concatenation)
  no-finetune     the base souped at inference (base-concat: the base reading the concatenation, its own mode)
  full            full encoder + decoder soup finetuning, mean pooling, k <= 8 (1 -> 8 over the first 300 steps)
  decoder-only    the encoder frozen at the base's weights (--freeze-encoder)
  concat          the same budget of further concat training (--mode concat)
  full-k64        as full but k <= 64 (generalisation in k)
  sum|max|sum-norm|norm-mean   trained and evaluated with that pooling operator
  kv-transformer  a causal transformer of the same width/depth, made a reader from scratch the same way
                  (--preset ablation-reader-transformer), then soup-finetuned with the same budget, its
                  per-passage KV caches averaged (ragsoup.kvsoup); kv-concat: the same budget of concat training
  kv-no-finetune  the transformer reader, its KV caches averaged at inference (kv-base-concat: reading the
                  concatenation)

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
from ragsoup.train import PRESETS, TrainConfig, train

BUDGET = dict(tasks="needle:1,needle-distractor:1", k_min=1, k_max=8, k_ramp_steps=300, steps=1000, batch_size=8,
              lr=1e-3, warmup_steps=30, passage_chars=200, eval_every=0, save_every=250, ckpt_group=0, seed=0)
def last(preset: str) -> str:
    """The final checkpoint of a preset's run."""
    return str(Path(PRESETS[preset]["out"]) / "last")


BASE, BASE_T = last("ablation-reader"), last("ablation-reader-transformer")
BASE_PRESET = {BASE: "ablation-reader", BASE_T: "ablation-reader-transformer"}  # an arm's init -> the preset making it
BASE_ARMS = {  # arms that evaluate a base reader as it is: arm -> (preset, mode)
    "no-finetune": ("ablation-reader", "soup"), "base-concat": ("ablation-reader", "concat"),
    "kv-no-finetune": ("ablation-reader-transformer", "soup"), "kv-base-concat": ("ablation-reader-transformer", "concat"),
}
ARMS: dict[str, dict] = {
    "full": dict(init=BASE),
    "decoder-only": dict(init=BASE, freeze_encoder=True),
    "concat": dict(init=BASE, mode="concat"),
    "kv-transformer": dict(init=BASE_T),
    "kv-concat": dict(init=BASE_T, mode="concat"),
    "kv-transformer-k64": dict(init=BASE_T, k_max=64),
    "sum": dict(init=BASE, pool="sum"),
    "max": dict(init=BASE, pool="max"),
    "full-k64": dict(init=BASE, k_max=64),
    "sum-norm": dict(init=BASE, pool="sum-norm"),
    "norm-mean": dict(init=BASE, pool="norm-mean"),
}
EVAL = [("needle", 1), ("needle", 4), ("needle", 8), ("needle", 16), ("needle", 64), ("needle-distractor", 4),
        ("longdoc", 16), ("longdoc", 64)]
# arms also scored at k = 256 (generalisation, pooling)
EVAL_256 = ("no-finetune", "full", "full-k64", "max", "sum", "kv-transformer-k64")


def command(arm: str, cfg: dict) -> str:
    """The `ragsoup train` command line of one arm."""
    flags = []
    for key, value in cfg.items():
        if key == "freeze_encoder":
            flags.append("--freeze-encoder")
        else:
            flags.append(f"--{key.replace('_', '-')} {value}")
    return "ragsoup train " + " ".join(flags) + f" --out runs/ablation-{arm}"


def train_once(cfg: TrainConfig, shown: str) -> float | None:
    """Train ``cfg`` unless its run has finished (a partial run is resumed); the wall seconds, None if reused."""
    done = Path(cfg.out) / "trainer.pt"
    if done.exists() and torch.load(done, weights_only=False)["step"] >= cfg.steps:
        return None
    print(f"$ {shown}", flush=True)
    t = time.perf_counter()
    train(cfg, resume=done.exists())
    wall = time.perf_counter() - t
    print(f"  {wall:.0f} s", flush=True)
    return wall


def ensure_base(preset: str) -> None:
    """Train the shared base reader once."""
    train_once(TrainConfig.from_dict(PRESETS[preset]), f"ragsoup train --preset {preset}")


def ensure_arm(arm: str) -> tuple[str, str | None, float | None]:
    """Train one arm unless done; returns (model path, encoder path or None, wall seconds or None if reused)."""
    cfg = {**BUDGET, **ARMS[arm]}
    out = Path(f"runs/ablation-{arm}")
    enc = str(out / "encoder") if cfg.get("freeze_encoder") else None
    wall = train_once(TrainConfig.from_dict({**cfg, "out": str(out)}), command(arm, cfg))
    return str(out / "last"), enc, wall


def evaluate(model: str, encoder: str | None, mode: str, pool: str, n: int, grid: list) -> dict[str, float]:
    """EM per (task, k) of the grid."""
    out = {}
    for task, k in grid:
        r = run_eval(task, None, k=k, mode=mode, pool=pool, limit=n, model=model, seed=12345, device="cpu",
                     batch_size=8, encoder=encoder)
        out[f"{task}@{k}"] = round(r.em, 1)
        print(f"  {task} k={k}: EM {r.em:.1f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate the arms; write JSON results and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", default=",".join([*BASE_ARMS, *ARMS]) + ",plain-lm,plain-lm-concat")
    ap.add_argument("--n", type=int, default=64, help="examples per eval cell")
    ap.add_argument("--out", default="docs/data/ablations.json")
    ap.add_argument("--table", action="store_true", help="only print the table of the results file")
    ap.add_argument("--plot", metavar="PNG", help="only plot needle EM vs k of the results file's arms into PNG")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    if args.plot:
        plot(json.loads(Path(args.out).read_text()), Path(args.plot))
        print(f"wrote {args.plot}")
        return 0
    torch.set_flush_denormal(True)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    for arm in arms:
        if arm in ("plain-lm", "plain-lm-concat"):  # the next-token LM that could not serve as the base
            lm = PretrainConfig.from_dict(PRETRAIN_PRESETS["ablation-lm"])
            if not (Path(lm.out) / "last").exists():
                print("$ ragsoup pretrain --preset ablation-lm", flush=True)
                pretrain(lm)
            model, enc, wall, pool = str(Path(lm.out) / "last"), None, 0.0, "mean"
            mode = "concat" if arm == "plain-lm-concat" else "soup"
        elif arm in BASE_ARMS:
            preset, mode = BASE_ARMS[arm]
            ensure_base(preset)
            model, enc, wall, pool = last(preset), None, 0.0, "mean"
        else:
            if arm not in ARMS:
                print(f"unknown arm {arm}: use {', '.join([*BASE_ARMS, *ARMS])}", file=sys.stderr)
                return 1
            ensure_base(BASE_PRESET[ARMS[arm]["init"]])
            model, enc, wall = ensure_arm(arm)
            cfg = {**BUDGET, **ARMS[arm]}
            mode, pool = cfg.get("mode", "soup"), cfg.get("pool", "mean")
        print(f"[{arm}] eval ({mode}, {pool})", flush=True)
        prev = results.get(arm, {})
        results[arm] = {"mode": mode, "pool": pool, "train_wall_s": prev.get("train_wall_s") if wall is None else wall,
                        "command": "ragsoup pretrain --preset ablation-lm" if arm.startswith("plain-lm")
                        else f"ragsoup train --preset {BASE_ARMS[arm][0]}" if arm in BASE_ARMS
                        else command(arm, {**BUDGET, **ARMS[arm]}),
                        "em": evaluate(model, enc, mode, pool, args.n,
                                       EVAL + [("needle", 256)] if arm in EVAL_256 else EVAL)}
        path.parent.mkdir(parents=True, exist_ok=True)
        results = {**(json.loads(path.read_text()) if path.exists() else {}), arm: results[arm]}  # merge
        path.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


LABELS = {
    "plain-lm": "plain next-token LM, souped", "plain-lm-concat": "plain next-token LM, reading the concatenation",
    "no-finetune": "**no soup finetuning**: the reader, souped", "base-concat": "the reader reading the concatenation",
    "full": "**full** encoder + decoder finetuning (mean)", "decoder-only": "**decoder-only** (encoder frozen)",
    "concat": "same budget of further **concat** training", "full-k64": "full, trained with k ≤ 64",
    "sum": "full, trained with **sum**", "max": "full, trained with **max**", "sum-norm": "full, trained with sum-norm",
    "norm-mean": "full, trained with norm-mean",
    "kv-no-finetune": "transformer reader, **averaged KV caches**, no soup finetuning",
    "kv-base-concat": "transformer reader reading the concatenation",
    "kv-transformer": "**transformer, averaged KV caches**, full soup finetuning",
    "kv-concat": "transformer, same budget of further concat training",
    "kv-transformer-k64": "transformer, averaged KV caches, trained with k ≤ 64",
}


def table(results: dict) -> str:
    """The markdown table of docs/results.md."""
    cols = [("needle", k) for k in (1, 4, 8, 16, 64, 256)] + [("needle-distractor", 4), ("longdoc", 16), ("longdoc", 64)]
    short = {"needle": "needle", "needle-distractor": "distractor", "longdoc": "longdoc"}
    head = ["arm", "mode", "pool"] + [f"{short[t]} k={k}" for t, k in cols] + ["train min"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(cols) + 1)]
    for arm in [a for a in LABELS if a in results] + [a for a in results if a not in LABELS]:
        r = results[arm]
        cells = [f"{r['em'][f'{t}@{k}']:.1f}" if f"{t}@{k}" in r["em"] else "" for t, k in cols]
        wall = r.get("train_wall_s")
        lines.append(f"| {LABELS.get(arm, arm)} | {r['mode']} | {r['pool'] if r['mode'] == 'soup' else ''} | "
                     + " | ".join(cells) + f" | {'' if not wall else f'{wall / 60:.1f}'} |")
    return "\n".join(lines)


PLOTTED = {  # arm -> (label, colour, line style): the soup-vs-concat contrast for both architectures
    "full": ("Mamba2, state soup (mean)", "tab:blue", "-"), "concat": ("Mamba2, concat", "tab:blue", ":"),
    "max": ("Mamba2, state soup (max)", "tab:green", "-"),
    "kv-transformer": ("transformer, averaged KV caches", "tab:red", "-"),
    "kv-concat": ("transformer, concat", "tab:red", ":"),
    "full-k64": ("Mamba2, state soup (mean), trained k ≤ 64", "tab:blue", "--"),
    "kv-transformer-k64": ("transformer, averaged KV, trained k ≤ 64", "tab:red", "--"),
}


def plot(results: dict, path: Path) -> None:
    """Needle EM vs k (log x) for the soup and concat arms of both architectures, same budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    for ax, task in zip(axes, ("needle", "longdoc")):
        for arm, (label, colour, style) in PLOTTED.items():
            em = results.get(arm, {}).get("em", {})
            ks = sorted(int(key.split("@")[1]) for key in em if key.split("@")[0] == task)
            if ks:
                ax.plot(ks, [em[f"{task}@{k}"] for k in ks], style, marker="o", color=colour, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (passages / segments)")
        ax.set_ylabel("EM (%)")
        ax.set_ylim(-3, 103)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    fig.suptitle("EM vs k after 1,000 steps from each reader (trained with k ≤ 8 unless marked)", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
