// FP8 W8A8 decode gemv, second design (quant_gemv variants 3-7 for fp8; quant_gemv.cu keeps 0-2 for the A/B).
// Numerics as quant.h says (per-token s_x = fp32(amax/448), q_x = e4m3(fp32(x / s_x)), fp32 dot of E4M3 values,
// y = acc · fp32(s_x · s_w)). What changed against variants 0-2, and why (H200 profile, Llama-2-7B: their time
// over the weight-streaming time grew with K — 6-8 µs at K = 4096, 16 µs at K = 11008 — i.e. the per-block
// activation quantisation, done by every resident block with an IEEE division per element, dominated):
//   - big blocks (8-16 warps), one or two resident per SM, looping over row groups: x is quantised once per SM,
//     not once per 128 threads;
//   - the division x / s_x is x · RN(1/s_x) (one multiply), exact where it matters (fp8.cuh quot8: near an E4M3
//     rounding midpoint or in the subnormal range a group of 8 takes __fdiv_rn); the same bytes as the reference
//     (kernels_test: quantize_rows_fp8 uses it too, checked byte for byte on adversarial rows);
//   - the quantised x is kept in shared memory as fp16 (every E4M3 value is exact in fp16), so the inner loop
//     widens it with the cheap half->float path instead of an E4M3 conversion per chunk and row;
//   - an rms_norm prologue (PRO = 1): the block computes inv_rms, the normalised row rounded to T as norms.cu writes
//     it, then quantises that — the norm costs no launch and no pass over memory (runtime prologue fusion).
// Programmatic dependent launch as the other gemvs: the first weight loads before griddepcontrol.wait.
#include "gemv_stream.cuh"
#include "quant.h"

