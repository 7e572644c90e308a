// Tensor-core decode gemv over int8 / int4 weight-only weights with the weights as the mma's A operand (int
// variants 7-12; quant_gemv_mma.cuh's variants 3-6 hold them as B). Why (H200, session 16, ncu on variant 3, int4
// qkv at M = 1): 1.33 TB/s, one instruction issued every 2 cycles per scheduler, 3.6 warps a scheduler (128
// registers, 25 % occupancy), and of the ~290 instructions a lane spent on two chunks only ~110 were the
// dequantisation and the mma — the rest was 64-bit address arithmetic, bounds checks and the cp.async ring's
// bookkeeping, recomputed per chunk. Here:
//   - m16n8k16 with A = 16 output rows x 16 k (lane (g, t) holds rows g and g + 8 of its chunk's k slots) and B =
//     x (k x 8 token columns): 256 weights an mma instead of 128, so half the mma and x fragments serve two rows;
//   - token m is B's column m: 1-8 rows, lane (g, t) loads x row min(g, M - 1) (columns >= M are never stored);
//   - the weights stream through registers (D iterations of loads in flight, issued before griddepcontrol.wait as
//     the fp16 gemv's are: weights are never written), one 32-bit offset per row and a chunk index per iteration;
//   - no predicated loads: a lane past the row's end (its last iteration may be partial) reads the last chunk
//     again with a zero scale (the products are 0).
// Measured (H200, session 16 run 4, gemv_bench M = 1, GB/s of weights + scales, best of 0-6 -> best of these):
// int4 g128 qkv 1331 -> 2182 (v8), o_proj 897 -> 1529 (v11), gate_up 1467 -> 2794 (v7), down 1031 -> 1810 (v11);
// Llama-2-7B int4-wo g128 bs-1 TPOT 2.651 -> 2.150 ms (tuner: v7 qkv / gate_up, v9 o_proj / down); int8 equal
// within noise (2.834 / 2.895 ms). kernels-notes.md "Session 16" has the profile that led here.
// Numerics as quant_gemv_mma.cuh (dequant_chunk: w = T(fp32(q · s)), products exact, fp32 accumulation, then a
// fixed-order sum over the block's warps).
#pragma once
#include "quant_gemv_mma.cuh"

