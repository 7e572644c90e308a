// moe grouped GEMM (the large-batch path): rows sorted by expert (moe_permute), one launch over every expert.
// Each block first scans the device counts into per-expert row offsets and tile offsets (warp 0, in shared
// memory), finds the expert its m-tile belongs to, and exits when the tile is past the last expert's rows: the
// grid is sized for the worst case (ceil(rows / BM) + E m-tiles), so nothing is read back to the host.
// Tiles: BM × BN = 64 × 64, BK = 32, 4 warps (2 × 2, 32 × 32 each), mma.sync m16n8k16 (fp32 accumulation),
// a 3-stage cp.async pipeline; padded shared rows (BK + 8) keep ldmatrix free of bank conflicts.
// gate_up computes the w1 and w3 tiles of the same columns together and writes h = dtype(act(g) ⊙ u); down
// writes fp32 rows for the combine.
#include "attention_common.cuh"
#include "common.cuh"
#include "moe_internal.h"

namespace tsllm {
namespace {

constexpr int BM = 64, BN = 64, BK = 32, LDS = BK + 8, STAGES = 3, THREADS = 128;

template <typename T, bool GATED>
__global__ void __launch_bounds__(THREADS) moe_grouped_kernel(const T* __restrict__ A, const T* __restrict__ B1,
                                                              const T* __restrict__ B3,
                                                              const int32_t* __restrict__ counts, void* out, int E,
                                                              int N, int Kd, Act act) {
  constexpr int NB = GATED ? 2 : 1;
  __shared__ __align__(16) T As[STAGES][BM][LDS];
  __shared__ __align__(16) T Bs[STAGES][NB][BN][LDS];
  __shared__ int s_off[kMoeMaxExperts + 1], s_tile[kMoeMaxExperts + 1];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Offsets of rows and m-tiles per expert: lane j of warp 0 scans experts 8j .. 8j+7.
  if (warp == 0) {
    constexpr int P = kMoeMaxExperts / 32;
    int c[P], rows = 0, tiles = 0;
#pragma unroll
    for (int i = 0; i < P; i++) {
      const int e = lane * P + i;
      c[i] = e < E ? counts[e] : 0;
      rows += c[i];
      tiles += (c[i] + BM - 1) / BM;
    }
    int r_inc = rows, t_inc = tiles;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int rv = __shfl_up_sync(0xffffffffu, r_inc, o), tv = __shfl_up_sync(0xffffffffu, t_inc, o);
      if (lane >= o) r_inc += rv, t_inc += tv;
    }
    int r = r_inc - rows, t = t_inc - tiles;
#pragma unroll
    for (int i = 0; i < P; i++) {
      const int e = lane * P + i;
      if (e <= E) s_off[e] = r, s_tile[e] = t;
      r += c[i];
      t += (c[i] + BM - 1) / BM;
    }
    if (lane == 31) s_off[E] = r, s_tile[E] = t;  // totals (E = 256 is past every lane's entries)
  }
  __syncthreads();
  const int mt = blockIdx.y;
  if (mt >= s_tile[E]) return;
  int lo = 0, hi = E;  // the last e with s_tile[e] <= mt (its tiles hold mt)
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (s_tile[mid] <= mt) lo = mid;
    else hi = mid;
  }
  const int e = lo;
  const int m0 = (mt - s_tile[e]) * BM;
  const int valid_m = min(BM, s_off[e + 1] - s_off[e] - m0);
  const size_t row0 = size_t(s_off[e]) + m0;
  const int n0 = blockIdx.x * BN;
  const int valid_n = min(BN, N - n0);
  const T* Ab = A + row0 * Kd;
  const T* Bb[NB];
  Bb[0] = B1 + (size_t(e) * N + n0) * Kd;
  if (GATED) Bb[NB - 1] = B3 + (size_t(e) * N + n0) * Kd;

  const int ktiles = (Kd + BK - 1) / BK;
  auto load = [&](int st, int kt) {
    const int k0 = kt * BK;
#pragma unroll
    for (int j = 0; j < (BM * BK / 8) / THREADS; j++) {
      const int idx = tid + j * THREADS, r = idx / (BK / 8), ch = idx % (BK / 8);
      const int k = k0 + ch * 8;
      const bool ok = r < valid_m && k < Kd;
      kd::cp_async16(&As[st][r][ch * 8], ok ? Ab + size_t(r) * Kd + k : Ab, ok);
    }
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
      for (int j = 0; j < (BN * BK / 8) / THREADS; j++) {
        const int idx = tid + j * THREADS, r = idx / (BK / 8), ch = idx % (BK / 8);
        const int k = k0 + ch * 8;
        const bool ok = r < valid_n && k < Kd;
        kd::cp_async16(&Bs[st][b][r][ch * 8], ok ? Bb[b] + size_t(r) * Kd + k : Bb[b], ok);
      }
  };

