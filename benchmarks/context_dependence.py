"""Does a model read its passage? Mean answer-token NLL of held-out SQuAD questions given their own paragraph vs
another question's paragraph, almost always another article's (k = 1, where soup and concat are the same
computation: both are printed as a check).

Usage: python benchmarks/context_dependence.py MODEL [MODEL ...] [--squad PATH] [--n 256]
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace

import torch

from ragsoup.checkpoint import load_model
from ragsoup.tasks.base import SoupExample
from ragsoup.tasks.squad import SQUAD_TRAIN_PATH
from ragsoup.train import TrainConfig, loss_on_batch, squad_pools


def main() -> None:
    """Print, per model and mode, the answer NLL with the own paragraph and with another one."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--squad", default=SQUAD_TRAIN_PATH)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pool = squad_pools(args.squad)[1]  # the held-out articles
    recs = random.Random(0).sample(pool.records, args.n)
    own = [SoupExample(docs=[r["context"]], question=r["question"], answer=r["answers"][0], gold=[0]) for r in recs]
    other = [replace(ex, docs=[own[(i + 97) % len(own)].docs[0]]) for i, ex in enumerate(own)]  # another question's
    for path in args.models:
        loaded = load_model(path)
        model, tok = loaded.model.eval(), loaded.tokenizer
        for mode in ("soup", "concat"):
            cfg = TrainConfig(mode=mode, ckpt_group=0, max_tokens=512)
            nll = []
            for exs in (own, other):
                with torch.no_grad():
                    parts = [loss_on_batch(model, tok, cfg, 1, exs[i : i + 16])[0].item() for i in range(0, len(exs), 16)]
                nll.append(sum(parts) / len(parts))
            print(f"{path} {mode}: answer NLL own paragraph {nll[0]:.3f}, another question's paragraph {nll[1]:.3f}")


if __name__ == "__main__":
    main()
