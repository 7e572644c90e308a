// Decode attention over the paged KV cache (flash-decoding).
// Grid: (kv head x query-head group, split, token). One block of 4 warps loads each K/V row of its KV head once
// for up to GB query heads (GQA). A key is handled by LPK = DP/8 lanes, 8 dims (16 bytes) each; a warp covers
// 32/LPK keys per step and unrolls U steps so 2U 16-byte loads per thread are in flight. Each lane keeps an
// online softmax (m, l, acc[8]) per head; lanes, then warps, are merged at the end.
// Split-K: blocks write normalised partials (o, m, l) to the workspace and decode_reduce_kernel combines them.
// This is variant 2 (after rope_cache.cu's kernel; attention_decode_mma.cu's variant 4 replaces it at GQA ratios
// >= AttnParams::mma_min_gqa or when asked for) and the fallback of variant 3 (decode_fast_kernel below, one
// launch with RoPE, cache write and a cluster/DSMEM combine), the default for small batches of 16-bit caches.
#include <cooperative_groups.h>
#include <math.h>

#include <algorithm>
#include <cstdlib>

#include "attention_internal.h"
#include "fp8.cuh"

namespace tsllm {
namespace kd {
namespace {

constexpr int kDecWarps = 4;

template <typename T>
struct DecodeArgs : DecodeIO<T> {
  const T* k;  // fast path: raw k/v rows of the step (q: DecodeIO::q); variants 2/4: FP8 caches' own k/v, else unused
  const T* v;
  int k_stride, v_stride;
  const float* inv_freq;
  int R, gptj;
  int guess_seq;  // fast path: token t is sequence t (pure decode with num_seqs == num_tokens), checked on device
  int pdl;        // fast path: launched with programmatic stream serialization (wait before touching q/k/v/out)
  const void* pf;  // fast path: AttnParams::l2_prefetch, split over the grid's blocks
  size_t pf_bytes;
};

// K/V loads of 8 dims: 16 bytes of T, or 8 bytes of an FP8 cache (in .x, .y), and their floats (FP8: · scale).
template <typename CT>
__device__ __forceinline__ uint4 ld_kv8(const CT* p) {
  if constexpr (sizeof(CT) == 1) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    return make_uint4(u.x, u.y, 0u, 0u);
  } else {
    return *reinterpret_cast<const uint4*>(p);
  }
}
template <typename T, typename CT>
__device__ __forceinline__ void kv_unpack8(const uint4& raw, float scale, float (&f)[8]) {
  if constexpr (sizeof(CT) == 1)
    e4m3x8_to_f(make_uint2(raw.x, raw.y), scale, f);
  else
    unpack8<T>(raw, f);
}

// The FP8 cache's view and scales (decode_kernel only: variant 3 runs on 16-bit caches).
struct Fp8View {
  bool on;
  KVView<uint8_t> kv;
  float k_scale, v_scale;
};

// The end of decode_kernel and decode_fast_kernel: merges the key slots of each warp (lanes with equal `sub`), then
// the NW warps through shared memory, and calls out(g, hh, d, r, M, L) for every (head, dim) of the block's head
// group (g: index in the block, hh: in the KV head's group): r the block's normalised output, (M, L) its max and sum.
template <int NW, int LPK, int GB, int DP, typename Out>
__device__ __forceinline__ void merge_block(float (&m)[GB], float (&l)[GB], float (&acc)[GB][8], int warp, int slot,
                                            int sub, int hg, int G, int D, Out&& out) {
  softmax_merge_lanes<LPK, GB>(m, l, acc);
  __shared__ SoftmaxWarpPartials<NW, GB, DP> part;
  part.store(warp, slot, sub, m, l, acc);
  __syncthreads();
  for (int e = threadIdx.x; e < GB * DP; e += blockDim.x) {
    const int g = e / DP, d = e % DP;
    const int hh = hg * GB + g;
    if (hh >= G || d >= D) continue;
    float M, L;
    const float r = part.merge(g, d, &M, &L);
    out(g, hh, d, r, M, L);
  }
}

// CT: the cache's element type (T, or uint8_t for an FP8 cache: the token's own key/value come unrounded from
// a.k / a.v, as the reference attends to them before storing).
template <typename T, typename CT, int DP, int GB>
__global__ void __launch_bounds__(kDecWarps * 32)
    decode_kernel(const DecodeArgs<T> a, const KVView<CT> kv, float k_scale, float v_scale) {
  pdl_trigger();
  constexpr int LPK = DP / 8;     // lanes per key
  constexpr int KPW = 32 / LPK;   // keys per warp per step
  constexpr int U = GB >= 8 ? 2 : 4;
  constexpr int STEP = kDecWarps * KPW * U;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane % LPK, slot = lane / LPK;
  const int G = a.G, chunk = a.chunk;
  const int hk = blockIdx.x / a.hgroups, hg = blockIdx.x % a.hgroups;
  const int split = blockIdx.y, nsplit = gridDim.y, t = blockIdx.z;
  const int D = kv.D;
  const int pos = a.positions[t];
  const int ctx = pos + 1;
  const int kb = split * chunk;
  if (kb >= ctx) return;
  const int ke = min(ctx, kb + chunk);
  const int seq = a.token_seq[t];
  const bool dim_ok = sub * 8 < D;

  float qf[GB][8];
  a.template load_q<GB>(t, hk, hg, sub, dim_ok, qf, [](const T*, const uint4& raw, float (&f)[8]) { unpack8<T>(raw, f); });
  float m[GB], l[GB], acc[GB][8];
  softmax_init<GB>(m, l, acc);

  // FP8 cache: this token's own key/value, unrounded.
  float kown[8], vown[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) kown[j] = vown[j] = 0.f;
  if (sizeof(CT) == 1 && dim_ok) {
    unpack8<T>(*reinterpret_cast<const uint4*>(a.k + (size_t)t * a.k_stride + (size_t)hk * D + sub * 8), kown);
    unpack8<T>(*reinterpret_cast<const uint4*>(a.v + (size_t)t * a.v_stride + (size_t)hk * D + sub * 8), vown);
  }

  // Cache rows of the next step are looked up one step ahead (block-table loads overlap K/V loads).
  size_t rnext[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int key = kb + (u * kDecWarps + warp) * KPW + slot;
    rnext[u] = key < ke ? kv.row(seq, key, hk) : 0;
  }
  for (int base = kb; base < ke; base += STEP) {
    uint4 kr[U], vr[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + (u * kDecWarps + warp) * KPW + slot;
      ok[u] = key < ke;
      if (ok[u] && dim_ok) {
        const CT* p = kv.base + rnext[u] + sub * 8;
        kr[u] = ld_kv8(p);
        vr[u] = ld_kv8(p + kv.v_off);
      } else {
        kr[u] = make_uint4(0, 0, 0, 0);
        vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + STEP + (u * kDecWarps + warp) * KPW + slot;
      if (key < ke) rnext[u] = kv.row(seq, key, hk);
    }
    float s[U][GB];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      kv_unpack8<T, CT>(kr[u], k_scale, kf);
      if constexpr (sizeof(CT) == 1) {
        if (base + (u * kDecWarps + warp) * KPW + slot == pos)
#pragma unroll
          for (int j = 0; j < 8; ++j) kf[j] = kown[j];
      }
      key_scores<LPK, GB>(qf, kf, ok[u], s[u]);
    }
    float vf[U][8];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      kv_unpack8<T, CT>(vr[u], v_scale, vf[u]);
      if constexpr (sizeof(CT) == 1) {
        if (base + (u * kDecWarps + warp) * KPW + slot == pos)
#pragma unroll
          for (int j = 0; j < 8; ++j) vf[u][j] = vown[j];
      }
    }
    softmax_step<U, GB>(m, l, acc, s, vf);
  }

