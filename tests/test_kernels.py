"""Kernel selection: CPU falls back to the reference; on CUDA with ragsoup[gpu] the fused scan matches it."""

import json

import pytest
import torch
from typer.testing import CliRunner

from ragsoup import kernels, ssd
from ragsoup.cli import app

HAS_FUSED = torch.cuda.is_available() and kernels.fused_ops() is not None


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
    y_f, s_f = kernels.fused_ops().chunk_scan(x, dt, A, B, C, 64, initial_states=s0, return_final_states=True)
    y_r, s_r = ssd.ssd_chunked(x.float(), dt, A, B.float(), C.float(), 64, s0)
    torch.testing.assert_close(y_f.float(), y_r, rtol=tol, atol=tol * y_r.abs().max().item())
    torch.testing.assert_close(s_f.float(), s_r, rtol=tol, atol=tol * s_r.abs().max().item())


def _fake_mamba_ssm(root):
    """A package laid out like mamba_ssm whose __init__ fails as it does without the compiled extension."""
    pkg = root / "mamba_ssm"
    (pkg / "ops" / "triton").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import selective_scan_cuda  # compiled, absent\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "ssd_combined.py").write_text(
        "from mamba_ssm.ops.triton.helper import tag\ndef mamba_chunk_scan_combined(*a, **k):\n    return tag('scan')\n")
    (pkg / "ops" / "triton" / "selective_state_update.py").write_text(
        "def selective_state_update(*a, **k):\n    return 'update'\n")
    (pkg / "ops" / "triton" / "helper.py").write_text("def tag(s):\n    return 'fused ' + s\n")


def test_triton_kernels_import_without_running_the_package_init(tmp_path, monkeypatch):
    import importlib
    import sys

    _fake_mamba_ssm(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError):  # what a plain import does on a machine without the compiled extension
        importlib.import_module("mamba_ssm")
    scan, update = kernels.import_mamba_triton()
    assert scan() == "fused scan" and update() == "update"
    assert "mamba_ssm" not in sys.modules  # the stand-in parent is gone again
    with pytest.raises(ImportError):  # so a later real import still runs (and here fails in) the package __init__
        importlib.import_module("mamba_ssm")
    for name in [m for m in sys.modules if m.startswith("mamba_ssm")]:
        del sys.modules[name]


def test_import_says_when_mamba_ssm_is_missing(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="not installed"):
        kernels.import_mamba_triton()


def test_cpu_step_and_conv_ops_are_the_reference():
    gen = torch.Generator().manual_seed(1)
    b, h, p, n, g, d, w = 3, 4, 8, 16, 2, 12, 4
    s, x = torch.randn(b, h, p, n, generator=gen), torch.randn(b, h, p, generator=gen)
    dt, A, D = torch.rand(b, h, generator=gen), -torch.rand(h, generator=gen), torch.randn(h, generator=gen)
    B, C = torch.randn(b, g, n, generator=gen), torch.randn(b, g, n, generator=gen)
    y, s1 = kernels.ssm_step(s, x, dt, A, B, C, D)
    rep = lambda t: t.repeat_interleave(h // g, dim=1)  # noqa: E731 - each group serves h/g heads
    y_ref, s_ref = ssd.ssm_step(s, x, dt, A, rep(B), rep(C))
    torch.testing.assert_close(y, y_ref + x * D[:, None])
    torch.testing.assert_close(s1, s_ref)
    u, wt, bias = torch.randn(b, 10, d, generator=gen), torch.randn(d, 1, w, generator=gen), torch.randn(d, generator=gen)
    init, lengths = torch.randn(b, d, w - 1, generator=gen), torch.tensor([10, 4, 1])
    out, st = kernels.causal_conv(u, wt, bias, init, lengths)
    out_ref, padded = ssd.causal_conv(u, wt, bias, init)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(st, ssd.conv_state_at(padded, lengths, w))
    o1, st1 = kernels.conv_step(init, u[:, 0], wt, bias)
    torch.testing.assert_close(o1, out_ref[:, 0])
    torch.testing.assert_close(st1, ssd.conv_state_at(padded, torch.ones(b, dtype=torch.long), w))


FUSED_CONV = HAS_FUSED and kernels.fused_ops().conv is not None


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_FUSED, reason="needs CUDA and the mamba_ssm Triton kernels (ragsoup[gpu])")
@pytest.mark.parametrize("g", [1, 2])
def test_fused_step_matches_reference(g):
    gen = torch.Generator().manual_seed(2)
    b, h, p, n = 3, 4, 16, 32
    mk = lambda *shape: torch.randn(*shape, generator=gen).cuda()  # noqa: E731
    s, x, B, C, D = mk(b, h, p, n), mk(b, h, p), mk(b, g, n), mk(b, g, n), mk(h)
    dt, A = torch.rand(b, h, generator=gen).cuda(), -torch.rand(h, generator=gen).cuda() * 4
    before = s.clone()
    y, s1 = kernels.ssm_step(s, x, dt, A, B, C, D)
    assert torch.equal(s, before)  # the kernel updates a copy, never the caller's (souped) state
    y_ref, s_ref = kernels.ssm_step(s.cpu(), x.cpu(), dt.cpu(), A.cpu(), B.cpu(), C.cpu(), D.cpu())
    torch.testing.assert_close(y.cpu(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s1.cpu(), s_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not FUSED_CONV, reason="needs CUDA and causal-conv1d (ragsoup[gpu])")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_fused_conv_matches_reference_with_initial_states(dtype, tol):
    gen = torch.Generator().manual_seed(3)
    b, l, d, w = 3, 37, 64, 4
    u, wt, bias = torch.randn(b, l, d, generator=gen), torch.randn(d, 1, w, generator=gen), torch.randn(d, generator=gen)
    init, lengths = torch.randn(b, d, w - 1, generator=gen), torch.tensor([37, 20, 2])
    cuda = lambda t: t.to("cuda", dtype)  # noqa: E731
    out, st = kernels.causal_conv(cuda(u), cuda(wt), cuda(bias), cuda(init), lengths.cuda())
    out_ref, st_ref = kernels.causal_conv(u, wt, bias, init, lengths)
    torch.testing.assert_close(out.float().cpu(), out_ref, rtol=tol, atol=tol * out_ref.abs().max().item())
    torch.testing.assert_close(st.float().cpu(), st_ref, rtol=tol, atol=tol)
    o1, s1 = kernels.conv_step(cuda(init), cuda(u[:, 0]), cuda(wt), cuda(bias))
    o1_ref, s1_ref = kernels.conv_step(init, u[:, 0], wt, bias)
    torch.testing.assert_close(o1.float().cpu(), o1_ref, rtol=tol, atol=tol * o1_ref.abs().max().item())
    torch.testing.assert_close(s1.float().cpu(), s1_ref, rtol=tol, atol=tol)
