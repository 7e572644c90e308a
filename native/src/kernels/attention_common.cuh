// Helpers of the paged-attention kernels: cache addressing, the online-softmax update and the merges of its
// partials (flash-decoding), cp.async, ldmatrix and mma.sync wrappers.
#pragma once
#include "common.cuh"
#include "mma.cuh"

namespace tsllm {
namespace kd {

// Addressing of one layer of the paged KV cache: block b holds [2][num_kv_heads][tokens_per_block][head_dim].
template <typename T>
struct KVView {
  T* base;             // start of this layer (pool + layer * num_blocks * block_elems)
  size_t block_elems;  // 2 * nKV * tpb * D
  size_t v_off;        // nKV * tpb * D: V after K inside a block
  const int32_t* block_tables;
  int max_blocks;
  int tpb, tpb_shift;  // tpb_shift >= 0 when tpb is a power of two
  int D;

  // Block-table index and offset inside the block of cache slot `pos`.
  __device__ __forceinline__ void split_pos(int pos, int& bi, int& off) const {
    if (tpb_shift >= 0) {
      bi = pos >> tpb_shift;
      off = pos & (tpb - 1);
    } else {
      bi = pos / tpb;
      off = pos - bi * tpb;
    }
  }
  // Element offset of K[physical block blk, offset off, hk, 0].
  __device__ __forceinline__ size_t row_at(int blk, int off, int hk) const {
    return (size_t)blk * block_elems + ((size_t)hk * tpb + off) * D;
  }
  // Element offset (from base) of K[seq, pos, hk, 0]; V is at + v_off.
  __device__ __forceinline__ size_t row(int seq, int pos, int hk) const {
    int bi, off;
    split_pos(pos, bi, off);
    const int blk = __ldg(block_tables + (size_t)seq * max_blocks + bi);
    return row_at(blk, off, hk);
  }
};

// The arguments the decode kernels share (decode_kernel and decode_fast_kernel's DecodeArgs add the step's own k/v
// and RoPE; decode_mma_kernel takes these as they are): query rows, output or split-K partials, the layer's cache,
// the step's positions and token -> sequence map, the query-head grouping, the log2-domain scale, the split length.
template <typename T>
struct DecodeIO {
  const T* q;  // decode_fast_kernel: the step's raw q rows; decode_kernel / decode_mma_kernel: rotated q rows
  int q_stride;
  T* out;
  float* ws_o;    // split-K partials [token, head, split, D] (normalised) ...
  float2* ws_ml;  // ... and their (m, l), for decode_reduce_kernel
  KVView<T> kv;
  const int32_t* positions;
  const int32_t* token_seq;
  int nH, G, hgroups;  // query heads, query heads per KV head, head groups per KV head (blocks along x per KV head)
  float scale_log2;
  int chunk;  // keys per split