  merge_block<kDecWarps, LPK, GB, DP>(m, l, acc, warp, slot, sub, hg, G, D,
                                     [&](int, int hh, int d, float r, float M, float L) {
                                       a.store(t, hk * G + hh, d, split, nsplit, r, M, L);
                                     });
}

// Variant 3 (small batches): one launch, latency first. Grid (kv head x head group, split, token), NW warps,
// splits of one (token, head group) form a thread-block cluster along y (<= 8) combined through DSMEM.
// Dependent global round trips before the first K/V byte arrives: positions/token_seq and the block-table entries
// of this block's first keys are read together (the entries speculatively for sequence t, the pure-decode
// layout; re-read if token_seq says otherwise), then every K/V load of the block's first STEP keys is issued at
// once. Cos/sin once per lane (shared by q and the new k); the new token's k/v replace the cached slot by a
// select (no branch in the load path). The cache loads do not depend on the previous kernel, so under PDL they
// are issued before griddepcontrol.wait; q/k/v of the step and all global writes come after it.
template <typename T, int DP, int GB, int NW>
__global__ void __launch_bounds__(NW * 32) decode_fast_kernel(const DecodeArgs<T> a) {
  constexpr int LPK = DP / 8;     // lanes per key
  constexpr int KPW = 32 / LPK;   // keys per warp per step
  constexpr int U = GB >= 8 ? 2 : 4;
  constexpr int STEP = NW * KPW * U;
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane % LPK, slot = lane / LPK;
  const KVView<T>& kv = a.kv;
  const int G = a.G, nH = a.nH, chunk = a.chunk;
  const int hk = blockIdx.x / a.hgroups, hg = blockIdx.x % a.hgroups;
  const int split = blockIdx.y, nsplit = gridDim.y, t = blockIdx.z;
  const int D = kv.D;
  const bool dim_ok = sub * 8 < D;
  const int kb = split * chunk;

  // Round 1: everything that depends only on t (metadata uploaded before the graph; not written by kernels).
  const int pos = __ldg(a.positions + t);
  const int seq_ld = __ldg(a.token_seq + t);
  int bt_guess[U], off0[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int key = kb + (u * NW + warp) * KPW + slot;
    int bi;
    kv.split_pos(key, bi, off0[u]);
    bt_guess[u] = a.guess_seq && key < kb + chunk && bi < kv.max_blocks
                      ? __ldg(kv.block_tables + (size_t)t * kv.max_blocks + bi)
                      : 0;
  }
  const int ctx = pos + 1;
  const int ke = min(ctx, kb + chunk);
  const int seq = seq_ld;
  const bool guess_ok = a.guess_seq && seq == t;
  size_t rcur[U];
  bool ok[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int key = kb + (u * NW + warp) * KPW + slot;
    ok[u] = key < ke;
    int blk = bt_guess[u];
    if (!guess_ok && ok[u]) {
      int bi, off;
      kv.split_pos(key, bi, off);
      blk = __ldg(kv.block_tables + (size_t)seq * kv.max_blocks + bi);
    }
    rcur[u] = ok[u] ? kv.row_at(blk, off0[u], hk) : 0;
  }
  // Round 2: the first step's K/V (cache only: independent of the previous kernel).
  uint4 kr[U], vr[U];
#pragma unroll
  for (int u = 0; u < U; ++u) load_kv16(kv, rcur[u], sub, ok[u] && dim_ok, kr[u], vr[u]);
  // Cos/sin of this lane's 8 dims at pos (shared by the q heads and the new k).
  float rcs[8], rsn[8];
  const bool rope = a.R > 0 && dim_ok && sub * 8 < a.R;
  if (rope) rope_angles(sub * 8, a.R, a.gptj != 0, pos, a.inv_freq, rcs, rsn);

  if (a.pdl) pdl_wait();  // q/k/v come from the previous kernel
  // After the wait, so the previous kernel's weight stream (qkv) is over and does not evict what this brings in.
  if (a.pf_bytes && warp == 0)
    l2_prefetch_part(a.pf, a.pf_bytes, blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z),
                     gridDim.x * gridDim.y * gridDim.z, lane);

