"""A fresh stage-1 model with one seed's initial weights and some parameters from another seed's (docs/models.md (t)).

    python benchmarks/init_swap.py --weights 2 --donor 0 --params dt_bias,A_log,in_proj --out runs/w2di0-init
    ragsoup train --preset default --until 2000 --bank-size 512 --fresh-max 8 --bank-refresh 20 --k-hold-loss 2.0 \
        --out runs/w2di0 --threads 2 --init runs/w2di0-init --seed 0

Both models are built as `ragsoup train` builds a fresh one from `train_hour.sh`'s first command (the seed, then the
BPE, then the model), the BPE from --bpe-seed for both. A parameter named by --params (a substring of its name, every
layer) is copied from the donor; NAME:FROM-TO copies only rows FROM..TO-1 (in_proj.weight:1024-1152 is B and C of
the stage-1 model). Prints each layer's longest head memories 1/(dt*-A) in tokens, then writes the checkpoint.
With --donor omitted nothing is copied: --weights 0 --out X prints seed 0's memories and writes its fresh model.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

import ragsoup.train as T
from ragsoup.checkpoint import save_checkpoint

STAGE1 = dict(bank_size=512, fresh_max=8, bank_refresh=20, k_hold_loss=2.0)  # train_hour.sh's stage 1 options


def fresh(cfg: T.TrainConfig, seed: int, tok) -> torch.nn.Module:
    """The fresh model of ``cfg`` and ``seed`` for tokenizer ``tok``."""
    torch.manual_seed(seed)
    return T.new_model(cfg.arch, cfg.model, tok)


def swap(model: torch.nn.Module, donor: torch.nn.Module, params: list[str]) -> int:
    """Copy the donor's parameters named by ``params`` (NAME or NAME:FROM-TO) into ``model``; the values copied."""
    theirs = dict(donor.named_parameters())
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            for spec in params:
                pat, _, rows = spec.partition(":")
                if pat in name:
                    a, b = (int(x) for x in rows.split("-")) if rows else (0, p.shape[0])
                    p[a:b].copy_(theirs[name][a:b])
                    n += p[a:b].numel()
    return n


def memories(model: torch.nn.Module, top: int = 3) -> list[list[float]]:
    """Each layer's ``top`` longest head memories, 1/(dt*-A) tokens at initialisation (dt = softplus(dt_bias))."""
    out = []
    for layer in model.backbone.layers:
        dt = torch.nn.functional.softplus(layer.mixer.dt_bias.detach())
        out.append(sorted((1 / (dt * torch.exp(layer.mixer.A_log.detach()))).tolist(), reverse=True)[:top])
    return out


def main() -> None:
    """Build, swap, print the memories, save."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=int, required=True, help="seed of the initial weights")
    ap.add_argument("--donor", type=int, default=None, help="seed whose --params replace the weights' own")
    ap.add_argument("--params", default="", help="comma-separated parameter name parts (NAME or NAME:FROM-TO)")
    ap.add_argument("--bpe-seed", type=int, default=0, help="seed of the BPE both models use")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    cfg = T.TrainConfig.from_dict({**T.PRESETS["default"], **STAGE1})
    tok = T.make_tokenizer(replace(cfg, seed=a.bpe_seed))
    model = fresh(cfg, a.weights, tok)
    if a.donor is not None and a.params:
        n = swap(model, fresh(cfg, a.donor, tok), a.params.split(","))
        print(f"{n:,} values from seed {a.donor}: {a.params}")
    for i, mem in enumerate(memories(model)):
        print(f"layer {i}: longest memories " + " ".join(f"{m:.0f}" for m in mem) + " tokens")
    save_checkpoint(model, tok, a.out)
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
