#!/usr/bin/env bash
# Checkpoint → engine → first token against the disk, on a CUDA machine (issue 16), in about 5 minutes on an
# H200 host (16 cores). One command:
#   bash scripts/gpu-load-bench.sh [../shared] [7b|1b]     (1b: TinyLlama-1.1B shapes, 2.2 GB, for slow hosts)
# 1. writes a real-format Llama-2-7B checkpoint (13.5 GB fp16, random values, scripts/make-random-checkpoint.ts);
# 2. builds the fp16 engine and the --quant fp8 engine, each timed with its sync against
#    `cat checkpoint/*.safetensors > file; sync` in the same run (scripts/build-bench.sh; targets: fp16 <= 1.5x, fp8 <= 2x);
# 3. times `cat rank0.engine > /dev/null` against `tsllm-run` from process start to the first generated token
#    (and exit), verified (content hash in the upload pass) and --no-verify, interleaved, 3 runs each, medians,
#    cold and warm (target <= 1.3x, verified). Cold: the page cache dropped before every timed read
#    (/proc/sys/vm/drop_caches when writable, else the file's own pages evicted with dd iflag=nocache after a
#    sync; the script says which, and checks with fincore when it exists). Warm: the file read just before.
# Also prints the loader's own line (tsllm-run --verbose: CUDA init, header, the read/hash/upload pass with its
# O_DIRECT / page-cache split, GB/s) and the pass alone without a GPU (native/build/file_pass).
set -uo pipefail
shared=${1:-../shared}
size=${2:-7b}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
work=$(mktemp -d "${TMPDIR:-/tmp}/tsllm-load-XXXXXX")
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { awk "BEGIN { printf \"%.2f\", $2 - $1 }"; }
ratio() { awk "BEGIN { printf \"%.2f\", $1 / $2 }"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Always through the (incremental) build: a machine kept warm may hold a runtime older than this checkout.
bash native/build.sh > "$work/build.log" 2>&1 || { tail -20 "$work/build.log"; exit 1; }
if [ "$size" = 7b ]; then config="$shared/configs/llama-2-7b.json"; dtype=F16; else config=scripts/configs/tinyllama-1.1b.json; dtype=BF16; fi
echo "== $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); model: $config"
df -h "$work" | tail -1

t=$(now)
node node_modules/tsx/dist/cli.mjs scripts/make-random-checkpoint.ts models/llama.ts "$config" "$work/ckpt" \
  --dtype $dtype --shard-gb 1 --jobs "$(nproc)" | tail -1
echo "checkpoint written in $(secs "$t" "$(now)") s"

# ---- build: fp16 and fp8 against the copy (scripts/build-bench.sh: interleaved, with sync) ----
echo "   targets: fp16 build <= 1.5x copy, fp8 build <= 2x copy"
# fp8 first and removed, so the disk holds at most checkpoint + copy + one engine (40.5 GB for the 7B).
bash scripts/build-bench.sh "$work/ckpt" "$work/engine-fp8" 1 --quant fp8 || exit 1
rm -rf "$work/engine-fp8"
bash scripts/build-bench.sh "$work/ckpt" "$work/engine" 1 || exit 1
rm -rf "$work/ckpt"

# ---- load → first token against cat ----
engine="$work/engine"
file="$engine/rank0.engine"
bytes=$(stat -c %s "$file")
run() { # start → first generated token (and exit)
  local t0; t0=$(now)
  ./bin/tsllm-run.mjs "$engine" --device cuda --input-ids 1,450,4996,17354 --max-new-tokens 1 --verbose "$@" > "$work/run.out" 2> "$work/run.err" \
    || { cat "$work/run.err" >&2; return 1; }
  secs "$t0" "$(now)"
}
catf() { local t0; t0=$(now); cat "$file" > /dev/null; secs "$t0" "$(now)"; }
how=""
drop() {
  sync
  if echo 3 2> /dev/null > /proc/sys/vm/drop_caches; then how="echo 3 > /proc/sys/vm/drop_caches"
  else dd if="$file" iflag=nocache count=0 status=none && how="dd iflag=nocache (this file's pages only; not root)"; fi
}
resident() { command -v fincore > /dev/null && fincore -nb "$file" | awk '{printf " (resident before: %.2f GB)", $1 / 1e9}'; }

catf > /dev/null; run > /dev/null || exit 1 # warm-up (CUDA, node, tsx caches)
for state in cold warm; do
  cats=() runs=() nvs=() res=""
  for i in 1 2 3; do
    [ $state = cold ] && drop && [ "$i" = 1 ] && res=$(resident)
    cats+=("$(catf)")
    [ $state = cold ] && drop; r=$(run) || exit 1; runs+=("$r"); [ "$i" = 1 ] && cp "$work/run.err" "$work/verified.err"
    if [ "$i" -le 2 ]; then [ $state = cold ] && drop; r=$(run --no-verify) || exit 1; nvs+=("$r"); fi
  done
  c=$(echo "${cats[@]}" | median); r=$(echo "${runs[@]}" | median); nv=$(echo "${nvs[@]}" | median)
  echo "== $state page cache${how:+ (each timed read after $how)}$res"
  echo "   cat rank0.engine > /dev/null ($bytes bytes): ${cats[*]} s (median $c, $(awk "BEGIN {printf \"%.2f\", $bytes / 1e9 / $c}") GB/s)"
  echo "   tsllm-run start → first token, verified: ${runs[*]} s (median $r): $(ratio "$r" "$c")x cat (target <= 1.3x)"
  echo "   tsllm-run start → first token, --no-verify: ${nvs[*]} s (median $nv): $(ratio "$nv" "$c")x cat"
  grep -E '^loaded|^load phases' "$work/verified.err" | sed 's/^/   verified run 1: /'
  grep -E '^load phases' "$work/run.err" | sed 's/^/   --no-verify: /'
  how=""
done
# The read/hash pass alone (no GPU, no CUDA, same threads and reads): what the file and the CPUs allow.
drop; echo "== file_pass (the loader's read+hash pass without a GPU), cold: $(native/build/file_pass "$file" | tail -1)"
echo "== file_pass, warm: $(native/build/file_pass "$file" | tail -1)"
./bin/tsllm-bench.mjs latency "$engine" --batch-size 1 --input-len 16 --output-len 8 --runs 1 --warmup 0 | grep -E "^load|^batch"
