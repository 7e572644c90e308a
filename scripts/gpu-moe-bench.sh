#!/usr/bin/env bash
# The Mixtral benchmark of issue 14 in one command on one H200 (about 2 minutes, and at most 3 for the peer): full-size Mixtral-8x7B with
# random bf16 weights generated on the GPU (93 GB; nothing written to disk but the seeds), ISL/OSL 128/128,
# `tsllm-bench latency` at batch 1 and 64 — TTFT, TPOT, tok/s and the HBM roofline of the bytes a decode step
# actually reads (attention, router, the routed experts only — 2 of 8 per layer at batch 1 — lm_head, the gathered
# embedding rows; src/native/roofline.ts) at the device-to-device copy bandwidth measured in the same run.
# Then the peer in the same run: compiled PyTorch (scripts/torch_mixtral_decode.py, gpt-fast style MoE), given at
# most 180 s (two torch.compile runs of 32 layers); PEER=0 skips it.
#   bash scripts/gpu-moe-bench.sh [../shared]      (SHARED holds configs/mixtral-8x7b.json)
# A/B switches are read from the environment (native/README.md), e.g.
#   TSLLM_MOE_PATH=2 bash scripts/gpu-moe-bench.sh   (the grouped GEMMs at batch 1 too)
set -uo pipefail
shared=${1:-../shared}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cfg="$shared/configs/mixtral-8x7b.json"
./bin/tsllm-compile.mjs models/mixtral.ts --config "$cfg" --random-weights --sm 90 --dtype bf16 \
  --max-batch-size 64 --max-seq-len 512 --max-num-tokens 8192 -o "$work/mixtral" | tail -1 || exit 1
echo "== Mixtral-8x7B bf16 (random weights), ISL/OSL 128/128"
./bin/tsllm-bench.mjs latency "$work/mixtral" --batch-size 1,64 --input-len 128 --output-len 128 --runs 3 \
  --json "$work/mixtral.json" --verbose || { echo "tsllm-bench latency FAILED"; exit 1; }
echo "== summary"
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  for (const x of r.results)
    console.log(`bs ${String(x.batch).padStart(2)}: TPOT ${x.tpot_ms.toFixed(3)} ms, ${x.decode_tok_s.toFixed(1)} decode tok/s ` +
      `(${x.output_tok_s.toFixed(1)} output tok/s incl. prefill), TTFT ${x.ttft_ms.toFixed(1)} ms; roofline ` +
      `${x.roofline_step_ms.toFixed(3)} ms/step = ${x.roofline_tok_s.toFixed(1)} tok/s from ${(x.step_weight_bytes / 1e9).toFixed(2)} GB ` +
      `of weights read per step, ${x.pct_of_roofline.toFixed(1)}% of it`);
  console.log(`copy bandwidth ${r.copy_gb_s.toFixed(0)} GB/s (same run); load ${r.load_s.toFixed(1)} s`);
' "$work/mixtral.json"
if [ "${PEER:-1}" != 0 ]; then
  echo "== peer: compiled PyTorch (static KV cache, torch.compile reduce-overhead), same GPU, same run"
  timeout 180 python3 scripts/torch_mixtral_decode.py "$cfg" --bs 1,64 --isl 128 --osl 128 --dtype bf16 ||
    echo "peer did not finish (exit $?)"
fi
