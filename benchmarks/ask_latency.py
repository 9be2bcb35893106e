"""Warm `ask` latency by stage (model and index loaded, after warm-up queries), p50 over N questions.

Usage: python benchmarks/ask_latency.py --index DIR [--questions FILE] [--ks 5,256] [--n 30] [--pool mean]
"""

from __future__ import annotations

import argparse
import json
import statistics

from ragsoup.ask import Engine
from ragsoup.device import set_threads
from ragsoup.tasks.files import read_questions


def main() -> None:
    """Print one JSON object: per k, the p50 of each stage in milliseconds."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--questions", default=None, help="questions.jsonl (default: the index's corpus directory)")
    ap.add_argument("--ks", default="5,256")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--pool", default="mean")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    set_threads(a.threads)
    eng = Engine(a.index)
    qs = [q["question"] for q in read_questions(a.questions or eng.manifest.corpus)][: a.n]
    out = {"index": a.index, "n_passages": eng.manifest.n_passages, "pool": a.pool, "rows": []}
    for k in [int(x) for x in a.ks.split(",")]:
        for q in qs[:3]:
            eng.ask(q, k=k, pool=a.pool)  # warm-up
        times = [eng.ask(q, k=k, pool=a.pool).timings_ms for q in qs]
        out["rows"].append({"k": min(k, eng.manifest.n_passages), "n": len(qs),
                            **{f"{s}_ms_p50": round(statistics.median(t[s] for t in times), 3) for s in times[0]}})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
