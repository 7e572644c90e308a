#!/usr/bin/env bash
# The quantised-engine benchmark of issue 13 in one command on an H100/H200 (about 5 minutes): random-weight
# Llama-2-7B engines (fp16, fp8, int8-wo, int4-wo group 128; ISL/OSL 128/128) through `tsllm-bench latency` at
# batch 1 and 64 — TTFT, TPOT, tok/s, and the HBM roofline of each engine's own weight bytes (quantised values +
# scales) at the copy bandwidth measured in the same run — fp8 at batch 1-4 with and without the gemv over FP8
# rows (TSLLM_QGEMV_TUNE_BELOW=8: session 13's kernels) — int8 / int4 at batch 8 and 16 with and without the
# quantised decode gemv, the FP8 context FMHA on and off (TTFT at ISL 2048, and
# native/build/kernels_bench fmha8), then the compiled-PyTorch peer in the same run.
#   bash scripts/gpu-quant-bench.sh [../shared]      (SHARED holds configs/ and bench/torch_static_decode.py)
# A/B switches for the runtime are read from the environment (native/README.md), e.g.
#   TSLLM_QGEMV=0 bash scripts/gpu-quant-bench.sh     (quantised decode through the large-M path)
set -uo pipefail
shared=${1:-../shared}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cfg="$shared/configs/llama-2-7b.json"
echo "== decode gemv microbenchmark (native/build/gemv_bench: every variant per Llama-2-7B shape, old vs new A/B)"
if [ -x native/build/gemv_bench ]; then native/build/gemv_bench | tail -n 25; else echo "native/build/gemv_bench missing (npm run build:native)"; fi
compile() { # name, extra flags...
  local name=$1
  shift
  ./bin/tsllm-compile.mjs models/llama.ts --config "$cfg" --random-weights --sm 90 --dtype fp16 \
    --max-batch-size 64 --max-seq-len 512 --max-num-tokens 8192 -o "$work/$name" "$@" | tail -1
}
compile fp16
compile fp8 --quant fp8
compile int8 --quant int8-wo
compile int4 --quant int4-wo --group-size 128
for e in fp16 fp8 int8 int4; do
  echo "== Llama-2-7B $e"
  ./bin/tsllm-bench.mjs latency "$work/$e" --batch-size 1,64 --input-len 128 --output-len 128 --runs 3 \
    --json "$work/$e.json" || echo "tsllm-bench latency $e FAILED"
done
echo "== fp8 at batch 1-4: the gemv over the producers' FP8 rows (variants 8-10) against session 13's kernels (0-7)"
for cap in none 8; do
  if [ $cap = none ]; then unset TSLLM_QGEMV_TUNE_BELOW; else export TSLLM_QGEMV_TUNE_BELOW=$cap; fi
  ./bin/tsllm-bench.mjs latency "$work/fp8" --batch-size 1,2,3,4 --input-len 128 --output-len 128 --runs 3 |
    grep -E "^batch" | sed "s/^/fp8 TSLLM_QGEMV_TUNE_BELOW=$cap: /"
done
unset TSLLM_QGEMV_TUNE_BELOW
echo "== int8 / int4 at batch 8 and 16: the tensor-core decode gemv (1-16 rows) against the dequantise + GEMM path"
for e in int8 int4; do
  for q in 1 0; do
    TSLLM_QGEMV=$q ./bin/tsllm-bench.mjs latency "$work/$e" --batch-size 8,16 --input-len 128 --output-len 64 \
      --runs 2 | grep -E "^batch" | sed "s/^/$e TSLLM_QGEMV=$q: /"
  done
done
echo "== FP8 context FMHA: Llama-2-7B FP8 + FP8 KV, TTFT at ISL 2048 with it on and off, and the kernels alone"
compile fp8kv --quant fp8 --kv-cache-dtype fp8 --max-seq-len 2304
for m in on off; do
  ./bin/tsllm-bench.mjs latency "$work/fp8kv" --fp8-context-fmha $m --batch-size 1 --input-len 2048 --output-len 16 \
    --runs 3 | grep -E "^batch" | sed "s/^/fp8-context-fmha $m: /"
done
if [ -x native/build/kernels_bench ]; then native/build/kernels_bench fmha8 | tail -n 10; fi
echo "== summary (batch 1 TPOT / tok/s / % of roofline; batch 64 TPOT; TTFT bs 1 ISL 128)"
for e in fp16 fp8 int8 int4; do
  [ -f "$work/$e.json" ] && node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const b1 = r.results.find((x) => x.batch === 1), b64 = r.results.find((x) => x.batch === 64);
    console.log(`${process.argv[2].padEnd(5)} bs1 ${b1.tpot_ms.toFixed(3)} ms ${b1.decode_tok_s.toFixed(1)} tok/s ` +
      `(${b1.pct_of_roofline.toFixed(1)}% of ${b1.roofline_tok_s.toFixed(1)}), TTFT ${b1.ttft_ms.toFixed(2)} ms; ` +
      `bs64 TPOT ${b64.tpot_ms.toFixed(3)} ms (${b64.decode_tok_s.toFixed(0)} tok/s); copy ${r.copy_gb_s.toFixed(0)} GB/s`);
  ' "$work/$e.json" "$e"
done
echo "== peer: compiled PyTorch, same GPU, same run"
python3 "$shared/bench/torch_static_decode.py" "$cfg" --bs 1,64 --isl 128 --osl 128
