"""How a model gets distractor-needle questions wrong: does it pick another needle's value, or blend them?

    ragsoup eval --task needle-distractor --k 4 --limit 128 --seed 12345 --model M --predictions P.jsonl
    python benchmarks/blends.py P.jsonl [--json]

Each prediction of the file (`ragsoup eval --predictions`) falls in one class: "right" (exact match), "other" (the
value of another needle in its passages: the wrong key was matched), "blend" (as long as the answer, and every
character is the answer's or another needle's character at that position, so it copies digits by their position,
not by their key: docs/models.md, section (n)), or "else".
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from ragsoup.jsonl import iter_jsonl

CLASSES = ("right", "other", "blend", "else")


def classify(prediction: str, answer: str, others: list[str]) -> str:
    """One of CLASSES for a prediction given the answer and the other needles' values."""
    p = prediction.strip()
    if p == answer:
        return "right"
    if p in others:
        return "other"
    values = [answer, *others]
    if len(p) == len(answer) and all(any(len(v) == len(p) and v[i] == c for v in values) for i, c in enumerate(p)):
        return "blend"
    return "else"


def main(argv: list[str] | None = None) -> int:
    """Print the share of each class in a predictions file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", type=Path)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    with open(a.predictions, encoding="utf-8") as f:
        recs = [obj for _, obj in iter_jsonl(f, a.predictions)]
    counts = Counter(classify(r["prediction"], r["answers"][0], r["others"]) for r in recs)
    n = max(len(recs), 1)
    shares = {c: round(100 * counts[c] / n, 1) for c in CLASSES}
    if a.json:
        print(json.dumps({"n": len(recs), **shares}))
    else:
        print(f"{len(recs)} predictions: " + ", ".join(f"{c} {shares[c]}%" for c in CLASSES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
