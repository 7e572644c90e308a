// Decode attention over the paged KV cache for large batches (variant 4): bandwidth first.
// Grid (kv head x group of <= 8 query heads, split, token), NW warps. The query heads of one KV head are the 8
// columns (the N) of mma.sync m16n8k16 tiles whose 16 rows are keys: S^T = K Q^T, then O^T += V^T P^T, P^T reaching
// the B operand through movmatrix.trans (Llama-3: 4 of 8 columns used; with heads as the 16 rows, the layout until
// session 10, 4 of 16 were, and the kernel ran twice the mma instructions, accumulators and softmax work). Each
// K/V row is read from HBM once for its GQA group (groups past 8 heads: once per 8), and the dot products run on
// tensor cores instead of lane shuffles. Each warp streams its own tiles of
// 16 keys (tile j of the split goes to warp j % NW) through a private S-stage cp.async ring (16-byte copies, no
// block barrier in the loop), keeps an online softmax in registers per head, and the NW warps are
// merged through shared memory at the end. Split-K partials use decode_kernel's format and decode_reduce_kernel.
// (NW, S, prefetch, fp8_tile) come from kDecodeMmaConfigs (attention_internal.h); entry 0, 2 warps, 2 stages and the
// block-table prefetch, is what the runtime runs (kernels-notes.md).
// FP8 (E4M3) cache: the ring holds the cache's bytes (half a 16-bit tile), and the products run in fp16 also for a
// bf16 model (its q tile converted once; see MT in the kernel; E4M3 values are exact in fp16). At head_dim 128 each
// lane reads its mma fragments straight from the ring (DIRECT, below); elsewhere (and in configurations with
// fp8_tile) each warp converts its landed K tile, and after the scores its V tile, into one warp-private fp16 tile
// for the same ldmatrix / mma code as a 16-bit cache. k_scale and
// v_scale stay in fp32, outside the tiles: k_scale is folded into the score scale, v_scale into the output. The
// step's own key and value (the last key of the last split) enter unrounded, as in decode_kernel's FP8 path: the
// converted tile's row holds rope_cache's rotated k (k_own) and the step's v row instead of the cache's E4M3 copy,
// that key's score takes no k_scale, and its probability is divided by v_scale before P·V (so the final v_scale
// leaves it as it is). Runs after rope_cache (q rotated, k/v already in the cache).
// DIRECT: the head dims are renumbered so that a lane's fragment values sit in whole 16-byte chunks of a cache row
// (a dot product does not depend on the order of its terms; the output's dims are put back at the merge). For
// S^T = K Q^T, lane (g, tig) takes 16-byte chunk 4 s + tig of K rows g and g + 8: its word j is k-step 4 s + j's
// dims (2 tig, 2 tig + 1 | 2 tig + 8, 2 tig + 9), and Q's B fragments are read from the same physical dims. For
// O^T += V^T P^T, logical dim 16 m + g + 8 h is physical dim 16 g + 2 m + h, so lane (g, tig) takes chunk g of V
// rows 2 tig, 2 tig + 1, 2 tig + 8, 2 tig + 9 and pairs rows byte by byte (prmt) into the A fragments. The ring's
// chunks are XOR-swizzled by row (fp8_swz) so that every 8 lanes of those 16-byte shared loads hit distinct banks.
// What it saves per tile and lane (session 12's ncu: 63.0 M instructions, 23.8 % occupancy at 1024 x 145): the
// conversion's loads and stores into the fp16 tile, 16 ldmatrix, two warp barriers, and 4.3 KB of shared memory a
// warp. The step's own key is left out of the tiles and added by warp 0 after them (same scaling as above).
// Measured (session 13 run 1, H200, 8B 1024 x 145): 128.68 µs a layer against 146.70 for the converting kernel.
#include <math.h>

#include <type_traits>

#include "attention_internal.h"
#include "fp8.cuh"

