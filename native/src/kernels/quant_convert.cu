// Conversions around the context (large-M) quantised GEMMs (numerics in quant.h):
//   quantize_rows_fp8   per-token E4M3 quantisation of the activations, one block per row (the FP8 GEMM's input);
//   fp8_scale_epilogue  fp32 GEMM result -> act(acc · fp32(s_x·s_w) + bias) + residual in the activation dtype;
//   dequantize_weight   int8 / int4 rows -> T(fp32(q·s)) for the half-precision GEMM.
#include <algorithm>

#include "fp8.cuh"
#include "quant.h"

namespace tsllm {
namespace kd {
namespace {

constexpr int kRowThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    quantize_rows_fp8_kernel(const T* __restrict__ x, uint8_t* __restrict__ q, float* __restrict__ scales, int cols,
                             bool vec) {
  const size_t r = blockIdx.x;
  const T* xr = x + r * cols;
  uint8_t* qr = q + r * cols;
  float am = 0.f;
  if (vec) {
    for (int c = threadIdx.x; c < cols / 8; c += blockDim.x) {
      float f[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(xr + (size_t)c * 8), f);
#pragma unroll
      for (int j = 0; j < 8; j++) am = fmaxf(am, fabsf(f[j]));
    }
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) am = fmaxf(am, fabsf(to_f(xr[c])));
  }
  __shared__ float s_red[kRowThreads / 32];
  __shared__ float s_scale;
  am = warp_max(am);
  if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5] = am;
  __syncthreads();
  if (threadIdx.x == 0) {
    float a = 0.f;
    for (int i = 0; i < (int)blockDim.x / 32; i++) a = fmaxf(a, s_red[i]);
    s_scale = e4m3_row_scale(a);
    scales[r] = s_scale;
  }
  __syncthreads();
  const float s = s_scale, rs = __frcp_rn(s);
  if (vec) {
    for (int c = threadIdx.x; c < cols / 8; c += blockDim.x) {
      float f[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(xr + (size_t)c * 8), f);
      *reinterpret_cast<uint2*>(qr + (size_t)c * 8) = f8_to_e4m3x8_fast(f, s, rs);  // the division-free exact path
    }
  } else {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) qr[c] = e4m3_of(__fdiv_rn(to_f(xr[c]), s));
  }
}

// One row per blockIdx.y (grid-stride), VEC consecutive columns per thread along x: no 64-bit division per element
// (the first version's i / N dominated at prefill sizes), 32-byte fp32 loads and 16-byte stores when VEC = 8.
template <typename T, int VEC>
__global__ void fp8_epilogue_kernel(const float* __restrict__ acc, const float* __restrict__ sx,
                                    const float* __restrict__ sw, const T* __restrict__ bias, const T* res, T* out,
                                    int rows, int N, Act act) {
  const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  if (c0 >= N) return;
  float swv[VEC], bv[VEC];
#pragma unroll
  for (int j = 0; j < VEC; j++) {
    swv[j] = sw[c0 + j];
    bv[j] = bias ? to_f(bias[c0 + j]) : 0.f;
  }
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const size_t o = (size_t)r * N + c0;
    const float sr = sx[r];
    float a[VEC], rv[VEC];
    if constexpr (VEC == 8) {
      const float4 a0 = *reinterpret_cast<const float4*>(acc + o), a1 = *reinterpret_cast<const float4*>(acc + o + 4);
      a[0] = a0.x, a[1] = a0.y, a[2] = a0.z, a[3] = a0.w, a[4] = a1.x, a[5] = a1.y, a[6] = a1.z, a[7] = a1.w;
      if (res) unpack8<T>(*reinterpret_cast<const uint4*>(res + o), rv);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; j++) {
        a[j] = acc[o + j];
        rv[j] = res ? to_f(res[o + j]) : 0.f;
      }
    }
    float v[VEC];
#pragma unroll
    for (int j = 0; j < VEC; j++) {
      v[j] = __fmul_rn(a[j], __fmul_rn(sr, swv[j]));
      if (bias) v[j] = __fadd_rn(v[j], bv[j]);
      v[j] = act_value(v[j], act);
      if (res) v[j] = __fadd_rn(v[j], rv[j]);
    }
    if constexpr (VEC == 8) {
      *reinterpret_cast<uint4*>(out + o) = pack8<T>(v);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; j++) out[o + j] = from_f<T>(v[j]);
    }
  }
}