  // This lane's 8 dims (from sub * 8) of the GB query heads of head group hg of KV head hk for token t, times
  // scale_log2; zero past the group or the head dim. to_float(row, raw, f): the 16 bytes `raw` at sub * 8 of query
  // head row `row` as 8 floats.
  template <int GB, typename ToFloat>
  __device__ __forceinline__ void load_q(int t, int hk, int hg, int sub, bool dim_ok, float (&qf)[GB][8],
                                         ToFloat&& to_float) const {
#pragma unroll
    for (int g = 0; g < GB; ++g) {
      const int hh = hg * GB + g;
      if (hh < G && dim_ok) {
        const T* qh = q + (size_t)t * q_stride + (size_t)(hk * G + hh) * kv.D;
        to_float(qh, *reinterpret_cast<const uint4*>(qh + sub * 8), qf[g]);
#pragma unroll
        for (int j = 0; j < 8; ++j) qf[g][j] *= scale_log2;
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) qf[g][j] = 0.f;
      }
    }
  }
  // A block's result r for query head h, dim d of token t: the output itself (one split), or split `split`'s
  // normalised partial and, at d == 0, its (m, l).
  __device__ __forceinline__ void store(int t, int h, int d, int split, int nsplit, float r, float M, float L) const {
    if (nsplit == 1) {
      out[((size_t)t * nH + h) * kv.D + d] = from_f<T>(r);
    } else {
      const size_t pi = ((size_t)t * nH + h) * nsplit + split;
      ws_o[pi * kv.D + d] = r;
      if (d == 0) ws_ml[pi] = make_float2(M, L);
    }
  }
};

// FP8 cache only (the context kernel and decode_mma_kernel): where this step's own K/V rows are, unrounded, and the
// cache's scales.
template <typename T>
struct OwnKV {
  const T* k;  // [num_tokens, nKV * D] rotated k (rope_cache's k_out)
  const T* v;  // the step's v rows, row stride v_stride
  int v_stride;
  float k_scale, v_scale;
};

// The K and V rows' 16 bytes at `row` + sub * 8 of the cache (zeros when !ld: an absent key or dims past D).
template <typename T>
__device__ __forceinline__ void load_kv16(const KVView<T>& kv, size_t row, int sub, bool ld, uint4& k, uint4& v) {
  const T* p = kv.base + row + sub * 8;
  k = ld ? *reinterpret_cast<const uint4*>(p) : make_uint4(0, 0, 0, 0);
  v = ld ? *reinterpret_cast<const uint4*>(p + kv.v_off) : make_uint4(0, 0, 0, 0);
}

// RoPE on the 8 dims [i0, i0+8) of one head. neox rotates pairs (i, i+R/2), gptj pairs (2i, 2i+1);
// angle = pos * inv_freq[pair] in fp32; dims >= R pass through. rope_angles gives cos/sin of the 8 dims (shared by
// every head of a token); rope_apply rotates one head's row `src` whose chunk at i0 is already loaded in `raw`.
// Results are fp32 (callers round to the activation dtype).
__device__ __forceinline__ void rope_angles(int i0, int R, bool gptj, int pos, const float* inv_freq, float (&cs)[8],
                                            float (&sn)[8]) {
  const int half = R >> 1;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int i = i0 + j;
    cs[j] = 1.f;
    sn[j] = 0.f;
    if (i < R) {
      const int fi = gptj ? (i >> 1) : (i < half ? i : i - half);
      sincosf(__fmul_rn((float)pos, __ldg(inv_freq + fi)), &sn[j], &cs[j]);
    }
  }
}

template <typename T>
__device__ __forceinline__ void rope_apply(const T* src, int i0, int R, bool gptj, const uint4& raw,
                                           const float (&cs)[8], const float (&sn)[8], float (&o)[8]) {
  float f[8], pf[8];
  unpack8<T>(raw, f);
  if (i0 >= R) {
#pragma unroll
    for (int j = 0; j < 8; ++j) o[j] = f[j];
    return;
  }
  const int half = R >> 1;
  if (gptj) {
#pragma unroll
    for (int j = 0; j < 8; ++j) pf[j] = f[j ^ 1];
  } else if ((half & 7) == 0) {
    const int p0 = i0 < half ? i0 + half : i0 - half;
    unpack8<T>(*reinterpret_cast<const uint4*>(src + p0), pf);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int i = i0 + j;
      pf[j] = i < R ? to_f(src[i < half ? i + half : i - half]) : 0.f;
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int i = i0 + j;
    if (i < R) {
      const bool first = gptj ? !(i & 1) : i < half;
      o[j] = first ? f[j] * cs[j] - pf[j] * sn[j] : f[j] * cs[j] + pf[j] * sn[j];
    } else {
      o[j] = f[j];
    }
  }
}

template <typename T>
__device__ __forceinline__ void rope8(const T* src, int i0, int R, bool gptj, int pos, const float* inv_freq,
                                      const uint4& raw, float (&o)[8]) {
  float cs[8], sn[8];
  rope_angles(i0, R, gptj, pos, inv_freq, cs, sn);
  rope_apply<T>(src, i0, R, gptj, raw, cs, sn, o);
}