  float acc[NB][2][4][4];
#pragma unroll
  for (int b = 0; b < NB; b++)
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
      for (int j = 0; j < 4; j++)
#pragma unroll
        for (int q = 0; q < 4; q++) acc[b][i][j][q] = 0.f;

#pragma unroll
  for (int st = 0; st < STAGES - 1; st++) {
    if (st < ktiles) load(st, st);
    kd::cp_async_commit();
  }
  const int wm = warp >> 1, wn = warp & 1;
  for (int kt = 0; kt < ktiles; kt++) {
    kd::cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int nk = kt + STAGES - 1;
    if (nk < ktiles) load(nk % STAGES, nk);
    kd::cp_async_commit();
    const int st = kt % STAGES;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t a[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; mi++)
        kd::ldmatrix_x4(a[mi], &As[st][wm * 32 + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
      for (int b = 0; b < NB; b++)
#pragma unroll
        for (int q = 0; q < 2; q++) {
          uint32_t bf[4];
          kd::ldmatrix_x4(bf, &Bs[st][b][wn * 32 + q * 16 + (lane & 7) + ((lane >> 4) << 3)][kk + ((lane >> 3) & 1) * 8]);
#pragma unroll
          for (int mi = 0; mi < 2; mi++) {
            kd::mma16816<T>(acc[b][mi][2 * q], a[mi], bf[0], bf[1]);
            kd::mma16816<T>(acc[b][mi][2 * q + 1], a[mi], bf[2], bf[3]);
          }
        }
    }
  }
  kd::cp_async_wait<0>();

  // Epilogue: accumulator (mi, nj) holds rows g, g+8 and columns 2t, 2t+1 of its 16 × 8 tile.
#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int nj = 0; nj < 4; nj++) {
      const int c = wn * 32 + nj * 8 + (lane & 3) * 2;
      if (c >= valid_n) continue;
#pragma unroll
      for (int half_ = 0; half_ < 2; half_++) {
        const int r = wm * 32 + mi * 16 + (lane >> 2) + half_ * 8;
        if (r >= valid_m) continue;
        const float* d0 = &acc[0][mi][nj][half_ * 2];
        const size_t o = (row0 + r) * size_t(N) + n0 + c;
        if constexpr (GATED) {
          const float* d1 = &acc[NB - 1][mi][nj][half_ * 2];
          const float h0 = kd::act_value(d0[0], act) * d1[0], h1 = kd::act_value(d0[1], act) * d1[1];
          *reinterpret_cast<uint32_t*>(static_cast<T*>(out) + o) = kd::pack2<T>(h0, h1);
        } else {
          *reinterpret_cast<float2*>(static_cast<float*>(out) + o) = make_float2(d0[0], d0[1]);
        }
      }
    }
}

template <typename T, bool GATED>
cudaError_t launch(const void* a, const void* b1, const void* b3, const int32_t* counts, void* out, int max_rows,
                   int E, int N, int Kd, Act act, cudaStream_t s) {
  const dim3 grid((N + BN - 1) / BN, (max_rows + BM - 1) / BM + std::min(E, max_rows));
  moe_grouped_kernel<T, GATED><<<grid, THREADS, 0, s>>>(static_cast<const T*>(a), static_cast<const T*>(b1),
                                                        static_cast<const T*>(b3), counts, out, E, N, Kd, act);
  return cudaGetLastError();
}

}  // namespace

cudaError_t moe_grouped_gate_up(const void* xperm, const void* w1, const void* w3, const int32_t* counts, void* h,
                                int max_rows, int E, int H, int I, Act act, DType dt, cudaStream_t s) {
  if (max_rows <= 0) return cudaGetLastError();
  if (H % 8 || I % 8 || E > kMoeMaxExperts) return cudaErrorInvalidValue;
  TSLLM_DISPATCH_HALF(dt, T, return launch<T, true>(xperm, w1, w3, counts, h, max_rows, E, I, H, act, s));
  return cudaErrorInvalidValue;
}

cudaError_t moe_grouped_down(const void* h, const void* w2, const int32_t* counts, float* y, int max_rows, int E,
                             int H, int I, DType dt, cudaStream_t s) {
  if (max_rows <= 0) return cudaGetLastError();
  if (H % 8 || I % 8 || E > kMoeMaxExperts) return cudaErrorInvalidValue;
  TSLLM_DISPATCH_HALF(dt, T, return launch<T, false>(h, w2, nullptr, counts, y, max_rows, E, H, I, Act::None, s));
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
