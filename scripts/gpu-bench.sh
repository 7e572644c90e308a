#!/usr/bin/env bash
# The GPU benchmark of the closing notes, in one command on a CUDA machine (after npm ci or a carried
# node_modules): GPU suite, Llama-2-7B fp16 random-weight latency with the roofline, Llama 3 8B bf16
# generation, and the compiled-PyTorch peer in the same run on the same GPU.
#   bash scripts/gpu-bench.sh [../shared]      (SHARED holds configs/ and bench/torch_static_decode.py)
set -uo pipefail
shared=${1:-../shared}
work=$(mktemp -d)
bash native/test-gpu.sh || echo "test:gpu FAILED"
./bin/tsllm-compile.mjs models/llama.ts --config "$shared/configs/llama-2-7b.json" --random-weights --sm 90 --dtype fp16 \
  --max-batch-size 64 --max-seq-len 2048 -o "$work/llama7b" | tail -1
./bin/tsllm-compile.mjs models/llama.ts --config "$shared/configs/llama-3-8b.json" --random-weights --sm 90 --dtype bf16 \
  --max-batch-size 64 --max-seq-len 2048 -o "$work/llama3" | tail -1
./bin/tsllm-bench.mjs latency "$work/llama7b" --batch-size 1,8,64 --input-len 128 --output-len 128 --runs 3
./bin/tsllm-run.mjs "$work/llama3" --device cuda --input-ids 128000,791,4062,14198 --max-new-tokens 12
python3 "$shared/bench/torch_static_decode.py" "$shared/configs/llama-2-7b.json" --bs 1,8,64 --isl 128 --osl 128
