#!/usr/bin/env bash
# Issue 6's GPU checks and measurements in ONE device run (the GPU machine has no network and no mamba-ssm,
# causal-conv1d or faiss; the GPU image has torch, triton, einops, sentence-transformers).
#   prepare on any machine:   bash benchmarks/gpu_wheels.sh      (fills the ignored .whl/, ~49 MiB)
#   device run, carry [".whl"], timeout_s 600:   bash benchmarks/gpu_session.sh
# Stages, each under its own time limit and all inside DEADLINE seconds (results land in $OUT as each ends, so a
# stage cut short costs only itself):
#   setup  mamba-ssm (Triton kernels only) and FAISS into /tmp/site, the embedder unpacked; causal-conv1d compiles
#          for sm_90 in the background meanwhile
#   1      doctor; gpu tests of the Triton scan and step and of the device state cache
#   2      (conv built) gpu tests of the fused conv and of the whole model (encode -> soup -> decode, training
#          gradients) against the CPU reference
#   3      gpu_kernels.py: encode and training throughput fused vs RAGSOUP_KERNELS=torch, soup k=256 vs a copy
#   4      ragsoup bench --k 256 --device cuda; warm ask latency by stage at k = 5 and 256
#   5      train_memory.py: peak CUDA memory at k = 4, 16, 64 with and without per-group checkpointing
# Dry run on a CPU machine (tiny sizes, gpu tests skip):
#   DEVICE=cpu PY=.venv/bin/python OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh
set -uo pipefail
out=${OUT:-gpu-out}
dev=${DEVICE:-cuda}
py=${PY:-python3}
deadline=${DEADLINE:-570}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)

stage() {  # stage NAME SECONDS CMD...: run CMD under min(SECONDS, time left before the deadline)
  local name=$1 limit=$2 left
  shift 2
  left=$(( deadline - ($(date +%s) - t0) - 5 ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then echo "== $name: skipped, deadline" >&2; return 1; fi
  echo "== $name (t=$(( $(date +%s) - t0 ))s, limit ${limit}s)" >&2
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: rc=$rc after $(( $(date +%s) - t0 ))s" >&2
  return $rc
}

emb=/tmp/minilm-bf16
mkdir -p "$emb" /tmp/site
$py benchmarks/pack_embedder.py unpack .whl/minilm-bf16.pack "$emb" || exit 1
quick=""
if [ "$dev" = cuda ]; then
  $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/mamba_ssm-*.whl .whl/faiss_cpu-*.whl
  (
    rm -rf /tmp/conv-src && mkdir -p /tmp/conv-src && tar xzf .whl/causal_conv1d-*-sm90.tar.gz -C /tmp/conv-src &&
      cd /tmp/conv-src/causal_conv1d-* && CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=8 \
      $py -m pip install -q --no-index --no-build-isolation --no-deps --target /tmp/conv . && echo CONV-BUILT
  ) > /tmp/conv.log 2>&1 &
  conv_pid=$!
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
else
  quick="--quick"
fi
echo "setup done at $(( $(date +%s) - t0 ))s"

stage doctor 60 $py -m ragsoup doctor --json > "$out/doctor.json"
cat "$out/doctor.json"
stage tests-scan 150 $py -m pytest -q -m gpu tests/test_kernels.py tests/test_statecache.py -p no:cacheprovider

if [ "$dev" = cuda ]; then
  left=$(( deadline - ($(date +%s) - t0) - 300 ))  # wait for the conv build, leaving the stages below 300 s
  (( left > 0 )) && timeout "$left" tail --pid=$conv_pid -f /dev/null
  echo "causal-conv1d build ended at $(( $(date +%s) - t0 ))s:"; tail -5 /tmp/conv.log
  if grep -q CONV-BUILT /tmp/conv.log; then export PYTHONPATH="/tmp/conv:$PYTHONPATH"; fi
  $py -c "from ragsoup import kernels; print('kernels:', kernels.status_note())"
fi
stage tests-model 150 $py -m pytest -q -m gpu tests/test_kernels.py tests/test_gpu.py -p no:cacheprovider -rs

stage gpu-kernels 150 $py benchmarks/gpu_kernels.py --device "$dev" $quick --json > "$out/gpu_kernels.json"
$py -c "
import json, sys
r = json.load(open(sys.argv[1]))
print('fused run:', r['fused']['note'])
for k, v in r['speedup'].items():
    print(f'{k}: fused / reference {v:.2f}x')
print('soup k=256:', {k: round(v, 3) for k, v in r['soup'].items()})" "$out/gpu_kernels.json"

ks=5,256
[ "$dev" = cuda ] || ks=5,16
stage bench 150 $py -m ragsoup bench --k 256 --device "$dev" --embedder "$emb" --cache-dir .bench/gpu $quick \
  --out /tmp/bench --json > "$out/bench.json"
tar czf "$out/bench.tgz" -C /tmp bench 2>/dev/null
tail -c 400 "$out/bench.json"; echo
stage ask-latency 60 $py benchmarks/ask_latency.py --index .bench/gpu/index \
  --questions .bench/gpu/corpus/questions.jsonl --ks $ks > "$out/ask_latency.json"
cat "$out/ask_latency.json"

mks=4,16,64
[ "$dev" = cuda ] || mks=4
stage train-memory 60 $py benchmarks/train_memory.py --device "$dev" --ks $mks --groups 0,16 --batch 8 \
  --mallocs default --json > "$out/train_memory.json"
cat "$out/train_memory.json"; echo
echo "all stages done at $(( $(date +%s) - t0 ))s"
