#!/usr/bin/env bash
# Checkpoint → engine → first token against the disk, on a CUDA machine (issue 16), in about 4 minutes
# on an H200 host (16 cores): writes a real-format Llama-2-7B checkpoint (13.5 GB fp16, random values,
# scripts/make-random-checkpoint.ts in parallel), compiles it (timed against cat of the checkpoint), then
# times `cat rank0.engine > /dev/null` against `tsllm-run` from process start to the first generated
# token with the content hash checked in the upload pass, interleaved, 3 runs each, medians. The cache
# state is stated: caches are dropped before the cold runs when this user may, else only warm runs.
#   bash scripts/gpu-load-bench.sh [../shared] [7b|1b]     (1b: TinyLlama-1.1B shapes, 2.2 GB)
# The 1b fallback is for machines where writing 13.5 GB of random values takes too long (it is CPU-bound:
# ~1 min with 16 cores); the script says which one ran.
set -uo pipefail
shared=${1:-../shared}
size=${2:-7b}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
work=$(mktemp -d "${TMPDIR:-/tmp}/tsllm-load-XXXXXX")
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { awk "BEGIN { printf \"%.2f\", $2 - $1 }"; }
median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

[ -f native/build/tsllm_node.node ] || bash native/build.sh > "$work/build.log" 2>&1 || { tail -20 "$work/build.log"; exit 1; }
if [ "$size" = 7b ]; then config="$shared/configs/llama-2-7b.json"; dtype=F16; else config=scripts/configs/tinyllama-1.1b.json; dtype=BF16; fi
echo "== $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM; model: $config"
df -h "$work" | tail -1

t=$(now)
node node_modules/tsx/dist/cli.mjs scripts/make-random-checkpoint.ts models/llama.ts "$config" "$work/ckpt" \
  --dtype $dtype --shard-gb 1 --jobs "$(nproc)" | tail -1
echo "checkpoint written in $(secs "$t" "$(now)") s"

sync
t=$(now); cat "$work"/ckpt/*.safetensors > "$work/copy.bin"; sync; copy=$(secs "$t" "$(now)")
rm -f "$work/copy.bin"
t=$(now)
./bin/tsllm-compile.mjs models/llama.ts --checkpoint "$work/ckpt" --sm 90 --max-batch-size 8 --max-seq-len 2048 \
  -o "$work/engine" > "$work/compile.log" 2>&1 || { tail -20 "$work/compile.log"; exit 1; }
sync; build=$(secs "$t" "$(now)")
grep -E "^weights: .* in |^wrote" "$work/compile.log"
echo "build: copy (cat checkpoint > file; sync) $copy s, build (incl. sync) $build s: $(awk "BEGIN {printf \"%.2f\", $build / $copy}")x"
rm -rf "$work/ckpt"

engine="$work/engine"
bytes=$(stat -c %s "$engine/rank0.engine")
run() { # start → first generated token, content hash checked in the upload pass
  local t0; t0=$(now)
  ./bin/tsllm-run.mjs "$engine" --device cuda --input-ids 1,450,4996,17354 --max-new-tokens 1 --verbose "$@" > "$work/run.out" 2> "$work/run.err" \
    || { cat "$work/run.err"; return 1; }
  secs "$t0" "$(now)"
}
catf() { local t0; t0=$(now); cat "$engine/rank0.engine" > /dev/null; secs "$t0" "$(now)"; }
drop() { sync && echo 3 > /proc/sys/vm/drop_caches 2> /dev/null; }

for state in cold warm; do
  if [ $state = cold ] && ! drop; then echo "== cold: cannot drop the page cache here (not root); warm runs only"; continue; fi
  cats=() runs=()
  catf > /dev/null; run > /dev/null # warm-up (CUDA, node, tsx caches)
  for i in 1 2 3; do
    [ $state = cold ] && drop; cats+=("$(catf)")
    [ $state = cold ] && drop; r1=$(run) || exit 1; runs+=("$r1")
  done
  c=$(echo "${cats[@]}" | median); r=$(echo "${runs[@]}" | median)
  echo "== $state page cache: cat rank0.engine ($bytes bytes): ${cats[*]} s (median $c, $(awk "BEGIN {printf \"%.2f\", $bytes / 1e9 / $c}") GB/s)"
  echo "   tsllm-run start → first token, verified: ${runs[*]} s (median $r): $(awk "BEGIN {printf \"%.2f\", $r / $c}")x cat (target ≤ 1.3x)"
  grep '^loaded' "$work/run.err"
done
nv=$(run --no-verify) && echo "== warm, --no-verify: $nv s"; grep '^loaded' "$work/run.err"
./bin/tsllm-bench.mjs latency "$engine" --batch-size 1 --input-len 16 --output-len 8 --runs 1 --warmup 0 | grep -E "^load|^batch"
