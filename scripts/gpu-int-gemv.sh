#!/usr/bin/env bash
# Issue 13's weight-only decode gemvs in one device command (sessions 16-17): gemv_bench's int4 / int8 variants per
# Llama-2-7B shape (M = 1, GB/s), then Llama-2-7B int4-wo g128 and int8-wo engines at batch 1 with the post-scale
# variants (13-18) against 0-12 only (TSLLM_QGEMV_TUNE_BELOW=13), alternating in one run, the tuner's picks
# (TSLLM_PROFILE=1), and the int4 step's per-op graph profile (TSLLM_PROFILE=graph). After native/build exists
# (scripts/gpu-verify.sh builds it):
#   bash scripts/gpu-int-gemv.sh SHARED
set -uo pipefail
shared=${1:-../shared}
for k in int4 int8; do
  echo "== native/build/gemv_bench $k"
  timeout 90 native/build/gemv_bench "$k" | grep -E "copy|^$k |plain +v"
done
timeout 200 bash scripts/gpu-latency-ab.sh "$shared" int4-wo 1 TSLLM_QGEMV_TUNE_BELOW=13 - TSLLM_QGEMV_TUNE_BELOW=13 - \
  TSLLM_PROFILE=1 TSLLM_PROFILE=graph
timeout 150 bash scripts/gpu-latency-ab.sh "$shared" int8-wo 1 TSLLM_QGEMV_TUNE_BELOW=13 - TSLLM_QGEMV_TUNE_BELOW=13 -
