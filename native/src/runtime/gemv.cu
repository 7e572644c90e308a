// Small-M linear for decode: out[m, n] = x[m, :] · w[n, :] (+ bias[n]) (+ residual[m, n]) for M <= 4.
// Memory-bound: each warp streams ROWS weight rows with 16-byte non-caching loads, UN chunks in flight
// per lane and row, fp32 accumulation, one rounding at the end.
// Programmatic dependent launch (sm_90+, default; TSLLM_PDL=0 turns it off): launched with programmatic stream serialization; the first weight loads (which do not
// depend on the previous kernel) are issued before griddepcontrol.wait, x/residual are read and out written after. GemmRunner offers it to its autotuner next to
// cuBLASLt's algorithms and keeps whichever is faster for the shape.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>

#include "runtime_kernels.h"

namespace tsllm {
namespace {

constexpr int kWarps = 4;   // warps per block

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

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
// (interleaved 512-byte segments) and combine through shared memory. UN chunks per row in flight per lane.
template <typename T, int M, int ROWS, int KS, int UN>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                           const T* __restrict__ bias, const T* res, T* out, int N,
                                                           int K) {
  constexpr int G = kWarps / KS;
  pdl_trigger();
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

  // The first weight loads are issued before waiting for the previous kernel (weights are never written).
  int c0 = ks * 32 + lane;
  uint4 wv[UN][ROWS];
  auto load = [&](int cb) {
#pragma unroll
    for (int u = 0; u < UN; u++) {
      const int c = cb + u * 32 * KS;
#pragma unroll
      for (int r = 0; r < ROWS; r++)
        wv[u][r] = active && c < chunks ? ld_stream(wr[r] + size_t(c) * 8) : make_uint4(0, 0, 0, 0);
    }
  };
  load(c0);
  pdl_wait();
  if (active) {
    for (;;) {
#pragma unroll
      for (int u = 0; u < UN; u++) {
        const int c = c0 + u * 32 * KS;
        if (c >= chunks) break;
#pragma unroll
        for (int m = 0; m < M; m++) {
          const uint4 xv = *reinterpret_cast<const uint4*>(x + size_t(m) * K + size_t(c) * 8);
#pragma unroll
          for (int r = 0; r < ROWS; r++) acc[r][m] = dot8<T>(wv[u][r], xv, acc[r][m]);
        }
      }
      c0 += 32 * KS * UN;
      if (c0 >= chunks) break;
      load(c0);
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

// Programmatic dependent launch on an sm_90+ device unless TSLLM_PDL=0 (read once).
bool pdl_on() {
  static const bool env = [] {
    // On by default (measured on H100: 4.975 vs 5.021 ms per Llama-2-7B decode step); TSLLM_PDL=0 turns it off.
    const char* e = std::getenv("TSLLM_PDL");
    return !(e && e[0] == '0' && e[1] == 0);
  }();
  if (!env) return false;
  static int cached[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  dev &= 63;
  if (!cached[dev]) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaGetLastError();
    cached[dev] = major >= 9 ? 1 : 2;
  }
  return cached[dev] == 1;
}

template <typename T, int M, int ROWS, int KS, int UN>
cudaError_t launch_m(unsigned blocks, const T* X, const T* W, const T* B, const T* R, T* O, int N, int K,
                     cudaStream_t s) {
  if (!pdl_on()) {
    gemv_kernel<T, M, ROWS, KS, UN><<<blocks, kWarps * 32, 0, s>>>(X, W, B, R, O, N, K);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(kWarps * 32);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, gemv_kernel<T, M, ROWS, KS, UN>, X, W, B, R, O, N, K);
}

template <typename T, int ROWS, int KS, int UN = 4>
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
    case 1: return launch_m<T, 1, ROWS, KS, UN>(blocks, X, W, B, R, O, N, K, s);
    case 2: return launch_m<T, 2, ROWS, KS, UN>(blocks, X, W, B, R, O, N, K, s);
    case 3: return launch_m<T, 3, ROWS, KS, UN>(blocks, X, W, B, R, O, N, K, s);
    case 4: return launch_m<T, 4, ROWS, KS, UN>(blocks, X, W, B, R, O, N, K, s);
    default: return cudaErrorInvalidValue;
  }
}

// Variants (rows per group, warps splitting K, chunks in flight per row), chosen per shape by the tuner.
// 6-9 put more 16-byte loads in flight per lane (16) or spread K over more warps (more, shorter blocks) for the
// N = 4096 shapes (o_proj, down) that run below the copy rate with 0-5.
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
    case 6: return launch_v<T, 2, 1, 8>(x, w, bias, res, out, M, N, K, s);
    case 7: return launch_v<T, 4, 2>(x, w, bias, res, out, M, N, K, s);
    case 8: return launch_v<T, 2, 4>(x, w, bias, res, out, M, N, K, s);
    case 9: return launch_v<T, 1, 2, 8>(x, w, bias, res, out, M, N, K, s);
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
