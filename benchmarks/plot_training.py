"""Plot a training run's curve (loss and held-out EM per k) from its log.jsonl.

Usage: python benchmarks/plot_training.py runs/default docs/img/train_default.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_log(run: Path) -> list[dict]:
    """Records of log.jsonl, one per step (the last one wins when a resumed run replayed steps)."""
    by_step: dict[int, dict] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def plot(run: Path, out: Path, window: int = 50) -> None:
    """Write a two-panel PNG: smoothed training loss, and EM@k at each evaluation."""
    recs = load_log(run)
    steps = [r["step"] for r in recs]
    loss = [r["loss"] for r in recs]
    smooth = [sum(loss[max(0, i - window + 1) : i + 1]) / len(loss[max(0, i - window + 1) : i + 1]) for i in range(len(loss))]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(steps, loss, alpha=0.2, color="C0")
    a.plot(steps, smooth, color="C0", label=f"loss ({window}-step mean)")
    a.set_xlabel("step")
    a.set_ylabel("answer-token cross-entropy")
    a.set_yscale("log")
    a.legend()
    evals = [r for r in recs if "eval" in r]
    for key in evals[0]["eval"] if evals else []:
        b.plot([r["step"] for r in evals], [r["eval"][key] for r in evals], marker="o", label=key.replace("em@", "EM, k="))
    b.set_xlabel("step")
    b.set_ylabel("held-out EM (%)")
    b.set_ylim(-2, 102)
    b.legend()
    fig.suptitle(f"training run {run.name}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    plot(Path(sys.argv[1]), Path(sys.argv[2]))
