// random_fill: deterministic random weights, bit-identical to src/weights/random.ts.
// u = lowbias32(lowbias32(seed) ^ i), r = (u >> 8) / 2^24, value = mean + scale * (2r - 1) in fp32 with
// separate multiply and add (no FMA contraction), then round-to-nearest-even to the weight dtype (integer
// dtypes: to the nearest integer, clamped).
#include <cuda_fp8.h>

#include "common.cuh"
#include "lowbias32.h"

namespace tsllm {
namespace {

__device__ __forceinline__ float rf_value(uint32_t h, uint64_t i, float mean, float scale) {
  const uint32_t u = lowbias32(h ^ (uint32_t)i);  // JS: (h ^ i) >>> 0 uses the low 32 bits of i
  const float r = __fmul_rn((float)(u >> 8), 5.9604644775390625e-08f);  // exact: 24-bit integer * 2^-24
  const float t = __fadd_rn(__fmul_rn(2.0f, r), -1.0f);                // exact
  return __fadd_rn(mean, __fmul_rn(scale, t));
}

template <typename T>
__device__ __forceinline__ T rf_cast(float v) {
  return kd::from_f<T>(v);
}
template <>
__device__ __forceinline__ __nv_fp8_e4m3 rf_cast<__nv_fp8_e4m3>(float v) {
  __nv_fp8_e4m3 r;
  r.__x = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
  return r;
}
// Integer storage (int8 / packed int4 weights): round half to even, clamp to the type's range, as
// roundStored in src/quant/weights.ts.
template <>
__device__ __forceinline__ int8_t rf_cast<int8_t>(float v) {
  return (int8_t)min(127, max(-128, __float2int_rn(v)));
}
template <>
__device__ __forceinline__ uint8_t rf_cast<uint8_t>(float v) {
  return (uint8_t)min(255, max(0, __float2int_rn(v)));
}

// Each thread writes 16 bytes (N elements) per step; the tail (n % N) is written element-wise.
template <typename T>
__global__ void random_fill_kernel(T* __restrict__ out, uint64_t n, uint32_t h, float mean, float scale) {
  constexpr int N = 16 / sizeof(T);
  struct alignas(16) Pack { T v[N]; };
  const uint64_t nvec = n / N;
  const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
  for (uint64_t vi = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; vi < nvec; vi += stride) {
    Pack p;
#pragma unroll
    for (int j = 0; j < N; ++j) p.v[j] = rf_cast<T>(rf_value(h, vi * N + j, mean, scale));
    reinterpret_cast<Pack*>(out)[vi] = p;
  }
  const uint64_t tail = nvec * N + (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (tail < n) out[tail] = rf_cast<T>(rf_value(h, tail, mean, scale));
}

template <typename T>
cudaError_t launch_rf(void* out, uint64_t n, uint32_t h, float mean, float scale, cudaStream_t s) {
  constexpr int N = 16 / sizeof(T);
  if (!kd::aligned16(out)) return cudaErrorMisalignedAddress;
  const int threads = 256;
  const uint64_t work = n / N > 0 ? n / N : 1;
  const int blocks = kd::grid_for(work, threads, kd::num_sms() * 16);
  random_fill_kernel<T><<<blocks, threads, 0, s>>>(static_cast<T*>(out), n, h, mean, scale);
  return cudaGetLastError();
}

}  // namespace

cudaError_t random_fill(void* out, DType dt, uint64_t n, uint32_t seed, float mean, float scale, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  const uint32_t h = lowbias32(seed);
  switch (dt) {
    case DType::F32: return launch_rf<float>(out, n, h, mean, scale, s);
    case DType::F16: return launch_rf<half>(out, n, h, mean, scale, s);
    case DType::BF16: return launch_rf<kd::bf16>(out, n, h, mean, scale, s);
    case DType::FP8_E4M3: return launch_rf<__nv_fp8_e4m3>(out, n, h, mean, scale, s);
    case DType::I8: return launch_rf<int8_t>(out, n, h, mean, scale, s);
    case DType::U8: return launch_rf<uint8_t>(out, n, h, mean, scale, s);
  }
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