namespace tsllm {
namespace kd {
namespace {

constexpr int kMmaBK = 16;  // keys per warp tile (the mma's M)
constexpr int kQH = 8;      // query heads per block (the mma's N)

// Shared memory of one configuration: the Q tile, then per warp a ring of S stages of K and V tiles as the cache
// stores them (16-bit: rows padded to LD elements, read by ldmatrix; FP8: DP bytes a row, read only by the
// conversion, row after row) and, for an FP8 cache, one tile converted to fp16 (K, then V: one instead of two
// lets 8 blocks of 2 warps share an SM instead of 6). The warps' merge reuses all of it after the loop.
template <typename T, typename CT, int DP, int NW, int S, bool DIRECT>
struct MmaLayout {
  static constexpr bool kF8 = sizeof(CT) == 1;
  static constexpr int LD = DP + 8;  // padded T row (elements): no ldmatrix bank conflicts
  static constexpr int TILE = kMmaBK * LD;
  static constexpr int RING_ROW = kF8 ? DP : LD;  // CT elements per ring row
  static constexpr int RING_TILE = kMmaBK * RING_ROW;
  static constexpr size_t kRingBytes = (size_t)S * 2 * RING_TILE * sizeof(CT);  // per warp
  static constexpr size_t kCvtBytes = kF8 && !DIRECT ? (size_t)TILE * sizeof(T) : 0;  // per warp: K, then V
  static constexpr size_t kQBytes = (size_t)kQH * LD * sizeof(T);
  static constexpr size_t bytes() {
    const size_t loop = NW * (kRingBytes + kCvtBytes);
    const size_t merge = sizeof(SoftmaxWarpPartials<NW, kQH, DP>);
    return kQBytes + (loop > merge ? loop : merge);
  }
};

// DecodeIO's q: the rotated q rows; its kv only gives D (cache is the layer's cache as stored: T or E4M3 bytes).
template <typename T, typename CT>
struct MmaArgs : DecodeIO<T> {
  KVView<CT> cache;
  OwnKV<T> own;        // FP8 cache only
  float k_scale_log2;  // FP8: scale_log2 * k_scale, the cached keys' score scale
  float inv_v_scale;   // FP8: 1 / v_scale, the own key's probability factor
  int guess_seq;       // token t is sequence t (pure decode: num_seqs == num_tokens), checked on device
};

// 8 bf16 -> 8 fp16 (16 bytes each), for an FP8 cache's fp16 products over a bf16 model's q and own k / v. (Pairs
// through to_f2, not unpack8 / pack8: with unpack8's element pointer nvcc split the 16-byte global loads of q and
// the own k / v into 16-bit ones, in the PTX.)
__device__ __forceinline__ uint4 bf16x8_to_h(const uint4& u) {
  uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = to_f2<bf16>(w[j]);
    w[j] = pack2<half>(f.x, f.y);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// DIRECT's ring swizzle: 16-byte chunk c of tile row r (of 16; a row is 8 chunks at head_dim 128) sits at chunk
// c ^ fp8_swz(r). K's loads read rows g (lanes 4 g .. 4 g + 3) at chunks 4 s + tig: a quarter warp covers rows 2 q,
// 2 q + 1, made 4 chunks apart by the r & 1 term; V's read rows 2 tig (+ 1, + 8, + 9) at chunk g: a quarter warp
// covers 4 rows r with distinct (r >> 1) & 3 at 2 chunks, made 2 chunks apart by that term.
__device__ __forceinline__ int fp8_swz(int r) { return (((r >> 1) & 3) << 1) ^ ((r & 1) << 2); }

// 8 values of type T (16 bytes) as fp16 bit patterns (bf16: rounded to fp16, as the q tile).
template <typename T>
__device__ __forceinline__ uint4 to_h8(const T* src) {
  const uint4 u = *reinterpret_cast<const uint4*>(src);
  if constexpr (std::is_same<T, half>::value) {
    return u;
  } else {
    return bf16x8_to_h(u);
  }
}

// Online softmax over one transposed score tile (log2 domain, masked entries -inf): st holds keys g (entries 0, 1)
// and g + 8 (2, 3) of heads 2 tig (0, 2) and 2 tig + 1 (1, 3). Updates the heads' running max mh and this lane's
// part of their sums lh, turns st into 2^(s - max), and rescales the accumulators (same head split) when a max
// moved: after the first tiles of a split it rarely does, and heads past the GQA group (zero q) never do; skipping
// a multiply by exactly 1 changes nothing.
template <int M>
__device__ __forceinline__ void online_softmax_cols(float (&st)[4], float (&mh)[2], float (&lh)[2], float (&o)[M][4]) {
  float mx0 = fmaxf(st[0], st[2]), mx1 = fmaxf(st[1], st[3]);
#pragma unroll
  for (int x = 4; x < 32; x <<= 1) {
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
  }
  const float mn0 = fmaxf(mh[0], mx0), mn1 = fmaxf(mh[1], mx1);
  const float mu0 = mn0 == -INFINITY ? 0.f : mn0, mu1 = mn1 == -INFINITY ? 0.f : mn1;
  const float c0 = exp2f(mh[0] - mu0), c1 = exp2f(mh[1] - mu1);
  mh[0] = mn0, mh[1] = mn1;
  st[0] = exp2f(st[0] - mu0), st[2] = exp2f(st[2] - mu0);
  st[1] = exp2f(st[1] - mu1), st[3] = exp2f(st[3] - mu1);
  lh[0] = lh[0] * c0 + (st[0] + st[2]);
  lh[1] = lh[1] * c1 + (st[1] + st[3]);
  if (__any_sync(0xffffffffu, c0 != 1.f || c1 != 1.f)) {
#pragma unroll
    for (int m = 0; m < M; ++m) o[m][0] *= c0, o[m][1] *= c1, o[m][2] *= c0, o[m][3] *= c1;
  }
}

template <typename T, typename CT, int DP, int NW, int S, bool PF, bool DIRECT>
__global__ void __launch_bounds__(NW * 32) decode_mma_kernel(const MmaArgs<T, CT> a) {
  using L = MmaLayout<T, CT, DP, NW, S, DIRECT>;
  constexpr bool kF8 = L::kF8;
  static_assert(!DIRECT || (kF8 && DP == 128), "direct fragments: FP8 cache at head_dim 128");
  constexpr bool kCvt = kF8 && !DIRECT;  // the fp16 conversion tile
  // The products' dtype. An FP8 cache's tiles are converted to fp16 whatever the model's dtype: E4M3 -> fp16 is one
  // cvt per pair, -> bf16 four (through fp32); the FP8 kernel ran 86.0 M instructions to the bf16 cache's 52.6 M
  // (ncu, session 10, 8B batch 1024). A bf16 model's q and own k / v are rounded to fp16 (11 bits instead of 8:
  // exact for bf16 values in [2^-14, 65504]; |q| past 65504 would overflow) and P rounds to fp16, finer than bf16 in
  // [0, 1].
  using MT = std::conditional_t<kF8, half, T>;
  constexpr bool kQCvt = !std::is_same<MT, T>::value;
  constexpr int LD = L::LD, TILE = L::TILE, RROW = L::RING_ROW, RTILE = L::RING_TILE;
  constexpr int CPR = DP / 8;            // 8-dim chunks per row (4..32: divides 32)
  constexpr int EPC = 16 / sizeof(CT);   // cache elements per 16-byte copy
  constexpr int RCPR = DP / EPC;         // copies per cache row (2..32: divides 32)
  constexpr int RPP = 32 / RCPR;         // rows one warp-wide pass of copies covers
  extern __shared__ __align__(16) unsigned char smem_raw[];
  MT* sQ = reinterpret_cast<MT*>(smem_raw);
  unsigned char* loop_smem = smem_raw + L::kQBytes;

  pdl_trigger();
  const KVView<CT>& kv = a.cache;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tig = lane & 3;
  const int hk = blockIdx.x / a.hgroups, hg = blockIdx.x % a.hgroups;
  const int split = blockIdx.y, nsplit = gridDim.y, t = blockIdx.z;
  const int D = kv.D, G = a.G, chunk = a.chunk;
  const int kb = split * chunk;

  // Prefetch: with tiles inside one cache block (16 | tokens per block) each tile needs one block-table entry.
  // Lane l holds entry wb + l of the sequence's row (a window of 32 blocks, moved on when a tile leaves it). In a
  // pure-decode step the first window is read from row t together with positions / token_seq (one round trip
  // fewer before the first K/V copy), and read again from the right row if token_seq says otherwise.
  const bool pf = PF && (kv.tpb & (kMmaBK - 1)) == 0;
  int wb = 0, win = 0, nblk = 0;
  if (pf) {
    int off;
    kv.split_pos(kb, wb, off);
    if (a.guess_seq && wb + lane < kv.max_blocks) win = __ldg(kv.block_tables + (size_t)t * kv.max_blocks + wb + lane);
  }
  const int pos = a.positions[t];
  if (kb > pos) return;  // no key in this split (the reduce kernel reads only the splits that have keys)
  const int ke = min(pos + 1, kb + chunk);
  // DIRECT: the step's own key (the last of the last split) is left out of the tiles and added after them (own_key).
  const int kend = DIRECT && pos < ke ? pos : ke;
  const int seq = a.token_seq[t];
  const int32_t* bt_row = kv.block_tables + (size_t)seq * kv.max_blocks;
  auto load_window = [&](int b) {
    wb = b;
    win = b + lane < nblk ? __ldg(bt_row + b + lane) : 0;
  };
  if (pf) {
    int b1, off;
    kv.split_pos(ke - 1, b1, off);
    nblk = b1 + 1;
    if (!a.guess_seq || seq != t) load_window(wb);
  }
  const int rows = min(kQH, G - hg * kQH);
  const int h0 = hk * G + hg * kQH;

  // Q tile: rows past the group and dims past D zero-filled (converted to fp16: plain loads, visible after the
  // __syncthreads below; the empty commit group keeps wait_group's count).
  for (int c = tid; c < kQH * CPR; c += NW * 32) {
    const int r = c / CPR, cc = c % CPR;
    const bool ok = r < rows && cc * 8 < D;
    const T* src = ok ? a.q + (size_t)t * a.q_stride + (size_t)(h0 + r) * D + cc * 8 : a.q;
    if constexpr (kQCvt) {
      uint4 h = make_uint4(0, 0, 0, 0);
      if (ok) h = bf16x8_to_h(*reinterpret_cast<const uint4*>(src));
      *reinterpret_cast<uint4*>(sQ + r * LD + cc * 8) = h;
    } else {
      cp_async16(sQ + r * LD + cc * 8, src, ok);
    }
  }
  cp_async_commit();

  // This warp's tiles: j = warp, warp + NW, ... of the split's ceil((ke - kb) / 16).
  const int ntiles = (kend - kb + kMmaBK - 1) / kMmaBK;
  const int mine = warp < ntiles ? (ntiles - warp + NW - 1) / NW : 0;
  CT* wring = reinterpret_cast<CT*>(loop_smem + (size_t)warp * (L::kRingBytes + L::kCvtBytes));
  MT* wcvt = reinterpret_cast<MT*>(loop_smem + (size_t)warp * (L::kRingBytes + L::kCvtBytes) + L::kRingBytes);
  const int rc = lane % RCPR, r0 = lane / RCPR;
  const bool copy_ok = rc * EPC < D;  // FP8: D % 16 == 0, so a copy is all inside the row or all past it

  auto load_tile = [&](int i, int stage) {
    const int key0 = kb + (warp + i * NW) * kMmaBK;
    CT* dk = wring + stage * 2 * RTILE;
    CT* dv = dk + RTILE;
    if (pf) {
      int bi, off0;
      kv.split_pos(key0, bi, off0);
      if (bi - wb >= 32) load_window(bi);  // warp-uniform
      // Rows a pass apart are RPP * D elements apart in the block. (Pointer steps: with `base + r * D` per row
      // ptxas kept the row offsets in registers, 205 instead of 158 at (4, 2), head_dim 128, sm_90.)
      const CT* src = kv.base + kv.row_at(__shfl_sync(0xffffffffu, win, bi - wb), off0 + r0, hk) + rc * EPC;
      const int step = RPP * D;
#pragma unroll
      for (int r = r0; r < kMmaBK; r += RPP, src += step) {
        const bool ok = key0 + r < ke && copy_ok;
        const int at = r * RROW + (DIRECT ? rc ^ fp8_swz(r) : rc) * EPC;
        cp_async16(dk + at, ok ? src : kv.base, ok);
        cp_async16(dv + at, ok ? src + kv.v_off : kv.base, ok);
      }
    } else {
#pragma unroll
      for (int r = r0; r < kMmaBK; r += RPP) {
        const int key = key0 + r;
        const bool ok = key < ke && copy_ok;
        const CT* src = ok ? kv.base + kv.row(seq, key, hk) + rc * EPC : kv.base;
        const int at = r * RROW + (DIRECT ? rc ^ fp8_swz(r) : rc) * EPC;
        cp_async16(dk + at, src, ok);
        cp_async16(dv + at, ok ? src + kv.v_off : src, ok);
      }
    }
  };
  // The ring's first tiles: S - 1 before the Q tile is waited for, the last one after (prefetch: all S before).
  // One commit group per tile, empty ones included, so that wait_group counts tiles.
  constexpr int kEarly = PF ? S : S - 1;
#pragma unroll
  for (int i = 0; i < kEarly; ++i) {
    if (i < mine) load_tile(i, i);
    cp_async_commit();
  }

  // FP8: this lane's 8 dims (the conversion's column lane % CPR) of the step's own key and value, unrounded.
  uint4 own_k = make_uint4(0, 0, 0, 0), own_v = make_uint4(0, 0, 0, 0);
  if constexpr (kCvt) {
    const int cc = lane % CPR;
    if (pos < ke && cc * 8 < D) {  // this split holds the token's own key (its last)
      const int nKV = a.nH / G;
      own_k = *reinterpret_cast<const uint4*>(a.own.k + ((size_t)t * nKV + hk) * D + cc * 8);
      own_v = *reinterpret_cast<const uint4*>(a.own.v + (size_t)t * a.own.v_stride + (size_t)hk * D + cc * 8);
      if constexpr (kQCvt) own_k = bf16x8_to_h(own_k), own_v = bf16x8_to_h(own_v);
    }
  }

  cp_async_wait<kEarly>();  // this thread's Q copies
  __syncthreads();          // everyone's
  // Q^T as the B operand of S^T = K Q^T: k-step kk's pair is (dims 16 kk + 2 tig, +1; head g) and the same 8 dims
  // on; one ldmatrix of the Q tile (rows = heads) gives two k-steps.
  uint32_t qb[DP / 16][2];
  if constexpr (DIRECT) {  // k-step 4 s + j: physical dims 64 s + 16 tig + 4 j + (0, 1 | 2, 3) of head g
#pragma unroll
    for (int s = 0; s < DP / 64; ++s) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 u = *reinterpret_cast<const uint4*>(sQ + g * LD + 64 * s + 16 * tig + 8 * h);
        qb[4 * s + 2 * h][0] = u.x, qb[4 * s + 2 * h][1] = u.y;
        qb[4 * s + 2 * h + 1][0] = u.z, qb[4 * s + 2 * h + 1][1] = u.w;
      }
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < DP / 16; kk += 2) {
      uint32_t r[4];
      ldmatrix_x4(r, sQ + (lane & 7) * LD + kk * 16 + (lane >> 3) * 8);
      qb[kk][0] = r[0], qb[kk][1] = r[1], qb[kk + 1][0] = r[2], qb[kk + 1][1] = r[3];
    }
  }

