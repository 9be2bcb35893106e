"""What a model answers when it misses a needle among distractor needles: the asked value, another needle's value,
or six digits found in no passage (a blend of the soup's values). Diagnostic for key matching.

    python benchmarks/answer_kinds.py MODEL [MODEL ...] [--task needle-distractor] [--k 16] [--n 32] [--seed 12345]

Passages are given and souped with the centered pool (needs `ragsoup background MODEL`); prints one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import random
import re

import torch

from ragsoup.background import model_background
from ragsoup.checkpoint import load_model
from ragsoup.evaluate import predict
from ragsoup.metrics import best_em_f1
from ragsoup.tasks import generate_example


def answer_kinds(model: str, task: str, k: int, n: int, seed: int) -> dict:
    """Counts of right answers, other needles' values and values in no passage, over n generated examples."""
    loaded = load_model(model)
    rng = random.Random(seed)
    examples = [generate_example(task, rng, k) for _ in range(n)]
    preds = predict(loaded.model, loaded.tokenizer, examples, pool="centered", background=model_background(loaded))
    kinds = {"right": 0, "another_value": 0, "in_no_passage": 0}
    for ex, pred in zip(examples, preds):
        values = set(re.findall(r"\d+", " ".join(ex.docs)))
        if best_em_f1(pred, ex.answers)[0]:  # right as `ragsoup eval` scores it
            kind = "right"
        else:
            kind = "another_value" if pred.strip() in values else "in_no_passage"
        kinds[kind] += 1
    return {"model": model, "task": task, "k": k, "n": n, "seed": seed, **kinds}


def main() -> None:
    """Parse the command line and print one JSON line per model."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--task", default="needle-distractor")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for model in args.models:
        print(json.dumps(answer_kinds(model, args.task, args.k, args.n, args.seed)))


if __name__ == "__main__":
    main()