// ---- online softmax (scores in the log2 domain), one place for its update and its merges ----
// A partial result is (m, l, acc): the running max, the sum of 2^(s - m), and the 2^(s - m)-weighted sum of values.

// The factor a partial with max m takes in a merge whose max is M (an empty partial, m = -inf, weighs 0).
__device__ __forceinline__ float softmax_rescale(float m, float M) { return m == -INFINITY ? 0.f : exp2f(m - M); }

// An empty partial for each of the GB heads.
template <int GB>
__device__ __forceinline__ void softmax_init(float (&m)[GB], float (&l)[GB], float (&acc)[GB][8]) {
#pragma unroll
  for (int g = 0; g < GB; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
  }
}

// One key's scores for the GB heads: q · k over this lane's 8 dims, summed over the LPK lanes that hold the key
// (-inf when the key is absent).
template <int LPK, int GB>
__device__ __forceinline__ void key_scores(const float (&qf)[GB][8], const float (&kf)[8], bool ok, float (&s)[GB]) {
#pragma unroll
  for (int g = 0; g < GB; ++g) {
    float d = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) d = fmaf(qf[g][j], kf[j], d);
#pragma unroll
    for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
    s[g] = ok ? d : -INFINITY;
  }
}

// Absorbs one step of U keys into the GB heads' partials: scores s[u][g] (-inf for absent keys), values vf[u].
template <int U, int GB>
__device__ __forceinline__ void softmax_step(float (&m)[GB], float (&l)[GB], float (&acc)[GB][8],
                                             const float (&s)[U][GB], const float (&vf)[U][8]) {
#pragma unroll
  for (int g = 0; g < GB; ++g) {
    float mx = m[g];
#pragma unroll
    for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][g]);
    if (mx == -INFINITY) continue;  // no valid key for this lane yet
    const float c = exp2f(m[g] - mx);
    l[g] *= c;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] *= c;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const float pr = exp2f(s[u][g] - mx);
      l[g] += pr;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(pr, vf[u][j], acc[g][j]);
    }
    m[g] = mx;
  }
}

// Merges the partials of the lanes of a warp that hold the same 8 dims (lanes LPK apart: one key slot each).
template <int LPK, int GB>
__device__ __forceinline__ void softmax_merge_lanes(float (&m)[GB], float (&l)[GB], float (&acc)[GB][8]) {
#pragma unroll
  for (int g = 0; g < GB; ++g) {
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float M = fmaxf(m[g], mo);
      const float c1 = softmax_rescale(m[g], M);
      const float c2 = softmax_rescale(mo, M);
      l[g] = l[g] * c1 + lo * c2;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][j], o);
        acc[g][j] = acc[g][j] * c1 + ao * c2;
      }
      m[g] = M;
    }
  }
}

// The warps' partials of a block in shared memory: lane slot 0 of each warp stores its merged (m, l, acc).
template <int NW, int GB, int DP>
struct SoftmaxWarpPartials {
  float acc[NW][GB][DP];
  float m[NW][GB], l[NW][GB];

  __device__ __forceinline__ void store(int warp, int slot, int sub, const float (&pm)[GB], const float (&pl)[GB],
                                        const float (&pacc)[GB][8]) {
    if (slot != 0) return;
#pragma unroll
    for (int g = 0; g < GB; ++g) {
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[warp][g][sub * 8 + j] = pacc[g][j];
      if (sub == 0) {
        m[warp][g] = pm[g];
        l[warp][g] = pl[g];
      }
    }
  }
  // Head g, dim d over the warps: the block's max M, sum L and normalised output (0 when no key was seen).
  __device__ __forceinline__ float merge(int g, int d, float* M_out, float* L_out) const {
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) M = fmaxf(M, m[w][g]);
    float L = 0.f, O = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float c = softmax_rescale(m[w][g], M);
      L += l[w][g] * c;
      O += acc[w][g][d] * c;
    }
    *M_out = M, *L_out = L;
    return L > 0.f ? O / L : 0.f;
  }
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}


