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


def test_shipped_model_answers_the_same_on_both_paths():
    """encode -> soup -> decode on CUDA (fused kernels when installed) gives the CPU reference's tokens."""
    import random

    from ragsoup.checkpoint import load_model
    from ragsoup.evaluate import predict
    from ragsoup.tasks import generate_example

    rng = random.Random(7)
    examples = [generate_example("needle", rng, k) for k in (1, 4, 16, 4, 8, 2)]
    cpu = load_model("default", device="cpu")
    gpu = load_model("default", device="cuda")
    assert predict(gpu.model, gpu.tokenizer, examples) == predict(cpu.model, cpu.tokenizer, examples)


def test_training_gradients_match_the_cpu_reference():
    """One soup training step's gradients on CUDA (fused scan, conv) equal the CPU reference's within tolerance."""
    import random

    from ragsoup.tokenizer import ByteTokenizer
    from ragsoup.train import TrainConfig, draw_example, loss_on_batch

    torch.manual_seed(0)
    cfg_m = Mamba2Config.from_dict(dict(d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=16, vocab_size=264))
    cpu = Mamba2LM(cfg_m)
    gpu = Mamba2LM(cfg_m).cuda()
    gpu.load_state_dict(cpu.state_dict())
    cfg = TrainConfig(tasks="needle:1", passage_chars=120)
    rng = random.Random(0)
    batch = [draw_example(cfg, "needle", rng, 3) for _ in range(4)]
    tok = ByteTokenizer()
    for m in (cpu, gpu):
        loss, _ = loss_on_batch(m, tok, cfg, 3, batch)
        loss.backward()
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        g_ref = p_cpu.grad
        torch.testing.assert_close(p_gpu.grad.cpu(), g_ref, rtol=1e-3, atol=1e-3 * (g_ref.abs().max().item() + 1e-8),
                                   msg=lambda m, n=name: f"{n}: {m}")
