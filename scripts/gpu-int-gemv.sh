#!/usr/bin/env bash
# Issue 13's weight-only decode gemvs in one device command (session 16): gemv_bench's int4 / int8 variants per
# Llama-2-7B shape (M = 1, GB/s), then Llama-2-7B int4-wo g128 and int8-wo engines at batch 1 with the
# tensor-core-as-A variants (7-12) against variants 0-6 only (TSLLM_QGEMV_TUNE_BELOW=7), alternating in one run,
# the tuner's picks, and the int4 engine with gemv_bench's session-16 picks forced per shape (TSLLM_QGEMV_PICKS:
# does the graph-timed ranking hold in the engine?). After native/build exists (scripts/gpu-verify.sh builds it):
#   bash scripts/gpu-int-gemv.sh SHARED
set -uo pipefail
shared=${1:-../shared}
for k in int4 int8; do
  echo "== native/build/gemv_bench $k"
  timeout 60 native/build/gemv_bench "$k" | grep -E "copy|^$k |plain +v"
done
picks=TSLLM_QGEMV_PICKS=12288x4096:8,4096x4096:11,22016x4096:7,4096x11008:11
timeout 150 bash scripts/gpu-latency-ab.sh "$shared" int4-wo 1 TSLLM_QGEMV_TUNE_BELOW=7 - "$picks" - "$picks" \
  TSLLM_PROFILE=1
timeout 90 bash scripts/gpu-latency-ab.sh "$shared" int8-wo 1 TSLLM_QGEMV_TUNE_BELOW=7 - TSLLM_QGEMV_TUNE_BELOW=7 -