  float qf[GB][8];
  a.template load_q<GB>(t, hk, hg, sub, dim_ok, qf, [&](const T* qh, const uint4& raw, float (&f)[8]) {
    if (rope) {
      rope_apply<T>(qh, sub * 8, a.R, a.gptj != 0, raw, rcs, rsn, f);
#pragma unroll
      for (int j = 0; j < 8; ++j) f[j] = to_f(from_f<T>(f[j]));  // q is rounded like the unfused path
    } else {
      unpack8<T>(raw, f);
    }
  });
  uint4 knew = make_uint4(0, 0, 0, 0), vnew = make_uint4(0, 0, 0, 0);
  if (dim_ok) {
    const T* kh = a.k + (size_t)t * a.k_stride + (size_t)hk * D;
    knew = *reinterpret_cast<const uint4*>(kh + sub * 8);
    vnew = *reinterpret_cast<const uint4*>(a.v + (size_t)t * a.v_stride + (size_t)hk * D + sub * 8);
    if (rope) {
      float f[8];
      rope_apply<T>(kh, sub * 8, a.R, a.gptj != 0, knew, rcs, rsn, f);
      knew = pack8<T>(f);
    }
    // The block whose split holds pos (first head group) writes k and v into the cache; no block of this launch
    // uses the value it reads from that slot (the new k/v are selected instead).
    if (warp == 0 && slot == 0 && hg == 0 && pos / chunk == split) {
      const size_t r = kv.row(seq, pos, hk);
      *reinterpret_cast<uint4*>(kv.base + r + sub * 8) = knew;
      *reinterpret_cast<uint4*>(kv.base + r + kv.v_off + sub * 8) = vnew;
    }
  }

