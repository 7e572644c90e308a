// Decode attention over the paged KV cache for large batches (variant 4): bandwidth first.
// Grid (kv head x group of <= 16 query heads, split, token), 4 warps. All query heads of one KV head are the 16
// rows of one mma.sync m16n8k16 tile (Llama-3: 4 of 16 used), so each K/V row is read from HBM once for its whole
// GQA group, and the dot products run on tensor cores instead of lane shuffles. Each warp streams its own tiles of
// 16 keys (tile j of the split goes to warp j % 4) through a private 2-stage cp.async ring (16-byte copies, no
// block barrier in the loop), keeps an online softmax in registers like the context kernel, and the 4 warps are
// merged through shared memory at the end. Split-K partials use decode_kernel's format and decode_reduce_kernel.
// At Llama-3.1-8B batch 256 (2048 blocks of 145 keys) three blocks stay resident per SM (75 KB of shared memory
// each at head_dim 128), so up to 24 tiles of 8 KB are in flight per SM. Runs after rope_cache (q rotated, k/v
// already in the cache); 16-bit caches only (FP8 caches keep decode_kernel).
#include <math.h>

#include "attention_internal.h"

namespace tsllm {
namespace kd {
namespace {

constexpr int kMmaWarps = 4;
constexpr int kMmaBK = 16;     // keys per warp tile
constexpr int kMmaStages = 2;  // tiles per warp ring

template <int DP>
struct MmaCfg {
  static constexpr int LD = DP + 8;  // padded row (elements): no ldmatrix bank conflicts
  static constexpr int TILE = kMmaBK * LD;
  static constexpr bool kQReg = DP <= 128;  // Q fragments kept in registers (DP 256: reloaded per tile)
  template <typename T>
  static constexpr size_t smem_bytes() {
    const size_t ring = (size_t)kMmaWarps * kMmaStages * 2 * TILE * sizeof(T);
    const size_t merge = sizeof(SoftmaxWarpPartials<kMmaWarps, 16, DP>);  // reuses the ring after the loop
    return (size_t)16 * LD * sizeof(T) + (ring > merge ? ring : merge);
  }
};

template <typename T>
using MmaArgs = DecodeIO<T>;  // q: the rotated q rows

template <typename T, int DP>
__global__ void __launch_bounds__(kMmaWarps * 32) decode_mma_kernel(const MmaArgs<T> a) {
  using C = MmaCfg<DP>;
  constexpr int LD = C::LD, TILE = C::TILE, S = kMmaStages;
  constexpr int CPR = DP / 8;        // 16-byte chunks per row (4..32: divides 32)
  constexpr int RPP = 32 / CPR;      // rows one warp-wide pass of copies covers
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* ring = sQ + 16 * LD;

  pdl_trigger();
  const KVView<T>& kv = a.kv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tig = lane & 3;
  const int hk = blockIdx.x / a.hgroups, hg = blockIdx.x % a.hgroups;
  const int split = blockIdx.y, nsplit = gridDim.y, t = blockIdx.z;
  const int D = kv.D, G = a.G, chunk = a.chunk;
  const int pos = a.positions[t];
  const int kb = split * chunk;
  if (kb > pos) return;  // no key in this split (the reduce kernel reads only the splits that have keys)
  const int ke = min(pos + 1, kb + chunk);
  const int seq = a.token_seq[t];
  const int rows = min(16, G - hg * 16);
  const int h0 = hk * G + hg * 16;

  // Q tile: rows past the group and dims past D zero-filled.
  for (int c = tid; c < 16 * CPR; c += kMmaWarps * 32) {
    const int r = c / CPR, cc = c % CPR;
    const bool ok = r < rows && cc * 8 < D;
    const T* src = ok ? a.q + (size_t)t * a.q_stride + (size_t)(h0 + r) * D + cc * 8 : a.q;
    cp_async16(sQ + r * LD + cc * 8, src, ok);
  }
  cp_async_commit();

  // This warp's tiles: j = warp, warp + 4, ... of the split's ceil((ke - kb) / 16).
  const int ntiles = (ke - kb + kMmaBK - 1) / kMmaBK;
  const int mine = warp < ntiles ? (ntiles - warp + kMmaWarps - 1) / kMmaWarps : 0;
  T* wring = ring + (size_t)warp * S * 2 * TILE;
  const int cc = lane % CPR, r0 = lane / CPR;
  const bool dim_ok = cc * 8 < D;
  auto load_tile = [&](int i, int stage) {
    const int key0 = kb + (warp + i * kMmaWarps) * kMmaBK;
    T* dk = wring + stage * 2 * TILE;
    T* dv = dk + TILE;
#pragma unroll
    for (int r = r0; r < kMmaBK; r += RPP) {
      const int key = key0 + r;
      const bool ok = key < ke && dim_ok;
      const T* src = ok ? kv.base + kv.row(seq, key, hk) + cc * 8 : kv.base;
      cp_async16(dk + r * LD + cc * 8, src, ok);
      cp_async16(dv + r * LD + cc * 8, ok ? src + kv.v_off : src, ok);
    }
  };
  if (mine > 0) load_tile(0, 0);
  cp_async_commit();
  cp_async_wait<1>();  // this thread's Q copies
  __syncthreads();     // everyone's

  uint32_t qa[C::kQReg ? DP / 16 : 1][4];
  if constexpr (C::kQReg) {
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) ldmatrix_x4(qa[kk], sQ + (lane & 15) * LD + kk * 16 + (lane >> 4) * 8);
  }