  // O^T: m-tile m holds dims 16 m + g (entries 0, 1) and 16 m + g + 8 (2, 3) of heads 2 tig (0, 2), 2 tig + 1 (1, 3).
  float o[DP / 16][4];
#pragma unroll
  for (int i = 0; i < DP / 16; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mh[2] = {-INFINITY, -INFINITY}, lh[2] = {0.f, 0.f};  // heads 2 tig, 2 tig + 1 (lh: this lane's keys)

  // Tile n is issued into stage n % S once the warp is done reading tile n - S there: 16-bit, at the top of
  // iteration n - S + 1 (after the products of tile n - S); FP8, right after the conversion of tile n - S's V. The
  // first tiles not issued before the Q tile (16-bit: tiles kEarly..S - 1 by the first rule; FP8: tile S - 1) at
  // the top of iteration 0.
  auto issue = [&](int n) {
    if (n < mine) load_tile(n, n % S);
    cp_async_commit();
  };
  for (int i = 0; i < mine; ++i) {
    const int top = kCvt ? (i == 0 ? S - 1 : -1) : i + S - 1;
    if (top >= kEarly) issue(top);
    cp_async_wait<S - 1>();  // tile i (this thread's copies)
    __syncwarp();            // the warp's copies of tile i visible to every lane
    const int key0 = kb + (warp + i * NW) * kMmaBK;
    const CT* cur = wring + (i % S) * 2 * RTILE;
    // FP8: the ring's E4M3 tile (ring row r = cache row; part 0 = K, 1 = V) into the warp's one fp16 tile, the
    // step's own key / value (unrounded) in its row.
    auto convert = [&](int part, const uint4& own_row) {
      const int cc = lane % CPR;
#pragma unroll
      for (int r = lane / CPR; r < kMmaBK; r += 32 / CPR) {
        const uint2 b8 = *reinterpret_cast<const uint2*>(cur + part * RTILE + r * RROW + cc * 8);
        *reinterpret_cast<uint4*>(wcvt + r * LD + cc * 8) = key0 + r == pos ? own_row : e4m3x8_to_h(b8);
      }
      __syncwarp();  // the converted tile visible to every lane
    };
    const MT* cK = nullptr;
    if constexpr (kCvt) {
      convert(0, own_k);
      cK = wcvt;
    } else if constexpr (!kF8) {
      cK = reinterpret_cast<const MT*>(cur);
    }

    // S^T = K Q^T: keys key0 + g (entries 0, 1) and key0 + g + 8 (2, 3) x heads 2 tig, 2 tig + 1.
    float st[4] = {0.f, 0.f, 0.f, 0.f};
    if constexpr (DIRECT) {
#pragma unroll
      for (int s = 0; s < DP / 64; ++s) {
        uint4 kr[2];  // rows g, g + 8 (fp8_swz(g + 8) == fp8_swz(g)), chunk 4 s + tig
#pragma unroll
        for (int h = 0; h < 2; ++h)
          kr[h] = *reinterpret_cast<const uint4*>(cur + (g + 8 * h) * RROW + ((4 * s + tig) ^ fp8_swz(g)) * 16);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint32_t ka[4];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t w = (&kr[h].x)[j];
            ka[h] = e4m3x2_to_h2(w), ka[h + 2] = e4m3x2_to_h2(w >> 16);
          }
          mma16816<MT>(st, ka, qb[4 * s + j][0], qb[4 * s + j][1]);
        }
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < DP / 16; ++kk) {
        uint32_t ka[4];
        ldmatrix_x4(ka, cK + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8);
        mma16816<MT>(st, ka, qb[kk][0], qb[kk][1]);
      }
    }
    // Log2-domain scores (FP8: cached keys times k_scale), keys past the split's end masked, online softmax per
    // head over the keys (this lane's two rows, then the 8 lanes of its columns).
    const int kA = key0 + g, kB = kA + 8;
    float ksA = a.scale_log2, ksB = a.scale_log2;
    if constexpr (DIRECT) ksA = ksB = a.k_scale_log2;
    if constexpr (kCvt) {
      ksA = kA == pos ? a.scale_log2 : a.k_scale_log2;
      ksB = kB == pos ? a.scale_log2 : a.k_scale_log2;
    }
    st[0] = kA < kend ? st[0] * ksA : -INFINITY;
    st[1] = kA < kend ? st[1] * ksA : -INFINITY;
    st[2] = kB < kend ? st[2] * ksB : -INFINITY;
    st[3] = kB < kend ? st[3] * ksB : -INFINITY;
    online_softmax_cols(st, mh, lh, o);
    if constexpr (kCvt) {  // the own value is unscaled: its weight / v_scale, undone by the final v_scale
      if (kA == pos) st[0] *= a.inv_v_scale, st[1] *= a.inv_v_scale;
      if (kB == pos) st[2] *= a.inv_v_scale, st[3] *= a.inv_v_scale;
    }
    // O^T += V^T P^T: P^T's B fragments are the transposes of the two 8 x 8 halves of the score tile (keys 0-7,
    // 8-15); V^T's A fragments come from the V tile by transposed ldmatrix.
    const uint32_t pb0 = movmatrix_trans(pack2<MT>(st[0], st[1]));
    const uint32_t pb1 = movmatrix_trans(pack2<MT>(st[2], st[3]));
    if constexpr (DIRECT) {
      // Rows 2 tig, 2 tig + 1, 2 tig + 8, 2 tig + 9 at chunk g: physical dims 16 g .. 16 g + 15.
      const CT* cv = cur + RTILE;
      uint4 vr[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int r = 2 * tig + (q & 1) + 8 * (q >> 1);
        vr[q] = *reinterpret_cast<const uint4*>(cv + r * RROW + (g ^ fp8_swz(r)) * 16);
      }
#pragma unroll
      for (int m = 0; m < DP / 16; ++m) {
        // Bytes 2 m, 2 m + 1 of rows (2 tig, 2 tig + 1) and (2 tig + 8, 2 tig + 9), interleaved row by row.
        const uint32_t sel = (m & 1) ? 0x7362u : 0x5140u;
        uint32_t va[4];
#pragma unroll
        for (int p = 0; p < 2; ++p) {
          const uint32_t x = __byte_perm((&vr[2 * p].x)[m >> 1], (&vr[2 * p + 1].x)[m >> 1], sel);
          va[2 * p] = e4m3x2_to_h2(x), va[2 * p + 1] = e4m3x2_to_h2(x >> 16);
        }
        mma16816<MT>(o[m], va, pb0, pb1);
      }
    } else {
      const MT* cV;
      if constexpr (kCvt) {
        __syncwarp();  // every lane done reading K from the converted tile, which V now takes
        convert(1, own_v);
        issue(i + S);  // the ring stage is free
        cV = wcvt;
      } else {
        cV = cK + TILE;
      }
#pragma unroll
      for (int m = 0; m < DP / 16; ++m) {
        uint32_t va[4];
        ldmatrix_x4_trans(va, cV + ((lane & 7) + (lane >> 4) * 8) * LD + m * 16 + ((lane >> 3) & 1) * 8);
        mma16816<MT>(o[m], va, pb0, pb1);
      }
    }
    __syncwarp();  // every lane done with this tile before its stage (16-bit, DIRECT) / the converted tile is reused
  }

