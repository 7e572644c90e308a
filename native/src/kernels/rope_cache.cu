// First stage of paged_attention: RoPE on q (into the workspace) and k, then k and v into the paged cache at
// each token's position. One block per token, one thread per 16 bytes (8 dims) of one of its heads.
// FP8 KV cache (CT = uint8_t): rows are stored as e4m3(x / scale) with the layer's k_scale / v_scale, and the
// rotated k is also written in the activation dtype to k_out ([num_tokens, nKV*D]) so that this step's tokens
// attend to their own keys before rounding (the reference's rule; the context kernel reads them from there).
#include <math.h>

#include "attention_internal.h"
#include "fp8.cuh"

namespace tsllm {
namespace kd {
namespace {

// One block per token: the token's cosines and sines, one per rotated pair frequency (R / 2 of them, shared by every
// head and by both dims of a pair), are computed once into shared memory, then the block's threads loop over the
// token's 16-byte items. (Until session 21 each thread computed its 8 dims' sincosf itself, 40 heads x 16 items
// for Llama-3; the angles are the same fp32 values. H200, kernels_bench context's rope_us, runs 1 / 2: 8,192 tokens
// of Llama-3.1-8B bf16 128.5 -> 84.0 us, 4,096 of Llama-2 f16 119.0 -> 75.6, 2,048 61.3 -> 40.7.)
template <typename T, typename CT>
__global__ void rope_cache_kernel(const T* __restrict__ q, int q_stride, const T* __restrict__ k, int k_stride,
                                  const T* __restrict__ v, int v_stride, T* __restrict__ q_out, KVView<CT> kv,
                                  const int32_t* __restrict__ positions, const int32_t* __restrict__ token_seq, int nH,
                                  int nKV, int D, int R, int gptj, const float* __restrict__ inv_freq,
                                  T* __restrict__ k_out, float k_scale, float v_scale) {
  constexpr bool kFp8 = sizeof(CT) == 1;
  __shared__ float s_cs[kMaxHeadDim / 2], s_sn[kMaxHeadDim / 2];
  const int t = blockIdx.x;
  const int vpr = D >> 3;  // 16-byte vectors per head
  const int nq = q_out ? nH * vpr : 0;
  const int nk = nKV * vpr;
  const int pos = positions[t];
  const int half = R >> 1;
  for (int fi = threadIdx.x; fi < half; fi += blockDim.x)
    sincosf(__fmul_rn((float)pos, __ldg(inv_freq + fi)), &s_sn[fi], &s_cs[fi]);
  __syncthreads();
  const int seq = token_seq[t];
  for (int item = threadIdx.x; item < nq + 2 * nk; item += blockDim.x) {
    const T* src;
    CT* dst = nullptr;
    T* qdst = nullptr;
    bool rot = true, is_v = false;
    int h = 0;
    if (item < nq) {
      h = item / vpr;
      src = q + (size_t)t * q_stride + h * D;
      qdst = q_out + ((size_t)t * nH + h) * D;
    } else {
      const int it = item - nq;
      is_v = it >= nk;
      h = (is_v ? it - nk : it) / vpr;
      const size_t r = kv.row(seq, pos, h) + (is_v ? kv.v_off : 0);
      src = is_v ? v + (size_t)t * v_stride + h * D : k + (size_t)t * k_stride + h * D;
      dst = kv.base + r;
      rot = !is_v;
    }
    const int i0 = (item < nq ? item : (item - nq) % nk) % vpr * 8;
    const uint4 raw = *reinterpret_cast<const uint4*>(src + i0);
    uint4 outv = raw;
    if (rot && i0 < R) {
      float cs[8], sn[8], o[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int i = i0 + j;
        const int fi = gptj ? (i >> 1) : (i < half ? i : i - half);
        cs[j] = i < R ? s_cs[fi] : 1.f;
        sn[j] = i < R ? s_sn[fi] : 0.f;
      }
      rope_apply<T>(src, i0, R, gptj != 0, raw, cs, sn, o);
      outv = pack8<T>(o);
    }
    if (qdst) {
      *reinterpret_cast<uint4*>(qdst + i0) = outv;
      continue;
    }
    if constexpr (kFp8) {
      // The value in the activation dtype (as the unquantised cache would hold it), then e4m3(x / scale).
      float f[8];
      unpack8<T>(outv, f);
      *reinterpret_cast<uint2*>(dst + i0) = f8_to_e4m3x8(f, is_v ? v_scale : k_scale);
      if (!is_v && k_out) *reinterpret_cast<uint4*>(k_out + ((size_t)t * nKV + h) * D + i0) = outv;
    } else {
      *reinterpret_cast<uint4*>(dst + i0) = outv;
    }
  }
}

}  // namespace

cudaError_t rope_and_cache_write(const void* q, int q_stride, const void* k, int k_stride, const void* v, int v_stride,
                                 void* q_out, void* k_out, const PagedKV& kv, const StepLayout& step,
                                 const AttnParams& p, DType dt, cudaStream_t s) {
  const int D = p.head_dim;
  const int vpr = D / 8;
  const int items = (q_out ? p.num_heads * vpr : 0) + 2 * p.num_kv_heads * vpr;
  const int threads = items >= 512 ? 256 : 128;  // Llama-3: 768 items a token, Llama-2: 1,536
  const dim3 grid(step.num_tokens);
  const int gptj = p.rope_style == RopeStyle::Gptj ? 1 : 0;
  const bool fp8 = kv.dtype == DType::FP8_E4M3;
  TSLLM_DISPATCH_HALF(dt, T, {
    auto Q = static_cast<const T*>(q);
    auto K = static_cast<const T*>(k);
    auto V = static_cast<const T*>(v);
    if (fp8)
      rope_cache_kernel<T, uint8_t><<<grid, threads, 0, s>>>(
          Q, q_stride, K, k_stride, V, v_stride, static_cast<T*>(q_out), make_kv_view<uint8_t>(kv, p.layer),
          step.positions, step.token_seq, p.num_heads, p.num_kv_heads, D, p.rotary_dim, gptj, p.inv_freq,
          static_cast<T*>(k_out), p.k_scale, p.v_scale);
    else
      rope_cache_kernel<T, T><<<grid, threads, 0, s>>>(Q, q_stride, K, k_stride, V, v_stride, static_cast<T*>(q_out),
                                                       make_kv_view<T>(kv, p.layer), step.positions, step.token_seq,
                                                       p.num_heads, p.num_kv_heads, D, p.rotary_dim, gptj, p.inv_freq,
                                                       nullptr, 1.f, 1.f);
  });
  return cudaGetLastError();
}

}  // namespace kd
}  // namespace tsllm
