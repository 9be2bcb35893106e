#!/usr/bin/env bash
# Builds, on any machine with registry access, what a GPU machine (no network) needs for ragsoup[gpu], into the
# ignored .whl/ folder that a device run carries (`carry: [".whl"]`):
#   - mamba-ssm as a pure-Python wheel (its Triton kernels only; no CUDA compile, ~3 s),
#   - the causal-conv1d source, its setup.py cut to sm_90 alone (it builds 9 architectures, ~3 min on 16 cores),
#     to compile on the GPU machine,
#   - faiss-cpu for Python 3.12, and the MiniLM embedder in bf16, packed (benchmarks/pack_embedder.py: 45 -> 30 MiB,
#     so that one run carries all of .whl/ and the tree under 64 MiB; the unpacked copy stays in the ignored .emb/).
# The GPU image already has einops, triton and torch. benchmarks/gpu_session.sh installs and uses all of this.
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
tmp=$(mktemp -d)
tar xzf "$(sdist mamba-ssm 2.2.6.post3 "$tmp")" -C "$tmp"
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip wheel --no-build-isolation --no-deps \
  "$tmp/mamba_ssm-2.2.6.post3" -w "$out"
conv=$(sdist causal-conv1d 1.7.0 "$tmp")
tar xzf "$conv" -C "$tmp"
python - "$tmp/causal_conv1d-1.7.0/setup.py" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
pair = r'cc_flag\.append\("-gencode"\)\s*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)'
n = len(re.findall(pair, s))
s = re.sub(pair, lambda m: m.group(0) if m.group(1) == "90" else "pass", s)
assert n >= 2 and s.count("compute_90") == 1, "causal-conv1d setup.py changed: check its -gencode list"
open(p, "w").write(s)
PY
tar czf "$out/causal_conv1d-1.7.0-sm90.tar.gz" -C "$tmp" causal_conv1d-1.7.0
# for `ask`/`bench` on the GPU machine (its Python is 3.12): FAISS, and the embedder in bf16, packed
pip download --no-deps --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d "$out" \
  "faiss-cpu==1.15.1"
python benchmarks/export_embedder.py .emb/minilm-bf16
python benchmarks/pack_embedder.py pack .emb/minilm-bf16 "$out/minilm-bf16.pack"
rm -rf "$tmp"
ls -la "$out"; du -sh "$out"