  // DIRECT: warp 0 adds the step's own key and value, unrounded, to its state as one more key (own_key). Its score
  // takes no k_scale; its probability, rounded to fp16 as P is, is divided by v_scale (the final v_scale undoes it).
  if constexpr (DIRECT) {
    if (warp == 0 && pos < ke) {
      const T* own_k = a.own.k + ((size_t)t * (a.nH / G) + hk) * D;
      const T* own_v = a.own.v + (size_t)t * a.own.v_stride + (size_t)hk * D;
      // This lane's dims 16 g .. 16 g + 15 of q . k for heads 2 tig, 2 tig + 1, summed over the 8 lanes g.
      float sc[2] = {0.f, 0.f};
      uint4 vh[2] = {};
      if (16 * g < D) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const uint4 kh = to_h8(own_k + 16 * g + 8 * c);
          vh[c] = to_h8(own_v + 16 * g + 8 * c);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint4 qh = *reinterpret_cast<const uint4*>(sQ + (2 * tig + h) * LD + 16 * g + 8 * c);
#pragma unroll
            for (int w = 0; w < 4; ++w) {
              const float2 qf = to_f2<half>((&qh.x)[w]), kf = to_f2<half>((&kh.x)[w]);
              sc[h] = fmaf(qf.x, kf.x, fmaf(qf.y, kf.y, sc[h]));
            }
          }
        }
      }
#pragma unroll
      for (int x = 4; x < 32; x <<= 1) {
        sc[0] += __shfl_xor_sync(0xffffffffu, sc[0], x);
        sc[1] += __shfl_xor_sync(0xffffffffu, sc[1], x);
      }
      float pv[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float s2 = sc[h] * a.scale_log2;
        const float mn = fmaxf(mh[h], s2);
        const float c = exp2f(mh[h] - mn), p = exp2f(s2 - mn);  // mh = -inf (no tile): c = 0
        mh[h] = mn;
        lh[h] = lh[h] * c + (g == 0 ? p : 0.f);  // lh: this lane's share of the column sum
#pragma unroll
        for (int m = 0; m < DP / 16; ++m) o[m][h] *= c, o[m][h + 2] *= c;
        pv[h] = __half2float(__float2half_rn(p * a.inv_v_scale));
      }
#pragma unroll
      for (int m = 0; m < DP / 16; ++m) {  // physical dims 16 g + 2 m (entries 0, 1), + 1 (2, 3)
        const float2 v = to_f2<half>((&vh[m >> 2].x)[m & 3]);
        o[m][0] = fmaf(pv[0], v.x, o[m][0]), o[m][1] = fmaf(pv[1], v.x, o[m][1]);
        o[m][2] = fmaf(pv[0], v.y, o[m][2]), o[m][3] = fmaf(pv[1], v.y, o[m][3]);
      }
    }
  }

  // Merge the NW warps: column sums over the 8 lanes of a column, then (m, l, o) of every warp through shared memory.