  float o[DP / 8][4];
#pragma unroll
  for (int i = 0; i < DP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};

  for (int i = 0; i < mine; ++i) {
    if (i + 1 < mine) load_tile(i + 1, (i + 1) % S);
    cp_async_commit();
    cp_async_wait<1>();  // tile i (this thread's copies)
    __syncwarp();        // the warp's copies of tile i visible to every lane
    const T* cK = wring + (i % S) * 2 * TILE;
    const T* cV = cK + TILE;

    // S = Q K^T: 16 rows (query heads) x 16 keys.
    float sc[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
      uint32_t qf[4];
      if constexpr (C::kQReg) {
        qf[0] = qa[kk][0], qf[1] = qa[kk][1], qf[2] = qa[kk][2], qf[3] = qa[kk][3];
      } else {
        ldmatrix_x4(qf, sQ + (lane & 15) * LD + kk * 16 + (lane >> 4) * 8);
      }
      uint32_t b[4];
      ldmatrix_x4(b, cK + ((lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
      mma16816<T>(sc[0], qf, b[0], b[1]);
      mma16816<T>(sc[1], qf, b[2], b[3]);
    }
    // Log2-domain scores, keys past the split's end masked, online softmax (rows g and g + 8 of this lane).
    const int key0 = kb + (warp + i * kMmaWarps) * kMmaBK;
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + n * 8 + tig * 2 + (e & 1);
        sc[n][e] = key < ke ? sc[n][e] * a.scale_log2 : -INFINITY;
      }
    online_softmax_tile(sc, mrow, lrow, o);
    // O += P V (P from registers, V via transposed ldmatrix).
    uint32_t pa[4];
    pa[0] = pack2<T>(sc[0][0], sc[0][1]);
    pa[1] = pack2<T>(sc[0][2], sc[0][3]);
    pa[2] = pack2<T>(sc[1][0], sc[1][1]);
    pa[3] = pack2<T>(sc[1][2], sc[1][3]);
#pragma unroll
    for (int d2 = 0; d2 < DP / 16; ++d2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, cV + (((lane >> 3) & 1) * 8 + (lane & 7)) * LD + (d2 * 2 + (lane >> 4)) * 8);
      mma16816<T>(o[2 * d2], pa, b[0], b[1]);
      mma16816<T>(o[2 * d2 + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // every lane done with this stage before the next iteration's copies overwrite it
  }

  // Merge the 4 warps: row sums over the quad, then (m, l, o) of every warp through shared memory.
  lrow[0] += __shfl_xor_sync(0xffffffffu, lrow[0], 1);
  lrow[0] += __shfl_xor_sync(0xffffffffu, lrow[0], 2);
  lrow[1] += __shfl_xor_sync(0xffffffffu, lrow[1], 1);
  lrow[1] += __shfl_xor_sync(0xffffffffu, lrow[1], 2);
  cp_async_wait<0>();
  __syncthreads();  // the ring is free
  auto& part = *reinterpret_cast<SoftmaxWarpPartials<kMmaWarps, 16, DP>*>(ring);  // rows = the 16 query heads
  if (tig == 0) {
    part.m[warp][g] = mrow[0];
    part.m[warp][g + 8] = mrow[1];
    part.l[warp][g] = lrow[0];
    part.l[warp][g + 8] = lrow[1];
  }
#pragma unroll
  for (int dn = 0; dn < DP / 8; ++dn) {
    const int d = dn * 8 + tig * 2;
    *reinterpret_cast<float2*>(&part.acc[warp][g][d]) = make_float2(o[dn][0], o[dn][1]);
    *reinterpret_cast<float2*>(&part.acc[warp][g + 8][d]) = make_float2(o[dn][2], o[dn][3]);
  }
  __syncthreads();
  for (int e = tid; e < rows * DP; e += kMmaWarps * 32) {
    const int r = e / DP, d = e % DP;
    if (d >= D) continue;
    float M, L;
    const float res = part.merge(r, d, &M, &L);
    a.store(t, h0 + r, d, split, nsplit, res, M, L);
  }
}

template <typename T, int DP>
cudaError_t launch_mma_t(MmaArgs<T> a, int num_tokens, int nKV, int splits, cudaStream_t s) {
  constexpr size_t smem = MmaCfg<DP>::template smem_bytes<T>();
  static unsigned long long configured = 0;  // per instantiation, one bit per device
  const cudaError_t e = smem_limit_once(decode_mma_kernel<T, DP>, smem, configured);
  if (e != cudaSuccess) return e;
  a.hgroups = (a.G + 15) / 16;
  dim3 grid(nKV * a.hgroups, splits, num_tokens);
  decode_mma_kernel<T, DP><<<grid, kMmaWarps * 32, smem, s>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention_decode_mma(const void* q, int q_stride, void* out, float* ws_o, float2* ws_ml,
                                 const PagedKV& kv, const StepLayout& step, const AttnParams& p, int splits, int chunk,
                                 DType dt, cudaStream_t s) {
  if (kv.dtype == DType::FP8_E4M3) return cudaErrorInvalidValue;
  TSLLM_DISPATCH_HALF(dt, T, {
    MmaArgs<T> a;
    set_decode_io(a, q, q_stride, out, ws_o, ws_ml, kv, step, p, chunk);
    return with_head_dim(p.head_dim, [&](auto dp) {
      return launch_mma_t<T, decltype(dp)::value>(a, step.num_tokens, p.num_kv_heads, splits, s);
    });
  });
  return cudaErrorInvalidValue;
}

}  // namespace kd
}  // namespace tsllm