// 2^x on the SFU alone (ex2.approx.ftz): exp2f adds a compare and two multiplies per call to keep subnormal results,
// which a softmax weight below 2^-126 cannot use.
__device__ __forceinline__ float ex2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Online softmax over one tile of mma.sync scores, for the two rows (g, g + 8) a lane holds: sc[NT][4] are n-tiles
// of 8 keys (entries 0, 1 of row g, 2, 3 of row g + 8), raw products with masked entries -inf; f0 / f1 (> 0) take
// row g's / row g + 8's scores into the log2 domain. Updates the running max mrow and sum lrow (lane-partial: summed
// over the quad at the end), turns sc into the probabilities, and rescales the DN output accumulators o[DN][4]
// (same row split) to the new max.
// FX (the default): the max is kept in raw units (a positive factor keeps the order, so it is the same key's) and
// each weight is ex2_ftz(fmaf(s, f, -RN(max f))): one FFMA and one MUFU a score. Without FX (kept to A/B,
// kContextConfigs' exp2f entries): the scores are scaled first, 2^(RN(s f) - max) by exp2f: a multiply, a subtract
// and exp2f's three fix-up instructions a score (session 21's SASS: 780 instructions a tile of 128 HMMA at 8 warps).
// (The decode kernel's column form, online_softmax_cols, skips that rescale while no max moved. Not here: causal
// prefill moves the max often, and in session 10 the vote made one context-kernel instantiation spill.)
template <bool FX, int NT, int DN>
__device__ __forceinline__ void online_softmax_tile(float (&sc)[NT][4], float (&mrow)[2], float (&lrow)[2],
                                                    float (&o)[DN][4], float f0, float f1) {
  if constexpr (!FX) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      sc[nt][0] *= f0, sc[nt][1] *= f0;
      sc[nt][2] *= f1, sc[nt][3] *= f1;
    }
  }
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    mx0 = fmaxf(mx0, fmaxf(sc[nt][0], sc[nt][1]));
    mx1 = fmaxf(mx1, fmaxf(sc[nt][2], sc[nt][3]));
  }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  const float mn0 = fmaxf(mrow[0], mx0), mn1 = fmaxf(mrow[1], mx1);
  const float mu0 = mn0 == -INFINITY ? 0.f : mn0, mu1 = mn1 == -INFINITY ? 0.f : mn1;
  // 2^(a f - mu f) (FX) or 2^(a - mu); a = -inf (an empty row so far, or a masked key) gives 0.
  const float b0 = FX ? -(mu0 * f0) : -mu0, b1 = FX ? -(mu1 * f1) : -mu1;
  auto w0 = [&](float a) { return FX ? ex2_ftz(fmaf(a, f0, b0)) : exp2f(a + b0); };
  auto w1 = [&](float a) { return FX ? ex2_ftz(fmaf(a, f1, b1)) : exp2f(a + b1); };
  const float c0 = w0(mrow[0]), c1 = w1(mrow[1]);
  mrow[0] = mn0;
  mrow[1] = mn1;
  float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    sc[nt][0] = w0(sc[nt][0]);
    sc[nt][1] = w0(sc[nt][1]);
    sc[nt][2] = w1(sc[nt][2]);
    sc[nt][3] = w1(sc[nt][3]);
    rs0 += sc[nt][0] + sc[nt][1];
    rs1 += sc[nt][2] + sc[nt][3];
  }
  lrow[0] = lrow[0] * c0 + rs0;
  lrow[1] = lrow[1] * c1 + rs1;
#pragma unroll
  for (int dn = 0; dn < DN; ++dn) {
    o[dn][0] *= c0;
    o[dn][1] *= c0;
    o[dn][2] *= c1;
    o[dn][3] *= c1;
  }
}

}  // namespace kd
}  // namespace tsllm