#pragma unroll
  for (int x = 4; x < 32; x <<= 1) {
    lh[0] += __shfl_xor_sync(0xffffffffu, lh[0], x);
    lh[1] += __shfl_xor_sync(0xffffffffu, lh[1], x);
  }
  cp_async_wait<0>();
  __syncthreads();  // the rings are free
  auto& part = *reinterpret_cast<SoftmaxWarpPartials<NW, kQH, DP>*>(loop_smem);  // rows = the 8 query heads
  if (g == 0) {
    part.m[warp][2 * tig] = mh[0];
    part.m[warp][2 * tig + 1] = mh[1];
    part.l[warp][2 * tig] = lh[0];
    part.l[warp][2 * tig + 1] = lh[1];
  }
#pragma unroll
  for (int m = 0; m < DP / 16; ++m) {  // logical dims 16 m + g (+ 8); DIRECT: physical 16 g + 2 m (+ 1)
    const int d = DIRECT ? 16 * g + 2 * m : m * 16 + g, d8 = DIRECT ? d + 1 : d + 8;
    part.acc[warp][2 * tig][d] = o[m][0];
    part.acc[warp][2 * tig + 1][d] = o[m][1];
    part.acc[warp][2 * tig][d8] = o[m][2];
    part.acc[warp][2 * tig + 1][d8] = o[m][3];
  }
  __syncthreads();
  const float out_scale = kF8 ? a.own.v_scale : 1.f;
  for (int e = tid; e < rows * DP; e += NW * 32) {
    const int r = e / DP, d = e % DP;
    if (d >= D) continue;
    float M, L;
    const float res = part.merge(r, d, &M, &L);
    a.store(t, h0 + r, d, split, nsplit, res * out_scale, M, L);
  }
}

