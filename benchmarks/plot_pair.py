"""Plot a soup model's and a concat model's `ragsoup bench --json` results (same corpus and queries) on one axes.

    python benchmarks/plot_pair.py SOUP.json CONCAT.json OUT_DIR

The same-budget comparison of docs/results.md 1b: a model trained for the soup read as a soup, and one trained on
concatenations read concatenated (`bench --modes soup --model A` and `bench --modes concat --model B`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ragsoup.bench import BenchResult, BenchRow, plot_results


def load(path: str) -> BenchResult:
    """A BenchResult back from its JSON."""
    data = json.loads(Path(path).read_text())
    rows = [BenchRow(**r) for r in data.pop("rows")]
    return BenchResult(**data, rows=rows)


def main(soup_path: str, concat_path: str, out: str) -> None:
    """Check both ran on the same corpus, then plot their rows together."""
    soup, concat = load(soup_path), load(concat_path)
    same = ("task", "n_passages", "passage_chars", "hops")
    if any(getattr(soup, f) != getattr(concat, f) for f in same):
        raise SystemExit(f"the two runs differ in {', '.join(f for f in same if getattr(soup, f) != getattr(concat, f))}")
    soup.rows = [r for r in soup.rows if r.mode == "soup"] + [r for r in concat.rows if r.mode == "concat"]
    soup.model = f"{soup.model} (soup) / {concat.model} (concat)"
    for p in plot_results(soup, Path(out)):
        print(f"wrote {p}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
