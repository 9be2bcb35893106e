#!/usr/bin/env bash
# Builds, on any machine with registry access, what a GPU machine (no network) needs for ragsoup[gpu], into the
# ignored .whl/ folder that a device run carries (`carry: [".whl"]`):
#   - mamba-ssm as a pure-Python wheel (its Triton kernels only; no CUDA compile, ~3 s),
#   - einops (the Triton kernels import it),
#   - the causal-conv1d source, to compile on the GPU machine (~3 min for sm_90),
#   - faiss-cpu for Python 3.12, and (into the ignored .emb/) the MiniLM embedder in bf16.
# On the GPU machine:
#   pip install --no-deps .whl/einops-*.whl .whl/mamba_ssm-*.whl
#   CAUSAL_CONV1D_FORCE_BUILD=TRUE pip install --no-build-isolation --no-deps .whl/causal_conv1d-*.tar.gz  # optional
#   (FORCE_BUILD: no attempt to download a prebuilt wheel from GitHub, which a GPU machine cannot reach)
set -euo pipefail
out=${1:-.whl}
mkdir -p "$out"
sdist() {  # sdist NAME VERSION DIR: fetch a source archive from PyPI without building its metadata
  python - "$@" <<'PY'
import json, sys, urllib.request
name, version, dest = sys.argv[1:]
rel = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json"))["releases"][version]
f = next(f for f in rel if f["filename"].endswith(".tar.gz"))
urllib.request.urlretrieve(f["url"], f"{dest}/{f['filename']}")
print(f"{dest}/{f['filename']}")
PY
}
pip download --no-deps -d "$out" einops
tmp=$(mktemp -d)
tar xzf "$(sdist mamba-ssm 2.2.6.post3 "$tmp")" -C "$tmp"
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip wheel --no-build-isolation --no-deps \
  "$tmp/mamba_ssm-2.2.6.post3" -w "$out"
sdist causal-conv1d 1.7.0 "$out"
# for `ask`/`bench` on the GPU machine (its Python is 3.12): FAISS, and the embedder in bf16 (44 MiB, carried alone
# in a second run: together they pass a run's 64 MiB)
pip download --no-deps --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d "$out" \
  "faiss-cpu==1.15.1"
python benchmarks/export_embedder.py .emb/minilm-bf16
rm -rf "$tmp"
ls -la "$out" .emb/minilm-bf16
