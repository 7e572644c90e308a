// Tensor-core decode gemv over int8 / int4 weight-only weights with the block's weights in shared memory, copied
// there by the copy engine (int variants 22-25; sm_90). Why (H200, sessions 16-18): the register-pipelined variants
// 7-18 keep about 24-48 KB of weights in flight an SM — D iterations a lane, with the lanes' registers also holding
// the fragments — and by Little's law that streams about 1.6 TB/s where an SM has few blocks (int4 qkv, 384 blocks
// of v7 for 132 SMs: 1,653 GB/s in the step's graph profile) and 2.9 TB/s where it has many (gate_up: 2,897).
// Here a block's whole slab (16 or 32 rows x K) is requested at once by bulk copies issued before
// griddepcontrol.wait: up to kIntBulkMaxSmem an SM in flight for no registers, and the copies of a block that became
// resident while its predecessor ran land during it.
//   - the slab is split along K into stages of about 512 bytes a row, one copy a row and stage, each stage with its
//     own mbarrier, issued in stage order: the warps start on stage 0 while the rest land;
//   - the rows' scales are loaded into shared memory by the block's threads (before the wait too: weights and
//     scales are never written);
//   - the math is variants 13-18's (post_tile: q · x of an iteration on the tensor cores, the scale after), lane
//     (g, t) reading its 16-byte chunks from shared memory (rows g and g + 8 at a stride of 64 mod 128 bytes: no
//     bank conflicts) and x from global memory one iteration ahead;
//   - warp w takes iterations w, w + WARPS, ... of each stage; the warps' sums meet in a fixed order (store_warp_sums).
// Numerics and shapes: 13-18's (quant_gemv_post_scale, quant_gemv_takes), 1-8 token rows.
#pragma once
#include "quant_gemv_mma_a.cuh"

namespace tsllm {
namespace kd {
namespace {

template <typename T, bool INT4, int TILES, int WARPS, int MINB>
__global__ void __launch_bounds__(WARPS * 32, MINB)
    int_bulk_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sc,
                    int groups, int cpg_shift, const T* __restrict__ bias, const T* res, T* out, int M, int N, int K,
                    int act, IntBulkLayout L) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // never launched: the launcher refuses devices without this code
#else
  constexpr int ROWS = TILES * 16;
  extern __shared__ __align__(128) uint8_t slab[];  // [stage][ROWS][row_stride / last_stride], [ROWS][scale_stride]
  __shared__ __align__(8) uint64_t bar[kIntBulkMaxStages];
  __shared__ float red[WARPS][ROWS][kIntMmaAGemvMaxM];
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * ROWS;
  const int row_bytes = INT4 ? K / 2 : K;
  const int iters = row_bytes / 64, S = L.stages, SB = L.stage_iters * 64;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; s++) mbar_init(&bar[s], 1);
    mbar_init_fence();
  }
  __syncthreads();
  // Stage by stage (the order the warps need them), one copy a row; rows past N copy row N - 1 (never stored).
  if (threadIdx.x < S) {
    const int s = threadIdx.x;
    mbar_expect_tx(&bar[s], unsigned(ROWS * min(SB, row_bytes - s * SB)));
  }
  for (int i = threadIdx.x; i < S * ROWS; i += WARPS * 32) {
    const int s = i / ROWS, r = i - s * ROWS;
    const int n = min(n0 + r, N - 1);
    const int rs = s + 1 < S ? L.row_stride : L.last_stride;
    bulk_g2s(slab + size_t(s) * ROWS * L.row_stride + r * rs, w + size_t(n) * row_bytes + size_t(s) * SB,
             unsigned(min(SB, row_bytes - s * SB)), &bar[s]);
  }
  float* ssc = reinterpret_cast<float*>(slab + L.scale_off);  // [ROWS][scale_stride]
  for (int r = warp; r < ROWS; r += WARPS) {
    const int n = min(n0 + r, N - 1);
    for (int gi = lane; gi < groups; gi += 32) ssc[r * L.scale_stride + gi] = __ldg(sc + size_t(n) * groups + gi);
  }
  pdl_wait();  // x and the residual are the predecessor's
  __syncthreads();  // (the scales)
  const T* xr = x + size_t(min(g, M - 1)) * K;

  float acc[TILES][4];
