#!/usr/bin/env bash
# Issue 6's GPU checks and measurements in two device runs (the GPU machine has no network and no mamba-ssm,
# causal-conv1d or faiss). Prepare on any machine:   bash benchmarks/gpu_wheels.sh   (fills .whl/ and .emb/)
#   run 1, carry [".whl"]:  bash benchmarks/gpu_session.sh kernels [--conv]
#       installs the kernels (--conv: also compiles causal-conv1d, ~3 min for sm_90) and FAISS into .pydeps/ (kept
#       on the machine for run 2), then: every gpu test, gpu_kernels.py (encode and training throughput, fused vs
#       RAGSOUP_KERNELS=torch; the device soup at k = 256 against a device-to-device copy), training memory.
#   run 2, carry [".emb"], straight after (the machine stays warm for 30 s):  bash benchmarks/gpu_session.sh ask
#       ragsoup bench --k 256 --device cuda, and warm ask latency by stage at k = 5 and 256.
# Writes to $OUT (default ./gpu-out). Dry run on a CPU machine: DEVICE=cpu PY=.venv/bin/python bash ... kernels
set -uo pipefail
stage=${1:-kernels}
out=${OUT:-gpu-out}
dev=${DEVICE:-cuda}
py=${PY:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD/.pydeps:$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$stage" = ask ]; then
  emb=.emb/minilm-bf16
  [ -d "$emb" ] || { echo "no $emb: run benchmarks/gpu_wheels.sh here and carry .emb" >&2; exit 1; }
  $py -c "import faiss" || { echo "no faiss: run stage 'kernels' first on this machine" >&2; exit 1; }
  quick=""; [ "$dev" = cuda ] || quick="--quick"
  $py -m ragsoup bench --k 256 --device "$dev" --embedder "$emb" --cache-dir .bench/gpu $quick \
    --out "$out/bench" --json > "$out/bench.json" 2> "$out/bench.err"
  tail -c 400 "$out/bench.json"; echo
  ks=5,256; [ "$dev" = cuda ] || ks=5,16
  $py benchmarks/ask_latency.py --index .bench/gpu/index --questions .bench/gpu/corpus/questions.jsonl --ks $ks \
    | tee "$out/ask_latency.json"
  exit 0
fi

quick=""
if [ "$dev" = cuda ]; then
  $py -m pip install -q --no-deps .whl/einops-*.whl .whl/mamba_ssm-*.whl 2>&1 | tail -2
  $py -m pip install -q --no-deps --target .pydeps .whl/faiss_cpu-*.whl 2>&1 | tail -2
  if [ "${2:-}" = "--conv" ]; then
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
