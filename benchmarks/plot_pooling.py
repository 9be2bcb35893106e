"""Plot held-out EM vs k per pooling operator from docs/data/eval_default.json (benchmarks/eval_default.py).

    python benchmarks/plot_pooling.py [--data docs/data/eval_default.json] [--out docs/img/pooling_vs_k.png]

Left: single needle in template filler, every operator. Right: the other tasks, mean vs centered vs max.
Both: the mean soup weighted by retrieval score (the embedder's score of each given passage, softmax / 0.05).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WEIGHTED = "mean, retrieval weights"
STYLE = {"mean": "C0", "centered": "C3", "max": "C2", "sum": "C1", "sum-norm": "C4", "norm-mean": "C5", WEIGHTED: "k"}


def curves(rows: list[dict], task: str, prose: bool) -> dict[str, list[tuple[int, float]]]:
    """pool (", retrieval weights" when weighted) -> sorted (k, EM) points of one task, soup mode only."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r["task"] == task and r["mode"] == "soup" and ("prose" in r["label"]) == prose:
            weighted = r.get("weights", "uniform") != "uniform"
            out[f"{r['pool']}, retrieval weights" if weighted else r["pool"]].append((r["k"], r["em"]))
    return {p: sorted(v) for p, v in out.items()}


def main() -> None:
    """Write the two-panel PNG."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="docs/data/eval_default.json")
    ap.add_argument("--out", default="docs/img/pooling_vs_k.png")
    a = ap.parse_args()
    rows = json.loads(Path(a.data).read_text())["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for pool, pts in curves(rows, "needle", False).items():
        left.plot(*zip(*pts), marker="o", color=STYLE.get(pool), label=pool, lw=2.5 if pool in ("centered", WEIGHTED) else 1.5)
    left.set_title("single needle, template filler")
    for task, dash in (("needle-distractor", "-"), ("needle-multikey", ":")):
        for pool, pts in curves(rows, task, False).items():
            right.plot(*zip(*pts), marker="o", ls=dash, color=STYLE.get(pool), label=f"{task.split('-')[1]}, {pool}")
    for pool, pts in curves(rows, "needle", True).items():
        right.plot(*zip(*pts), marker="s", ls="--", color=STYLE.get(pool), label=f"needle in prose, {pool}")
    right.set_title("distractor (—), multi-key (⋯), needle in unseen prose (--)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (passages souped)")
        ax.set_ylabel("EM (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("shipped model, trained with mean; pooling and weights chosen at inference (64 examples per point)")
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
