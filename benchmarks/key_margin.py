"""Does a model prefer the asked needle's value to the other needles' values in the same passage? (teacher-forced)

    python benchmarks/key_margin.py MODEL [MODEL ...] [--n 128] [--seed 12345] [--json]

On packed needles at k = 1 (task `needle-packed`: the asked needle and 1-3 needles of other keys in one passage),
the passage is encoded alone and each needle's value (`value <eos>`) is scored after `<q> question <a>`: the sum
of its tokens' log-probabilities. Per model it prints:

* key acc: the share of questions whose own value is the most likely of the passage's values, in percent (chance:
  the mean of 1 / needles, about 35);
* margin: the mean over questions of (own value's log-likelihood - the mean of the others'), in nats;
* follow / own: with another needle's value forced in after `<a>`, the share of its 2nd-6th digits (where the asked
  value's digit differs) that the model predicts as that value's next digit (it continues the value it started:
  copying whole values) / as the asked value's digit at that place.

A model that reads "the digits after *is*" by position scores every value of the passage alike (key acc near
chance, margin near 0); one that addresses values by their key ranks the asked one first. Unlike exact match,
this needs no value copied digit-perfect, so it shows a run's first steps toward key matching (docs/models.md (p)).
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from ragsoup.checkpoint import load_model
from ragsoup.encode import encode_token_batch, pad_batch
from ragsoup.generate import batch_states
from ragsoup.tasks import generate_example
from ragsoup.tokenizer import answer_ids, passage_ids, prompt_ids


@torch.inference_mode()
def value_scores(model, tok, doc: str, question: str, values: list[str]) -> tuple[list[float], list[list[int]]]:
    """For each `value <eos>` after `<q> question <a>`, from the state of `doc` encoded alone: its log-likelihood, and
    the model's top token at each of its positions (teacher-forced: the i-th after the value's first i tokens)."""
    state = encode_token_batch(model, [passage_ids(tok, doc, 1024)], tok.pad_id)  # batch 1
    prompt = prompt_ids(tok, question)
    seqs = [prompt + answer_ids(tok, v) for v in values]
    ids, lengths = pad_batch(seqs, tok.pad_id, model.device)
    logp = torch.log_softmax(model(ids, batch_states([state] * len(values)), lengths)[0].float(), -1)
    lls, tops = [], []
    for i, s in enumerate(seqs):
        pos = torch.arange(len(prompt) - 1, len(s) - 1)  # position t predicts token t + 1
        lls.append(float(logp[i, pos, torch.tensor(s[len(prompt):])].sum()))
        tops.append(logp[i, pos].argmax(-1).tolist())
    return lls, tops


def key_margin(model_path: str, n: int = 128, seed: int = 12345) -> dict:
    """Key acc, its chance level and the mean margin (nats) of a model on `n` packed-needle questions at k = 1, and
    how it continues another needle's value once given that value's first digits."""
    loaded = load_model(model_path, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    rng = random.Random(seed)
    hits, chance, margins = 0, 0.0, []
    follow = own = cont = 0
    while len(margins) < n:
        ex = generate_example("needle-packed", rng, 1)
        others = [a for _, a in ex.extra if a != ex.answer]
        if not others:  # another needle drew the same value: nothing to tell apart
            continue
        ll, top = value_scores(model, tok, ex.docs[ex.gold[0]], ex.question, [ex.answer] + others)
        hits += ll[0] > max(ll[1:])
        chance += 1 / len(ll)
        margins.append(ll[0] - sum(ll[1:]) / len(others))
        asked = answer_ids(tok, ex.answer)
        for value, pred in zip(others, top[1:]):  # another needle's value forced in: which digit comes next?
            forced = answer_ids(tok, value)
            for i in range(1, len(value)):  # its 2nd to last digit, where the asked value's digit differs
                if forced[i] != asked[i]:
                    cont += 1
                    follow += pred[i] == forced[i]
                    own += pred[i] == asked[i]
    return {"model": model_path, "n": n, "key_acc": 100 * hits / n, "chance": 100 * chance / n,
            "margin": sum(margins) / n, "follow": 100 * follow / cont, "own": 100 * own / cont}


def main(argv: list[str] | None = None) -> None:
    """Print one line (or one JSON object with --json) per model."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="Checkpoint directories or shipped model names.")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    for m in args.models:
        r = key_margin(m, args.n, args.seed)
        print(json.dumps(r) if args.json else
              f"{m}: key acc {r['key_acc']:.1f}% (chance {r['chance']:.1f}), margin {r['margin']:+.2f} nats, "
              f"follow {r['follow']:.1f}%, own {r['own']:.1f}%")


if __name__ == "__main__":
    main()