template <typename T, typename CT, int DP, int CFG>
cudaError_t launch_mma_t(MmaArgs<T, CT> a, int num_tokens, int nKV, int splits, cudaStream_t s) {
  constexpr DecodeMmaConfig c = kDecodeMmaConfigs[CFG];
  constexpr bool direct = sizeof(CT) == 1 && DP == 128 && !c.fp8_tile;
  constexpr size_t smem = MmaLayout<T, CT, DP, c.warps, c.stages, direct>::bytes();
  auto kernel = decode_mma_kernel<T, CT, DP, c.warps, c.stages, c.prefetch, direct>;
  static std::atomic<unsigned long long> configured{0};  // per instantiation, one bit per device
  const cudaError_t e = smem_limit_once(kernel, smem, configured);
  if (e != cudaSuccess) return e;
  a.hgroups = (a.G + kQH - 1) / kQH;
  dim3 grid(nKV * a.hgroups, splits, num_tokens);
  kernel<<<grid, c.warps * 32, smem, s>>>(a);
  return cudaGetLastError();
}

// f(I) for configuration I == cfg of kDecodeMmaConfigs, as a std::integral_constant.
template <int I = 0, typename F>
cudaError_t with_mma_config(int cfg, F&& f) {
  if (cfg == I) return f(std::integral_constant<int, I>{});
  if constexpr (I + 1 < kDecodeMmaConfigCount) {
    return with_mma_config<I + 1>(cfg, f);
  } else {
    return cudaErrorInvalidValue;
  }
}

