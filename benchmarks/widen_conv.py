"""Copy a checkpoint with a wider causal conv (d_conv), function-preserving: the new, older taps start at zero.

An experiment for key matching (docs/models.md): layer 0's B and C come from the conv window, so a wider window
lets them see the whole key. The copy computes exactly what the original does until it is finetuned.

    python benchmarks/widen_conv.py --model default --d-conv 8 --out runs/wide8-init
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from ragsoup.checkpoint import load_model, save_checkpoint
from ragsoup.model import Mamba2LM


def main() -> None:
    """Write the widened copy and check that its logits equal the original's on a sample sequence."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--d-conv", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    src = load_model(a.model)
    old = src.model
    w_old = old.cfg.d_conv
    if a.d_conv < w_old:
        raise SystemExit(f"--d-conv must be at least the model's {w_old}")
    new = Mamba2LM(replace(old.cfg, d_conv=a.d_conv))
    sd = old.state_dict()
    for name, t in sd.items():
        if name.endswith("conv1d.weight"):  # [d, 1, w]: the last taps act on the newest inputs
            wide = torch.zeros(t.shape[0], 1, a.d_conv, dtype=t.dtype)
            wide[..., a.d_conv - w_old:] = t
            sd[name] = wide
    new.load_state_dict(sd)
    ids = torch.tensor([src.tokenizer.encode("The special magic number for bright apple is 123456.")])
    with torch.no_grad():
        torch.testing.assert_close(new(ids)[0], old(ids)[0], rtol=1e-5, atol=1e-5)
    save_checkpoint(new, src.tokenizer, Path(a.out), meta={"train": src.meta.get("train", {}),
                                                            "widened_from": {"model": str(a.model), "d_conv": w_old}})
    print(f"wrote {a.out}: d_conv {w_old} -> {a.d_conv}, same logits")


if __name__ == "__main__":
    main()
