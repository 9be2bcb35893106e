"""Is mean souping's loss at large k one of scale? A diagnostic with a background-centred, amplified mean.

A mean soup of k passages holds the needle's state at weight 1/k on top of the average filler state. If the
decoder fails at large k because that 1/k signal is too small (and not because it is buried in the other
passages' noise), amplifying the deviation from a background state should bring the answer back:

    soup_g = bg + g * (mean(S_1..S_k) - bg),   g = k ** e

``bg`` is the mean state of ``--bg`` passages of other examples of the task, gold passages included (for an
index: the mean state of its passages, computed once). e = 0 is plain mean souping; e = 1 is the background-centred sum; e = 0.5
keeps the filler's share of the deviation as large as one passage's at every k (variance-preserving). Each example's passages are encoded once and every
gain is decoded from them. Components: ``--parts ssm`` scales the SSM states only, ``all`` the conv states too.

    python benchmarks/soup_gain.py [--model default] [--k 64] [--n 64] [--exponents 0,0.5,0.75,1] [--parts ssm|all]
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from ragsoup.background import background_passages
from ragsoup.checkpoint import load_model
from ragsoup.evaluate import soup_state
from ragsoup.generate import generate
from ragsoup.metrics import best_em_f1
from ragsoup.model import LayerState, States
from ragsoup.tasks import ProseFiller, generate_example


def amplify(mean: States, bg: States, gain: float, parts: str) -> States:
    """bg + gain * (mean - bg), per layer; the conv states too when parts == 'all'."""
    out = []
    for m, b in zip(mean, bg):
        conv = b.conv + gain * (m.conv - b.conv) if parts == "all" else m.conv
        out.append(LayerState(conv, b.ssm + gain * (m.ssm - b.ssm)))
    return out


def background_texts(a: argparse.Namespace, haystack: ProseFiller | None) -> list[str]:
    """``--bg`` passages whose mean state is the background: filler only (template, or prose from a file, as
    `ragsoup background` draws them), or every passage of other examples of the task, gold ones included (as an
    index's mean state would be)."""
    if a.bg_from != "task":
        return background_passages("template" if a.bg_from == "filler" else a.bg_from, a.bg, a.seed + 1, 200)
    rng = random.Random(a.seed + 1)
    corpus: list[str] = []
    while len(corpus) < a.bg:
        kw = {"filler": haystack} if haystack else {}
        corpus += generate_example(a.task, rng, min(a.k, 64), **kw).docs
    return corpus[: a.bg]


@torch.inference_mode()
def main() -> None:
    """Print one JSON object: EM per gain for the task at k."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="needle")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--bg", type=int, default=512, help="filler passages averaged into the background state")
    ap.add_argument("--exponents", default="0,0.5,0.75,1", help="gain = k ** e for each e")
    ap.add_argument("--parts", default="ssm", choices=("ssm", "all"))
    ap.add_argument("--bg-from", default="filler", help="filler (template), task (other examples' passages, gold "
                    "included) or a prose file (.txt / Gutenberg .jsonl.gz)")
    ap.add_argument("--filler", default=None, help="haystack from this prose file instead of template filler")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    loaded = load_model(a.model, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    exps = [float(e) for e in a.exponents.split(",")]
    haystack = ProseFiller(a.filler) if a.filler else None
    bg = soup_state(model, tok, background_texts(a, haystack), "mean", batch_size=64)  # mean state, batch 1
    rng = random.Random(a.seed)
    hits = {e: 0 for e in exps}
    for _ in range(a.n):
        ex = generate_example(a.task, rng, a.k, **({"filler": haystack} if haystack else {}))
        mean = soup_state(model, tok, ex.docs, "mean", batch_size=64)
        for e in exps:
            ans = generate(model, tok, amplify(mean, bg, a.k ** e, a.parts), [ex.question], 12)[0]
            hits[e] += best_em_f1(ans, ex.answers)[0]
    print(json.dumps({"model": a.model, "task": a.task, "k": a.k, "n": a.n, "seed": a.seed, "parts": a.parts,
                      "bg_from": a.bg_from, "filler": a.filler,
                      "em_by_exponent": {str(e): round(100 * hits[e] / a.n, 1) for e in exps}}))


if __name__ == "__main__":
    main()
