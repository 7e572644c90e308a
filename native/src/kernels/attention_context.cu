// Context (prefill / chunked-prefill / mixed) attention over the paged KV cache, FlashAttention-2 style. Grid: (query
// head, query tile of BQ = 16 NW MT new tokens, sequence). NW warps, MT m-tiles of 16 query rows each (CtxCfg; 8 x 1 by
// default, kContextConfigs in attention_internal.h has the 4 x 2 alternative and the A/B entries). K/V tiles of BK keys
// are gathered from the paged cache with cp.async into a double-buffered shared-memory ring that all NW warps read; S =
// Q K^T and O += P V run on mma.sync m16n8k16 (fp16/bf16 in, fp32 accumulate) with an online softmax in registers
// (online_softmax_tile's FX form: the scale folded into one FFMA before ex2.approx.ftz, 2,057 SASS instructions for the
// bf16 head_dim-128 kernel against 2,196 with exp2f of pre-scaled scores, which kContextConfigs keeps as an A/B entry).
// Causal mask per row: key <= position of the row's token. Head dims are padded to DP (zeros) in shared memory. Works
// for any mix of sequences (a decode sequence is a tile with one row).
// Why 8 warps of one m-tile at head_dim <= 128 (4 before session 11): a K/V tile fetched once feeds twice the rows
// (the fetch, its block-table lookups and the barriers are per block), and 2 blocks of 8 warps per SM keep twice
// the warps in flight of 2 blocks of 4 (shared memory allows 2 either way). A warp skips the products of a tile
// that lies wholly past its rows' positions (the far side of the causal diagonal inside a 128-row tile) and all
// products when its rows are all padding (7 of the 8 warps of a one-row tile): exact, as a masked tile adds nothing
// (per m-tile).
// FP8 KV cache (CT = uint8_t) when the FP8 context FMHA does not run (AttnParams::fp8_context_fmha,
// attention_context_fp8.cu): keys before this step's first new position are read from the cache (8 bytes per 8
// dims, times k_scale / v_scale, rounded to T into shared memory); this step's own keys and values come unrounded
// from k_own (rope_cache.cu's rotated k) and the raw v rows, as the reference attends to them before storing.
#include "attention_context.cuh"
#include "attention_internal.h"
#include "fp8.cuh"

