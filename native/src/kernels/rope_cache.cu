// First stage of paged_attention: RoPE on q (into the workspace) and k, then k and v into the paged cache at
// each token's position. One thread per 16 bytes (8 dims) of one head of one token.
#include <math.h>

#include "attention_internal.h"

namespace tsllm {
namespace kd {
namespace {

template <typename T>
__global__ void rope_cache_kernel(const T* __restrict__ q, int q_stride, const T* __restrict__ k, int k_stride,
                                  const T* __restrict__ v, int v_stride, T* __restrict__ q_out, KVView<T> kv,
                                  const int32_t* __restrict__ positions, const int32_t* __restrict__ token_seq, int nH,
                                  int nKV, int D, int R, int gptj, const float* __restrict__ inv_freq) {
  const int t = blockIdx.y;
  const int vpr = D >> 3;  // 16-byte vectors per head
  const int nq = q_out ? nH * vpr : 0;
  const int nk = nKV * vpr;
  const int item = blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= nq + 2 * nk) return;
  const int pos = positions[t];
  const T* src;
  T* dst;
  bool rot = true;
  if (item < nq) {
    const int h = item / vpr;
    src = q + (size_t)t * q_stride + h * D;
    dst = q_out + ((size_t)t * nH + h) * D;
  } else {
    const int it = item - nq;
    const bool is_v = it >= nk;
    const int h = (is_v ? it - nk : it) / vpr;
    const size_t r = kv.row(token_seq[t], pos, h) + (is_v ? kv.v_off : 0);
    src = is_v ? v + (size_t)t * v_stride + h * D : k + (size_t)t * k_stride + h * D;
    dst = kv.base + r;
    rot = !is_v;
  }
  const int i0 = (item < nq ? item : (item - nq) % nk) % vpr * 8;
  const uint4 raw = *reinterpret_cast<const uint4*>(src + i0);
  if (!rot || i0 >= R) {
    *reinterpret_cast<uint4*>(dst + i0) = raw;
    return;
  }
  float o[8];
  rope8<T>(src, i0, R, gptj != 0, pos, inv_freq, raw, o);
  *reinterpret_cast<uint4*>(dst + i0) = pack8<T>(o);
}

}  // namespace

cudaError_t rope_and_cache_write(const void* q, int q_stride, const void* k, int k_stride, const void* v, int v_stride,
                                 void* q_out, const PagedKV& kv, const StepLayout& step, const AttnParams& p, DType dt,
                                 cudaStream_t s) {
  const int D = p.head_dim;
  const int vpr = D / 8;
  const int items = (q_out ? p.num_heads * vpr : 0) + 2 * p.num_kv_heads * vpr;
  const int threads = 128;
  dim3 grid((items + threads - 1) / threads, step.num_tokens);
  const int gptj = p.rope_style == RopeStyle::Gptj ? 1 : 0;
  TSLLM_DISPATCH_HALF(dt, T, {
    rope_cache_kernel<T><<<grid, threads, 0, s>>>(static_cast<const T*>(q), q_stride, static_cast<const T*>(k), k_stride,
                                                  static_cast<const T*>(v), v_stride, static_cast<T*>(q_out),
                                                  make_kv_view<T>(kv, p.layer), step.positions, step.token_seq,
                                                  p.num_heads, p.num_kv_heads, D, p.rotary_dim, gptj, p.inv_freq);
  });
  return cudaGetLastError();
}

}  // namespace kd
}  // namespace tsllm
