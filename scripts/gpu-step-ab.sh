#!/usr/bin/env bash
# Session 19's batch-1 step A/Bs in one device command (after scripts/gpu-verify.sh built native/), Llama-2-7B random
# weights through scripts/gpu-latency-ab.sh, settings alternated; TSLLM_PROFILE=graph prints each part alone and in
# the step:
#   bash scripts/gpu-step-ab.sh SHARED
# fp16 / FP8 / int4-wo: the norms and gated_act with PDL (TSLLM_NORM_PDL=1|2) and every prologue pair fused
# (TSLLM_GEMV_PROLOGUE=2 / TSLLM_QGEMV_PROLOGUE=2) against the defaults; fp16 decode attention variants 2 / 4.
set -uo pipefail
shared=$1
ab() { bash scripts/gpu-latency-ab.sh "$shared" "$@" | grep -E "^==|^batch|rror|norms launched|nodes|sum of"; }
ab fp16 1 - TSLLM_NORM_PDL=1 TSLLM_NORM_PDL=2 TSLLM_GEMV_PROLOGUE=2 - TSLLM_NORM_PDL=1 TSLLM_NORM_PDL=2 \
  TSLLM_GEMV_PROLOGUE=2 TSLLM_PROFILE=graph "TSLLM_DECODE_VARIANT=2 TSLLM_PROFILE=graph" \
  "TSLLM_DECODE_VARIANT=4 TSLLM_PROFILE=graph"
for q in fp8 int4-wo; do
  ab $q 1 - TSLLM_NORM_PDL=1 TSLLM_NORM_PDL=2 TSLLM_QGEMV_PROLOGUE=2 - TSLLM_NORM_PDL=1 TSLLM_NORM_PDL=2 \
    TSLLM_QGEMV_PROLOGUE=2 TSLLM_PROFILE=graph
done
