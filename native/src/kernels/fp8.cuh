// FP8 E4M3 helpers of the kernels (quantised linears, FP8 KV cache). Encoding is src/quant/fp8.ts's: round to
// nearest even, saturating to ±448 (cvt.rn.satfinite.e4m3x2.f32). Every E4M3 value is exact in fp16 and fp32.
#pragma once
#include <cuda_fp8.h>

#include "common.cuh"

namespace tsllm {
namespace kd {

constexpr float kE4m3Max = 448.f;

__device__ __forceinline__ uint8_t e4m3_of(float x) {
  return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

// Per-token quantisation scale of a row whose largest magnitude is amax: amax / 448 in fp32, 1 for a zero row.
__device__ __forceinline__ float e4m3_row_scale(float amax) { return amax > 0.f ? __fdiv_rn(amax, kE4m3Max) : 1.f; }

// Four floats -> four E4M3 bytes (a in the low byte), rounded as e4m3_of.
__device__ __forceinline__ uint32_t e4m3x4_of(float a, float b, float c, float d) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
  return lo | (hi << 16);
}

// Two E4M3 bytes (low byte = first element) -> two floats.
__device__ __forceinline__ float2 e4m3x2_to_f2(uint32_t two) {
  __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
  return __half22float2(*reinterpret_cast<__half2*>(&h));
}

// Two E4M3 bytes (low byte = first element) -> their two fp16 values (exact), packed the same way.
__device__ __forceinline__ uint32_t e4m3x2_to_h2(uint32_t two) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
  return uint32_t(h.x) | (uint32_t(h.y) << 16);
}

// 8 E4M3 bytes -> 8 fp16 values (exact), 16 bytes.
__device__ __forceinline__ uint4 e4m3x8_to_h(const uint2& u) {
  uint32_t w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) w[j] = e4m3x2_to_h2((j < 2 ? u.x : u.y) >> (16 * (j & 1)));
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// 4 E4M3 bytes of a 32-bit word -> f[0..3].
__device__ __forceinline__ void e4m3x4_to_f(uint32_t u, float* f) {
  const float2 a = e4m3x2_to_f2(u), b = e4m3x2_to_f2(u >> 16);
  f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
}

// 16 E4M3 bytes -> f[0..15].
__device__ __forceinline__ void e4m3x16_to_f(const uint4& u, float* f) {
  e4m3x4_to_f(u.x, f);
  e4m3x4_to_f(u.y, f + 4);
  e4m3x4_to_f(u.z, f + 8);
  e4m3x4_to_f(u.w, f + 12);
}

// 8 E4M3 bytes (uint2) -> 8 floats, each times `scale` (FP8 KV cache rows: stored · scale).
__device__ __forceinline__ void e4m3x8_to_f(const uint2& u, float scale, float (&f)[8]) {
  e4m3x4_to_f(u.x, f);
  e4m3x4_to_f(u.y, f + 4);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] *= scale;
}

// 8 floats -> 8 E4M3 bytes of e4m3(f / scale) (fp32 IEEE division, as the reference: x / scale, then RNE).
__device__ __forceinline__ uint2 f8_to_e4m3x8(const float (&f)[8], float scale) {
  uint32_t w[2] = {0u, 0u};
#pragma unroll
  for (int j = 0; j < 8; ++j) w[j >> 2] |= uint32_t(e4m3_of(__fdiv_rn(f[j], scale))) << (8 * (j & 3));
  return make_uint2(w[0], w[1]);
}

// Per-token quantisation without a division per element. The reference's code is e4m3(RN32(x / s)); y = RN(x · r)
// with r = RN(1/s) is within 2.5 ulp of RN32(x / s), so their E4M3 roundings can only differ when y lies within a
// few ulp of an E4M3 rounding midpoint (E4M3 normals: the low 20 mantissa bits near 0x80000) or in E4M3's
// subnormal range (|y| < 2^-6, other midpoints); those groups of 8 take __fdiv_rn. y[j] then has x / s's E4M3 code.
__device__ __forceinline__ void quot8(const float (&v)[8], float s, float r, float (&y)[8]) {
  bool slow = false;
#pragma unroll
  for (int j = 0; j < 8; j++) {
    y[j] = __fmul_rn(v[j], r);
    const uint32_t b = __float_as_uint(y[j]) & 0x7fffffffu;
    slow |= (b != 0u && b < 0x3C800000u) || ((b & 0xFFFFFu) - 0x7FFFBu) < 11u;  // |y| < 2^-6, or ±5 ulp of a midpoint
  }
  if (slow) {
#pragma unroll
    for (int j = 0; j < 8; j++) y[j] = __fdiv_rn(v[j], s);
  }
}

// 8 floats -> 8 E4M3 bytes of e4m3(f / scale), r = __frcp_rn(scale): f8_to_e4m3x8's bytes through quot8.
__device__ __forceinline__ uint2 f8_to_e4m3x8_fast(const float (&f)[8], float scale, float r) {
  float y[8];
  quot8(f, scale, r, y);
  uint32_t w[2] = {0u, 0u};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t two = __nv_cvt_float2_to_fp8x2(make_float2(y[2 * j], y[2 * j + 1]), __NV_SATFINITE, __NV_E4M3);
    w[j >> 1] |= two << (16 * (j & 1));
  }
  return make_uint2(w[0], w[1]);
}

// The row's scale from every thread's amax am (block-wide; thread 0 stores it to *scale), and its reciprocal *rs.
__device__ __forceinline__ float fp8_row_scale(float am, float* scale, float* rs) {
  const float sc = e4m3_row_scale(block_max(am));
  *rs = __frcp_rn(sc);
  if (threadIdx.x == 0) *scale = sc;
  return sc;
}
// The end of a producer writing FP8 rows (kernels.h Fp8Rows), one block per row: v[k] holds the row's rounded
// values of vector vi = threadIdx.x + k * blockDim.x (8 each, those below nvec), am this thread's amax of them; the
// row's scale goes to *scale and its E4M3 codes to q_row — quantize_rows_fp8's bytes.
template <int VPT>
__device__ __forceinline__ void store_fp8_row(const float (&v)[VPT][8], float am, int nvec, uint8_t* q_row,
                                              float* scale) {
  float rs;
  const float sc = fp8_row_scale(am, scale, &rs);
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int vi = threadIdx.x + k * blockDim.x;
    if (vi < nvec) *reinterpret_cast<uint2*>(q_row + vi * 8) = f8_to_e4m3x8_fast(v[k], sc, rs);
  }
}

}  // namespace kd
}  // namespace tsllm