template <typename T, typename CT>
cudaError_t launch_mma(const void* q, int q_stride, void* out, float* ws_o, float2* ws_ml, const PagedKV& kv,
                       const StepLayout& step, const AttnParams& p, int splits, int chunk, const void* k_own,
                       const void* v_own, int v_stride, cudaStream_t s) {
  MmaArgs<T, CT> a;
  set_decode_io(a, q, q_stride, out, ws_o, ws_ml, kv, step, p, chunk);
  a.cache = make_kv_view<CT>(kv, p.layer);
  a.own = OwnKV<T>{static_cast<const T*>(k_own), static_cast<const T*>(v_own), v_stride, p.k_scale, p.v_scale};
  a.k_scale_log2 = a.scale_log2 * p.k_scale;
  a.inv_v_scale = 1.f / p.v_scale;
  a.guess_seq = step.num_seqs >= step.num_tokens ? 1 : 0;  // pure decode: row t of the block table exists
  return with_head_dim(p.head_dim, [&](auto dp) {
    constexpr int DP = decltype(dp)::value;
    if constexpr (DP == kDecodeMmaSweepDp) {
      return with_mma_config(p.mma_cfg, [&](auto cfg) {
        return launch_mma_t<T, CT, DP, decltype(cfg)::value>(a, step.num_tokens, p.num_kv_heads, splits, s);
      });
    } else {
      return launch_mma_t<T, CT, DP, 0>(a, step.num_tokens, p.num_kv_heads, splits, s);
    }
  });
}

}  // namespace

cudaError_t attention_decode_mma(const void* q, int q_stride, void* out, float* ws_o, float2* ws_ml,
                                 const PagedKV& kv, const StepLayout& step, const AttnParams& p, int splits, int chunk,
                                 const void* k_own, const void* v_own, int v_stride, DType dt, cudaStream_t s) {
  if (p.mma_cfg < 0 || p.mma_cfg >= kDecodeMmaConfigCount) return cudaErrorInvalidValue;
  const bool f8 = kv.dtype == DType::FP8_E4M3;
  if (f8 && (p.head_dim % 16 != 0 || !k_own || !v_own)) return cudaErrorInvalidValue;
  TSLLM_DISPATCH_HALF(dt, T, {
    if (f8)
      return launch_mma<T, uint8_t>(q, q_stride, out, ws_o, ws_ml, kv, step, p, splits, chunk, k_own, v_own, v_stride,
                                    s);
    return launch_mma<T, T>(q, q_stride, out, ws_o, ws_ml, kv, step, p, splits, chunk, k_own, v_own, v_stride, s);
  });
  return cudaErrorInvalidValue;
}

}  // namespace kd
}  // namespace tsllm
