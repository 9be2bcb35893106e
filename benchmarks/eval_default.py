"""Held-out answer quality of a model on the generated tasks (no retrieval): the table in docs/models.md.

Usage: python benchmarks/eval_default.py [--model default] [--n 64] [--seed 12345] [--prose PATH] [--bg-prose PATH]
       [--out FILE.json]
       [--pools centered,max,mean/retrieval]  (only those rows; the --out file keeps its others)
       [--extractive]  (answers decoded as spans of each example's passages)
Every number comes from `ragsoup eval` (bench.run_eval) on freshly generated examples (seed disjoint from training).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ragsoup.bench import run_eval
from ragsoup.device import set_threads
from ragsoup.tasks.filler import gutenberg_shard

PLAN = [  # (label, task, k values, mode, pool, filler?[, weights[, background from --bg-prose?]]); rows are
    # selected by "pool[/weights]"
    ("needle, template filler", "needle", [1, 4, 16, 64, 128, 256], "soup", "mean", False),
    ("needle, Gutenberg prose filler", "needle", [4, 16, 64], "soup", "mean", True),
    ("needle-distractor (gold + up to 3 other needles)", "needle-distractor", [4, 16, 64], "soup", "mean", False),
    ("needle-multikey (a needle in every passage)", "needle-multikey", [2, 4, 8, 16], "soup", "mean", False),
    ("two-hop", "two-hop", [5], "soup", "mean", False),
    ("two-hop", "two-hop", [5], "concat", "mean", False),
    ("needle, pool=sum", "needle", [4, 16, 64], "soup", "sum", False),
    ("needle, pool=max", "needle", [4, 16, 64, 128, 256], "soup", "max", False),
    ("needle, Gutenberg prose filler, pool=max", "needle", [64, 256], "soup", "max", True),
    ("needle-distractor, pool=max", "needle-distractor", [4, 16, 64], "soup", "max", False),
    ("needle-multikey, pool=max", "needle-multikey", [4, 8, 16], "soup", "max", False),
    ("needle, pool=sum-norm", "needle", [4, 16, 64], "soup", "sum-norm", False),
    ("needle, pool=norm-mean", "needle", [4, 16, 64], "soup", "norm-mean", False),
    # centered: the mean with each passage's deviation from the model's background state scaled by sqrt(k)
    ("needle, pool=centered", "needle", [1, 4, 16, 64, 128, 256], "soup", "centered", False),
    ("needle, Gutenberg prose filler, pool=centered", "needle", [16, 64, 256], "soup", "centered", True),
    # the same, centred on a background of prose from other books (--bg-prose), as an index of prose centres on its
    # corpus's mean state
    ("needle, Gutenberg prose filler, pool=centered, prose background", "needle", [64, 256], "soup", "centered", True,
     "uniform", True),
    ("needle-distractor, pool=centered", "needle-distractor", [4, 16, 64], "soup", "centered", False),
    ("needle-multikey, pool=centered", "needle-multikey", [2, 4, 8, 16], "soup", "centered", False),
    # relevance weights: each given passage weighed by softmax(embedder score / 0.05), as `ask` does by default
    ("needle, retrieval weights", "needle", [16, 64, 256], "soup", "mean", False, "retrieval"),
    ("needle, Gutenberg prose filler, retrieval weights", "needle", [64], "soup", "mean", True, "retrieval"),
    ("needle-distractor, retrieval weights", "needle-distractor", [4, 16, 64], "soup", "mean", False, "retrieval"),
    ("needle-multikey, retrieval weights", "needle-multikey", [2, 4, 8, 16, 64], "soup", "mean", False, "retrieval"),
]


def key(pool: str, weights: str | None) -> str:
    """A row's selector: its pool, with "/retrieval" for relevance-weighted soups."""
    return pool if weights in (None, "uniform") else f"{pool}/{weights}"


def main() -> None:
    """Run the plan and print one markdown table row per (label, k); write all results as JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--prose", default=gutenberg_shard(3))
    ap.add_argument("--bg-prose", default=gutenberg_shard(0),
                    help="other books, for the rows centred on a prose background")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--pools", default=None, help="only the plan's rows with these pools (e.g. centered,max); "
                    "with --out, the file's other rows are kept")
    ap.add_argument("--extractive", action="store_true", help="decode answers as spans of the passages")
    a = ap.parse_args()
    set_threads(a.threads)
    only = set(a.pools.split(",")) if a.pools else None
    rows = []
    if only and a.out and Path(a.out).exists():
        rows = [r for r in json.loads(Path(a.out).read_text())["rows"] if key(r["pool"], r.get("weights")) not in only]
    print("| task | mode | pool | k | n | EM | F1 | seconds |\n|---|---|---|---:|---:|---:|---:|---:|")
    for label, task, ks, mode, pool, prose, *rest in PLAN:
        weights = rest[0] if rest else "uniform"
        bg_text = a.bg_prose if rest[1:] and rest[1] else None
        if (prose and not Path(a.prose).exists()) or (bg_text and not Path(bg_text).exists()) or (
                only and key(pool, weights) not in only):
            continue
        for k in ks:
            t = time.perf_counter()
            r = run_eval(task, k=k, mode=mode, pool=pool, limit=a.n, model=a.model, seed=a.seed, device="cpu",
                         batch_size=16, filler=a.prose if prose else None, weights=weights, background_text=bg_text,
                         extractive=a.extractive)
            dt = time.perf_counter() - t
            rows.append({"label": label, **r.to_json(), "pool": pool, "seconds": round(dt, 1)})
            print(f"| {label} | {mode} | {key(pool, weights)} | {k} | {r.n} | {r.em:.1f} | {r.f1:.1f} | {dt:.0f} |", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"model": a.model, "seed": a.seed, "extractive": a.extractive, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