namespace tsllm {
namespace kd {
namespace {

// e4m3(RN32(x / s)) of 8 elements as fp16 values (exact), given r = RN(1/s) (fp8.cuh quot8).
__device__ __forceinline__ uint4 quant8_f16(const float (&v)[8], float s, float r) {
  float y[8];
  quot8(v, s, r, y);
  uint32_t o[4];
#pragma unroll
  for (int j = 0; j < 4; j++) {
    // cvt.rn.satfinite.e4m3x2.f32 then back to f16x2 (exact).
    o[j] = e4m3x2_to_h2(__nv_cvt_float2_to_fp8x2(make_float2(y[2 * j], y[2 * j + 1]), __NV_SATFINITE, __NV_E4M3));
  }
  return make_uint4(o[0], o[1], o[2], o[3]);
}

// Block of WARPS warps; each warp owns ROWS weight rows of a row group, UN 16-byte chunks per row in flight per lane.
template <typename T, int M, int ROWS, int WARPS, int UN, int PRO>
__global__ void __launch_bounds__(WARPS * 32)
    fp8_gemv2_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sw,
                     const T* __restrict__ bias, const T* res, T* out, int N, int K, int act,
                     const T* __restrict__ nw, float eps) {
  extern __shared__ __align__(16) uint8_t smem[];
  uint16_t* s_x = reinterpret_cast<uint16_t*>(smem);  // [M][K]: the (normalised) row in T, then E4M3 values as fp16
  pdl_trigger();
  WeightStream<WFp8, UN, ROWS, 32, false> ws;
  ws.start(w, K, (blockIdx.x * WARPS + (threadIdx.x >> 5)) * ROWS, N, threadIdx.x & 31);
  pdl_wait();

  float inv[M];
  vec_inv<T, M, WARPS, PRO, true>(x, K, eps, inv);  // (block_reduce's scratch is reused for the amax)
  // The vector (x, or the normalised row) into shared memory, and its amax per row.
  float am[M] = {};
  for_vec_chunks<T, M, WARPS * 32, PRO>(x, K, nw, inv, [&](int m, int c, const uint4& v) {
    *reinterpret_cast<uint4*>(s_x + size_t(m) * K + size_t(c) * 8) = v;
    am[m] = amax8<T>(v, am[m]);
  });
  block_reduce<WARPS, M, true>(am, true);
  float sx[M], rx[M];
#pragma unroll
  for (int m = 0; m < M; m++) {
    sx[m] = e4m3_row_scale(am[m]);
    rx[m] = __frcp_rn(sx[m]);
  }
  // Quantise in place (each thread rewrites the chunks it wrote above).
  for (int c = threadIdx.x; c < (K >> 3); c += WARPS * 32)
#pragma unroll
    for (int m = 0; m < M; m++) {
      uint4* p = reinterpret_cast<uint4*>(s_x + size_t(m) * K + size_t(c) * 8);
      float f[8];
      unpack8<T>(*p, f);
      *p = quant8_f16(f, sx[m], rx[m]);
    }
  __syncthreads();

  row_groups<WFp8, WARPS, ROWS, M>(
      ws, w, K, N,
      [&](int c, int, int m, float (&xf)[16]) {  // chunk c's 16 values, fp16 in shared memory
        const uint4* p = reinterpret_cast<const uint4*>(s_x + size_t(m) * K + size_t(c) * 16);
        const uint4 a = p[0], b = p[1];
        const uint32_t h[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
          const float2 f = to_f2<half>(h[i]);
          xf[2 * i] = f.x, xf[2 * i + 1] = f.y;
        }
      },
      [&](float v, int m, int n) {
        store_out<T>(__fmul_rn(v, __fmul_rn(sx[m], __ldg(sw + n))), bias, res, out, m, n, N, act);
      });
}

template <typename T, int M, int ROWS, int WARPS, int UN, int BPS, int PRO>
cudaError_t launch_m2(const void* x, const void* w, const float* sw, const void* bias, const void* res, void* out,
                      int N, int K, Act act, const void* nw, float eps, bool pdl, cudaStream_t s) {
  static PersistentCache pc;
  return launch_persistent(pc, fp8_gemv2_kernel<T, M, ROWS, WARPS, UN, PRO>, WARPS * 32, size_t(M) * K * 2,
                           (N + WARPS * ROWS - 1) / (WARPS * ROWS), BPS, pdl, s, static_cast<const T*>(x),
                           static_cast<const uint8_t*>(w), sw, static_cast<const T*>(bias), static_cast<const T*>(res),
                           static_cast<T*>(out), N, K, int(act), static_cast<const T*>(nw), eps);
}

template <typename T, int ROWS, int WARPS, int UN, int BPS, int PRO>
cudaError_t launch_v2(int M, const void* x, const void* w, const float* sw, const void* bias, const void* res,
                      void* out, int N, int K, Act act, const void* nw, float eps, bool pdl, cudaStream_t s) {
  switch (M) {
    case 1: return launch_m2<T, 1, ROWS, WARPS, UN, BPS, PRO>(x, w, sw, bias, res, out, N, K, act, nw, eps, pdl, s);
    case 2: return launch_m2<T, 2, ROWS, WARPS, UN, BPS, PRO>(x, w, sw, bias, res, out, N, K, act, nw, eps, pdl, s);
    case 3: return launch_m2<T, 3, ROWS, WARPS, UN, BPS, PRO>(x, w, sw, bias, res, out, N, K, act, nw, eps, pdl, s);
    case 4: return launch_m2<T, 4, ROWS, WARPS, UN, BPS, PRO>(x, w, sw, bias, res, out, N, K, act, nw, eps, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T, int PRO>
cudaError_t launch_variant2(int variant, int M, const void* x, const void* w, const float* sw, const void* bias,
                            const void* res, void* out, int N, int K, Act act, const void* nw, float eps, bool pdl,
                            cudaStream_t s) {
  // (rows per warp, warps per block, chunks in flight per row, blocks per SM)
  switch (variant) {
    case 3: return launch_v2<T, 2, 16, 4, 1, PRO>(M, x, w, sw, bias, res, out, N, K, act, nw, eps, pdl, s);
    case 4: return launch_v2<T, 4, 16, 2, 1, PRO>(M, x, w, sw, bias, res, out, N, K, act, nw, eps, pdl, s);
    case 5: return launch_v2<T, 2, 8, 4, 2, PRO>(M, x, w, sw, bias, res, out, N, K, act, nw, eps, pdl, s);
    case 6: return launch_v2<T, 1, 16, 8, 1, PRO>(M, x, w, sw, bias, res, out, N, K, act, nw, eps, pdl, s);
    case 7: return launch_v2<T, 4, 8, 2, 2, PRO>(M, x, w, sw, bias, res, out, N, K, act, nw, eps, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd

cudaError_t fp8_gemv2(int variant, const void* x, const void* w, const float* sw, const void* bias, const void* res,
                      void* out, int M, int N, int K, Act act, const void* norm_w, float eps, DType dt, bool pdl,
                      cudaStream_t s) {
  const bool pro = norm_w != nullptr;
  if (dt == DType::F16)
    return pro ? kd::launch_variant2<half, 1>(variant, M, x, w, sw, bias, res, out, N, K, act, norm_w, eps, pdl, s)
               : kd::launch_variant2<half, 0>(variant, M, x, w, sw, bias, res, out, N, K, act, nullptr, 0.f, pdl, s);
  if (dt == DType::BF16)
    return pro ? kd::launch_variant2<kd::bf16, 1>(variant, M, x, w, sw, bias, res, out, N, K, act, norm_w, eps, pdl, s)
               : kd::launch_variant2<kd::bf16, 0>(variant, M, x, w, sw, bias, res, out, N, K, act, nullptr, 0.f, pdl, s);
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
