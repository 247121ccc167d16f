#!/usr/bin/env bash
# The CUDA backend's work on a lent GPU machine, in one command (bench/BENCHMARKS.md "CUDA backend"):
#   bench/run_cuda_device.sh [STEPS]      STEPS: comma list of build,tests,bench,pytorch,streams (default: all)
# Environment: BENCH_WHAT (bench_cuda --what), BENCH_ARGS (more bench_cuda arguments, e.g. --variants graphs),
# WORKERS, STREAMS, STREAM_SECONDS (the streams step).
# Logs and JSON go to $OUT (default /tmp/evout). Needs carry/cuda-node-deps.tar.xz (scripts/cuda_node.sh pack).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/evout}
mkdir -p "$OUT"
STEPS=",${1:-build,tests,bench,pytorch,streams},"
step() { [[ "$STEPS" == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
if step build; then
  t0=$(date +%s)
  scripts/cuda_node.sh build build-node >"$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
  echo "build: $(($(date +%s) - t0)) s"
fi
eval "$(scripts/cuda_node.sh env)"
if step tests; then
  timeout 300 build-node/edgevlm_cuda_tests --gtest_color=no >"$OUT/tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "^\[ *(FAILED|PASSED|SKIPPED) |\[cuda|\[golden|Failure|Expected|Which is|actual|rel " "$OUT/tests.log" | head -120
fi
if step bench; then
  timeout 300 build-node/bench_cuda --what ${BENCH_WHAT:-attn,tile,batch,decode,profile} ${BENCH_ARGS:-} \
    --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench.log"
fi
if step pytorch; then
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/pytorch_vlm_ref.py --json "$OUT/pytorch.json" 2>&1 | grep -v Warning | tee "$OUT/pytorch.log"
fi
if step streams; then
  timeout 200 build-node/bench_cuda --what streams --seconds ${STREAM_SECONDS:-10} --streams ${STREAMS:-256} \
    --workers ${WORKERS:-8} --json "$OUT/streams.json" 2>&1 | tee "$OUT/streams.log"
fi