namespace tsllm {
namespace kd {
namespace {

// Block shape: NW warps of MT m-tiles (16 query rows) each at head_dim <= 128 (AttnParams::ctx_cfg picks one of
// kContextConfigs); 4 warps of one m-tile above (two would not fit the registers: o alone is DP / 2 floats a lane
// an m-tile).
template <int DP, int NWv, int MTv>
struct CtxCfg {
  static constexpr int NW = DP > 128 ? 4 : NWv, MT = DP > 128 ? 1 : MTv;
  static constexpr int BQ = 16 * NW * MT, THREADS = 32 * NW;
  static constexpr int BK = DP > 128 ? 32 : 64;
  static constexpr int LD = DP + 8;  // padded row (elements): 16-byte shift per row, no ldmatrix bank conflicts
  template <typename T>
  static constexpr size_t smem_bytes() {
    return (size_t)(BQ + 4 * BK) * LD * sizeof(T);  // 104 KB at head_dim 128 (BQ 128): 2 blocks per SM
  }
};

template <typename T, typename CT, int DP, int NWv, int MTv, bool FX>
__global__ void __launch_bounds__(CtxCfg<DP, NWv, MTv>::THREADS, 2)
    context_kernel(const T* __restrict__ q, int q_stride, T* __restrict__ out, KVView<CT> kv,
                   const int32_t* __restrict__ positions, const int32_t* __restrict__ seq_start, int nH, int G,
                   float scale_log2, OwnKV<T> own) {
  using Cfg = CtxCfg<DP, NWv, MTv>;
  constexpr bool kFp8 = sizeof(CT) == 1;
  constexpr int BK = Cfg::BK, LD = Cfg::LD, BQ = Cfg::BQ, THREADS = Cfg::THREADS, NW = Cfg::NW, MT = Cfg::MT;
  constexpr int CPR = DP / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BQ * LD;      // [2][BK][LD]
  T* sV = sK + 2 * BK * LD;  // [2][BK][LD]
  __shared__ int s_pos[BQ];
  __shared__ int s_mm[2];

  CtxTile<BQ> t;
  if (!t.init(seq_start)) return;
  const int seq = t.seq, st = t.st, q0 = t.q0, rows = t.rows;
  const int h = blockIdx.x;
  const int hk = h / G;
  const int D = kv.D;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tig = lane & 3;

  ctx_positions(t, positions, s_pos, s_mm);
  // Q tile (rows past the sequence and dims past D are zero-filled).
  for (int c = tid; c < BQ * CPR; c += THREADS) {
    const int r = c / CPR, cc = c % CPR;
    const bool ok = r < rows && cc * 8 < D;
    const T* src = ok ? q + (size_t)(st + q0 + r) * q_stride + (size_t)h * D + cc * 8 : q;
    cp_async16(sQ + r * LD + cc * 8, src, ok);
  }
  __syncthreads();
  const int kv_end = s_mm[0] + 1;
  const int ntiles = (kv_end + BK - 1) / BK;

  const int pos0 = positions[st];  // this step's first new position of the sequence (new tokens are consecutive)
  const int nKV = nH / G;
  auto load_kv = [&](int j, int stage) {
    T* dk = sK + stage * BK * LD;
    T* dv = sV + stage * BK * LD;
    for (int c = tid; c < BK * CPR; c += THREADS) {
      const int r = c / CPR, cc = c % CPR;
      const int key = j * BK + r;
      const bool ok = key < kv_end && cc * 8 < D;
      if constexpr (kFp8) {
        if (ok && key >= pos0) {
          const size_t tok = (size_t)(st + key - pos0);
          cp_async16(dk + r * LD + cc * 8, own.k + (tok * nKV + hk) * D + cc * 8, true);
          cp_async16(dv + r * LD + cc * 8, own.v + tok * own.v_stride + (size_t)hk * D + cc * 8, true);
        } else if (ok) {
          const CT* src = kv.base + kv.row(seq, key, hk) + cc * 8;
          float f[8];
          e4m3x8_to_f(*reinterpret_cast<const uint2*>(src), own.k_scale, f);
          *reinterpret_cast<uint4*>(dk + r * LD + cc * 8) = pack8<T>(f);
          e4m3x8_to_f(*reinterpret_cast<const uint2*>(src + kv.v_off), own.v_scale, f);
          *reinterpret_cast<uint4*>(dv + r * LD + cc * 8) = pack8<T>(f);
        } else {
          *reinterpret_cast<uint4*>(dk + r * LD + cc * 8) = make_uint4(0, 0, 0, 0);
          *reinterpret_cast<uint4*>(dv + r * LD + cc * 8) = make_uint4(0, 0, 0, 0);
        }
      } else {
        const T* src = ok ? kv.base + kv.row(seq, key, hk) + cc * 8 : kv.base;
        cp_async16(dk + r * LD + cc * 8, src, ok);
        cp_async16(dv + r * LD + cc * 8, ok ? src + kv.v_off : src, ok);
      }
    }
  };

  // Per m-tile (rows 16 (m NW + warp) of the block's tile: a warp's two m-tiles lie half a tile apart, so the
  // causal diagonal gives every warp about the same work): accumulators, softmax state, the rows' positions, the
  // tiles they need (none when all are padding, position -1) and their smallest position (-1 with padding rows),
  // below which no key of a tile needs the mask.
  float o[MT][DP / 8][4];
  float mrow[MT][2], lrow[MT][2];
  int r0[MT], p0[MT], p1[MT], w_tiles[MT], w_min[MT];
  int w_all = 0;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int i = 0; i < DP / 8; ++i) o[m][i][0] = o[m][i][1] = o[m][i][2] = o[m][i][3] = 0.f;
    mrow[m][0] = mrow[m][1] = -INFINITY;
    lrow[m][0] = lrow[m][1] = 0.f;
    r0[m] = (m * NW + warp) * 16 + g;
    p0[m] = s_pos[r0[m]], p1[m] = s_pos[r0[m] + 8];
    w_tiles[m] = (__reduce_max_sync(0xffffffffu, max(p0[m], p1[m])) + BK) / BK;
    w_min[m] = __reduce_min_sync(0xffffffffu, min(p0[m], p1[m]));
    w_all = max(w_all, w_tiles[m]);
  }

