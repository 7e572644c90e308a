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
#include <algorithm>
#include <atomic>

#include "fp8.cuh"
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
    const __nv_fp8x2_storage_t q = __nv_cvt_float2_to_fp8x2(make_float2(y[2 * j], y[2 * j + 1]), __NV_SATFINITE, __NV_E4M3);
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(q, __NV_E4M3);
    o[j] = uint32_t(h.x) | (uint32_t(h.y) << 16);
  }
  return make_uint4(o[0], o[1], o[2], o[3]);
}

// The rms_norm prologue's value, rounded to T exactly as norms.cu writes y: T((x · inv) · w).
template <typename T>
__device__ __forceinline__ uint4 norm8(const uint4& xv, const uint4& wv, float inv) {
  const uint32_t* px = &xv.x;
  const uint32_t* pw = &wv.x;
  uint4 o;
  uint32_t* po = &o.x;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 fx = to_f2<T>(px[i]), fw = to_f2<T>(pw[i]);
    po[i] = pack2<T>((fx.x * inv) * fw.x, (fx.y * inv) * fw.y);
  }
  return o;
}

template <int WARPS, int M>
__device__ __forceinline__ void block_reduce(float (&v)[M], float (*red)[M], bool is_max) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < M; m++) {
    v[m] = is_max ? warp_max(v[m]) : warp_sum(v[m]);
    if (lane == 0) red[warp][m] = v[m];
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < M; m++) {
    float t = 0.f;  // amax >= 0, sums from 0
#pragma unroll
    for (int i = 0; i < WARPS; i++) t = is_max ? fmaxf(t, red[i][m]) : t + red[i][m];
    v[m] = t;
  }
  __syncthreads();  // red is reused
}

// Block of WARPS warps; each warp owns ROWS weight rows of a row group, UN 16-byte chunks per row in flight per lane.
template <typename T, int M, int ROWS, int WARPS, int UN, int PRO>
__global__ void __launch_bounds__(WARPS * 32)
    fp8_gemv2_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sw,
                     const T* __restrict__ bias, const T* res, T* out, int N, int K, int act,
                     const T* __restrict__ nw, float eps) {
  extern __shared__ __align__(16) uint8_t smem[];
  uint16_t* s_x = reinterpret_cast<uint16_t*>(smem);  // [M][K]: the (normalised) row in T, then E4M3 values as fp16
  __shared__ float red[WARPS][M];
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int chunks = K >> 4;  // 16 weights per chunk
  const int groups = (N + WARPS * ROWS - 1) / (WARPS * ROWS);
  int g = blockIdx.x;
  int n0 = (g * WARPS + warp) * ROWS;
  uint4 wv[UN][ROWS];
  auto load = [&](int c0) {
#pragma unroll
    for (int u = 0; u < UN; u++) {
      const int c = c0 + u * 32;
#pragma unroll
      for (int r = 0; r < ROWS; r++)
        wv[u][r] = n0 + r < N && c < chunks ? ld_stream(w + (size_t)(n0 + r) * K + (size_t)c * 16)
                                            : make_uint4(0, 0, 0, 0);
    }
  };
  load(lane);
  pdl_wait();

  const int vchunks = K >> 3;  // 8 elements of T per 16 bytes
  float inv[M];
#pragma unroll
  for (int m = 0; m < M; m++) inv[m] = 1.f;
  if constexpr (PRO == 1) {
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) ss[m] = 0.f;
    for (int c = threadIdx.x; c < vchunks; c += WARPS * 32)
#pragma unroll
      for (int m = 0; m < M; m++) {
        const uint4 xv = *reinterpret_cast<const uint4*>(x + (size_t)m * K + (size_t)c * 8);
        const uint32_t* px = &xv.x;
#pragma unroll
        for (int i = 0; i < 4; i++) {
          const float2 f = to_f2<T>(px[i]);
          ss[m] = fmaf(f.x, f.x, ss[m]);
          ss[m] = fmaf(f.y, f.y, ss[m]);
        }
      }
    block_reduce<WARPS, M>(ss, red, false);
#pragma unroll
    for (int m = 0; m < M; m++) inv[m] = rsqrtf(ss[m] / K + eps);  // norms.cu: rsqrtf(s1 / hidden + eps)
  }
  // The vector (x, or the normalised row) into shared memory, and its amax per row.
  float am[M];
#pragma unroll
  for (int m = 0; m < M; m++) am[m] = 0.f;
  for (int c = threadIdx.x; c < vchunks; c += WARPS * 32) {
    uint4 nwv = make_uint4(0, 0, 0, 0);
    if constexpr (PRO == 1) nwv = __ldg(reinterpret_cast<const uint4*>(nw + (size_t)c * 8));
#pragma unroll
    for (int m = 0; m < M; m++) {
      uint4 v = *reinterpret_cast<const uint4*>(x + (size_t)m * K + (size_t)c * 8);
      if constexpr (PRO == 1) v = norm8<T>(v, nwv, inv[m]);
      *reinterpret_cast<uint4*>(s_x + (size_t)m * K + (size_t)c * 8) = v;
      float f[8];
      unpack8<T>(v, f);
#pragma unroll
      for (int j = 0; j < 8; j++) am[m] = fmaxf(am[m], fabsf(f[j]));
    }
  }
  block_reduce<WARPS, M>(am, red, true);
  float sx[M], rx[M];
