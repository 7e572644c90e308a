#!/usr/bin/env bash
# The GPU rows of issues 11 and 13, in parts that fit the device tool's 10-minute calls: each part runs only if
# its rough cost (seconds, below) fits before DEADLINE, so one call takes what fits
# and the next call on the same warm machine goes on (engines and datasets stay in WORK between calls).
#   export T0=$(date +%s); bash scripts/gpu-verify.sh 'DEADLINE=$((T0 + 560)) bash scripts/gpu-acceptance.sh quant peer7b tput7b'
#   source scripts/device-env.sh; DEADLINE=$(( $(date +%s) + 560 )) bash scripts/gpu-acceptance.sh tput8b static8b peer8b fp8tput8b
# Parts:
#   quant      issue 13's table: Llama-2-7B fp16 / FP8 / INT8-wo / INT4-wo g128, tsllm-bench latency at batch 1
#              and 64 (TTFT, TPOT, tok/s, % of the roofline of the engine's own weight bytes at the copy rate)
#   peer7b     the compiled-PyTorch peer, Llama-2-7B fp16, batch 1 and 64
#   tput7b     Llama-2-7B fp16 128/128 through the batch manager (N requests; what bounded the batch), its static
#              batch 256, and batch 1 through the batch manager (--concurrency 1) vs tsllm-bench latency
#   tput8b     Llama-3.1-8B bf16 128/128 through the batch manager, max batch 1024 (N requests)
#   static8b   the same engine's static batches 256 and 512, and batch 1 (% of roofline)
#   peer8b     the peer, Llama-3.1-8B bf16 batch 256
#   fp8tput8b  Llama-3.1-8B FP8 128/128 through the batch manager (issue 13's throughput goal)
#   profile8b  one bs-256 decode step of the 8B bf16 engine by node (TSLLM_PROFILE=graph)
#   long       8B bf16 128/2048, 2048/128, 2048/2048: LONG_WAVES (1) full batches of the KV pool each, or
#              N_LONG_OUT / N_LONG_IN / N_LONG requests
# Then one summary of every result present in OUT_DIR (also those of earlier calls).
# env: SHARED (default /tmp/shared, else ../shared), N (3000), WORK (/tmp/tsllm-acceptance), DEADLINE (epoch s,
#      default now + 560), DRY=1 prints the commands instead of running them.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
shared=${SHARED:-$([ -d /tmp/shared ] && echo /tmp/shared || echo ../shared)}
n=${N:-3000}
work=${WORK:-/tmp/tsllm-acceptance}
res="$work/results"
mkdir -p "$res"
deadline=${DEADLINE:-$(($(date +%s) + 560))}
stamp() { echo "== $(date +%T) $*"; }
run() { if [ -n "${DRY:-}" ]; then echo "+ $*"; else "$@"; fi; }

# Engine limits: the 7B quantised table as issue 13 measures it; the throughput engines at the runtime's largest.
build() { # name config dtype maxbatch maxseq [compiler flags...]
  [ -f "$work/$1/config.json" ] && return 0
  stamp "compile $1"
  run ./bin/tsllm-compile.mjs models/llama.ts --config "$shared/configs/$2" --random-weights --sm 90 --dtype "$3" \
    --max-batch-size "$4" --max-seq-len "$5" --max-num-tokens 8192 -o "$work/$1" "${@:6}" | tail -1
}
dataset() { # engine isl osl n file
  [ -f "$5" ] && return 0
  run ./bin/tsllm-bench.mjs prepare-dataset "$work/$1" --num-requests "$4" --input-mean "$2" --output-mean "$3" \
    --input-stdev 0 --output-stdev 0 --output "$5"
}
throughput() { # engine dataset json extra...
  local e=$1 d=$2 j=$3
  shift 3
  stamp "throughput $e $(basename "$d") $*"
  run ./bin/tsllm-bench.mjs throughput "$work/$e" --dataset "$d" --device cuda --json "$j" --warmup 8 "$@" |
    tail -n 40 || echo "throughput $e FAILED"
}
latency() { # engine json batch-sizes runs
  stamp "latency $1 --batch-size $3"
  run ./bin/tsllm-bench.mjs latency "$work/$1" --batch-size "$3" --input-len 128 --output-len 128 --runs "$4" \
    --json "$2" || echo "latency $1 FAILED"
}
peer() { # config dtype batch-sizes out
  stamp "peer $1 $2 --bs $3"
  run python3 "$shared/bench/torch_static_decode.py" "$shared/configs/$1" --bs "$3" --dtype "$2" --isl 128 \
    --osl 128 | tee "$4" || echo "peer FAILED"
}

