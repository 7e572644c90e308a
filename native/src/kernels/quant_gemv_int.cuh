// int8 / int4 weight-only decode gemv (numerics in quant.h): each warp streams ROWS weight rows with 16-byte
// non-caching loads, UN chunks in flight per lane and row, dequantises w = T(fp32(q · s)) per element as the
// reference does and accumulates x · w in fp32. Instantiated once per weight kind (quant_gemv_int8.cu,
// quant_gemv_int4.cu) so the build compiles them in parallel; quant_gemv.cu dispatches.
#pragma once
#include "quant_gemv_common.cuh"

namespace tsllm {
namespace kd {
namespace {

// 8 consecutive weights of row chunk `raw` starting at element 8*j of the chunk -> floats, dequantised and rounded
// to T as the reference does (T(fp32(q * s))).
template <typename T, bool INT4>
__device__ __forceinline__ void dequant8(const uint4& raw, int j, float s, float (&f)[8]) {
  const uint32_t* p = &raw.x;
  if constexpr (INT4) {
    const uint32_t u = p[j];  // 8 nibbles: element i in bits [4i, 4i+4)
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int q = int(u << (28 - 4 * i)) >> 28;  // sign-extended nibble
      f[i] = to_f(from_f<T>(__fmul_rn(float(q), s)));
    }
  } else {
    const uint32_t u0 = p[2 * j], u1 = p[2 * j + 1];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      f[i] = to_f(from_f<T>(__fmul_rn(float(int8_t(u0 >> (8 * i))), s)));
      f[4 + i] = to_f(from_f<T>(__fmul_rn(float(int8_t(u1 >> (8 * i))), s)));
    }
  }
}

// PRO = 1: rms_norm prologue (x is the norm's input; the vector is T((x · inv_rms) · norm_w) as norms.cu writes y;
// every block computes inv_rms over K after griddepcontrol.wait while its first weight loads are in flight).
template <typename T, int M, int ROWS, bool INT4, int UN, int PRO>
__global__ void __launch_bounds__(kQWarps * 32)
    int_gemv_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sc, int group,
                    const T* __restrict__ bias, const T* res, T* out, int N, int K, int act,
                    const T* __restrict__ nw, float eps) {
  constexpr int EPC = INT4 ? 32 : 16;  // weights per 16-byte chunk
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n0 = (blockIdx.x * kQWarps + warp) * ROWS;
  const size_t row_bytes = INT4 ? (size_t)K / 2 : (size_t)K;
  const int chunks = int(row_bytes >> 4);
  const int gpr = INT4 ? K / group : 1;  // scales per row
  const bool active = n0 < N;
  uint4 wv[UN][ROWS];
  auto load = [&](int c0) {
#pragma unroll
    for (int u = 0; u < UN; u++) {
      const int c = c0 + u * 32;
#pragma unroll
      for (int r = 0; r < ROWS; r++)
        wv[u][r] = active && n0 + r < N && c < chunks ? ld_stream(w + (size_t)(n0 + r) * row_bytes + (size_t)c * 16)
                                                      : make_uint4(0, 0, 0, 0);
    }
  };
  int c0 = lane;
  load(c0);
  pdl_wait();
  float inv[M];
#pragma unroll
  for (int m = 0; m < M; m++) inv[m] = 1.f;
  if constexpr (PRO == 1) {
    __shared__ float red[kQWarps][M];
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) ss[m] = 0.f;
    for (int c = threadIdx.x; c < (K >> 3); c += kQWarps * 32)
#pragma unroll
      for (int m = 0; m < M; m++) {
        float f[8];
        unpack8<T>(*reinterpret_cast<const uint4*>(x + (size_t)m * K + (size_t)c * 8), f);
#pragma unroll
        for (int i = 0; i < 8; i++) ss[m] = fmaf(f[i], f[i], ss[m]);
      }
#pragma unroll
    for (int m = 0; m < M; m++) {
      ss[m] = warp_sum(ss[m]);
      if (lane == 0) red[warp][m] = ss[m];
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < M; m++) {
      float t = 0.f;
#pragma unroll
      for (int i = 0; i < kQWarps; i++) t += red[i][m];
      inv[m] = rsqrtf(t / K + eps);  // norms.cu: rsqrtf(s1 / hidden + eps)
    }
  }
  float acc[ROWS][M];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = 0.f;
  float srow[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; r++) srow[r] = !INT4 && n0 + r < N ? __ldg(sc + n0 + r) : 1.f;
  if (active) {
    for (;;) {
#pragma unroll
      for (int u = 0; u < UN; u++) {
        const int c = c0 + u * 32;
        if (c >= chunks) break;
        const int k0 = c * EPC;
        float s[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++)
          s[r] = INT4 ? (n0 + r < N ? __ldg(sc + (size_t)(n0 + r) * gpr + k0 / group) : 1.f) : srow[r];
#pragma unroll
        for (int j = 0; j < EPC / 8; j++) {
          float xf[M][8];
          uint4 nwv = make_uint4(0, 0, 0, 0);
          if constexpr (PRO == 1) nwv = __ldg(reinterpret_cast<const uint4*>(nw + k0 + 8 * j));
#pragma unroll
          for (int m = 0; m < M; m++) {
            uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + (size_t)m * K + k0 + 8 * j));
            if constexpr (PRO == 1) {
              const uint32_t* px = &xv.x;
              const uint32_t* pw = &nwv.x;
              uint32_t* po = &xv.x;
#pragma unroll
              for (int i = 0; i < 4; i++) {
                const float2 fx = to_f2<T>(px[i]), fw = to_f2<T>(pw[i]);
                po[i] = pack2<T>((fx.x * inv[m]) * fw.x, (fx.y * inv[m]) * fw.y);  // norms.cu's rounding of y
              }
            }
            unpack8<T>(xv, xf[m]);
          }
#pragma unroll
          for (int r = 0; r < ROWS; r++) {
            float wf[8];
            dequant8<T, INT4>(wv[u][r], j, s[r], wf);
#pragma unroll
            for (int m = 0; m < M; m++)
#pragma unroll
              for (int i = 0; i < 8; i++) acc[r][m] = fmaf(wf[i], xf[m][i], acc[r][m]);
          }
        }
      }
      c0 += 32 * UN;
      if (c0 >= chunks) break;
      load(c0);
    }
  }
  float one[ROWS][M];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) one[r][m] = 1.f;
  reduce_store<T, M, ROWS>(acc, one, n0, lane, bias, res, out, N, act);
}

