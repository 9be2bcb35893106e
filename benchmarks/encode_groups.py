"""Training encode time by how passages are grouped into padded batches (ragsoup.encode.length_groups).

Usage: python benchmarks/encode_groups.py [--model default] [--prose-passages 0.5] [--steps 12] [--threads 2] [--json]
Times the encode pass (forward + backward) of the fresh passages of real training steps (train_hour.sh's last stage:
k >= 8, so 8 x 8 = 64 passages a step) as one padded batch, in equal-count length buckets, and in length_groups'
groups for several per-call costs; CALL_TOKENS in ragsoup/encode.py is chosen from this table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ragsoup import train
from ragsoup.checkpoint import load_model
from ragsoup.encode import length_groups, pad_batch
from ragsoup.store import flatten_states
from ragsoup.tokenizer import passage_ids

LAST_STAGE_TASKS = "needle:4,needle-distractor:2,two-hop:3,needle-packed:2"


def main() -> None:
    """Print ms per step's encode (forward + backward) for each grouping."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--prose-passages", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=12, help="steps timed (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", default="64,128,256,512,1024", help="length_groups call costs (tokens) to time")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    loaded = load_model(a.model)
    model, tok = loaded.model.train(), loaded.tokenizer
    cfg = train.TrainConfig(**{**train.PRESETS["default-final"], "tasks": LAST_STAGE_TASKS,
                               "prose_passages": a.prose_passages})
    steps: list[list[list[int]]] = []
    step = 0
    while len(steps) < a.steps + 1:
        k, batch = train.make_batch(cfg, step)
        if k >= cfg.fresh_max:
            steps.append([passage_ids(tok, d, cfg.max_tokens) for ex in batch for d in ex.docs])
        step += 1

    def time_grouping(grouping) -> tuple[float, float]:
        """Mean ms per step and mean number of groups."""
        ms, n_groups = [], []
        for i, seqs in enumerate(steps):
            groups = grouping([len(s) for s in seqs])
            t = time.perf_counter()
            rows = [flatten_states(model.encode(*pad_batch([seqs[j] for j in g], tok.pad_id))) for g in groups]
            torch.cat(rows).pow(2).mean().backward()
            if i:  # the first step warms up
                ms.append(1000 * (time.perf_counter() - t))
                n_groups.append(len(groups))
        return statistics.mean(ms), statistics.mean(n_groups)

    def equal_buckets(n: int):
        def grouping(lengths: list[int]) -> list[list[int]]:
            order = sorted(range(len(lengths)), key=lengths.__getitem__)
            return [order[i * len(order) // n : (i + 1) * len(order) // n] for i in range(n)]
        return grouping

    lens = [len(s) for seqs in steps for s in seqs]
    rows = [("one padded batch (before)", *time_grouping(lambda lengths: [list(range(len(lengths)))]))]
    rows += [(f"{n} equal length buckets", *time_grouping(equal_buckets(n))) for n in (2, 3, 4)]
    rows += [(f"length_groups, call = {c} tokens", *time_grouping(lambda lengths, c=c: length_groups(lengths, 0, c)))
             for c in map(int, a.calls.split(","))]
    report = {"model": a.model, "threads": a.threads, "prose_passages": a.prose_passages, "steps": a.steps,
              "passages_per_step": len(steps[0]), "tokens_mean": round(statistics.mean(lens), 1),
              "tokens_max": max(lens),
              "rows": [{"grouping": name, "ms_per_step": round(ms), "groups": round(g, 1)} for name, ms, g in rows]}
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{a.model}, {a.threads} threads, prose passages {a.prose_passages}: {report['passages_per_step']} passages "
          f"a step, {report['tokens_mean']} tokens mean, {report['tokens_max']} max")
    for r in report["rows"]:
        print(f"  {r['grouping']:<34} {r['ms_per_step']:>6} ms   {r['groups']:>4} groups")


if __name__ == "__main__":
    main()
