// Decode attention over the paged KV cache (flash-decoding).
// Grid: (kv head x query-head group, split, token). One block of 4 warps loads each K/V row of its KV head once
// for up to GB query heads (GQA). A key is handled by LPK = DP/8 lanes, 8 dims (16 bytes) each; a warp covers
// 32/LPK keys per step and unrolls U steps so 2U 16-byte loads per thread are in flight. Each lane keeps an
// online softmax (m, l, acc[8]) per head; lanes, then warps, are merged at the end. With several splits the
// block writes normalised partials (o, m, l) to the workspace and decode_reduce_kernel combines them.
#include <math.h>

#include <algorithm>

#include "attention_internal.h"

namespace tsllm {
namespace kd {
namespace {

constexpr int kDecWarps = 4;

template <typename T, int DP, int GB>
__global__ void __launch_bounds__(kDecWarps * 32) decode_kernel(const T* __restrict__ q, int q_stride,
                                                                T* __restrict__ out, float* __restrict__ ws_o,
                                                                float2* __restrict__ ws_ml, KVView<T> kv,
                                                                const int32_t* __restrict__ positions,
                                                                const int32_t* __restrict__ token_seq, int nH,
                                                                int hgroups, int G, float scale_log2, int chunk) {
  constexpr int LPK = DP / 8;     // lanes per key
  constexpr int KPW = 32 / LPK;   // keys per warp per step
  constexpr int U = GB >= 8 ? 2 : 4;
  constexpr int STEP = kDecWarps * KPW * U;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane % LPK, slot = lane / LPK;
  const int hk = blockIdx.x / hgroups, hg = blockIdx.x % hgroups;
  const int split = blockIdx.y, nsplit = gridDim.y, t = blockIdx.z;
  const int D = kv.D;
  const int ctx = positions[t] + 1;
  const int kb = split * chunk;
  if (kb >= ctx) return;
  const int ke = min(ctx, kb + chunk);
  const int seq = token_seq[t];
  const bool dim_ok = sub * 8 < D;

  float qf[GB][8];
#pragma unroll
  for (int g = 0; g < GB; ++g) {
    const int hh = hg * GB + g;
    if (hh < G && dim_ok) {
      unpack8<T>(*reinterpret_cast<const uint4*>(q + (size_t)t * q_stride + (size_t)(hk * G + hh) * D + sub * 8), qf[g]);
#pragma unroll
      for (int j = 0; j < 8; ++j) qf[g][j] *= scale_log2;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) qf[g][j] = 0.f;
    }
  }
  float m[GB], l[GB], acc[GB][8];
#pragma unroll
  for (int g = 0; g < GB; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
  }

  // Cache rows of the next step are looked up one step ahead (block-table loads overlap K/V loads).
  size_t rnext[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int key = kb + (u * kDecWarps + warp) * KPW + slot;
    rnext[u] = key < ke ? kv.row(seq, key, hk) : 0;
  }
  for (int base = kb; base < ke; base += STEP) {
    uint4 kr[U], vr[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + (u * kDecWarps + warp) * KPW + slot;
      ok[u] = key < ke;
      if (ok[u] && dim_ok) {
        const T* p = kv.base + rnext[u] + sub * 8;
        kr[u] = *reinterpret_cast<const uint4*>(p);
        vr[u] = *reinterpret_cast<const uint4*>(p + kv.v_off);
      } else {
        kr[u] = make_uint4(0, 0, 0, 0);
        vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + STEP + (u * kDecWarps + warp) * KPW + slot;
      if (key < ke) rnext[u] = kv.row(seq, key, hk);
    }
    float s[U][GB];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      unpack8<T>(kr[u], kf);
#pragma unroll
      for (int g = 0; g < GB; ++g) {
        float d = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) d = fmaf(qf[g][j], kf[j], d);
#pragma unroll
        for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        s[u][g] = ok[u] ? d : -INFINITY;
      }
    }
    float vf[U][8];
#pragma unroll
    for (int u = 0; u < U; ++u) unpack8<T>(vr[u], vf[u]);
#pragma unroll
    for (int g = 0; g < GB; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][g]);
      if (mx == -INFINITY) continue;  // no valid key for this lane yet
      const float c = exp2f(m[g] - mx);
      l[g] *= c;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] *= c;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pr = exp2f(s[u][g] - mx);
        l[g] += pr;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(pr, vf[u][j], acc[g][j]);
      }
      m[g] = mx;
    }
  }

  // Merge the key slots of a warp (lanes with equal `sub`).
