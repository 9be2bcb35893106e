"""Re-run a training run's exact config with a few fields changed (e.g. the model's size), from scratch.

    python benchmarks/train_variant.py runs/mk-g1/train_config.json --out runs/mk-s128 --set model.d_state=128
    python benchmarks/train_variant.py runs/mk-g1/train_config.json --out runs/mk-g8 --set model.ngroups=8

`ragsoup train` has presets but no flags for the model's shape; this keeps every other setting of the run it
starts from (its train_config.json), so the two runs differ only in what --set names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ragsoup.device import set_threads
from ragsoup.train import TrainConfig, train


def apply(config: dict, assignment: str) -> None:
    """Set one dotted field ("model.d_state=128") in place; the value is parsed as JSON when it can be."""
    path, _, raw = assignment.partition("=")
    if not path or not _:
        raise SystemExit(f"--set takes FIELD=VALUE, got {assignment!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value


def main() -> None:
    """Load the base config, apply --set, train."""
    ap = argparse.ArgumentParser()
    ap.add_argument("base", help="a run's train_config.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="FIELD=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    set_threads(a.threads)
    config = json.loads(Path(a.base).read_text())
    for s in a.sets:
        apply(config, s)
    config["out"] = a.out
    print(train(TrainConfig(**config)))


if __name__ == "__main__":
    main()