#pragma unroll
  for (int i = 0; i < TILES; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  uint4 xv[kXVecs<INT4>];  // x under iteration xit
  int xit = warp;
  if (warp < iters) x_load<T, INT4>(xr, 4 * warp + t, xv);
  for (int s = 0; s < S; s++) {
    const int it0 = s * L.stage_iters, it1 = min(it0 + L.stage_iters, iters);
    if (it0 + warp >= it1) continue;
    if (xit != it0 + warp) x_load<T, INT4>(xr, 4 * (it0 + warp) + t, xv), xit = it0 + warp;
    mbar_wait(&bar[s], 0);
    const int rs = s + 1 < S ? L.row_stride : L.last_stride;
    const uint8_t* st = slab + size_t(s) * ROWS * L.row_stride + g * rs + t * 16;
    for (int it = it0 + warp; it < it1; it += WARPS) {
      uint4 cur[TILES][2];
#pragma unroll
      for (int i = 0; i < TILES; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
          cur[i][h] = *reinterpret_cast<const uint4*>(st + (16 * i + 8 * h) * rs + (it - it0) * 64);
      uint32_t b[INT4 ? 16 : 8];
      x_permute<INT4>(xv, b);
      // The next iteration's x (this stage's or the next one's), in flight during this one's math.
      const int nx = it + WARPS < it1 ? it + WARPS : it1 + warp;
      if (nx < iters) x_load<T, INT4>(xr, 4 * nx + t, xv), xit = nx;
      const int gi = INT4 ? (4 * it) >> cpg_shift : 0;
#pragma unroll
      for (int i = 0; i < TILES; i++)
        post_tile<T, INT4>(cur[i][0], cur[i][1], ssc[(16 * i + g) * L.scale_stride + gi],
                           ssc[(16 * i + g + 8) * L.scale_stride + gi], b, acc[i]);
    }
  }

  // acc[i]: (row 16i + g, tokens 2t, 2t + 1), (row 16i + g + 8, tokens 2t, 2t + 1).
#pragma unroll
  for (int i = 0; i < TILES; i++)
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
      for (int e = 0; e < 2; e++)
        if (2 * t + e < M) red[warp][16 * i + g + 8 * h][2 * t + e] = acc[i][2 * h + e];
  __syncthreads();
  store_warp_sums<T>(red, n0, M, N, bias, res, out, act);
#endif
}

// Whether the device runs this kernel's code (an sm_80 build on an sm_90 GPU has none).
template <typename T, bool INT4, int TILES, int WARPS, int MINB>
bool int_bulk_code() {
  static int cache[64] = {0};
  return per_device(cache, [](int) {
    cudaFuncAttributes fa;
    const bool ok =
        cudaFuncGetAttributes(&fa, int_bulk_kernel<T, INT4, TILES, WARPS, MINB>) == cudaSuccess && fa.binaryVersion >= 90;
    cudaGetLastError();
    return ok;
  });
}

template <typename T, bool INT4, int TILES, int WARPS, int MINB>
cudaError_t launch_int_bulk(int variant, int M, const void* x, const void* w, const float* sc, int group,
                            const void* bias, const void* res, void* out, int N, int K, Act act, bool pdl,
                            cudaStream_t s) {
  const QuantKind kind = INT4 ? QuantKind::Int4 : QuantKind::Int8;
  if (M < 1 || !quant_gemv_takes(kind, variant, M, K, group)) return cudaErrorInvalidValue;
  auto kern = int_bulk_kernel<T, INT4, TILES, WARPS, MINB>;
  if (!int_bulk_code<T, INT4, TILES, WARPS, MINB>()) return cudaErrorNotSupported;
  // Opted in once per device to the most any shape takes (the limit counts the static arrays too, so raising it
  // only past 48 KB of dynamic memory is not enough: quant_gemv_mma.cuh's launch_int_mma_one).
  static std::atomic<unsigned long long> configured{0};
  if (const cudaError_t e = smem_limit_once(kern, kIntBulkMaxSmem, configured); e != cudaSuccess) return e;
  const IntBulkLayout L = int_bulk_layout(INT4, K, group, TILES);
  const unsigned blocks = unsigned((N + TILES * 16 - 1) / (TILES * 16));
  return launch_pdl(kern, blocks, WARPS * 32, L.smem, pdl, s, static_cast<const T*>(x),
                    static_cast<const uint8_t*>(w), sc, INT4 ? K / group : 1, INT4 ? int4_chunk_shift(group) : 0,
                    static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(out), M, N, K, int(act), L);
}

// Variants 22-25: (tiles, warps) from quant.h's kIntBulkTiles / kIntBulkWarps; MINB keeps the registers under what
// the blocks the shared memory allows need.
template <typename T, bool INT4>
cudaError_t launch_int_bulk_variant(int variant, int M, const void* x, const void* w, const float* sc, int group,
                                   const void* bias, const void* res, void* out, int N, int K, Act act, bool pdl,
                                   cudaStream_t s) {
  auto go = [&](auto v, auto minb) {
    constexpr int i = decltype(v)::value;
    return launch_int_bulk<T, INT4, kIntBulkTiles[i], kIntBulkWarps[i], decltype(minb)::value>(
        variant, M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
  };
  using std::integral_constant;
  switch (variant - kIntBulkVariant) {
    case 0: return go(integral_constant<int, 0>{}, integral_constant<int, 4>{});
    case 1: return go(integral_constant<int, 1>{}, integral_constant<int, 2>{});
    case 2: return go(integral_constant<int, 2>{}, integral_constant<int, 3>{});
    case 3: return go(integral_constant<int, 3>{}, integral_constant<int, 2>{});
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd
}  // namespace tsllm