part_quant() {
  build l2-fp16 llama-2-7b.json fp16 64 512
  build l2-fp8 llama-2-7b.json fp16 64 512 --quant fp8
  build l2-int8 llama-2-7b.json fp16 64 512 --quant int8-wo
  build l2-int4 llama-2-7b.json fp16 64 512 --quant int4-wo --group-size 128
  for e in fp16 fp8 int8 int4; do latency "l2-$e" "$res/quant-$e.json" 1,64 3; done
}
part_peer7b() { peer llama-2-7b.json fp16 1,64 "$res/peer7b.jsonl"; }
part_tput7b() {
  build l2-tput llama-2-7b.json fp16 1024 4096
  dataset l2-tput 128 128 "$n" "$work/l2-128-128.jsonl"
  throughput l2-tput "$work/l2-128-128.jsonl" "$res/l2-128-128.json" --max-batch-size 1024
  latency l2-tput "$res/l2-static.json" 1,256 2
  dataset l2-tput 128 128 8 "$work/l2-bs1.jsonl"
  throughput l2-tput "$work/l2-bs1.jsonl" "$res/l2-bs1.json" --concurrency 1 --warmup 2
}
part_tput8b() {
  build l31-bf16 llama-3.1-8b.json bf16 1024 4096
  dataset l31-bf16 128 128 "$n" "$work/l31-128-128.jsonl"
  throughput l31-bf16 "$work/l31-128-128.jsonl" "$res/l31-128-128.json" --max-batch-size 1024
}
part_static8b() {
  build l31-bf16 llama-3.1-8b.json bf16 1024 4096
  latency l31-bf16 "$res/l31-static.json" 256,512 1
  latency l31-bf16 "$res/l31-bs1.json" 1 3
}
part_peer8b() { peer llama-3.1-8b.json bf16 256 "$res/peer8b.jsonl"; }
part_fp8tput8b() {
  build l31-fp8 llama-3.1-8b.json bf16 1024 4096 --quant fp8
  dataset l31-fp8 128 128 "$n" "$work/l31-128-128.jsonl"
  throughput l31-fp8 "$work/l31-128-128.jsonl" "$res/l31fp8-128-128.json" --max-batch-size 1024
}
part_profile8b() {
  build l31-bf16 llama-3.1-8b.json bf16 1024 4096
  stamp "profile of one bs-256 decode step (TSLLM_PROFILE=graph)"
  TSLLM_PROFILE=graph run ./bin/tsllm-bench.mjs latency "$work/l31-bf16" --batch-size 256 --input-len 128 \
    --output-len 16 --warmup 0 --runs 1 2>&1 | grep -v "^batch" | head -40
}
# How many sequences of ISL + OSL tokens the 8B engine's KV pool holds at the throughput limits: the pool from a
# one-request probe's report, each sequence the blocks the batch manager reserves for it (ceil((isl + osl - 1) /
# tokens_per_block), batch-manager.ts submit), at most max_batch_size.
kv_capacity() { # isl osl
  local probe="$work/kv-probe.json"
  if [ ! -f "$probe" ]; then
    { # (stdout is the answer)
      dataset l31-bf16 16 16 1 "$work/kv-probe.jsonl"
      run ./bin/tsllm-bench.mjs throughput "$work/l31-bf16" --dataset "$work/kv-probe.jsonl" --device cuda \
        --json "$probe" --warmup 0 --max-batch-size 1024 2>&1 | tail -n 3
    } >&2
  fi
  [ -n "${DRY:-}" ] && { echo 100; return; }
  node -e 'const [probe, cfg, isl, osl] = process.argv.slice(1);
    const total = require(probe).kv_blocks_total, tpb = require(cfg).build.tokens_per_block;
    console.log(Math.min(1024, Math.floor(total / Math.ceil((+isl + +osl - 1) / tpb))));' \
    "$probe" "$work/l31-bf16/config.json" "$1" "$2"
}
part_long() {
  build l31-bf16 llama-3.1-8b.json bf16 1024 4096
  # Requests: LONG_WAVES (default 1) full batches of the KV pool, unless N_LONG_OUT / N_LONG_IN / N_LONG say how
  # many. Why: with zero stdev every request of a batch finishes in the same step, so the batch manager runs the
  # dataset in waves, and a last partial wave takes nearly a full wave's time for a few requests: session 35's 128
  # requests of 2048/2048 were 111 + 17 on the H100. TensorRT-LLM's table used 3,000 / 3,000 / 1,500 requests
  # (about 14 waves; its last wave partial), more than a 10-minute device call holds.
  for shape in "128 2048 ${N_LONG_OUT:-}" "2048 128 ${N_LONG_IN:-}" "2048 2048 ${N_LONG:-}"; do
    set -- $shape
    local n=${3:-$(( ${LONG_WAVES:-1} * $(kv_capacity "$1" "$2") ))}
    stamp "$1/$2: $n requests"
    dataset l31-bf16 "$1" "$2" "$n" "$work/l31-$1-$2-n$n.jsonl"
    throughput l31-bf16 "$work/l31-$1-$2-n$n.jsonl" "$res/l31-$1-$2.json" --max-batch-size 1024
  done
}
# Seconds, with a margin over session 35's H100 run (quant 42, peer7b 68, tput7b 64; tput8b + static8b + peer8b 95
# together, fp8tput8b 20, profile8b 5; long 217; builds of random-weight engines take under a second).
declare -A cost=([quant]=60 [peer7b]=90 [tput7b]=90 [tput8b]=50 [static8b]=40 [peer8b]=60 [fp8tput8b]=40
  [profile8b]=20 [long]=270)

[ $# -gt 0 ] || set -- quant peer7b tput7b
for p in "$@"; do
  [ -n "${cost[$p]:-}" ] || { echo "gpu-acceptance: unknown part '$p' (parts: ${!cost[*]})" >&2; exit 2; }
done
for p in "$@"; do
  left=$((deadline - $(date +%s)))
  if [ "${cost[$p]}" -gt "$left" ]; then
    stamp "skip $p: about ${cost[$p]} s, $left s left"
    continue
  fi
  t=$(date +%s)
  "part_$p"
  stamp "$p took $(($(date +%s) - t)) s"
done

[ -n "${DRY:-}" ] && exit 0
stamp "summary (every result in $res)"
node scripts/acceptance-summary.mjs "$res"