template <typename T, bool INT4>
__global__ void dequant_kernel(const uint8_t* __restrict__ w, const float* __restrict__ sc, int group,
                               T* __restrict__ out, int n0, int rows, int K) {
  // One thread per 8 output elements (16 bytes of T): int8 reads 8 bytes, int4 4 bytes.
  const size_t per_row = (size_t)K / 8;
  const size_t total = (size_t)rows * per_row;
  const int gpr = INT4 ? K / group : 1;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const size_t rl = i / per_row;
    const int k0 = int(i - rl * per_row) * 8;
    const size_t n = (size_t)n0 + rl;
    float f[8];
    if constexpr (INT4) {
      const uint32_t u = *reinterpret_cast<const uint32_t*>(w + n * ((size_t)K / 2) + k0 / 2);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const float s = sc[n * gpr + (k0 + j) / group];
        f[j] = __fmul_rn(float(int(u << (28 - 4 * j)) >> 28), s);
      }
    } else {
      const uint2 u = *reinterpret_cast<const uint2*>(w + n * (size_t)K + k0);
      const float s = sc[n];
#pragma unroll
      for (int j = 0; j < 4; j++) {
        f[j] = __fmul_rn(float(int8_t(u.x >> (8 * j))), s);
        f[4 + j] = __fmul_rn(float(int8_t(u.y >> (8 * j))), s);
      }
    }
    *reinterpret_cast<uint4*>(out + rl * K + k0) = pack8<T>(f);
  }
}

}  // namespace
}  // namespace kd

cudaError_t quantize_rows_fp8(const void* x, void* q, float* scales, int rows, int cols, DType dt, cudaStream_t s) {
  if (rows <= 0) return cudaSuccess;
  const bool vec = cols % 8 == 0 && kd::aligned16(x) && (reinterpret_cast<uintptr_t>(q) & 7) == 0;
  TSLLM_DISPATCH_HALF(dt, T, {
    kd::quantize_rows_fp8_kernel<T><<<rows, kd::kRowThreads, 0, s>>>(static_cast<const T*>(x),
                                                                      static_cast<uint8_t*>(q), scales, cols, vec);
  });
  return cudaGetLastError();
}

cudaError_t fp8_scale_epilogue(const float* acc, const float* sx, const float* sw, const void* bias,
                               const void* residual, void* out, int rows, int N, Act act, DType dt, cudaStream_t s) {
  if (rows <= 0 || N <= 0) return cudaSuccess;
  const int threads = 128;
  auto al16 = [](const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  const bool vec = N % 8 == 0 && al16(acc) && al16(residual) && al16(out);
  const int per = vec ? 8 : 1;
  const int cols = (N + per - 1) / per;
  const unsigned gx = unsigned((cols + threads - 1) / threads);
  // Enough rows in flight to fill the GPU (each block of a row column-strip loops over rows gridDim.y apart).
  const unsigned gy = unsigned(std::max(1, std::min(rows, std::min(65535, (kd::num_sms() * 16 + int(gx) - 1) / int(gx)))));
  const dim3 grid(gx, gy);
  TSLLM_DISPATCH_HALF(dt, T, {
    if (vec)
      kd::fp8_epilogue_kernel<T, 8><<<grid, threads, 0, s>>>(acc, sx, sw, static_cast<const T*>(bias),
                                                             static_cast<const T*>(residual), static_cast<T*>(out), rows,
                                                             N, act);
    else
      kd::fp8_epilogue_kernel<T, 1><<<grid, threads, 0, s>>>(acc, sx, sw, static_cast<const T*>(bias),
                                                             static_cast<const T*>(residual), static_cast<T*>(out), rows,
                                                             N, act);
  });
  return cudaGetLastError();
}

cudaError_t dequantize_weight(QuantKind kind, const void* w, const float* scales, int group, void* out, int n0,
                              int rows, int K, DType dt, cudaStream_t s) {
  if (rows <= 0) return cudaSuccess;
  if (K % 8 || (kind == QuantKind::Int4 && (group <= 0 || group % 2 || K % group)) || kind == QuantKind::Fp8 ||
      !kd::aligned16(out) || (reinterpret_cast<uintptr_t>(w) & 7))
    return cudaErrorInvalidValue;
  const int threads = 256;
  const int blocks = kd::grid_for((uint64_t)rows * (K / 8), threads, kd::num_sms() * 16);
  auto wq = static_cast<const uint8_t*>(w);
  TSLLM_DISPATCH_HALF(dt, T, {
    if (kind == QuantKind::Int4)
      kd::dequant_kernel<T, true><<<blocks, threads, 0, s>>>(wq, scales, group, static_cast<T*>(out), n0, rows, K);
    else
      kd::dequant_kernel<T, false><<<blocks, threads, 0, s>>>(wq, scales, group, static_cast<T*>(out), n0, rows, K);
  });
  return cudaGetLastError();
}

}  // namespace tsllm
