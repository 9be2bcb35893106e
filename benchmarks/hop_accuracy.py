"""Two-hop questions split into their hops: how often each model answers the first hop (person -> city), the second
(city -> country) and the whole question from a soup of k given passages.

    python benchmarks/hop_accuracy.py MODEL [MODEL ...] [--k 2] [--n 64] [--seed 12345]
"""

from __future__ import annotations

import argparse
import dataclasses
import random

from ragsoup.checkpoint import load_model
from ragsoup.evaluate import predict, score
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
    parts = {  # each part's questions, asked of the same passages (answers=[]: only the part's own answer counts)
        part: [dataclasses.replace(e, question=pick(e)[0], answer=pick(e)[1], answers=[], extra=[]) for e in examples]
        for part, pick in PARTS.items()
    }
    for name in args.models:
        loaded = load_model(name)
        row = [f"{part} {score(predict(loaded.model, loaded.tokenizer, asked), asked)['em']:.1f}"
               for part, asked in parts.items()]
        print(f"{name}  k={args.k}  n={args.n}:  " + ", ".join(row))


if __name__ == "__main__":
    main()
