#!/usr/bin/env bash
# Runtime A/B at batch-1-style latency in one run: a random-weight Llama-2-7B engine (../shared/configs), then
# `tsllm-bench latency` once per environment setting, in the order given ("-" for none), e.g.
#   bash scripts/gpu-latency-ab.sh SHARED fp8 1 - TSLLM_FP8_ROWS_M1=1 -
# (quant: fp16 or a --quant kind, batches: --batch-size's list; ISL/OSL 128/128, 3 runs each). CONFIG=llama-3.1-8b
# DTYPE=bf16 pick another config of ../shared/configs and activation dtype (default llama-2-7b, fp16); MAX_BATCH the
# engine's max batch size (default 64).
set -uo pipefail
shared=$1 quant=$2 batches=$3
shift 3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
f=()
[ "$quant" != fp16 ] && f=(--quant "$quant")
./bin/tsllm-compile.mjs models/llama.ts --config "$shared/configs/${CONFIG:-llama-2-7b}.json" --random-weights --sm 90 \
  --dtype "${DTYPE:-fp16}" --max-batch-size "${MAX_BATCH:-64}" --max-seq-len 512 --max-num-tokens 8192 -o "$work/e" "${f[@]}" | tail -1
for setting in "$@"; do
  echo "== $quant ${setting}"
  if [ "$setting" = - ]; then envs=(); else read -r -a envs <<<"$setting"; fi
  env "${envs[@]}" ./bin/tsllm-bench.mjs latency "$work/e" --batch-size "$batches" --input-len 128 --output-len 128 \
    --runs 3 2>&1 | grep -E "^batch|copy|rror|tsllm_timeline|quant gemv|step tune|gemv prologue|gemv epilogue|gemv norm tail|norms launched|graph profile|  [a-z_(].* nodes |sum of the parts"
done
