// A batch-1 decode of whole Llama layers in one persistent launch (a prototype, not used by the runtime yet):
// why and how in decode_layers.cu. Measured by native/tests/layers_bench.cu against a plain kernel-per-op path.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>

namespace tsllm {

// One layer's fp16 weights, row-major [out, in] as Hugging Face stores them.
struct DecodeLayerWeights {
  const half* wqkv;    // [(nH + 2 nKV) D, H]: q rows, then k, then v
  const half* wo;      // [H, nH D]
  const half* wgu;     // [2 I, H]: gate rows, then up rows
  const half* wd;      // [H, I]
  const half* g_attn;  // [H] rms_norm weights before attention
  const half* g_mlp;   // [H] before the MLP
};

struct DecodeLayersArgs {
  int H, nH, nKV, D, I, L;
  int pos;      // the token's position (its context is pos + 1 keys)
  int max_ctx;  // the cache's rows per layer
  float eps, rope_theta;
  const DecodeLayerWeights* layers;  // device array of L
  half* h;     // [H] the residual stream, updated in place
  half* qkv;   // [(nH + 2 nKV) D] scratch
  half* attn;  // [nH D] scratch
  half* act;   // [I] scratch
  half* kv;    // [L][2][max_ctx][nKV][D]: this layer's keys, then values
  unsigned* sync;  // grid barrier counter, zeroed before each launch
  int mode;        // 0; timing only (wrong results): 1 no grid barriers, 2 the weight ring alone (no compute)
  unsigned long long* prof;  // optional, 11 zeroed counters: consumer warps' clocks waiting for pieces, on pieces,
                             // in all; the producer's clocks waiting for free slots, in all; thread 0's clocks in
                             // the phases' prologues, streams, epilogues, grid barriers, attention, in all
  int piece_bytes;  // bytes of a ring slot (0: 8192), a multiple of 16: a piece is a row or an even part of one
};

// Shared memory the launch asks for with `spw` ring slots (of a.piece_bytes) for each of the 15 consumer warps.
size_t decode_layers_smem(const DecodeLayersArgs& a, int spw);
// Why a shape is refused (nullptr when it runs): D 128, H and I multiples of 256, nH % nKV == 0, ...
const char* decode_layers_unsupported(const DecodeLayersArgs& a, int spw);
// One launch of a.L layers: one block an SM (cooperative launch), 15 x spw pieces of weights in flight per SM.
cudaError_t decode_layers(const DecodeLayersArgs& a, int spw, cudaStream_t s);

}  // namespace tsllm
