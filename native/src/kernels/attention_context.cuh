// What the two context-attention kernels share (attention_context.cu: fp16/bf16 tensor cores; attention_context_fp8.cu:
// E4M3 tensor cores): the grid's query tile and its rows' positions, the scale and causal mask of a tile of
// mma.sync scores, and the output epilogue. Grid: (query head, query tile of BQ new tokens, sequence); a warp
// holds one or two m-tiles of 16 query rows, and a lane rows g = lane / 4 and g + 8 of each.
#pragma once
#include <limits.h>
#include <math.h>

#include "attention_common.cuh"

namespace tsllm {
namespace kd {

// This block's query tile of BQ rows: tile qt (longest tiles first) of sequence seq, whose new tokens are packed from st.
template <int BQ>
struct CtxTile {
  int seq, st, q0, rows;  // q0: the tile's first new token (relative to st); rows: its tokens (<= BQ)

  // False when the tile lies past the sequence's new tokens (the block has nothing to do).
  __device__ __forceinline__ bool init(const int32_t* seq_start) {
    const int qt = gridDim.y - 1 - blockIdx.y;
    seq = blockIdx.z;
    st = seq_start[seq];
    const int n_new = seq_start[seq + 1] - st;
    q0 = qt * BQ;
    rows = min(BQ, n_new - q0);
    return q0 < n_new;
  }
};

// The positions of the tile's rows into s_pos (-1 for padding rows) and their max / min into s_mm[0] / s_mm[1].
// Read them after the caller's next __syncthreads (the kernels load their Q tile in between). Needs BQ <= threads.
template <int BQ>
__device__ __forceinline__ void ctx_positions(const CtxTile<BQ>& t, const int32_t* positions, int* s_pos, int* s_mm) {
  if (threadIdx.x == 0) {
    s_mm[0] = -1;
    s_mm[1] = INT_MAX;
  }
  __syncthreads();
  if (threadIdx.x < BQ) {
    const int pos = (int)threadIdx.x < t.rows ? positions[t.st + t.q0 + threadIdx.x] : -1;
    s_pos[threadIdx.x] = pos;
    atomicMax(&s_mm[0], pos);
    atomicMin(&s_mm[1], pos);
  }
}

// S = Q K^T for MT m-tiles of 16 query rows (m-tile i: rows 16 (i NW + warp) of sQ; MT = NW = 1: rows 16 warp) and
// the BK key rows of cK, both row-major with row stride LDB bytes, over KB bytes of head dims: per 32 bytes of dims,
// the A fragment of Q and the B fragments of two n-tiles of keys come from ldmatrix of 16-byte row pieces as they lie
// (the operand layout of m16n8k16 on 16-bit elements and of m16n8k32 on 8-bit ones alike), and mma(d, a, b0, b1) is
// that instruction. A key fragment is loaded once for the warp's m-tiles (with two, half the shared-memory reads a
// product); m-tiles whose act is false (warp-uniform: their rows all lie before the tile) are skipped.
template <int MT, int NW, int BK, int KB, int LDB, typename Mma>
__device__ __forceinline__ void ctx_scores_mt(float (&sc)[MT][BK / 8][4], const unsigned char* sQ,
                                              const unsigned char* cK, int warp, int lane, const bool (&act)[MT],
                                              Mma mma) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int i = 0; i < BK / 8; ++i) sc[m][i][0] = sc[m][i][1] = sc[m][i][2] = sc[m][i][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < KB / 32; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
      if (act[m]) ldmatrix_x4(a[m], sQ + ((m * NW + warp) * 16 + (lane & 15)) * LDB + kk * 32 + (lane >> 4) * 16);
#pragma unroll
    for (int n2 = 0; n2 < BK / 16; ++n2) {
      uint32_t b[4];
      ldmatrix_x4(b, cK + ((n2 * 2 + (lane >> 4)) * 8 + (lane & 7)) * LDB + kk * 32 + ((lane >> 3) & 1) * 16);
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (act[m]) {
          mma(sc[m][2 * n2], a[m], b[0], b[1]);
          mma(sc[m][2 * n2 + 1], a[m], b[2], b[3]);
        }
    }
  }
}

// One m-tile of 16 rows (rows 16 warp of sQ), always computed.
template <int BK, int KB, int LDB, typename Mma>
__device__ __forceinline__ void ctx_scores(float (&sc)[BK / 8][4], const unsigned char* sQ, const unsigned char* cK,
                                           int warp, int lane, Mma mma) {
  const bool act[1] = {true};
  ctx_scores_mt<1, 1, BK, KB, LDB>(reinterpret_cast<float(&)[1][BK / 8][4]>(sc), sQ, cK, warp, lane, act, mma);
}

// The causal mask of one tile of scores for keys [j0, j0 + 8 NT): -inf past each row's position (row g: p0, row
// g + 8: p1), applied when mask (some key of the tile lies past the smallest position). The scores stay raw
// products: online_softmax_tile scales them.
template <int NT>
__device__ __forceinline__ void ctx_mask(float (&sc)[NT][4], int j0, int tig, int p0, int p1, bool mask) {
  if (!mask) return;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (j0 + nt * 8 + tig * 2 + (e & 1) > (e < 2 ? p0 : p1)) sc[nt][e] = -INFINITY;
}

// The epilogue: rows r0 and r0 + 8 of the tile (those < t.rows) of o[DN][4] (dims dn * 8 + 2 tig, + 1; those < D),
// times mul / (the row's sum of probabilities: lrow is lane-partial, summed over the quad here), to out[token, h].
template <typename T, int DN, int BQ>
__device__ __forceinline__ void ctx_store(const float (&o)[DN][4], float (&lrow)[2], float mul, T* out,
                                          const CtxTile<BQ>& t, int r0, int tig, int h, int nH, int D) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 1);
    lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 2);
  }
  const float inv0 = lrow[0] > 0.f ? mul / lrow[0] : 0.f;
  const float inv1 = lrow[1] > 0.f ? mul / lrow[1] : 0.f;
  T* orow0 = out + ((size_t)(t.st + t.q0 + r0) * nH + h) * D;
  T* orow1 = orow0 + (size_t)8 * nH * D;
#pragma unroll
  for (int dn = 0; dn < DN; ++dn) {
    const int d = dn * 8 + tig * 2;
    if (d < D) {
      if (r0 < t.rows) *reinterpret_cast<uint32_t*>(orow0 + d) = pack2<T>(o[dn][0] * inv0, o[dn][1] * inv0);
      if (r0 + 8 < t.rows) *reinterpret_cast<uint32_t*>(orow1 + d) = pack2<T>(o[dn][2] * inv1, o[dn][3] * inv1);
    }
  }
}

}  // namespace kd
}  // namespace tsllm
