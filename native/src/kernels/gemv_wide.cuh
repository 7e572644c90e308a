// gemv variants 10-13 (kernels.h kGemvVariants): the decode linear with big blocks (8-16 warps), one or two
// resident per SM, that build the vector once per block in shared memory (plain copy, rms_norm or gated-act
// prologue, vec_chunk of gemv_impl.cuh: the same values) and then loop over row groups. Why: with 4-warp blocks
// (variants 0-9) a prologue is recomputed by every block — for down_proj's gated prologue (K = 11008) thousands
// of blocks each evaluate SiLU over the whole row, which made the fused pair slower than gated_act + gemv on the
// H200 (0.0398 vs 0.0324 ms); and the N = 4096 shapes (o_proj, down) ran at 75-88 % of the copy rate with many
// short blocks. Here the prologue is done ~#SMs times and every warp streams several row groups.
// Instantiated by gemv_wide.cu (plain, rms_norm) and gemv_wide_gated.cu (gated), dispatched from gemv.cu.
#pragma once
#include <algorithm>
#include <atomic>

#include "gemv_impl.cuh"

namespace tsllm {

// gemv_wide.cu / gemv_wide_gated.cu: variant in [kGemvWideFirst, kGemvVariants); x as gemv_pro's.
constexpr int kGemvWideFirst = 10;
cudaError_t gemv_wide_launch(int variant, const GemvPrologue& pro, const void* x, const void* w, const void* bias,
                             const void* res, void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s);
cudaError_t gemv_wide_gated_launch(int variant, GemvPro pro, const void* x, const void* w, const void* bias,
                                   const void* res, void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s);

namespace kd {
namespace {

template <typename T, int M, int ROWS, int WARPS, int UN, int PRO>
__global__ void __launch_bounds__(WARPS * 32)
    gemv_wide_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, const T* res,
                     T* out, int N, int K, const T* __restrict__ nw, float eps) {
  extern __shared__ __align__(16) uint8_t smem[];
  T* s_v = reinterpret_cast<T*>(smem);  // [M][K]: the vector after the prologue
  __shared__ float red[WARPS][M];
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int chunks = K >> 3;  // 8 elements = 16 bytes
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
        wv[u][r] = n0 + r < N && c < chunks ? ld_stream(w + size_t(n0 + r) * size_t(K) + size_t(c) * 8)
                                            : make_uint4(0, 0, 0, 0);
    }
  };
  load(lane);  // weights never change: before waiting for the previous kernel
  pdl_wait();

  float inv[M];
#pragma unroll
  for (int m = 0; m < M; m++) inv[m] = 1.f;
  if constexpr (PRO == int(GemvPro::RmsNorm)) {
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) ss[m] = 0.f;
    for (int c = threadIdx.x; c < chunks; c += WARPS * 32)
#pragma unroll
      for (int m = 0; m < M; m++) {
        const uint4 xv = *reinterpret_cast<const uint4*>(x + size_t(m) * K + size_t(c) * 8);
        const uint32_t* px = &xv.x;
#pragma unroll
        for (int i = 0; i < 4; i++) {
          const float2 f = to_f2<T>(px[i]);
          ss[m] = fmaf(f.x, f.x, ss[m]);
          ss[m] = fmaf(f.y, f.y, ss[m]);
        }
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
      for (int j = 0; j < WARPS; j++) t += red[j][m];
      inv[m] = rsqrtf(t / K + eps);  // norms.cu: rsqrtf(s1 / hidden + eps)
    }
  }
  for (int c = threadIdx.x; c < chunks; c += WARPS * 32) {
    uint4 nwv = make_uint4(0, 0, 0, 0);
    if constexpr (PRO == int(GemvPro::RmsNorm)) nwv = __ldg(reinterpret_cast<const uint4*>(nw + size_t(c) * 8));
#pragma unroll
    for (int m = 0; m < M; m++)
      *reinterpret_cast<uint4*>(s_v + size_t(m) * K + size_t(c) * 8) = vec_chunk<T, PRO>(x, m, c, K, nwv, inv[m]);
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
#pragma unroll
          for (int m = 0; m < M; m++) {
            const uint4 xv = *reinterpret_cast<const uint4*>(s_v + size_t(m) * K + size_t(c) * 8);
#pragma unroll
            for (int r = 0; r < ROWS; r++) acc[r][m] = dot8<T>(wv[u][r], xv, acc[r][m]);
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
    // Lane (r * M + m) writes output (m, n0 + r), as gemv_impl.cuh does.
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int m = 0; m < M; m++)
        if (lane == r * M + m && n0 + r < N) {
          const int n = n0 + r;
          float v = acc[r][m];
          if (bias) v += to_f<T>(bias[n]);
          if (res) v += to_f<T>(res[size_t(m) * N + n]);
          out[size_t(m) * N + n] = from_f<T>(v);
        }
    g += gridDim.x;
    if (g >= groups) break;
    n0 = (g * WARPS + warp) * ROWS;
    load(lane);
  }
}