template <typename T, int M, int ROWS, bool INT4, int UN>
cudaError_t launch_int(const void* x, const void* w, const float* sc, int group, const void* bias, const void* res,
                       void* out, int N, int K, Act act, const void* nw, float eps, bool pdl, cudaStream_t s) {
  const unsigned blocks = (unsigned)((N + kQWarps * ROWS - 1) / (kQWarps * ROWS));
  auto kern = nw ? int_gemv_kernel<T, M, ROWS, INT4, UN, 1> : int_gemv_kernel<T, M, ROWS, INT4, UN, 0>;
  return launch_pdl(kern, blocks, 0, pdl, s, static_cast<const T*>(x), static_cast<const uint8_t*>(w), sc, group,
                    static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(out), N, K, int(act),
                    static_cast<const T*>(nw), eps);
}

// int8 / int4 variants: (rows per warp, chunks in flight per row). Variants with ALU dequantisation (integer / fp32
// bit tricks instead of I2F + F2F) and more loads in flight were measured on the H200 (gemv_bench, 27-49 % slower
// than these on every Llama-2-7B shape) and removed.
template <typename T, int M, bool INT4>
cudaError_t launch_int_variant(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,
                               const void* res, void* out, int N, int K, Act act, const void* nw, float eps, bool pdl,
                               cudaStream_t s) {
  switch (variant) {
    case 0: return launch_int<T, M, 1, INT4, 4>(x, w, sc, group, bias, res, out, N, K, act, nw, eps, pdl, s);
    case 1: return launch_int<T, M, 2, INT4, 4>(x, w, sc, group, bias, res, out, N, K, act, nw, eps, pdl, s);
    case 2: return launch_int<T, M, 4, INT4, 2>(x, w, sc, group, bias, res, out, N, K, act, nw, eps, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd

template <bool INT4>
cudaError_t int_gemv_dispatch(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,
                              const void* res, void* out, int M, int N, int K, Act act, const void* nw, float eps,
                              DType dt, bool pdl, cudaStream_t s) {
  auto go = [&](auto tag, auto mtag) {
    using T = decltype(tag);
    constexpr int MM = decltype(mtag)::value;
    return kd::launch_int_variant<T, MM, INT4>(variant, x, w, sc, group, bias, res, out, N, K, act, nw, eps, pdl, s);
  };
  auto by_m = [&](auto tag) -> cudaError_t {
    switch (M) {
      case 1: return go(tag, std::integral_constant<int, 1>{});
      case 2: return go(tag, std::integral_constant<int, 2>{});
      case 3: return go(tag, std::integral_constant<int, 3>{});
      case 4: return go(tag, std::integral_constant<int, 4>{});
      default: return cudaErrorInvalidValue;
    }
  };
  if (dt == DType::F16) return by_m(half{});
  if (dt == DType::BF16) return by_m(kd::bf16{});
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
