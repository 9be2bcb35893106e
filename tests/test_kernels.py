"""Kernel selection: CPU falls back to the reference; on CUDA with ragsoup[gpu] the fused scan matches it."""

import json

import pytest
import torch
from typer.testing import CliRunner

from ragsoup import kernels, ssd
from ragsoup.cli import app

HAS_FUSED = torch.cuda.is_available() and kernels.fused_scan() is not None


def _inputs(device, dtype, b=2, l=300, h=4, p=16, n=32, g=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x, B, C = mk(b, l, h, p), mk(b, l, g, n), mk(b, l, g, n)
    dt = torch.nn.functional.softplus(mk(b, l, h) - 2)
    A = -torch.rand(h, generator=gen) * 4
    s0 = mk(b, h, p, n)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), dt.to(device), A.to(device), cast(B), cast(C), s0.to(device)


def test_cpu_uses_the_reference_scan_and_says_why():
    assert kernels.active_backend("cpu") == "torch"
    x, dt, A, B, C, s0 = _inputs("cpu", torch.float32)
    y1, f1 = kernels.ssd_scan(x, dt, A, B, C, 64, s0)
    y2, f2 = ssd.ssd_chunked(x, dt, A, B, C, 64, s0)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(f1, f2)
    if not torch.cuda.is_available():
        assert "no CUDA" in kernels.status_note()


def test_doctor_json_reports_environment():
    res = CliRunner().invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["torch"] == torch.__version__
    assert rep["cuda_available"] == torch.cuda.is_available()
    assert rep["scan_kernel"] in ("torch", "triton")
    assert rep["embedder"]["found"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_FUSED, reason="needs CUDA and the mamba_ssm Triton kernels (ragsoup[gpu])")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)])
def test_fused_scan_matches_reference_with_initial_states(dtype, tol):
    x, dt, A, B, C, s0 = _inputs("cuda", dtype)
    y_f, s_f = kernels.fused_scan()(x, dt, A, B, C, 64, initial_states=s0, return_final_states=True)
    y_r, s_r = ssd.ssd_chunked(x.float(), dt, A, B.float(), C.float(), 64, s0)
    torch.testing.assert_close(y_f.float(), y_r, rtol=tol, atol=tol * y_r.abs().max().item())
    torch.testing.assert_close(s_f.float(), s_r, rtol=tol, atol=tol * s_r.abs().max().item())