namespace tsllm {
namespace kd {
namespace {

// x under chunk c of row xr (int4: 32 values from element 32 c; int8: 16 from 16 c) as the B registers of its mma,
// in the order the dequantisation pairs weights: int4 word wd = weights 8wd..8wd+7, pairs j = (8wd + j, 8wd + j + 4);
// int8 word wd = weights 4wd..4wd+3, pairs j = (4wd + 2j, 4wd + 2j + 1).
template <typename T, bool INT4>
__device__ __forceinline__ void x_pairs(const T* xr, int c, uint32_t (&b)[INT4 ? 16 : 8]) {
  constexpr int XV = INT4 ? 4 : 2;  // 16-byte vectors of x under a chunk
  uint4 v[XV];
#pragma unroll
  for (int j = 0; j < XV; j++)
    v[j] = *reinterpret_cast<const uint4*>(xr + size_t(c) * (INT4 ? 32 : 16) + 8 * j);
#pragma unroll
  for (int j = 0; j < XV; j++) {
    const uint32_t* px = &v[j].x;
    if constexpr (INT4) {  // vector j = word wd = j: pairs (0,4), (1,5), (2,6), (3,7)
      b[4 * j + 0] = __byte_perm(px[0], px[2], 0x5410);
      b[4 * j + 1] = __byte_perm(px[0], px[2], 0x7632);
      b[4 * j + 2] = __byte_perm(px[1], px[3], 0x5410);
      b[4 * j + 3] = __byte_perm(px[1], px[3], 0x7632);
    } else {  // vector j = words 2j, 2j + 1: pairs in order
      b[4 * j + 0] = px[0], b[4 * j + 1] = px[1], b[4 * j + 2] = px[2], b[4 * j + 3] = px[3];
    }
  }
}

// TILES tiles of 16 output rows a block, WARPS warps splitting K (iteration = 4 consecutive chunks of every row of
// the block, lane t taking chunk 4 · it + t; warp w takes iterations w, w + WARPS, ...), D iterations of weights in
// flight per lane.
// POST (variants 13-18, the same configurations as 7-12): the scale multiplies the mma's fp32 sums instead of every
// weight. It takes an iteration whose four chunks share one scale per row (int8's per-row scales; int4 groups of at
// least 128, 4 chunks) and no partial iteration (chunks % 4 == 0), so it drops per-chunk work the exact kernel
// needs: the scale's conversion to T and its exactness vote, one HMUL2 per weight pair, the end-of-row clamp.
// Numerics: sum_k x · q exact products in fp32, times s in fp32 — not the reference's T(q · s) per weight; the two
// differ by the reference's own rounding of each weight (at most 2^-11 (fp16) / 2^-8 (bf16) of sum |x · w|).
// GLU (quant_gemv_glu; TILES even): w is gate|up [2N, ...] and a block's first TILES / 2 tiles are gate rows n0..,
// the rest the up rows N + n0.. under them; the epilogue writes T(act(T(gate)) · T(up)), act the gated activation
// (store_warp_sums_glu), [M, N]: the gate_up call and the gated_act after it in one launch.
template <typename T, bool INT4, int TILES, int WARPS, int D, int MINB, bool POST, bool GLU = false>
__global__ void __launch_bounds__(WARPS * 32, MINB)
    int_mma_a_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sc,
                     int groups, int cpg_shift, const T* __restrict__ bias, const T* res, T* out, int M, int N, int K,
                     int act) {
  constexpr int NP = INT4 ? 4 : 2;  // dequantised pairs per 32-bit word
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  constexpr int TR = GLU ? TILES / 2 : TILES;  // tiles of output rows a block
  static_assert(!GLU || TILES % 2 == 0, "GLU: gate and up tiles in pairs");
  const int n0 = blockIdx.x * TR * 16;
  const int row_bytes = INT4 ? K / 2 : K;
  const int chunks = row_bytes >> 4;
  const uint4* wq = reinterpret_cast<const uint4*>(w);
  uint32_t roff[TILES][2];  // row n0 + 16i + g + 8h, in 16-byte units (rows past N read row N - 1, never stored)
  const float* srow[TILES][2];
#pragma unroll
  for (int i = 0; i < TILES; i++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int n = (GLU && i >= TR ? N : 0) + min(n0 + 16 * (i % TR) + g + 8 * h, N - 1);
      roff[i][h] = uint32_t(n) * uint32_t(chunks);
      srow[i][h] = sc + (INT4 ? size_t(n) * groups : size_t(n));
    }
  constexpr int kStride = 4 * WARPS;  // chunks between a warp's iterations
  uint4 wr[D][TILES][2];
  float sr[D][TILES][2];
  // The iteration whose first chunk is cb into stage u, when the warp has it (a warp-uniform test). A lane past the
  // row's last chunk (its last iteration may be partial) loads that last chunk again and takes a zero scale
  // instead: no predicated loads or zero fills in the loop, and q · 0 = 0 meets finite x.
  auto issue = [&](int u, int cb) {
    if (cb >= chunks) return;
    const int c = POST ? cb + t : min(cb + t, chunks - 1);
#pragma unroll
    for (int i = 0; i < TILES; i++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        wr[u][i][h] = ld_stream(wq + roff[i][h] + c);
        if constexpr (INT4) sr[u][i][h] = __ldg(srow[i][h] + (c >> cpg_shift));
      }
  };
  const int cb0 = warp * 4;
#pragma unroll
  for (int u = 0; u < D; u++) issue(u, cb0 + u * kStride);
  if constexpr (!INT4) row_scales_to_slots(sr, srow);
  pdl_wait();  // x and the residual are the predecessor's
  const T* xr = x + size_t(min(g, M - 1)) * K;

  float acc[TILES][4];
#pragma unroll
  for (int i = 0; i < TILES; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

  for (int cb = cb0; cb < chunks; cb += D * kStride) {
#pragma unroll
    for (int u = 0; u < D; u++) {
      const int cbu = cb + u * kStride;
      if (cbu >= chunks) break;
      uint4 cur[TILES][2];
      float s[TILES][2];
      const bool in_row = POST || cbu + t < chunks;
#pragma unroll
      for (int i = 0; i < TILES; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) cur[i][h] = wr[u][i][h], s[i][h] = in_row ? sr[u][i][h] : 0.f;
      uint32_t b[INT4 ? 16 : 8];
      x_pairs<T, INT4>(xr, POST ? cbu + t : min(cbu + t, chunks - 1), b);
      issue(u, cbu + D * kStride);  // the stage is free again: the next weights go out before this chunk's math
#pragma unroll
      for (int i = 0; i < TILES; i++) {
        const uint32_t* wv[2] = {&cur[i][0].x, &cur[i][1].x};
        // A word of rows g and g + 8 at a time: its dequantised pairs meet their x pairs in NP / 2 mma.
        auto mma_word = [&](float(&d)[4], int wd, const uint32_t(&p0)[NP], const uint32_t(&p1)[NP]) {
#pragma unroll
          for (int j = 0; j < NP; j += 2) {
            const uint32_t a[4] = {p0[j], p1[j], p0[j + 1], p1[j + 1]};
            mma16816<T>(d, a, b[NP * wd + j], b[NP * wd + j + 1]);
          }
        };
        if constexpr (POST) {
          // The iteration's q · x sums of rows g and g + 8 (q[0..1], q[2..3]), then scaled into acc.
          float q[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int wd = 0; wd < 4; wd++) {
            uint32_t p0[NP], p1[NP];
            dequant_word_q<T, INT4>(wv[0][wd], p0);
            dequant_word_q<T, INT4>(wv[1][wd], p1);
            mma_word(q, wd, p0, p1);
          }
#pragma unroll
          for (int e = 0; e < 4; e++) acc[i][e] = fmaf(s[i][e >> 1], q[e], acc[i][e]);
        } else {
          uint32_t s2[2];  // (one conversion per chunk)
          bool exact[2];
#pragma unroll
          for (int h = 0; h < 2; h++) exact[h] = scale_pair<T>(s[i][h], &s2[h]);
          // The branch is warp-uniform: mma.sync must be reached by the whole warp at one instruction (a per-lane
          // branch with an mma on each side hung kernels_test at mixed scales, session 16 run 2).
          if (__all_sync(0xffffffffu, exact[0] && exact[1])) {
#pragma unroll
            for (int wd = 0; wd < 4; wd++) {
              uint32_t p0[NP], p1[NP];
              dequant_word<T, INT4>(wv[0][wd], s2[0], p0);
              dequant_word<T, INT4>(wv[1][wd], s2[1], p1);
              mma_word(acc[i], wd, p0, p1);
            }
          } else {  // a scale not representable in T in the warp (older engines): per-weight rounding where needed
#pragma unroll
            for (int wd = 0; wd < 4; wd++) {
              uint32_t p[2][NP];
#pragma unroll
              for (int h = 0; h < 2; h++)
                if (exact[h]) dequant_word<T, INT4>(wv[h][wd], s2[h], p[h]);
                else dequant_word_exact<T, INT4>(wv[h][wd], s[i][h], p[h]);
              mma_word(acc[i], wd, p[0], p[1]);
            }
          }
        }
      }
    }
  }

  // acc[i]: (row 16i + g, tokens 2t, 2t + 1), (row 16i + g + 8, tokens 2t, 2t + 1).
  __shared__ float red[WARPS][TILES * 16][kIntMmaAGemvMaxM];
#pragma unroll
  for (int i = 0; i < TILES; i++)
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
      for (int e = 0; e < 2; e++)
        if (2 * t + e < M) red[warp][16 * i + g + 8 * h][2 * t + e] = acc[i][2 * h + e];
  __syncthreads();
  if constexpr (GLU) store_warp_sums_glu<T>(red, n0, M, N, bias, out, act);
  else store_warp_sums<T>(red, n0, M, N, bias, res, out, act);
}

// N: the output width (GLU: half the weight's rows).
template <typename T, bool INT4, int TILES, int WARPS, int D, int MINB, bool POST, bool GLU = false>
cudaError_t launch_int_mma_a(int M, const void* x, const void* w, const float* sc, int group, const void* bias,
                             const void* res, void* out, int N, int K, Act act, bool pdl, cudaStream_t s) {
  if constexpr (GLU && TILES % 2 != 0) {  // GLU needs a gate tile and its up tile a block: refused, not instantiated
    return cudaErrorInvalidValue;
  } else {
    if (M < 1 || M > kIntMmaAGemvMaxM) return cudaErrorInvalidValue;
    const int cpg_shift = INT4 ? int4_chunk_shift(group) : 0;  // (other groups: refused, as by variants 3-6)
    if (cpg_shift < 0) return cudaErrorInvalidValue;
    // (POST's shapes, whole iterations of one scale a row: quant_gemv_takes, checked by quant_gemv)
    constexpr int TR = GLU ? TILES / 2 : TILES;
    const unsigned blocks = unsigned((N + TR * 16 - 1) / (TR * 16));
    return launch_pdl(int_mma_a_kernel<T, INT4, TILES, WARPS, D, MINB, POST, GLU>, blocks, WARPS * 32, 0, pdl, s,
                      static_cast<const T*>(x), static_cast<const uint8_t*>(w), sc, INT4 ? K / group : 1, cpg_shift,
                      static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(out), M, N, K, int(act));
  }
}

// Variants 7-12: (tiles of 16 rows, warps splitting K, iterations in flight, blocks an SM the registers allow);
// 13-18 the same with the scales after the mma (POST, kIntMmaPostVariant). GLU (quant_gemv_glu, res null): the
// variants of two tiles a block (7, 10, 12 and their POST forms: quant_gemv_glu_takes), one gate tile and its up
// tile; the others are refused by launch_int_mma_a.
// 10 and 12 won no Llama-2-7B shape in session 16 (gemv_bench or the engine's tuner): candidates to prune.
template <typename T, bool INT4, bool GLU = false>
cudaError_t launch_int_mma_a_variant(int variant, int M, const void* x, const void* w, const float* sc, int group,
                                     const void* bias, const void* res, void* out, int N, int K, Act act, bool pdl,
                                     cudaStream_t s) {
  auto go = [&](auto post) {
    constexpr bool P = decltype(post)::value;
#define TSLLM_MMA_A(TILES, WARPS, D, MINB) \
  launch_int_mma_a<T, INT4, TILES, WARPS, D, MINB, P, GLU>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s)
    switch (variant - (P ? kIntMmaPostVariant - kIntMmaAVariant : 0)) {
      case 7: return TSLLM_MMA_A(2, 4, 1, 6);
      case 8: return TSLLM_MMA_A(1, 4, 2, 6);
      case 9: return TSLLM_MMA_A(1, 8, 2, 3);
      case 10: return TSLLM_MMA_A(2, 4, 1, 4);
      case 11: return TSLLM_MMA_A(1, 8, 4, 2);
      case 12: return TSLLM_MMA_A(2, 8, 2, 2);
      default: return cudaErrorInvalidValue;
    }
#undef TSLLM_MMA_A
  };
  return variant >= kIntMmaPostVariant ? go(std::true_type{}) : go(std::false_type{});
}

}  // namespace
}  // namespace kd
}  // namespace tsllm