template <typename T, int M, int ROWS, int WARPS, int UN, int BPS, int PRO>
cudaError_t wide_m(const void* x, const void* w, const void* bias, const void* res, void* out, int N, int K,
                   const void* nw, float eps, bool pdl, cudaStream_t s) {
  auto kern = gemv_wide_kernel<T, M, ROWS, WARPS, UN, PRO>;
  const size_t smem = size_t(M) * size_t(K) * sizeof(T);
  // Shared-memory opt-in (only ever raised) and resident blocks per SM for up to 4 sizes, per instantiation.
  static std::atomic<long long> opted{48 * 1024};
  static std::atomic<long long> occ[4] = {{-1}, {-1}, {-1}, {-1}};  // (smem << 8) | blocks per SM
  static std::atomic<int> next{0};
  if ((long long)smem > opted.load(std::memory_order_relaxed)) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
    opted.store((long long)smem, std::memory_order_relaxed);
  }
  int per_sm = 0;
  for (auto& slot : occ) {
    const long long c = slot.load(std::memory_order_relaxed);
    if (c >= 0 && size_t(c >> 8) == smem) per_sm = int(c & 0xff);
  }
  if (per_sm == 0) {
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, WARPS * 32, smem);
    if (e != cudaSuccess) return e;
    if (per_sm < 1) return cudaErrorInvalidConfiguration;
    occ[next.fetch_add(1, std::memory_order_relaxed) & 3].store(((long long)smem << 8) | std::min(per_sm, 255),
                                                               std::memory_order_relaxed);
  }
  const long long groups = (N + WARPS * ROWS - 1) / (WARPS * ROWS);
  const unsigned blocks = unsigned(std::min<long long>(groups, (long long)std::min(per_sm, BPS) * num_sms()));
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
  return cudaLaunchKernelEx(&cfg, kern, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias),
                            static_cast<const T*>(res), static_cast<T*>(out), N, K, static_cast<const T*>(nw), eps);
}

template <typename T, int ROWS, int WARPS, int UN, int BPS, int PRO>
cudaError_t wide_v(int M, const void* x, const void* w, const void* bias, const void* res, void* out, int N, int K,
                   const void* nw, float eps, bool pdl, cudaStream_t s) {
  switch (M) {
    case 1: return wide_m<T, 1, ROWS, WARPS, UN, BPS, PRO>(x, w, bias, res, out, N, K, nw, eps, pdl, s);
    case 2: return wide_m<T, 2, ROWS, WARPS, UN, BPS, PRO>(x, w, bias, res, out, N, K, nw, eps, pdl, s);
    case 3: return wide_m<T, 3, ROWS, WARPS, UN, BPS, PRO>(x, w, bias, res, out, N, K, nw, eps, pdl, s);
    case 4: return wide_m<T, 4, ROWS, WARPS, UN, BPS, PRO>(x, w, bias, res, out, N, K, nw, eps, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

// (rows per warp, warps per block, chunks in flight per row, blocks per SM)
template <typename T, int PRO>
cudaError_t wide_launch(int variant, int M, const void* x, const void* w, const void* bias, const void* res, void* out,
                        int N, int K, const void* nw, float eps, bool pdl, cudaStream_t s) {
  switch (variant) {
    case 10: return wide_v<T, 2, 16, 4, 1, PRO>(M, x, w, bias, res, out, N, K, nw, eps, pdl, s);
    case 11: return wide_v<T, 4, 16, 2, 1, PRO>(M, x, w, bias, res, out, N, K, nw, eps, pdl, s);
    case 12: return wide_v<T, 2, 8, 4, 2, PRO>(M, x, w, bias, res, out, N, K, nw, eps, pdl, s);
    case 13: return wide_v<T, 1, 16, 8, 1, PRO>(M, x, w, bias, res, out, N, K, nw, eps, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd
}  // namespace tsllm
