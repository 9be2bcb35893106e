"""Check mamba_ssm's Triton kernels against ragsoup's reference on a CPU, in Triton's interpreter.

Not a GPU measurement: the interpreter runs each Triton program with NumPy, so this checks the *conventions*
(shapes, layouts, initial states, in-place updates, the stand-in-package import in ragsoup.kernels) on any
machine, before a GPU session spends time on them. Needs triton, einops and mamba-ssm in a pure-Python build:

    pip install --target /tmp/tri triton einops
    MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip wheel --no-build-isolation --no-deps mamba-ssm==2.2.6.post3 -w /tmp/w
    pip install --target /tmp/tri --no-deps /tmp/w/mamba_ssm-*.whl
    PYTHONPATH=/tmp/tri TRITON_INTERPRET=1 python benchmarks/triton_interpret_parity.py
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torch

from ragsoup import kernels, ssd


def _interpreter_shims() -> None:
    """What the interpreter lacks on a CPU-only machine: a CUDA device context, and autotuning benchmarks."""
    from triton.runtime import autotuner

    torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
    autotuner.Autotuner.do_bench = property(lambda self: (lambda call, quantiles=None: [1.0, 1.0, 1.0]))
    prune = autotuner.Autotuner.prune_configs
    autotuner.Autotuner.prune_configs = lambda self, kwargs, *a: prune(self, kwargs, *a)[:1]  # one config each


def main() -> int:
    """Run the fused scan and step on CPU tensors in the interpreter; print max errors against the reference."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1 (see the docstring)", file=sys.stderr)
        return 1
    _interpreter_shims()
    scan, update = kernels.import_mamba_triton()
    gen = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    out = {"compiled_extension_imported": "selective_scan_cuda" in sys.modules}
    b, l, h, p, n, chunk = 2, 40, 4, 16, 16, 16
    for g in (1, 2):
        x, B, C, s0 = mk(b, l, h, p), mk(b, l, g, n), mk(b, l, g, n), mk(b, h, p, n)
        dt, A = torch.rand(b, l, h, generator=gen) * 0.1, -torch.rand(h, generator=gen) * 4
        y, fin = scan(x, dt, A, B, C, chunk, initial_states=s0, return_final_states=True)
        y_ref, fin_ref = ssd.ssd_chunked(x, dt, A, B, C, chunk, s0)
        D = mk(h)
        before = s0.clone()
        ys, ss = kernels.fused_ssm_step(update, s0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
        ys_ref, ss_ref = kernels.ssm_step(s0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)  # CPU: the reference
        out[f"ngroups={g}"] = {
            "scan_y_max_err": (y - y_ref).abs().max().item(), "scan_state_max_err": (fin - fin_ref).abs().max().item(),
            "scan_y_max_abs": y_ref.abs().max().item(), "step_y_max_err": (ys - ys_ref).abs().max().item(),
            "step_state_max_err": (ss - ss_ref).abs().max().item(), "caller_state_untouched": torch.equal(s0, before),
        }
    print(json.dumps(out, indent=1))
    ok = all(v["scan_y_max_err"] < 1e-4 and v["step_y_max_err"] < 1e-4 and v["caller_state_untouched"]
             for k, v in out.items() if k.startswith("ngroups"))
    return 0 if ok and not out["compiled_extension_imported"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
