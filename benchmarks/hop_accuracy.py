"""Two-hop questions split into their hops: how often each model answers the first hop (person -> city), the second
(city -> country) and the whole question from a soup of k given passages.

    python benchmarks/hop_accuracy.py MODEL [MODEL ...] [--k 2] [--n 64] [--seed 12345]
"""

from __future__ import annotations

import argparse
import dataclasses
import random

from ragsoup.checkpoint import load_model
from ragsoup.evaluate import predict
from ragsoup.metrics import best_em_f1
from ragsoup.tasks import generate_example

PARTS = {"first hop": lambda e: e.extra[0], "second hop": lambda e: e.extra[1], "question": lambda e: (e.question, e.answer)}


def main() -> None:
    """Print EM per model and part."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    examples = [generate_example("two-hop-sub", rng, args.k) for _ in range(args.n)]
    for name in args.models:
        loaded = load_model(name)
        row = []
        for part, pick in PARTS.items():
            asked = [dataclasses.replace(e, question=pick(e)[0], answer=pick(e)[1], extra=[]) for e in examples]
            preds = predict(loaded.model, loaded.tokenizer, asked)
            em = sum(best_em_f1(p, [e.answer])[0] for p, e in zip(preds, asked)) / len(asked)
            row.append(f"{part} {100 * em:.1f}")
        print(f"{name}  k={args.k}  n={args.n}:  " + ", ".join(row))


if __name__ == "__main__":
    main()
