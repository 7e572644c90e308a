// moe gemv path (decode, few tokens): one block column per (token, slot) pair, reading only that pair's expert.
// Each warp streams R weight rows (both w1 and w3 for gate/up) with 16-byte non-caching loads, UN chunks per row
// in flight per lane, fp32 accumulation; the pair's vector (x row or h row) comes from L1/L2.
#include "common.cuh"
#include "moe_internal.h"

namespace tsllm {
namespace {

constexpr int kWarps = 4;
constexpr int kRows = 2;  // weight rows per warp
constexpr int kUn = 4;    // 16-byte chunks per row in flight per lane

// GATED: out is h (dtype) [pairs, N], h = act(x·waᵀ) ⊙ x·wbᵀ; else out is y (fp32) [pairs, N] = x·waᵀ.
// The vector of pair p is vec[p / vdiv] (gate/up: the token's x row, vdiv = top_k; down: h[p], vdiv = 1).
template <typename T, bool GATED>
__global__ void __launch_bounds__(kWarps * 32) moe_gemv_kernel(const T* __restrict__ vec, int vdiv,
                                                               const T* __restrict__ wa, const T* __restrict__ wb,
                                                               const int32_t* __restrict__ ids, void* out, int N,
                                                               int Kd, Act act) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int p = blockIdx.y;
  const int n0 = (blockIdx.x * kWarps + warp) * kRows;
  if (n0 >= N) return;
  const int e = ids[p];
  if (e < 0) return;  // another rank's expert (expert parallelism)
  const T* v = vec + size_t(p / vdiv) * Kd;
  const T* ra[kRows];
  const T* rb[kRows];
#pragma unroll
  for (int r = 0; r < kRows; r++) {
    const size_t row = size_t(e) * N + size_t(min(n0 + r, N - 1));
    ra[r] = wa + row * Kd;
    rb[r] = GATED ? wb + row * Kd : nullptr;
  }
  float aa[kRows], ab[kRows];
#pragma unroll
  for (int r = 0; r < kRows; r++) aa[r] = ab[r] = 0.f;
  const int chunks = Kd >> 3;
  for (int c0 = lane; c0 < chunks; c0 += 32 * kUn) {
    uint4 wva[kUn][kRows], wvb[kUn][kRows], xv[kUn];
#pragma unroll
    for (int u = 0; u < kUn; u++) {
      const int c = c0 + u * 32;
      const bool ok = c < chunks;
#pragma unroll
      for (int r = 0; r < kRows; r++) {
        wva[u][r] = ok ? kd::ld_stream(ra[r] + size_t(c) * 8) : make_uint4(0, 0, 0, 0);
        if (GATED) wvb[u][r] = ok ? kd::ld_stream(rb[r] + size_t(c) * 8) : make_uint4(0, 0, 0, 0);
      }
      xv[u] = ok ? __ldg(reinterpret_cast<const uint4*>(v) + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUn; u++) {
      const uint32_t* px = &xv[u].x;
#pragma unroll
      for (int r = 0; r < kRows; r++) {
        const uint32_t* pa = &wva[u][r].x;
        const uint32_t* pb = &wvb[u][r].x;
#pragma unroll
        for (int i = 0; i < 4; i++) {
          const float2 fx = kd::to_f2<T>(px[i]);
          const float2 fa = kd::to_f2<T>(pa[i]);
          aa[r] = fmaf(fx.x, fa.x, aa[r]);
          aa[r] = fmaf(fx.y, fa.y, aa[r]);
          if (GATED) {
            const float2 fb = kd::to_f2<T>(pb[i]);
            ab[r] = fmaf(fx.x, fb.x, ab[r]);
            ab[r] = fmaf(fx.y, fb.y, ab[r]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; r++) {
    aa[r] = kd::warp_sum(aa[r]);
    if (GATED) ab[r] = kd::warp_sum(ab[r]);
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRows; r++) {
      const int n = n0 + r;
      if (n >= N) break;
      if (GATED)
        static_cast<T*>(out)[size_t(p) * N + n] = kd::from_f<T>(kd::act_value(aa[r], act) * ab[r]);
      else
        static_cast<float*>(out)[size_t(p) * N + n] = aa[r];
    }
  }
}

}  // namespace

cudaError_t moe_gemv_gate_up(const void* x, const void* w1, const void* w3, const int32_t* ids, void* h, int pairs,
                             int K, int H, int I, Act act, DType dt, cudaStream_t s) {
  if (pairs <= 0) return cudaGetLastError();
  if (H % 8 || !kd::aligned16(x) || !kd::aligned16(w1) || !kd::aligned16(w3)) return cudaErrorInvalidValue;
  const dim3 grid((I + kWarps * kRows - 1) / (kWarps * kRows), pairs);
  TSLLM_DISPATCH_HALF(dt, T,
                      moe_gemv_kernel<T, true><<<grid, kWarps * 32, 0, s>>>(
                          static_cast<const T*>(x), K, static_cast<const T*>(w1), static_cast<const T*>(w3), ids, h,
                          I, H, act));
  return cudaGetLastError();
}

cudaError_t moe_gemv_down(const void* h, const void* w2, const int32_t* ids, float* y, int pairs, int H, int I,
                          DType dt, cudaStream_t s) {
  if (pairs <= 0) return cudaGetLastError();
  if (I % 8 || !kd::aligned16(h) || !kd::aligned16(w2)) return cudaErrorInvalidValue;
  const dim3 grid((H + kWarps * kRows - 1) / (kWarps * kRows), pairs);
  TSLLM_DISPATCH_HALF(dt, T,
                      moe_gemv_kernel<T, false><<<grid, kWarps * 32, 0, s>>>(
                          static_cast<const T*>(h), 1, static_cast<const T*>(w2), nullptr, ids, y, H, I, Act::None));
  return cudaGetLastError();
}

}  // namespace tsllm
