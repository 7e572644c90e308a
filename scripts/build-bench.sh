#!/usr/bin/env bash
# Engine build time against copying the checkpoint (issue 16), measured in one run, interleaved:
#   copy  = cat <checkpoint>/*.safetensors > file; sync      (what producing the same bytes costs; cp does the same)
#   build = tsllm-compile <model> --checkpoint <checkpoint> -o <engine> [flags]; sync
# each `runs` times (default 3), medians, with the checkpoint in the page cache (read once first), so both read
# from memory, write through the page cache and wait for the disk in the sync. Also prints `cat > /dev/null`
# (reading alone: for a page-cached file, a memory copy), the build's peak RSS and the machine's load average
# (other processes on the cores stretch both, unevenly: the build uses every core, cat one).
#   bash scripts/build-bench.sh <checkpoint-dir> <engine-dir> [runs] [compile flags...]
#   e.g. bash scripts/build-bench.sh /tmp/tinyllama /tmp/tinyllama-engine 3
#        bash scripts/build-bench.sh /tmp/llama-2-7b /tmp/llama-2-7b-fp8 1 --quant fp8
set -uo pipefail
ckpt=${1:?checkpoint dir}
out=${2:?engine dir}
runs=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
copy=$(mktemp "$(dirname "$out")/tsllm-copy-XXXXXX")
log=$(mktemp)
trap 'rm -f "$copy" "$log"' EXIT
now() { date +%s.%N; }
secs() { awk "BEGIN { printf \"%.2f\", $2 - $1 }"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

bytes=$(cat "$ckpt"/*.safetensors | wc -c) # also puts the checkpoint in the page cache
echo "== build vs copy: $ckpt ($(awk "BEGIN {printf \"%.2f\", $bytes / 1e9}") GB) → $out ${*:-}; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
reads=() copies=() builds=() rss=()
timer=() # peak RSS where GNU time is installed
[ -x /usr/bin/time ] && timer=(/usr/bin/time -f "%M" -o "$log.rss")
for i in $(seq "$runs"); do
  t=$(now); cat "$ckpt"/*.safetensors > /dev/null; reads+=("$(secs "$t" "$(now)")")
  sync; t=$(now); cat "$ckpt"/*.safetensors > "$copy"; sync; copies+=("$(secs "$t" "$(now)")"); rm -f "$copy"
  # The build writes a fresh engine, as cat a fresh copy (replacing the last run's would time its removal too).
  rm -rf "$out"; sync; t=$(now)
  "${timer[@]}" "$here/bin/tsllm-compile.mjs" "$here/models/llama.ts" --checkpoint "$ckpt" --sm 90 \
    --max-batch-size 8 --max-seq-len 2048 -o "$out" "$@" > "$log" 2>&1 || { tail -20 "$log"; exit 1; }
  sync; builds+=("$(secs "$t" "$(now)")"); rss+=("$(cat "$log.rss" 2> /dev/null || echo 0)"); rm -f "$log.rss"
done
r=$(echo "${reads[@]}" | median); c=$(echo "${copies[@]}" | median); b=$(echo "${builds[@]}" | median)
peak=$(printf '%s\n' "${rss[@]}" | sort -g | tail -1)
grep -E "^weights: .* in |^wrote" "$log" | sed 's/^/   last build: /'
echo "   cat > /dev/null: ${reads[*]} s (median $r)"
echo "   copy (cat > file; sync): ${copies[*]} s (median $c)"
echo "   build (incl. sync): ${builds[*]} s (median $b), peak RSS $([ "$peak" -gt 0 ] && echo "$((peak / 1024)) MB" || echo "not measured (no /usr/bin/time)")"
echo "   build / copy: $(awk "BEGIN {printf \"%.2f\", $b / $c}")x (load average now $(cut -d' ' -f1-3 /proc/loadavg))"