#pragma unroll
  for (int g = 0; g < GB; ++g) {
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float M = fmaxf(m[g], mo);
      const float c1 = m[g] == -INFINITY ? 0.f : exp2f(m[g] - M);
      const float c2 = mo == -INFINITY ? 0.f : exp2f(mo - M);
      l[g] = l[g] * c1 + lo * c2;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][j], o);
        acc[g][j] = acc[g][j] * c1 + ao * c2;
      }
      m[g] = M;
    }
  }
  __shared__ float s_acc[kDecWarps][GB][DP];
  __shared__ float s_m[kDecWarps][GB], s_l[kDecWarps][GB];
  if (slot == 0) {
#pragma unroll
    for (int g = 0; g < GB; ++g) {
#pragma unroll
      for (int j = 0; j < 8; ++j) s_acc[warp][g][sub * 8 + j] = acc[g][j];
      if (sub == 0) {
        s_m[warp][g] = m[g];
        s_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < GB * DP; e += blockDim.x) {
    const int g = e / DP, d = e % DP;
    const int hh = hg * GB + g;
    if (hh >= G || d >= D) continue;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecWarps; ++w) M = fmaxf(M, s_m[w][g]);
    float L = 0.f, O = 0.f;
#pragma unroll
    for (int w = 0; w < kDecWarps; ++w) {
      const float c = s_m[w][g] == -INFINITY ? 0.f : exp2f(s_m[w][g] - M);
      L += s_l[w][g] * c;
      O += s_acc[w][g][d] * c;
    }
    const int h = hk * G + hh;
    const float r = L > 0.f ? O / L : 0.f;
    if (nsplit == 1) {
      out[((size_t)t * nH + h) * D + d] = from_f<T>(r);
    } else {
      const size_t pi = ((size_t)t * nH + h) * nsplit + split;
      ws_o[pi * D + d] = r;
      if (d == 0) ws_ml[pi] = make_float2(M, L);
    }
  }
}

// Combines the splits of one (token, head): weights l_s * 2^(m_s - M).
template <typename T>
__global__ void decode_reduce_kernel(const float* __restrict__ ws_o, const float2* __restrict__ ws_ml,
                                     T* __restrict__ out, const int32_t* __restrict__ positions, int nH, int D,
                                     int chunk) {
  const int h = blockIdx.x, t = blockIdx.y, nsplit = gridDim.z;
  const int ctx = positions[t] + 1;
  const int ns = min(nsplit, (ctx + chunk - 1) / chunk);
  const size_t base = ((size_t)t * nH + h) * nsplit;
  extern __shared__ float s_w[];  // [nsplit]
  __shared__ float s_inv;
  if (threadIdx.x < 32) {
    float M = -INFINITY;
    for (int i = threadIdx.x; i < ns; i += 32) M = fmaxf(M, ws_ml[base + i].x);
    M = warp_max(M);
    float L = 0.f;
    for (int i = threadIdx.x; i < ns; i += 32) {
      const float2 ml = ws_ml[base + i];
      const float w = ml.x == -INFINITY ? 0.f : ml.y * exp2f(ml.x - M);
      s_w[i] = w;
      L += w;
    }
    L = warp_sum(L);
    if (threadIdx.x == 0) s_inv = L > 0.f ? 1.f / L : 0.f;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int i = 0; i < ns; ++i) o = fmaf(s_w[i], ws_o[(base + i) * D + d], o);
    out[((size_t)t * nH + h) * D + d] = from_f<T>(o * s_inv);
  }
}

template <typename T, int DP, int GB>
void launch_decode_t(const T* q, int q_stride, T* out, float* ws_o, float2* ws_ml, const KVView<T>& kv,
                     const StepLayout& step, int nH, int nKV, int G, float scale_log2, DecodeSplit sp,
                     cudaStream_t s) {
  const int hgroups = (G + GB - 1) / GB;
  dim3 grid(nKV * hgroups, sp.splits, step.num_tokens);
  decode_kernel<T, DP, GB><<<grid, kDecWarps * 32, 0, s>>>(q, q_stride, out, ws_o, ws_ml, kv, step.positions,
                                                            step.token_seq, nH, hgroups, G, scale_log2, sp.chunk);
}

