// Small-M linear for decode: out[m, n] = x[m, :] · w[n, :] (+ bias[n]) (+ residual[m, n]) for M <= 4.
// Memory-bound: each warp streams ROWS weight rows with 16-byte non-caching loads, four chunks in flight
// per lane, fp32 accumulation, one rounding at the end. GemmRunner offers it to its autotuner next to
// cuBLASLt's algorithms and keeps whichever is faster for the shape.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "runtime_kernels.h"

namespace tsllm {
namespace {

constexpr int kWarps = 4;   // warps per block
constexpr int kUnroll = 4;  // 16-byte chunks in flight per lane and row

__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ float2 to_f2(uint32_t u, __half) {
  __half2 h = *reinterpret_cast<__half2*>(&u);
  return __half22float2(h);
}
__device__ __forceinline__ float2 to_f2(uint32_t u, __nv_bfloat16) {
  __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&u);
  return __bfloat1622float2(h);
}
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ float dot8(const uint4& a, const uint4& b, float acc) {
  const uint32_t* pa = &a.x;
  const uint32_t* pb = &b.x;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 fa = to_f2(pa[i], T()), fb = to_f2(pb[i], T());
    acc = fmaf(fa.x, fb.x, acc);
    acc = fmaf(fa.y, fb.y, acc);
  }
  return acc;
}

// Block of 4 warps: G = 4 / KS groups of KS warps; a group owns ROWS weight rows, its KS warps split K
// (interleaved 512-byte segments) and combine through shared memory.
template <typename T, int M, int ROWS, int KS>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                           const T* __restrict__ bias, const T* res, T* out, int N,
                                                           int K) {
  constexpr int G = kWarps / KS;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = warp / KS, ks = warp % KS;
  const int n0 = (blockIdx.x * G + g) * ROWS;
  const bool active = n0 < N;
  const int chunks = K >> 3;  // 8 elements = 16 bytes
  float acc[ROWS][M];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = 0.f;
  const T* wr[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; r++) wr[r] = w + size_t(min(n0 + r, N - 1)) * size_t(K);

  if (active) {
    for (int c0 = ks * 32 + lane; c0 < chunks; c0 += 32 * KS * kUnroll) {
      uint4 wv[kUnroll][ROWS];
#pragma unroll
      for (int u = 0; u < kUnroll; u++) {
        const int c = c0 + u * 32 * KS;
#pragma unroll
        for (int r = 0; r < ROWS; r++)
          wv[u][r] = c < chunks ? ld_stream(wr[r] + size_t(c) * 8) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; u++) {
        const int c = c0 + u * 32 * KS;
        if (c >= chunks) break;
#pragma unroll
        for (int m = 0; m < M; m++) {
          const uint4 xv = *reinterpret_cast<const uint4*>(x + size_t(m) * K + size_t(c) * 8);
#pragma unroll
          for (int r = 0; r < ROWS; r++) acc[r][m] = dot8<T>(wv[u][r], xv, acc[r][m]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);
  if constexpr (KS > 1) {
    __shared__ float part[kWarps][ROWS][M];
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int m = 0; m < M; m++) part[warp][r][m] = acc[r][m];
    __syncthreads();
    if (ks != 0) return;
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int m = 0; m < M; m++) {
        float v = 0.f;
#pragma unroll
        for (int j = 0; j < KS; j++) v += part[g * KS + j][r][m];
        acc[r][m] = v;
      }
  }
  if (!active) return;
  // Lane (r * M + m) writes output (m, n0 + r).
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++)
      if (lane == r * M + m && n0 + r < N) {
        const int n = n0 + r;
        float v = acc[r][m];
        if (bias) v += to_f(bias[n]);
        if (res) v += to_f(res[size_t(m) * N + n]);
        out[size_t(m) * N + n] = from_f<T>(v);
      }
}

template <typename T, int ROWS, int KS>
cudaError_t launch_v(const void* x, const void* w, const void* bias, const void* res, void* out, int M, int N, int K,
                     cudaStream_t s) {
  constexpr int G = kWarps / KS;
  const unsigned blocks = unsigned((N + G * ROWS - 1) / (G * ROWS));
  auto X = static_cast<const T*>(x);
  auto W = static_cast<const T*>(w);
  auto B = static_cast<const T*>(bias);
  auto R = static_cast<const T*>(res);
  auto O = static_cast<T*>(out);
  switch (M) {
    case 1: gemv_kernel<T, 1, ROWS, KS><<<blocks, kWarps * 32, 0, s>>>(X, W, B, R, O, N, K); break;
    case 2: gemv_kernel<T, 2, ROWS, KS><<<blocks, kWarps * 32, 0, s>>>(X, W, B, R, O, N, K); break;
    case 3: gemv_kernel<T, 3, ROWS, KS><<<blocks, kWarps * 32, 0, s>>>(X, W, B, R, O, N, K); break;
    case 4: gemv_kernel<T, 4, ROWS, KS><<<blocks, kWarps * 32, 0, s>>>(X, W, B, R, O, N, K); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// Variants (rows per group, warps splitting K), chosen per shape by the tuner.
template <typename T>
cudaError_t launch(int variant, const void* x, const void* w, const void* bias, const void* res, void* out, int M,
                   int N, int K, cudaStream_t s) {
  switch (variant) {
    case 0: return launch_v<T, 2, 1>(x, w, bias, res, out, M, N, K, s);
    case 1: return launch_v<T, 1, 1>(x, w, bias, res, out, M, N, K, s);
    case 2: return launch_v<T, 4, 1>(x, w, bias, res, out, M, N, K, s);
    case 3: return launch_v<T, 1, 2>(x, w, bias, res, out, M, N, K, s);
    case 4: return launch_v<T, 2, 2>(x, w, bias, res, out, M, N, K, s);
    case 5: return launch_v<T, 1, 4>(x, w, bias, res, out, M, N, K, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool gemv_eligible(const void* x, const void* w, int M, int K, DType dt) {
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return M >= 1 && M <= kGemvMaxM && K % 8 == 0 && al16(x) && al16(w) && (dt == DType::F16 || dt == DType::BF16);
}

cudaError_t gemv(int variant, const void* x, const void* w, const void* bias, const void* residual, void* out, int M,
                 int N, int K, DType dt, cudaStream_t s) {
  if (!gemv_eligible(x, w, M, K, dt)) return cudaErrorInvalidValue;
  return dt == DType::F16 ? launch<__half>(variant, x, w, bias, residual, out, M, N, K, s)
                          : launch<__nv_bfloat16>(variant, x, w, bias, residual, out, M, N, K, s);
}

}  // namespace tsllm
