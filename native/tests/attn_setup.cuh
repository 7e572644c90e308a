// A paged-attention call at a given batch and context (random cache, shuffled block table, Llama-shaped heads), for
// the benchmarks (kernels_bench, overlap_bench): AttnSetup(B, ctx, new tokens, bytes of cache to cycle through so the
// KV read misses L2, KV heads, dtype), then call(layer, stream).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../src/kernels/attention_internal.h"
#include "../src/kernels/kernels.h"
#include "test_util.cuh"

namespace tsllm {

struct AttnSetup {
  int B, ctx, new_tokens, layers, nH = 32, nKV = 32, D = 128, tpb = 32;
  DType dt = DType::F16;
  void *pool = nullptr, *qkv = nullptr, *out = nullptr, *ws = nullptr;
  int32_t *bt, *pos, *ts, *ss, *sl;
  float* inv;
  int maxb, num_blocks;
  PagedKV kv;
  StepLayout st;
  AttnParams p;
  // B sequences, each with `ctx` tokens after this step, `new_tokens` of them new.
  AttnSetup(int B_, int ctx_, int new_, size_t l2_defeat_bytes, int nKV_ = 32, DType dt_ = DType::F16)
      : B(B_), ctx(ctx_), new_tokens(new_), nKV(nKV_), dt(dt_) {
    maxb = (ctx + tpb - 1) / tpb;
    num_blocks = B * maxb;
    const size_t block_bytes = (size_t)2 * nKV * tpb * D * 2;
    const size_t layer_bytes = (size_t)num_blocks * block_bytes;
    layers = (int)std::min<size_t>(32, std::max<size_t>(1, (l2_defeat_bytes + layer_bytes - 1) / layer_bytes));
    CK(cudaMalloc(&pool, layer_bytes * layers));
    CK(random_fill(pool, dt, layer_bytes * layers / 2, 7, 0.f, 1.f, 0));
    std::vector<int32_t> h_bt((size_t)B * maxb);
    std::iota(h_bt.begin(), h_bt.end(), 0);
    uint64_t r = 88172645463325252ull;
    for (int i = (int)h_bt.size() - 1; i > 0; --i) {
      r ^= r << 13, r ^= r >> 7, r ^= r << 17;
      std::swap(h_bt[i], h_bt[r % (i + 1)]);
    }
    const int T = B * new_tokens;
    std::vector<int32_t> h_pos(T), h_ts(T), h_ss(B + 1), h_sl(B, ctx);
    for (int b = 0; b < B; ++b) {
      h_ss[b] = b * new_tokens;
      for (int i = 0; i < new_tokens; ++i) h_pos[b * new_tokens + i] = ctx - new_tokens + i, h_ts[b * new_tokens + i] = b;
    }
    h_ss[B] = T;
    std::vector<float> h_inv(D / 2);
    for (int i = 0; i < D / 2; ++i) h_inv[i] = (float)(1.0 / std::pow(10000.0, 2.0 * i / D));
    CK(cudaMalloc(&bt, h_bt.size() * 4));
    CK(cudaMalloc(&pos, T * 4));
    CK(cudaMalloc(&ts, T * 4));
    CK(cudaMalloc(&ss, (B + 1) * 4));
    CK(cudaMalloc(&sl, B * 4));
    CK(cudaMalloc(&inv, D / 2 * 4));
    CK(cudaMemcpy(bt, h_bt.data(), h_bt.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(pos, h_pos.data(), T * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(ts, h_ts.data(), T * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(ss, h_ss.data(), (B + 1) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(sl, h_sl.data(), B * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(inv, h_inv.data(), D / 2 * 4, cudaMemcpyHostToDevice));
    const size_t qkv_elems = (size_t)T * (nH + 2 * nKV) * D;
    CK(cudaMalloc(&qkv, qkv_elems * 2));
    CK(random_fill(qkv, dt, qkv_elems, 9, 0.f, 1.f, 0));
    CK(cudaMalloc(&out, (size_t)T * nH * D * 2));
    const size_t wsb = attention_workspace_bytes(T, B, nH, D, ctx);
    CK(cudaMalloc(&ws, wsb));
    kv = PagedKV{pool, dt, layers, num_blocks, nKV, D, tpb, bt, maxb};
    st = StepLayout{T, B, pos, ts, ss, sl, new_tokens, ctx};
    p = AttnParams{0, nH, nKV, D, 1.f / std::sqrt((float)D), D, RopeStyle::Neox, inv, 3, true};
    CK(cudaDeviceSynchronize());
  }
  // The same pool as an FP8 (E4M3) cache: random codes (values ~ ±64) with scales 1/64, so K and V span about the
  // fp16 cache's range; a workspace with room for the step's own k.
  void use_fp8_cache() {
    CK(random_fill(pool, DType::FP8_E4M3, (size_t)2 * nKV * tpb * D * num_blocks * layers, 7, 0.f, 64.f, 0));
    kv.dtype = DType::FP8_E4M3;
    p.k_scale = p.v_scale = 1.f / 64;
    cudaFree(ws);
    CK(cudaMalloc(&ws, attention_workspace_bytes(st.num_tokens, B, nH, D, ctx, nKV)));
    CK(cudaDeviceSynchronize());
  }
  ~AttnSetup() {
    cudaFree(pool), cudaFree(qkv), cudaFree(out), cudaFree(ws);
    cudaFree(bt), cudaFree(pos), cudaFree(ts), cudaFree(ss), cudaFree(sl), cudaFree(inv);
  }
  void call(int layer, cudaStream_t s) {
    AttnParams q = p;
    q.layer = layer % layers;
    const int stride = (nH + 2 * nKV) * D;
    const uint16_t* base = static_cast<const uint16_t*>(qkv);  // 16-bit elements (f16 or bf16)
    CK(paged_attention(base, stride, base + nH * D, stride, base + (nH + nKV) * D, stride, out, kv, st, q, dt, ws, s));
  }
  // Only the first kernel of call() for a 16-bit cache: RoPE and the cache write (q rotated into the workspace).
  void rope(int layer, cudaStream_t s) {
    AttnParams q = p;
    q.layer = layer % layers;
    const int stride = (nH + 2 * nKV) * D;
    const uint16_t* base = static_cast<const uint16_t*>(qkv);
    CK(kd::rope_and_cache_write(base, stride, base + nH * D, stride, base + (nH + nKV) * D, stride, ws, nullptr, kv,
                                st, q, dt, s));
  }
};

}  // namespace tsllm
