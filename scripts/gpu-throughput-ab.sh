#!/usr/bin/env bash
# Runtime A/B through the batch manager in one run: a random-weight Llama-3.1-8B bf16 engine (SHARED/configs; max
# batch 1024, max_num_tokens 8192), a zero-stdev dataset of ISL/OSL (tsllm-bench prepare-dataset), then
# `tsllm-bench throughput` once per environment setting, in the order given ("-" for none), e.g. (session 23 run 4)
#   bash scripts/gpu-throughput-ab.sh SHARED 2048 128 256 TSLLM_GEMM_TUNE=1 TSLLM_GEMM_TUNE=2 TSLLM_GEMM_TUNE=1 \
#     TSLLM_GEMM_TUNE=2
# A setting that holds TSLLM_PROFILE=1 prints the per-op table of the run too (events around every node, graphs
# off: the figures of that run are not throughput figures), e.g. "TSLLM_PROFILE=1": session 23 run 3 found the
# lm_head timed inside mixed steps that way. Words of a setting that are not NAME=value go to tsllm-bench
# throughput, e.g. "--max-batch-size 2048 --max-num-tokens 4096" (session 24 run 1's grid of runtime limits).
# CONFIG / DTYPE / QUANT pick another config, dtype or --quant kind.
set -uo pipefail
shared=$1 isl=$2 osl=$3 n=$4
shift 4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
f=()
[ -n "${QUANT:-}" ] && f=(--quant "$QUANT")
./bin/tsllm-compile.mjs models/llama.ts --config "$shared/configs/${CONFIG:-llama-3.1-8b}.json" --random-weights \
  --sm 90 --dtype "${DTYPE:-bf16}" --max-batch-size 1024 --max-seq-len 4096 --max-num-tokens 8192 -o "$work/e" \
  "${f[@]}" | tail -1
./bin/tsllm-bench.mjs prepare-dataset "$work/e" --num-requests "$n" --input-mean "$isl" --output-mean "$osl" \
  --input-stdev 0 --output-stdev 0 --output "$work/d.jsonl" || exit 1
for setting in "$@"; do
  echo "== $isl/$osl, $n requests: ${setting}"
  # Words of a setting: NAME=value go to the environment, the rest (runtime limits such as --max-num-tokens 2048,
  # after the default --max-batch-size 1024, so a later one wins) to tsllm-bench throughput.
  envs=() args=()
  if [ "$setting" != - ]; then
    read -r -a words <<<"$setting"
    for w in "${words[@]}"; do
      if [[ $w == [A-Za-z_]*=* ]]; then envs+=("$w"); else args+=("$w"); fi
    done
  fi
  env "${envs[@]}" ./bin/tsllm-bench.mjs throughput "$work/e" --dataset "$work/d.jsonl" --device cuda --warmup 8 \
    --max-batch-size 1024 "${args[@]}" 2>&1 |
    grep -E "warm-up|output throughput|time to first|step kind|held back|rror|step tune|tsllm profile|  [a-z_].* calls " | head -40
done
