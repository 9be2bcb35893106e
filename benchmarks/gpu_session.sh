#!/usr/bin/env bash
# Issue 6's GPU checks and measurements in one device run (the GPU machine has no network and no mamba-ssm,
# causal-conv1d or faiss). Prepare on any machine:   bash benchmarks/gpu_wheels.sh        (fills .whl/)
# Run there (device tool, carry [".whl"]):            bash benchmarks/gpu_session.sh [--conv]
#   --conv   also compile causal-conv1d (~3 min for sm_90) so the fused conv is measured too
# Writes to $OUT (default ./gpu-out): kernels.txt, pytest-gpu.txt, gpu_kernels.json, train_memory.json.
# Dry run on a CPU machine: DEVICE=cpu PY=.venv/bin/python bash benchmarks/gpu_session.sh
set -uo pipefail
out=${OUT:-gpu-out}
dev=${DEVICE:-cuda}
py=${PY:-python3}
quick=""
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$dev" = cuda ]; then
  $py -m pip install -q --no-deps .whl/einops-*.whl .whl/mamba_ssm-*.whl 2>&1 | tail -2
  if [ "${1:-}" = "--conv" ]; then
    t=$(date +%s)
    CAUSAL_CONV1D_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
      $py -m pip install -q --no-build-isolation --no-deps .whl/causal_conv1d-*.tar.gz 2>&1 | tail -3
    echo "causal-conv1d build: $(( $(date +%s) - t )) s"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/kernels.txt"
else
  quick="--quick"
fi
$py -c "from ragsoup import kernels; print('kernels:', kernels.status_note())" | tee -a "$out/kernels.txt"
# every gpu-marked test (these files need no faiss)
$py -m pytest -q -m gpu tests/test_gpu.py tests/test_kernels.py tests/test_statecache.py -p no:cacheprovider \
  2>&1 | tail -25 | tee "$out/pytest-gpu.txt"
$py benchmarks/gpu_kernels.py --device "$dev" $quick --json > "$out/gpu_kernels.json" 2> "$out/gpu_kernels.err"
$py - "$out/gpu_kernels.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("fused run:", r["fused"]["note"])
for k, v in r["speedup"].items():
    print(f"{k}: fused / reference {v:.2f}x")
print("soup k=256:", {k: round(v, 3) for k, v in r["soup"].items()})
PY
ks=4,16,64; [ "$dev" = cuda ] || ks=4
$py benchmarks/train_memory.py --device "$dev" --ks $ks --groups 16 --batch 8 --json > "$out/train_memory.json" \
  2> "$out/train_memory.err"
tail -c 600 "$out/train_memory.json"; echo
