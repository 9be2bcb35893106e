"""How well the decoder's query picks the asked passage's state out of a soup (diagnostic for key matching).

For multi-key examples (a needle with a distinct key in every passage), each passage is encoded alone. The
question is then prefilled from the mean soup, and at each of the last prompt tokens each layer's query C reads every
passage's SSM state on its own: r_j = || C . S_j || (over heads and head dimensions). The script reports, per
layer and for each of the last prompt positions, the ratio of the gold passage's read-out to the mean of the others'. A ratio near 1 means the query does not tell
the asked key's passage from the rest. It also reports how often the gold passage gives the largest read-out.

    python benchmarks/key_selectivity.py [--model default] [--k 16] [--n 64] [--seed 12345]
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from ragsoup import kernels
from ragsoup.checkpoint import load_model
from ragsoup.encode import encode_token_batch
from ragsoup.soup import pool_states
from ragsoup.tasks import generate_example
from ragsoup.tokenizer import passage_ids, prompt_ids


@torch.inference_mode()
def main() -> None:
    """Print one JSON object: per layer and prompt position (last token first), the mean gold/other read-out ratio
    and how often the gold passage's read-out is the largest."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="needle-multikey")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--last", type=int, default=6, help="prompt positions to read at, counted from the end")
    a = ap.parse_args()
    loaded = load_model(a.model, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    rng = random.Random(a.seed)
    n_layer = model.cfg.n_layer
    ratios = [[[] for _ in range(a.last)] for _ in range(n_layer)]
    top = [[0] * a.last for _ in range(n_layer)]
    captured: list[torch.Tensor] = []
    real_scan = kernels.ssd_scan

    def spy(x, dt, A, B, C, chunk_size, initial_state=None):
        captured.append(C[0, -a.last:])  # [last, g, n]: the queries at the last prompt tokens
        return real_scan(x, dt, A, B, C, chunk_size, initial_state)

    for _ in range(a.n):
        ex = generate_example(a.task, rng, a.k)
        states = encode_token_batch(model, [passage_ids(tok, d, 1024) for d in ex.docs], tok.pad_id)  # batch = k
        soup = pool_states(states, a.k, "mean")
        captured.clear()
        kernels.ssd_scan = spy
        try:
            model.hidden(torch.tensor([prompt_ids(tok, ex.question)]), soup)
        finally:
            kernels.ssd_scan = real_scan
        g = ex.gold[0]
        for i in range(n_layer):
            S = states[i].ssm.float()  # [k, h, p, n]
            h = S.shape[1]
            Cs = captured[i].float()  # [last, g, n]
            Cs = Cs.repeat_interleave(h // Cs.shape[1], dim=1)  # [last, h, n]
            readout = torch.einsum("khpn,thn->tkhp", S, Cs).flatten(2).norm(dim=2)  # [last, k]
            for t in range(readout.shape[0]):
                r = readout[-1 - t]  # t tokens before the end
                others = torch.cat([r[:g], r[g + 1:]])
                ratios[i][t].append(float(r[g] / others.mean()))
                top[i][t] += int(r.argmax() == g)
    out = {"model": a.model, "task": a.task, "k": a.k, "n": a.n,
           "chance_top": round(100 / a.k, 1),
           "layers": [{"layer": i,
                       "gold_over_others": [round(sum(r) / len(r), 2) for r in ratios[i]],  # last token first
                       "gold_is_top": [round(100 * t / a.n, 1) for t in top[i]]}
                      for i in range(n_layer)]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