template <typename T, int DP>
void launch_decode_dp(const T* q, int q_stride, T* out, float* ws_o, float2* ws_ml, const KVView<T>& kv,
                      const StepLayout& step, int nH, int nKV, int G, float scale_log2, DecodeSplit sp,
                      cudaStream_t s) {
  if (G <= 1)
    launch_decode_t<T, DP, 1>(q, q_stride, out, ws_o, ws_ml, kv, step, nH, nKV, G, scale_log2, sp, s);
  else if (G <= 2)
    launch_decode_t<T, DP, 2>(q, q_stride, out, ws_o, ws_ml, kv, step, nH, nKV, G, scale_log2, sp, s);
  else if (G <= 4)
    launch_decode_t<T, DP, 4>(q, q_stride, out, ws_o, ws_ml, kv, step, nH, nKV, G, scale_log2, sp, s);
  else
    launch_decode_t<T, DP, 8>(q, q_stride, out, ws_o, ws_ml, kv, step, nH, nKV, G, scale_log2, sp, s);
}

}  // namespace

DecodeSplit decode_split(int num_tokens, int num_heads, int num_kv_heads, int head_dim, int max_seq_len) {
  (void)head_dim;
  DecodeSplit r{1, max_seq_len > 0 ? max_seq_len : 1};
  if (num_tokens <= 0 || max_seq_len <= 0) return r;
  constexpr int kMinChunk = 64;
  const int G = num_kv_heads > 0 ? num_heads / num_kv_heads : 1;
  const int hgroups = (G + 7) / 8;
  const long base_blocks = (long)num_tokens * num_kv_heads * (G <= 8 ? 1 : hgroups);
  const long target = 4L * num_sms();
  long splits = (target + base_blocks - 1) / base_blocks;
  splits = std::min<long>(splits, (max_seq_len + kMinChunk - 1) / kMinChunk);
  splits = std::min<long>(splits, kSplitBudget / ((long)num_tokens * num_heads));
  if (splits < 2) return r;
  r.chunk = (int)((max_seq_len + splits - 1) / splits);
  r.chunk = (r.chunk + 15) / 16 * 16;
  r.splits = (max_seq_len + r.chunk - 1) / r.chunk;
  if (r.splits < 2) r.splits = 1, r.chunk = max_seq_len;
  return r;
}

cudaError_t attention_decode(const void* q_, int q_stride, void* out_, const PagedKV& kv, const StepLayout& step,
                             const AttnParams& p, DType dt, void* ws, cudaStream_t s) {
  const int D = p.head_dim, nH = p.num_heads, nKV = p.num_kv_heads;
  const int G = nH / nKV;
  const DecodeSplit sp = decode_split(step.num_tokens, nH, nKV, D, step.max_seq_len);
  float* ws_o = nullptr;
  float2* ws_ml = nullptr;
  if (sp.splits > 1) {
    const size_t parts = (size_t)step.num_tokens * nH * sp.splits;
    ws_o = static_cast<float*>(ws);
    ws_ml = reinterpret_cast<float2*>(static_cast<char*>(ws) + ((parts * D * sizeof(float) + 255) & ~(size_t)255));
  }
  const float scale_log2 = p.scale * 1.4426950408889634f;
  TSLLM_DISPATCH_HALF(dt, T, {
    const T* q = static_cast<const T*>(q_);
    T* out = static_cast<T*>(out_);
    const KVView<T> v = make_kv_view<T>(kv, p.layer);
    if (D <= 32)
      launch_decode_dp<T, 32>(q, q_stride, out, ws_o, ws_ml, v, step, nH, nKV, G, scale_log2, sp, s);
    else if (D <= 64)
      launch_decode_dp<T, 64>(q, q_stride, out, ws_o, ws_ml, v, step, nH, nKV, G, scale_log2, sp, s);
    else if (D <= 128)
      launch_decode_dp<T, 128>(q, q_stride, out, ws_o, ws_ml, v, step, nH, nKV, G, scale_log2, sp, s);
    else
      launch_decode_dp<T, 256>(q, q_stride, out, ws_o, ws_ml, v, step, nH, nKV, G, scale_log2, sp, s);
    if (sp.splits > 1) {
      dim3 grid(nH, step.num_tokens, sp.splits);
      const int threads = D >= 128 ? 128 : 64;
      decode_reduce_kernel<T><<<grid, threads, sp.splits * sizeof(float), s>>>(ws_o, ws_ml, out, step.positions, nH,
                                                                              D, sp.chunk);
    }
  });
  return cudaGetLastError();
}

}  // namespace kd
}  // namespace tsllm
