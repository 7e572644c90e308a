#!/usr/bin/env bash
# The int8 / int4 epilogue fusion (TSLLM_QGLU=1: the gated_act in the gate_up quant_linear's decode gemv, written in
# session 20 and not yet run on a GPU): its kernels_test cases, then Llama-2-7B int4-wo g128 and int8-wo bs 1 / 4
# TPOT alternating off / on, and the in-step profile with it. Run after scripts/gpu-verify.sh has built native/:
#   bash scripts/gpu-qglu-ab.sh SHARED
set -uo pipefail
shared=$1
native/build/kernels_test quant 2>&1 | grep -E "quant_gemv_glu|FAIL|SUMMARY" | head -40
for q in int4-wo int8-wo; do
  timeout 200 bash scripts/gpu-latency-ab.sh "$shared" "$q" 1,4 - TSLLM_QGLU=1 - TSLLM_QGLU=1 "TSLLM_QGLU=1 TSLLM_PROFILE=graph"
done
