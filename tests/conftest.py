"""Suite-wide settings (one torch thread: tiny models run faster, timings don't matter in tests) and shared fixtures."""

from pathlib import Path

import pytest
import torch

from ragsoup.checkpoint import save_checkpoint
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tokenizer import ByteTokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    """Per test, since a CLI test run in-process may set its own thread count (--threads)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random byte-level Mamba2 checkpoint (trained on 60-character passages, says its meta)."""
    tok = ByteTokenizer()
    torch.manual_seed(0)
    cfg = Mamba2Config.from_dict(dict(d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=8,
                                      vocab_size=-(-tok.vocab_size // 8) * 8))
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_checkpoint(Mamba2LM(cfg), tok, path, meta={"train": {"passage_chars": 60}})
    return path


@pytest.fixture
def fit_fixed_batch():
    """fit(model, tok, cfg, k, batch) -> (losses of 6 AdamW steps on that one batch, loss after them)."""
    import math

    from ragsoup.train import loss_on_batch

    def fit(model, tok, cfg, k, batch, steps: int = 6, lr: float = 1e-2) -> tuple[list[float], float]:
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            loss, n_tok = loss_on_batch(model, tok, cfg, k, batch)
            assert math.isfinite(loss.item()) and n_tok > 0
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            final = loss_on_batch(model, tok, cfg, k, batch)[0].item()
        return losses, final

    return fit
