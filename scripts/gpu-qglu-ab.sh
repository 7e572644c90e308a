#!/usr/bin/env bash
# The int8 / int4 epilogue fusion (the gated_act in the gate_up quant_linear's decode gemv; on by default since
# session 21, TSLLM_QGLU=0 turns it off): its kernels_test cases, then Llama-2-7B int4-wo g128 and int8-wo bs 1 / 4
# TPOT alternating on / off, and the in-step profile with it. Run after scripts/gpu-verify.sh has built native/:
#   bash scripts/gpu-qglu-ab.sh SHARED
set -uo pipefail
shared=$1
native/build/kernels_test quant 2>&1 | grep -E "quant_gemv_glu|FAIL|SUMMARY" | head -40
for q in int4-wo int8-wo; do
  timeout 200 bash scripts/gpu-latency-ab.sh "$shared" "$q" 1,4 - TSLLM_QGLU=0 - TSLLM_QGLU=0 "TSLLM_PROFILE=graph"
done
