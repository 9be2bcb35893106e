"""Plot training curves (loss and held-out EM per k) from runs' log.jsonl; several runs are drawn as
consecutive stages on one step axis.

Usage: python benchmarks/plot_training.py OUT.png RUN [RUN ...]
       python benchmarks/plot_training.py --overlay OUT.png RUN [RUN ...]   # runs side by side on one axis
   e.g. python benchmarks/plot_training.py docs/img/train_default.png runs/default runs/default-k512 runs/default-keys
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ragsoup.train import read_log  # noqa: E402


def plot(runs: list[Path], out: Path, window: int = 50, overlay: bool = False) -> None:
    """Write a two-panel PNG: smoothed training loss, and EM@k at each evaluation, stages back to back (overlay:
    every run from step 0, e.g. a soup and a concat run at one budget)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    offset = 0
    colors: dict[str, str] = {}
    for i, run in enumerate(runs):
        recs = read_log(run)
        steps = [offset + r["step"] for r in recs]
        loss = [r["loss"] for r in recs]
        smooth = [sum(loss[max(0, j - window + 1) : j + 1]) / len(loss[max(0, j - window + 1) : j + 1]) for j in range(len(loss))]
        a.plot(steps, loss, alpha=0.15, color=f"C{i}")
        a.plot(steps, smooth, color=f"C{i}", label=f"{run.name} ({window}-step mean)")
        evals = [r for r in recs if "eval" in r]
        for key in evals[0]["eval"] if evals else []:
            name = key.replace("em@", "EM, k=")
            if overlay:
                b.plot([r["step"] for r in evals], [r["eval"][key] for r in evals], marker="o", color=f"C{i}",
                       label=f"{run.name}: {name}")
                continue
            colors.setdefault(key, f"C{len(colors)}")
            b.plot([offset + r["step"] for r in evals], [r["eval"][key] for r in evals], marker="o", color=colors[key],
                   label=name if i == len(runs) - 1 or key not in [l.get_label() for l in b.lines] else None)
        if i and not overlay:
            for ax in (a, b):
                ax.axvline(offset, color="grey", lw=0.8, ls="--")
        offset = offset if overlay else (steps[-1] if steps else offset)
    a.set_xlabel("step" if overlay else "step (stages back to back)")
    a.set_ylabel("answer-token cross-entropy")
    a.set_yscale("log")
    a.legend(fontsize=8)
    b.set_xlabel("step")
    b.set_ylabel("held-out EM (%), task mix of each stage")
    b.set_ylim(-2, 102)
    handles, labels = b.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    b.legend(uniq.values(), uniq.keys(), fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    args = sys.argv[1:]
    overlay = args[:1] == ["--overlay"]
    args = args[1:] if overlay else args
    plot([Path(p) for p in args[1:]], Path(args[0]), overlay=overlay)