  load_kv(0, 0);
  cp_async_commit();
  for (int j = 0; j < ntiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < ntiles) {
      load_kv(j + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j < w_all) {
      const T* cK = sK + stage * BK * LD;
      const T* cV = sV + stage * BK * LD;
      bool act[MT];
#pragma unroll
      for (int m = 0; m < MT; ++m) act[m] = j < w_tiles[m];

      // S = Q K^T for this warp's rows and BK keys.
      float sc[MT][BK / 8][4];
      ctx_scores_mt<MT, NW, BK, DP * sizeof(T), LD * sizeof(T)>(
          sc, reinterpret_cast<const unsigned char*>(sQ), reinterpret_cast<const unsigned char*>(cK), warp, lane, act,
          [](float(&d)[4], const uint32_t(&a)[4], uint32_t b0, uint32_t b1) { mma16816<T>(d, a, b0, b1); });
      // Scale into the log2 domain, causal mask, online softmax.
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (act[m]) {
          ctx_mask(sc[m], j * BK, tig, p0[m], p1[m], j * BK + BK - 1 > w_min[m]);
          online_softmax_tile<FX>(sc[m], mrow[m], lrow[m], o[m], scale_log2, scale_log2);
        }
      // O += P V (P from registers, V via transposed ldmatrix, each V fragment loaded once for the m-tiles).
#pragma unroll
      for (int k2 = 0; k2 < BK / 16; ++k2) {
        uint32_t a[MT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          a[m][0] = pack2<T>(sc[m][2 * k2][0], sc[m][2 * k2][1]);
          a[m][1] = pack2<T>(sc[m][2 * k2][2], sc[m][2 * k2][3]);
          a[m][2] = pack2<T>(sc[m][2 * k2 + 1][0], sc[m][2 * k2 + 1][1]);
          a[m][3] = pack2<T>(sc[m][2 * k2 + 1][2], sc[m][2 * k2 + 1][3]);
        }
#pragma unroll
        for (int d2 = 0; d2 < DP / 16; ++d2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, cV + (k2 * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD +
                                   (d2 * 2 + (lane >> 4)) * 8);
#pragma unroll
          for (int m = 0; m < MT; ++m)
            if (act[m]) {
              mma16816<T>(o[m][2 * d2], a[m], b[0], b[1]);
              mma16816<T>(o[m][2 * d2 + 1], a[m], b[2], b[3]);
            }
        }
      }
    }
    __syncthreads();  // this stage is reloaded by the next iteration's prefetch
  }

#pragma unroll
  for (int m = 0; m < MT; ++m) ctx_store<T>(o[m], lrow[m], 1.f, out, t, r0[m], tig, h, nH, D);
}

template <typename T, typename CT, int DP, int NW, int MT, bool FX>
cudaError_t launch_context_t(const T* q, int q_stride, T* out, const KVView<CT>& kv, const StepLayout& step, int nH,
                             int G, float scale_log2, const OwnKV<T>& own, cudaStream_t s) {
  using Cfg = CtxCfg<DP, NW, MT>;
  constexpr size_t smem = Cfg::template smem_bytes<T>();
  static std::atomic<unsigned long long> configured{0};  // per instantiation, one bit per device
  const cudaError_t e = smem_limit_once(context_kernel<T, CT, DP, NW, MT, FX>, smem, configured);
  if (e != cudaSuccess) return e;
  const int qtiles = (step.max_new_tokens + Cfg::BQ - 1) / Cfg::BQ;
  dim3 grid(nH, qtiles, step.num_seqs);
  context_kernel<T, CT, DP, NW, MT, FX><<<grid, Cfg::THREADS, smem, s>>>(q, q_stride, out, kv, step.positions,
                                                                    step.seq_start, nH, G, scale_log2, own);
  return cudaGetLastError();
}

template <typename T, typename CT, int NW, int MT, bool FX>
cudaError_t launch_context_d(const T* q, int q_stride, T* out, const KVView<CT>& v, const StepLayout& step, int D,
                             int nH, int G, float scale_log2, const OwnKV<T>& own, cudaStream_t s) {
#define TSLLM_CTX(DP) launch_context_t<T, CT, DP, NW, MT, FX>(q, q_stride, out, v, step, nH, G, scale_log2, own, s)
  if (D <= 32) return TSLLM_CTX(32);
  if (D <= 64) return TSLLM_CTX(64);
  if (D <= 96) return TSLLM_CTX(96);
  if (D <= 128) return TSLLM_CTX(128);
#undef TSLLM_CTX
  // Above 128 every configuration is 4 warps of one m-tile (CtxCfg): one instantiation.
  if (D <= 192) return launch_context_t<T, CT, 192, 4, 1, FX>(q, q_stride, out, v, step, nH, G, scale_log2, own, s);
  return launch_context_t<T, CT, 256, 4, 1, FX>(q, q_stride, out, v, step, nH, G, scale_log2, own, s);
}

// kContextConfigs[cfg]'s kernel (cfg is checked by paged_attention; the last entry takes any other value).
template <typename T, typename CT, int I = 0>
cudaError_t launch_context_cfg(int cfg, const T* q, int q_stride, T* out, const KVView<CT>& v, const StepLayout& step,
                               int D, int nH, int G, float scale_log2, const OwnKV<T>& own, cudaStream_t s) {
  if constexpr (I + 1 < kContextConfigCount)
    if (cfg != I) return launch_context_cfg<T, CT, I + 1>(cfg, q, q_stride, out, v, step, D, nH, G, scale_log2, own, s);
  constexpr ContextConfig c = kContextConfigs[I];
  return launch_context_d<T, CT, c.warps, c.mtiles, c.fast_exp>(q, q_stride, out, v, step, D, nH, G, scale_log2, own,
                                                               s);
}

}  // namespace

