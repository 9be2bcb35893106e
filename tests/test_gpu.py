"""GPU paths against the CPU reference (marked gpu; skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from ragsoup.encode import encode_passages
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tokenizer import ByteTokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_gpu_encoding_matches_the_fp32_cpu_states():
    torch.manual_seed(0)
    cfg = Mamba2Config.from_dict(dict(d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=16, vocab_size=264))
    model = Mamba2LM(cfg).eval()
    texts = ["The special magic number for blue fox is 123456.", "A short one.", "x" * 300]
    tok = ByteTokenizer()
    cpu = torch.cat([r for _, r in encode_passages(model, tok, texts, dtype=torch.float32)])
    gpu = torch.cat([r for _, r in encode_passages(model.cuda(), tok, texts, dtype=torch.float32)])
    rel = (gpu - cpu).norm(dim=1) / cpu.norm(dim=1)
    assert float(rel.max()) < 3e-2, rel