  float m[GB], l[GB], acc[GB][8];
  softmax_init<GB>(m, l, acc);
  for (int base = kb; base < ke; base += STEP) {
    // Next step's rows (only when the chunk is longer than one step).
    size_t rnext[U];
    bool oknext[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + STEP + (u * NW + warp) * KPW + slot;
      oknext[u] = key < ke;
      rnext[u] = oknext[u] ? kv.row(seq, key, hk) : 0;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + (u * NW + warp) * KPW + slot;
      if (key == pos) kr[u] = knew, vr[u] = vnew;
    }
    float s[U][GB];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      unpack8<T>(kr[u], kf);
      key_scores<LPK, GB>(qf, kf, ok[u], s[u]);
    }
    float vf[U][8];
#pragma unroll
    for (int u = 0; u < U; ++u) unpack8<T>(vr[u], vf[u]);
    softmax_step<U, GB>(m, l, acc, s, vf);
    // Loads of the next step (the cache slot at pos may be read here too; its value is replaced above).
#pragma unroll
    for (int u = 0; u < U; ++u) {
      ok[u] = oknext[u];
      load_kv16(kv, rnext[u], sub, oknext[u] && dim_ok, kr[u], vr[u]);
    }
  }

  // Block result per (head, dim): the output (one split), or normalised o and the block's (m, l) for the cluster.
  __shared__ float s_bo[GB][DP];
  __shared__ float s_bm[GB], s_bl[GB];
  merge_block<NW, LPK, GB, DP>(m, l, acc, warp, slot, sub, hg, G, D, [&](int g, int hh, int d, float r, float M, float L) {
    if (nsplit == 1) {
      a.out[((size_t)t * nH + hk * G + hh) * D + d] = from_f<T>(r);
    } else {
      s_bo[g][d] = r;
      if (d == 0) s_bm[g] = M, s_bl[g] = L;
    }
  });
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (nsplit > 1) {
    // Every rank combines an interleaved share of the (head, dim) outputs; all remote reads of one output are
    // independent (one DSMEM round trip). The second barrier keeps shared memory alive until all ranks are done.
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cl.sync();
    const int rank = (int)cl.block_rank();
    for (int e = rank + (int)threadIdx.x * nsplit; e < GB * DP; e += (int)blockDim.x * nsplit) {
      const int g = e / DP, d = e % DP;
      const int hh = hg * GB + g;
      if (hh >= G || d >= D) continue;
      float mr[8], lr[8], orr[8];
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        if (r < nsplit) {
          mr[r] = *cl.map_shared_rank(&s_bm[g], r);
          lr[r] = *cl.map_shared_rank(&s_bl[g], r);
          orr[r] = *cl.map_shared_rank(&s_bo[g][d], r);
        } else {
          mr[r] = -INFINITY, lr[r] = 0.f, orr[r] = 0.f;
        }
      }
      float M = -INFINITY;
#pragma unroll
      for (int r = 0; r < 8; ++r) M = fmaxf(M, mr[r]);
      float L = 0.f, o = 0.f;
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        const float w = lr[r] * softmax_rescale(mr[r], M);
        L += w;
        o = fmaf(w, orr[r], o);
      }
      a.out[((size_t)t * nH + hk * G + hh) * D + d] = from_f<T>(L > 0.f ? o / L : 0.f);
    }
    cl.sync();
  }
#endif
}