cudaError_t attention_context(const void* q_, int q_stride, void* out_, const PagedKV& kv, const StepLayout& step,
                              const AttnParams& p, const void* k_own, const void* v_own, int v_stride, DType dt,
                              cudaStream_t s) {
  const int D = p.head_dim, nH = p.num_heads, G = p.num_heads / p.num_kv_heads;
  const float scale_log2 = p.scale * 1.4426950408889634f;
  if (step.max_new_tokens <= 0 || step.num_seqs <= 0) return cudaGetLastError();
  TSLLM_DISPATCH_HALF(dt, T, {
    const T* q = static_cast<const T*>(q_);
    T* out = static_cast<T*>(out_);
    OwnKV<T> own{static_cast<const T*>(k_own), static_cast<const T*>(v_own), v_stride, p.k_scale, p.v_scale};
    if (kv.dtype == DType::FP8_E4M3) {
      if (p.fp8_context_fmha && !fp8_context_fmha_unavailable(D))
        return attention_context_fp8(q_, q_stride, out_, kv, step, p, dt, s);
      if (!k_own || !v_own) return cudaErrorInvalidValue;
      return launch_context_cfg<T, uint8_t>(p.ctx_cfg, q, q_stride, out, make_kv_view<uint8_t>(kv, p.layer), step, D,
                                            nH, G, scale_log2, own, s);
    }
    return launch_context_cfg<T, T>(p.ctx_cfg, q, q_stride, out, make_kv_view<T>(kv, p.layer), step, D, nH, G,
                                    scale_log2, own, s);
  });
  return cudaErrorInvalidValue;
}

}  // namespace kd
}  // namespace tsllm
