#!/usr/bin/env bash
# Where issue 11's throughput runs spend their device time, in one command: a random-weight Llama-3.1-8B bf16 engine
# (SHARED/configs), then `tsllm-bench throughput` on zero-stdev datasets of ISL/OSL 128/128 (N requests) and
# 2048/128 (N_LONG_IN), each report with its device time by step kind (context-only, mixed, decode-only).
#   bash scripts/gpu-step-kinds.sh [SHARED=../shared] [N=3000] [N_LONG_IN=256]
set -uo pipefail
shared=$(cd "${1:-../shared}" && pwd) || exit 1
n=${2:-3000} n_long=${3:-256}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
./bin/tsllm-compile.mjs models/llama.ts --config "$shared/configs/llama-3.1-8b.json" --random-weights --sm 90 \
  --dtype bf16 --max-batch-size 1024 --max-seq-len 4096 --max-num-tokens 8192 -o "$work/e" | tail -1
for shape in "128 128 $n" "2048 128 $n_long"; do
  set -- $shape
  ./bin/tsllm-bench.mjs prepare-dataset "$work/e" --num-requests "$3" --input-mean "$1" --output-mean "$2" \
    --input-stdev 0 --output-stdev 0 --output "$work/d.jsonl"
  echo "== 8B bf16 $1/$2, $3 requests, max batch 1024"
  ./bin/tsllm-bench.mjs throughput "$work/e" --dataset "$work/d.jsonl" --device cuda --warmup 8 \
    --max-batch-size 1024 --json "${OUT:-$work}/l31-$1-$2.json" 2>&1 | grep -E "output throughput|time to first|per output|peak KV|steps |host gap|step kind|full decode"
done