#pragma unroll
  for (int m = 0; m < M; m++) {
    sx[m] = am[m] > 0.f ? __fdiv_rn(am[m], kE4m3Max) : 1.f;
    rx[m] = __frcp_rn(sx[m]);
  }
  // Quantise in place (each thread rewrites the chunks it wrote above).
  for (int c = threadIdx.x; c < vchunks; c += WARPS * 32)
#pragma unroll
    for (int m = 0; m < M; m++) {
      uint4* p = reinterpret_cast<uint4*>(s_x + (size_t)m * K + (size_t)c * 8);
      float f[8];
      unpack8<T>(*p, f);
      *p = quant8_f16(f, sx[m], rx[m]);
    }
  __syncthreads();

  for (;;) {
    float acc[ROWS][M];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int m = 0; m < M; m++) acc[r][m] = 0.f;
    if (n0 < N) {
      int c0 = lane;
      for (;;) {
#pragma unroll
        for (int u = 0; u < UN; u++) {
          const int c = c0 + u * 32;
          if (c >= chunks) break;
          float xf[M][16];
#pragma unroll
          for (int m = 0; m < M; m++) {
            const uint4* p = reinterpret_cast<const uint4*>(s_x + (size_t)m * K + (size_t)c * 16);
            const uint4 a = p[0], b = p[1];
            const uint32_t h[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 8; i++) {
              const float2 f = to_f2<half>(h[i]);
              xf[m][2 * i] = f.x, xf[m][2 * i + 1] = f.y;
            }
          }
#pragma unroll
          for (int r = 0; r < ROWS; r++) {
            float wf[16];
            e4m3x16_to_f(wv[u][r], wf);
#pragma unroll
            for (int m = 0; m < M; m++)
#pragma unroll
              for (int j = 0; j < 16; j++) acc[r][m] = fmaf(wf[j], xf[m][j], acc[r][m]);
          }
        }
        c0 += 32 * UN;
        if (c0 >= chunks) break;
        load(c0);
      }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int m = 0; m < M; m++) acc[r][m] = warp_sum(acc[r][m]);
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int m = 0; m < M; m++)
        if (lane == r * M + m && n0 + r < N) {
          const int n = n0 + r;
          float v = __fmul_rn(acc[r][m], __fmul_rn(sx[m], __ldg(sw + n)));
          if (bias) v = __fadd_rn(v, to_f(bias[n]));
          v = act_value(v, Act(act));
          if (res) v = __fadd_rn(v, to_f(res[(size_t)m * N + n]));
          out[(size_t)m * N + n] = from_f<T>(v);
        }
    g += gridDim.x;
    if (g >= groups) break;
    n0 = (g * WARPS + warp) * ROWS;
    load(lane);
  }
}

template <typename T, int M, int ROWS, int WARPS, int UN, int BPS, int PRO>
cudaError_t launch_m2(const void* x, const void* w, const float* sw, const void* bias, const void* res, void* out,
                      int N, int K, Act act, const void* nw, float eps, bool pdl, cudaStream_t s) {
  auto kern = fp8_gemv2_kernel<T, M, ROWS, WARPS, UN, PRO>;
  const size_t smem = (size_t)M * K * 2;
  // Opt in to the shared memory once per instantiation (only ever raised), then the resident blocks per SM.
  static std::atomic<long long> opted{48 * 1024};
  // (smem << 8) | blocks per SM, for 4 shared-memory sizes (one per K of the model) per instantiation.
  static std::atomic<long long> occ[4] = {{-1}, {-1}, {-1}, {-1}};
  if ((long long)smem > opted.load(std::memory_order_relaxed)) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    opted.store((long long)smem, std::memory_order_relaxed);
  }
  static std::atomic<int> next{0};
  int per_sm = 0;
  for (auto& slot : occ) {
    const long long c = slot.load(std::memory_order_relaxed);
    if (c >= 0 && (size_t)(c >> 8) == smem) per_sm = int(c & 0xff);
  }
  if (per_sm == 0) {
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, WARPS * 32, smem);
    if (e != cudaSuccess) return e;
    if (per_sm < 1) return cudaErrorInvalidConfiguration;
    occ[next.fetch_add(1, std::memory_order_relaxed) & 3].store(((long long)smem << 8) | std::min(per_sm, 255),
                                                               std::memory_order_relaxed);
  }
  const long long groups = (N + WARPS * ROWS - 1) / (WARPS * ROWS);
  const unsigned blocks = (unsigned)std::min<long long>(groups, (long long)std::min(per_sm, BPS) * num_sms());
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(WARPS * 32);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl && pdl_supported() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kern, static_cast<const T*>(x), static_cast<const uint8_t*>(w), sw,
                            static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(out), N, K,
                            int(act), static_cast<const T*>(nw), eps);
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
