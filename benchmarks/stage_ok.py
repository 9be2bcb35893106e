"""Stop a multi-stage recipe when a stage ended on the loss plateau: its last held-out EM at k = 1 is still 0.

    python benchmarks/stage_ok.py runs/hour-s1

A run from scratch starts with the answer loss at chance (~2.2 nats a digit) and usually leaves it after a few
hundred steps; with some seeds it never does (docs/models.md, section (k): `train_hour.sh` with SEED=200 read EM 0
at every k after 2,000 steps, and the next stage did not rescue it). Building the later stages on such a model
wastes most of an hour, so the recipe checks here and stops with exit code 1 and a line that says what to do.
`train_hour.sh`'s stage 1 now holds k at 1 until the loss leaves the plateau (`--k-hold-loss`, section (l)), which
got SEED=200 off it; the check stays for the recipes without the hold and for seeds slower still.

With ``--keys`` it also reports whether the stage copies whole values or blends them digit by digit: EM on packed
needles at k = 1 (the asked needle and 1-3 others in one passage, 128 questions, seed 12345). A stage that copies one
of the passage's values whole, picked by its key or not, reads about 1 in 3 (chance for the asked one): after
`train_hour.sh`'s stage 1 the seed that went on to match keys and chain read 31.2, the seeds that did not 0.8-7.8,
blending the values by position (docs/models.md, sections (o), (p)); a line says which, and ``--min-keys X`` stops
the recipe below X. Whether a model picks the value by its key is `benchmarks/key_margin.py`'s measure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ragsoup.train import read_log


def last_em_at_1(run: Path) -> tuple[int, float] | None:
    """The step and EM at k = 1 of the run's last held-out evaluation (None: no evaluation at k = 1 logged)."""
    evals = [rec for rec in read_log(run) if "em@1" in rec.get("eval", {})]
    return (evals[-1]["step"], float(evals[-1]["eval"]["em@1"])) if evals else None


KEYS_TASK = dict(task="needle-packed", k=1, limit=128, seed=12345)
KEYS_LOW = 15.0  # below this a stage 1 blends by position (sections (o), (p): seeds 200, 300 0.8-7.8; seed 0 31.2)


def keys_em(run: Path) -> float:
    """EM of the run's last checkpoint on packed needles at k = 1 (key matching inside one passage)."""
    from ragsoup.bench import run_eval

    return float(run_eval(model=run / "last", device="cpu", **KEYS_TASK).em)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the run's last EM at k = 1 is above --min-em, else 1 with one line on stderr."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="The stage's run directory (with log.jsonl).")
    ap.add_argument("--min-em", type=float, default=0.0, help="Fail at or below this EM at k = 1 (default 0).")
    ap.add_argument("--keys", action="store_true", help="Also report EM on packed needles at k = 1 (key matching).")
    ap.add_argument("--min-keys", type=float, default=None, help="With --keys: fail below this packed-needle EM.")
    args = ap.parse_args(argv)
    if not (args.run / "log.jsonl").is_file():
        print(f"stage_ok: no log.jsonl in {args.run}: pass a run directory of `ragsoup train`", file=sys.stderr)
        return 1
    last = last_em_at_1(args.run)
    if last is None:
        print(f"stage_ok: {args.run} logged no held-out EM at k = 1: train it with --eval-ks including 1",
              file=sys.stderr)
        return 1
    step, em = last
    if em <= args.min_em:
        print(f"stage_ok: {args.run} reads nothing (held-out EM {em:.1f} at k = 1, step {step}): it never left the "
              "loss plateau; start the recipe again with another seed (train_hour.sh: SEED=N; train: --seed N)",
              file=sys.stderr)
        return 1
    print(f"stage_ok: {args.run}: held-out EM {em:.1f} at k = 1, step {step}")
    if args.keys or args.min_keys is not None:
        keys = keys_em(args.run)
        verdict = ("copies whole values: key matching can grow from here (docs/models.md (p))" if keys >= KEYS_LOW
                   else "blends values by position: expect blended distractor answers and weak chains "
                        "(docs/models.md (o))")
        print(f"stage_ok: {args.run}: packed needles at k = 1 {keys:.1f} EM: {verdict}")
        if args.min_keys is not None and keys < args.min_keys:
            print(f"stage_ok: {args.run}: packed-needle EM {keys:.1f} is below --min-keys {args.min_keys:g}; start "
                  "the recipe again with another seed (train_hour.sh: SEED=N)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
