"""Write an untrained (random-weight) checkpoint of a pretraining preset's architecture, for latency runs only.

Latency does not depend on the weights' values, so `ragsoup bench` on this checkpoint measures what soup and
concat cost with a larger model before one is trained (its EM is meaningless; cap decoding with
--max-new-tokens to the trained model's answer length). Example (docs/results.md, section 1):

    python benchmarks/untrained_checkpoint.py --preset wiki-small --tokenizer runs/wiki-lm/data/tokenizer.json \
        --out runs/wiki-small-untrained
    ragsoup bench --k 256 --passage-chars 600 --model runs/wiki-small-untrained --max-new-tokens 7 \
        --queries 30 --concat-queries 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ragsoup.checkpoint import save_checkpoint
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.pretrain import PRETRAIN_PRESETS
from ragsoup.tokenizer import load_tokenizer


def main() -> None:
    """Build the preset's model with random weights and save it with the given tokenizer."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="wiki-small")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json (e.g. from `ragsoup pretrain --prepare-only`)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--passage-chars", type=int, default=600)
    a = ap.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer(Path(a.tokenizer))
    cfg = Mamba2Config(**{**PRETRAIN_PRESETS[a.preset]["model"], "vocab_size": tok.vocab_size})
    model = Mamba2LM(cfg)
    save_checkpoint(model, tok, Path(a.out), meta={"train": {"passage_chars": a.passage_chars, "untrained": True}})
    print(f"wrote {a.out}: {model.num_params():,} parameters, {cfg.state_numel() * 2:,} bytes of fp16 state per passage")


if __name__ == "__main__":
    main()