// Combines the splits of one (token, head): weights l_s * 2^(m_s - M).
template <typename T>
__global__ void decode_reduce_kernel(const float* __restrict__ ws_o, const float2* __restrict__ ws_ml,
                                     T* __restrict__ out, const int32_t* __restrict__ positions, int nH, int D,
                                     int chunk) {
  pdl_trigger();
  const int h = blockIdx.x, t = blockIdx.y, nsplit = gridDim.z;
  const int ctx = positions[t] + 1;
  const int ns = min(nsplit, (ctx + chunk - 1) / chunk);
  const size_t base = ((size_t)t * nH + h) * nsplit;
  extern __shared__ float s_w[];  // [nsplit]
  __shared__ float s_inv;
  if (threadIdx.x < 32) {
    float M = -INFINITY;
    for (int i = threadIdx.x; i < ns; i += 32) M = fmaxf(M, ws_ml[base + i].x);
    M = warp_max(M);
    float L = 0.f;
    for (int i = threadIdx.x; i < ns; i += 32) {
      const float2 ml = ws_ml[base + i];
      const float w = ml.y * softmax_rescale(ml.x, M);
      s_w[i] = w;
      L += w;
    }
    L = warp_sum(L);
    if (threadIdx.x == 0) s_inv = L > 0.f ? 1.f / L : 0.f;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int i = 0; i < ns; ++i) o = fmaf(s_w[i], ws_o[(base + i) * D + d], o);
    out[((size_t)t * nH + h) * D + d] = from_f<T>(o * s_inv);
  }
}

// Host-side launch of one decode configuration.
template <typename T, int DP, int GB>
cudaError_t launch_decode_t(DecodeArgs<T> a, const StepLayout& step, int nKV, DecodeSplit sp, const Fp8View& f8,
                            cudaStream_t s) {
  a.hgroups = (a.G + GB - 1) / GB;
  dim3 grid(nKV * a.hgroups, sp.splits, step.num_tokens);
  if (f8.on)
    decode_kernel<T, uint8_t, DP, GB><<<grid, kDecWarps * 32, 0, s>>>(a, f8.kv, f8.k_scale, f8.v_scale);
  else
    decode_kernel<T, T, DP, GB><<<grid, kDecWarps * 32, 0, s>>>(a, a.kv, 1.f, 1.f);
  return cudaGetLastError();
}

// f(GB) with GB the query heads per block instantiated for G query heads per KV head (1, 2, 4, or 8 and several
// head groups), as a std::integral_constant.
template <typename F>
cudaError_t with_head_group(int G, F&& f) {
  if (G <= 1) return f(std::integral_constant<int, 1>{});
  if (G <= 2) return f(std::integral_constant<int, 2>{});
  if (G <= 4) return f(std::integral_constant<int, 4>{});
  return f(std::integral_constant<int, 8>{});
}

template <typename T, int DP>
cudaError_t launch_decode_dp(const DecodeArgs<T>& a, const StepLayout& step, int nKV, DecodeSplit sp, const Fp8View& f8,
                             cudaStream_t s) {
  return with_head_group(a.G, [&](auto gb) { return launch_decode_t<T, DP, decltype(gb)::value>(a, step, nKV, sp, f8, s); });
}

template <typename T>
cudaError_t launch_decode_d(const DecodeArgs<T>& a, const StepLayout& step, int nKV, int D, DecodeSplit sp, const Fp8View& f8,
                            cudaStream_t s) {
  return with_head_dim(D, [&](auto dp) { return launch_decode_dp<T, decltype(dp)::value>(a, step, nKV, sp, f8, s); });
}

template <typename T, int DP, int GB, int NW_>
cudaError_t launch_fast_t(DecodeArgs<T> a, const StepLayout& step, int nKV, DecodeSplit sp, cudaStream_t s) {
  constexpr int NW = GB * DP > 1024 ? 4 : NW_;  // shared memory: s_acc is NW x GB x DP floats (decode_split agrees)
  a.hgroups = (a.G + GB - 1) / GB;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(nKV * a.hgroups, sp.splits, step.num_tokens);
  cfg.blockDim = dim3(NW * 32);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = s;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (sp.splits > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = 1;
    attr[n].val.clusterDim.y = sp.splits;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (a.pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, decode_fast_kernel<T, DP, GB, NW>, a);
}

template <typename T, int DP, int NW>
cudaError_t launch_fast_w(const DecodeArgs<T>& a, const StepLayout& step, int nKV, DecodeSplit sp, cudaStream_t s) {
  return with_head_group(a.G, [&](auto gb) { return launch_fast_t<T, DP, decltype(gb)::value, NW>(a, step, nKV, sp, s); });
}

template <typename T, int DP>
cudaError_t launch_fast_dp(const DecodeArgs<T>& a, const StepLayout& step, int nKV, DecodeSplit sp, cudaStream_t s) {
  return sp.warps == 8 ? launch_fast_w<T, DP, 8>(a, step, nKV, sp, s) : launch_fast_w<T, DP, 4>(a, step, nKV, sp, s);
}

template <typename T>
cudaError_t launch_fast_d(const DecodeArgs<T>& a, const StepLayout& step, int nKV, int D, DecodeSplit sp,
                          cudaStream_t s) {
  return with_head_dim(D, [&](auto dp) { return launch_fast_dp<T, decltype(dp)::value>(a, step, nKV, sp, s); });
}

// Clusters need an sm_90 device running sm_90 code of the kernel (a PTX-JIT build for an older arch compiles
// the cluster combine out), checked once per device on one representative instantiation.
bool cluster_ok() {
  static int cache[64] = {0};
  return per_device(cache, [](int dev) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaFuncAttributes fa;
    const bool ok = major >= 9 &&
                    cudaFuncGetAttributes(&fa, decode_fast_kernel<half, 128, 1, 4>) == cudaSuccess &&
                    fa.binaryVersion >= 90;
    cudaGetLastError();
    return ok;
  });
}

}  // namespace

DecodeSplit decode_split(int num_tokens, int num_heads, int num_kv_heads, int head_dim, int max_seq_len,
                         int variant) {
  (void)head_dim;
  DecodeSplit r{1, max_seq_len > 0 ? max_seq_len : 1, false, false, 4};
  if (num_tokens <= 0 || max_seq_len <= 0) return r;
  const int G = num_kv_heads > 0 ? num_heads / num_kv_heads : 1;
  const int hgroups = (G + 7) / 8;
  const long base_blocks = (long)num_tokens * num_kv_heads * (G <= 8 ? 1 : hgroups);
  if (variant == 3) {
    // Fast path for small batches: up to 8 splits (one cluster), >= 16 keys each, 4 warps while a split fits
    // one step of loads of 4 warps (32 keys at head_dim 128), else 8 warps. Batches whose base grid already
    // covers the GPU, contexts needing > 8 splits of 128 keys, or no sm_90 cluster support: variant 2.
    if (base_blocks > num_sms() || max_seq_len > 8 * 128 || !cluster_ok()) return decode_split(num_tokens, num_heads,
                                                                                           num_kv_heads, head_dim,
                                                                                           max_seq_len, 2);
    const int dp = head_dim <= 32 ? 32 : head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
    const int u = G >= 5 ? 2 : 4;  // U of the GB = 8 instantiation
    const int step4 = 4 * (32 / (dp / 8)) * u;
    long splits = std::min<long>(8, (max_seq_len + 15) / 16);
    r.fast = true;
    if (splits >= 2) {
      r.chunk = (int)((max_seq_len + splits - 1) / splits);
      r.chunk = (r.chunk + 15) / 16 * 16;
      r.splits = (max_seq_len + r.chunk - 1) / r.chunk;
      if (r.splits < 2) r.splits = 1, r.chunk = max_seq_len;
    }
    r.cluster = r.splits > 1;
    const int gb = G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
    r.warps = r.chunk > step4 && gb * dp <= 1024 ? 8 : 4;
    return r;
  }
  // Variant 2: about 4 blocks per SM, at least 64 keys per split, within the workspace bound.
  const int min_chunk = 64;
  const long target = 4L * num_sms();
  long splits = (target + base_blocks - 1) / base_blocks;
  splits = std::min<long>(splits, (max_seq_len + min_chunk - 1) / min_chunk);
  splits = std::min<long>(splits, kSplitBudget / ((long)num_tokens * num_heads));
  if (splits < 2) return r;
  r.chunk = (int)((max_seq_len + splits - 1) / splits);
  r.chunk = (r.chunk + 15) / 16 * 16;
  r.splits = (max_seq_len + r.chunk - 1) / r.chunk;
  if (r.splits < 2) r.splits = 1, r.chunk = max_seq_len;
  return r;
}

int decode_variant_run(const AttnParams& p, int num_tokens, int max_seq_len, bool fp8_cache, bool allow_fast) {
  const int v = p.decode_variant;
  // decode_mma_kernel copies 16 E4M3 dims at a time (rows 16-byte aligned only when 16 divides head_dim).
  if (v == 2 || (fp8_cache && p.head_dim % 16 != 0)) return 2;
  if (v == 4) return 4;
  // decode_fast_kernel reads 16-bit caches only.
  if (allow_fast && !fp8_cache &&
      decode_split(num_tokens, p.num_heads, p.num_kv_heads, p.head_dim, max_seq_len, 3).fast)
    return 3;
  // Outside variant 3's range: the tensor-core kernel's work per K/V byte does not depend on the GQA ratio, the
  // CUDA-core kernel's grows with it (kernels.h, kDecodeMmaMinGqa).
  return p.num_kv_heads > 0 && p.num_heads / p.num_kv_heads >= p.mma_min_gqa ? 4 : 2;
}

cudaError_t attention_decode(const void* q_, int q_stride, const void* k_, int k_stride, const void* v_, int v_stride,
                             bool fast, void* out_, const PagedKV& kv, const StepLayout& step, const AttnParams& p,
                             DType dt, void* ws, cudaStream_t s) {
  const int D = p.head_dim, nH = p.num_heads, nKV = p.num_kv_heads;
  const DecodeSplit sp = decode_split(step.num_tokens, nH, nKV, D, step.max_seq_len, fast ? 3 : 2);
  if (fast && !sp.fast) return cudaErrorInvalidValue;  // paged_attention checks first
  float* ws_o = nullptr;
  float2* ws_ml = nullptr;
  if (sp.splits > 1 && !sp.cluster) {
    const size_t parts = (size_t)step.num_tokens * nH * sp.splits;
    ws_o = static_cast<float*>(ws);
    ws_ml = reinterpret_cast<float2*>(static_cast<char*>(ws) + ((parts * D * sizeof(float) + 255) & ~(size_t)255));
  }
  cudaError_t e = cudaSuccess;
  TSLLM_DISPATCH_HALF(dt, T, {
    DecodeArgs<T> a;
    set_decode_io(a, q_, q_stride, out_, ws_o, ws_ml, kv, step, p, sp.chunk);
    a.k = static_cast<const T*>(k_);
    a.v = static_cast<const T*>(v_);
    a.k_stride = k_stride;
    a.v_stride = v_stride;
    a.inv_freq = p.inv_freq;
    a.R = p.rotary_dim;
    a.gptj = p.rope_style == RopeStyle::Gptj ? 1 : 0;
    a.guess_seq = step.num_seqs >= step.num_tokens ? 1 : 0;  // pure decode: row t of the block table exists
    a.pdl = p.pdl && pdl_supported() ? 1 : 0;
    a.pf = p.l2_prefetch;
    a.pf_bytes = p.l2_prefetch && reinterpret_cast<uintptr_t>(p.l2_prefetch) % 16 == 0 ? p.l2_prefetch_bytes / 16 * 16 : 0;
    if (sp.fast) {
      if (kv.dtype == DType::FP8_E4M3) return cudaErrorInvalidValue;  // FP8 caches never run variant 3
      e = launch_fast_d<T>(a, step, nKV, D, sp, s);
      break;
    }
    const Fp8View f8{kv.dtype == DType::FP8_E4M3, make_kv_view<uint8_t>(kv, p.layer), p.k_scale, p.v_scale};
    if (f8.on && (!a.k || !a.v)) return cudaErrorInvalidValue;  // the token's own k (rotated) / v rows
    if (decode_variant_run(p, step.num_tokens, step.max_seq_len, f8.on, false) == 4)
      e = attention_decode_mma(q_, q_stride, out_, ws_o, ws_ml, kv, step, p, sp.splits, sp.chunk, k_, v_, v_stride,
                               dt, s);
    else
      e = launch_decode_d<T>(a, step, nKV, D, sp, f8, s);
    if (e == cudaSuccess && sp.splits > 1 && !sp.cluster) {
      dim3 grid(nH, step.num_tokens, sp.splits);
      const int threads = D >= 128 ? 128 : 64;
      decode_reduce_kernel<T><<<grid, threads, sp.splits * sizeof(float), s>>>(ws_o, ws_ml, a.out, step.positions, nH,
                                                                              D, sp.chunk);
      e = cudaGetLastError();
    }
  });
  return e;
}

}  // namespace kd
}  // namespace tsllm
