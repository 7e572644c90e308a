// Weight-only int8 / int4 GEMM for batches of token rows (int variants 19-21, up to kIntGemmMaxM rows): the weights
// are dequantised in the main loop, read from memory once per token tile of 16 or 32 rows (a row tile's next token
// tile runs on the neighbouring block, mostly from L2). Why: past 16 rows int8 / int4 linears dequantised the whole
// weight into an fp16 workspace every step and ran the half-precision GEMM on it: every weight written and read
// again at 2 bytes (Llama-2-7B bs-64 TPOT: int8 11.5 ms, int4 14.9 ms against fp16's 5.9, session 17 run 4). The
// tuner still times that path against these variants (quant_gemm.h) and keeps it where it is faster (session 18:
// o_proj and down_proj, N = 4096, at 64 rows).
//
// Numerics: the reference's (quant.h), as the exact decode variants: w = T(fp32(q · s)) per weight (one HMUL2 by
// the scale in T, exact when the scale is representable in T; a warp with a scale that is not takes the exact
// per-weight path for those rows), products exact on the tensor cores, fp32 sums, then the K-split warps' partial
// sums added in a fixed order and one rounding in the epilogue.
//
// Layout (quant_gemv_mma_a.cuh's fragments): m16n8k16 with A = 16 output rows (lane (g, t) dequantises its chunk of
// rows g and g + 8: weights as stored, k slots in the order the dequantisation pairs them) and B = 8 token rows of x
// (column g = token g). A block's warps: WR over distinct rows (RT tiles of 16 each), WK splitting K (warp ks takes
// iterations ks, ks + WK, ...; an iteration = 4 chunks of 16 bytes a row, lane t the chunk 4 it + t). A stage (WK
// iterations of K) of the block's token tile of x (8 NT rows, blockIdx.x) and of its weight rows goes through a
// P-stage cp.async ring in shared memory, each unit of 8 x values put where the lane that reads it expects it and,
// for int4, permuted into the nibble pairing (x0, x4), (x1, x5), ... by the thread that copied it. So one 16-byte
// shared load gives the B registers of two mma, and each dequantised A fragment meets NT token tiles: the
// dequantisation is paid once per weight and 8 NT tokens.
#pragma once
#include "quant_gemv_mma.cuh"

namespace tsllm {
namespace kd {
namespace {

// One stage in shared memory: x's MT token rows of UPR 16-byte units (8 x values each, WK iterations of K), then the
// block's ROWS weight rows of WK iterations (4 chunks of 16 bytes each).
// x unit u of a row (x values 8u .. 8u + 7 of the stage) sits at pos(u): iteration it, chunk t of the iteration and
// vector j of the chunk go to it · UPI + j · 4 + t, so the 4 lanes of a row group (t = 0..3) read 64 contiguous
// bytes; a row is RS = UPR + 4 units long (RS = 4 mod 8), so rows g and g + 1 of a quarter-warp fall on the other
// half of the banks. Weight rows are WS units apart (WK · 4, + 4 when that is a multiple of 8, for the same reason):
// no bank conflicts either way.
template <bool INT4, int WK, int MT, int ROWS>
struct WoStage {
  static constexpr int XV = INT4 ? 4 : 2;  // x units under a chunk
  static constexpr int UPI = 4 * XV;       // x units under an iteration
  static constexpr int UPR = WK * UPI;     // x units of a row per stage
  static constexpr int RS = UPR + 4;       // x row stride, units
  static constexpr int KT = UPR * 8;       // x values (= weights of a row) per stage
  static constexpr int WS = WK * 4 + (WK % 2 == 0 ? 4 : 0);  // weight row stride, units
  static constexpr int X_UNITS = MT * RS, W_UNITS = ROWS * WS, UNITS = X_UNITS + W_UNITS;
  __device__ static int pos(int u) {
    const int r = u % UPI;
    return u - r + (r % XV) * 4 + r / XV;
  }
};

// P stages in flight through a cp.async ring (x and weights alike, issued after griddepcontrol.wait: the decode
// kernels that issued cp.async before it gave wrong results, quant_gemv_mma.cuh), one barrier a stage. A first
// version held the weights in registers two stages ahead and x one stage ahead: 20-80 TFLOP/s at 16-64 rows and
// Llama-2-7B int4 bs-64 TPOT 23.5 ms against 14.9 for dequantise + GEMM (session 18 run 1): each stage waited out
// a memory round trip.
template <typename T, bool INT4, int RT, int WR, int WK, int NT, int P, int MINB>
__global__ void __launch_bounds__(WR * WK * 32, MINB)
    wo_gemm_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sc, int groups,
                   int cpg_shift, const T* __restrict__ bias, const T* res, T* out, int M, int N, int K, int act) {
  constexpr int MT = 8 * NT;            // token rows of the block
  constexpr int THREADS = WR * WK * 32;
  constexpr int ROWS = WR * RT * 16;    // output rows of the block
  using S = WoStage<INT4, WK, MT, ROWS>;
  static_assert(MT * S::UPR % THREADS == 0, "x units of a stage: a whole number a thread");
  extern __shared__ __align__(16) uint4 ring[];  // [P][UNITS]; after the loop, the K-split partial sums
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wr = warp % WR, ks = warp / WR;
  const int g = lane >> 2, t = lane & 3;
  // blockIdx.x: the token tile (neighbouring blocks share weight rows, so a tile's second read hits L2).
  const int nb = blockIdx.y * ROWS;  // the block's first output row
  const int m0 = blockIdx.x * MT;
  const int chunks = (INT4 ? K / 2 : K) >> 4;
  const int iters = chunks >> 2;  // (whole iterations: quant_gemv_takes)
  const int stages = (iters + WK - 1) / WK;
  const uint4* wq = reinterpret_cast<const uint4*>(w);
  // This lane's scale rows: row nb + wr · RT · 16 + 16i + g + 8h (rows past N take row N - 1, never stored).
  const float* srow[RT][2];
#pragma unroll
  for (int i = 0; i < RT; i++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int n = min(nb + wr * RT * 16 + 16 * i + g + 8 * h, N - 1);
      srow[i][h] = sc + (INT4 ? size_t(n) * groups : size_t(n));
    }
  float sv[P][RT][2];  // the scales of the stages in flight (int4: a chunk's group; int8: the row's)
  if constexpr (!INT4) row_scales_to_slots(sv, srow);
  pdl_wait();  // x and the residual are the predecessor's

  // Stage s into slot b: x (zeros past M and K) and the weights (zeros past the last iteration; rows past N read
  // row N - 1), then one commit group (empty past the last stage, so wait_group counts stay uniform); the int4
  // scales of this lane's chunks in sv[b]. A thread copies the same unit column of rows XSTEP (WSTEP) apart in every
  // stage, so its addresses are set up once.
  constexpr int XQ = MT * S::UPR / THREADS, XSTEP = THREADS / S::UPR;
  constexpr int WQ = ROWS * WK * 4 / THREADS, WSTEP = THREADS / (WK * 4);
  static_assert(THREADS % S::UPR == 0 && THREADS % (WK * 4) == 0 && ROWS * WK * 4 % THREADS == 0, "copy layout");
  const int xu = threadIdx.x % S::UPR, xr0 = threadIdx.x / S::UPR, wc = threadIdx.x % (WK * 4);
  const int xdst = xr0 * S::RS + S::pos(xu), wdst = S::X_UNITS + (threadIdx.x / (WK * 4)) * S::WS + wc;
  const T* xsrc = x + size_t(m0 + xr0) * K + 8 * xu;  // (row m0 + xr0 + q XSTEP, as a pointer only when < M)
  const uint4* wsrc[WQ];
#pragma unroll
  for (int q = 0; q < WQ; q++)
    wsrc[q] = wq + size_t(min(nb + int(threadIdx.x) / (WK * 4) + q * WSTEP, N - 1)) * chunks + wc;
  auto load_stage = [&](int s, int b) {
    uint4* st = ring + b * S::UNITS;
    if (s < stages) {
      const int k0 = s * S::KT, c0 = s * WK * 4;
      const bool kin = k0 + 8 * xu < K;
#pragma unroll
      for (int q = 0; q < XQ; q++) {
        const bool ok = kin && m0 + xr0 + q * XSTEP < M;
        cp_async16(st + xdst + q * XSTEP * S::RS, ok ? xsrc + size_t(q * XSTEP) * K + k0 : x, ok);
      }
      const bool cin = c0 + wc < chunks;
#pragma unroll
      for (int q = 0; q < WQ; q++) cp_async16(st + wdst + q * WSTEP * S::WS, cin ? wsrc[q] + c0 : wq, cin);
      if constexpr (INT4) {
        const int c = min((s * WK + ks) * 4 + t, chunks - 1);
#pragma unroll
        for (int i = 0; i < RT; i++)
#pragma unroll
          for (int h = 0; h < 2; h++) sv[b][i][h] = __ldg(srow[i][h] + (c >> cpg_shift));
      }
    }
    cp_async_commit();
  };
  // The thread's own x units of slot b into the nibble pairing (x0, x4), (x1, x5), ... (int4), once they landed.
  auto permute_stage = [&](int b) {
    if constexpr (INT4) {
      uint4* xs = ring + b * S::UNITS;
#pragma unroll
      for (int q = 0; q < XQ; q++) {
        uint4* p = xs + xdst + q * XSTEP * S::RS;
        const uint4 v = *p;
        *p = make_uint4(__byte_perm(v.x, v.z, 0x5410), __byte_perm(v.x, v.z, 0x7632), __byte_perm(v.y, v.w, 0x5410),
                        __byte_perm(v.y, v.w, 0x7632));
      }
    }
  };

  float acc[RT][NT][4];
#pragma unroll
  for (int i = 0; i < RT; i++)
#pragma unroll
    for (int nt = 0; nt < NT; nt++) acc[i][nt][0] = acc[i][nt][1] = acc[i][nt][2] = acc[i][nt][3] = 0.f;

#pragma unroll
  for (int u = 0; u < P - 1; u++) load_stage(u, u);
  for (int sb = 0; sb < stages; sb += P) {
#pragma unroll
    for (int u = 0; u < P; u++) {
      const int s = sb + u;
      if (s >= stages) break;  // (block-uniform)
      cp_async_wait<P - 2>();  // this thread's copies of stage s landed
      permute_stage(u);
      // Stage s is in place for every warp, and every warp is done with stage s - 1, whose slot takes s + P - 1.
      __syncthreads();
      load_stage(s + P - 1, (u + P - 1) % P);
      const int it = s * WK + ks;
      if (it >= iters) continue;  // (warp-uniform: the last stage of a K that is not a multiple of WK iterations)
      const uint4* xs = ring + u * S::UNITS;
      const uint4* ws = xs + S::X_UNITS + (wr * RT * 16 + g) * S::WS + ks * 4 + t;
      uint4 cur[RT][2];
      uint32_t s2[RT][2];
      bool exact[RT][2], all = true;
#pragma unroll
      for (int i = 0; i < RT; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
          cur[i][h] = ws[(16 * i + 8 * h) * S::WS];
          exact[i][h] = scale_pair<T>(sv[u][i][h], &s2[i][h]);
          all = all && exact[i][h];
        }
      const uint4* xb = xs + g * S::RS + ks * S::UPI + t;
      // The stage's products, each weight word dequantised by deq(word, i, h, q).
      auto products = [&](auto&& deq) {
#pragma unroll
        for (int j = 0; j < S::XV; j++) {
          // p[i][h]: the A pairs of row 16i + g + 8h under vector j: int4 word j (pairs (0,4), (1,5), (2,6),
          // (3,7)); int8 words 2j, 2j + 1 (pairs in order).
          uint32_t p[RT][2][4];
#pragma unroll
          for (int i = 0; i < RT; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
              const uint32_t* cw = &cur[i][h].x;
#pragma unroll
              for (int k = 0; k < (INT4 ? 1 : 2); k++) {
                uint32_t q[INT4 ? 4 : 2];
                deq(cw[INT4 ? j : 2 * j + k], i, h, q);
#pragma unroll
                for (int e = 0; e < (INT4 ? 4 : 2); e++) p[i][h][(INT4 ? 0 : 2 * k) + e] = q[e];
              }
            }
#pragma unroll
          for (int nt = 0; nt < NT; nt++) {
            const uint4 bv = xb[nt * 8 * S::RS + j * 4];
#pragma unroll
            for (int i = 0; i < RT; i++) {
              const uint32_t a0[4] = {p[i][0][0], p[i][1][0], p[i][0][1], p[i][1][1]};
              const uint32_t a1[4] = {p[i][0][2], p[i][1][2], p[i][0][3], p[i][1][3]};
              mma16816<T>(acc[i][nt], a0, bv.x, bv.y);
              mma16816<T>(acc[i][nt], a1, bv.z, bv.w);
            }
          }
        }
      };
      // The branch is warp-uniform (mma.sync must be reached by the whole warp at one instruction): the fast path
      // has no per-lane branch; a warp with a scale not representable in T rounds those rows' weights one by one.
      if (__all_sync(0xffffffffu, all)) {
        products([&](uint32_t wd, int i, int h, uint32_t(&q)[INT4 ? 4 : 2]) {
          dequant_word<T, INT4>(wd, s2[i][h], q);
        });
      } else {
        products([&](uint32_t wd, int i, int h, uint32_t(&q)[INT4 ? 4 : 2]) {
          if (exact[i][h]) dequant_word<T, INT4>(wd, s2[i][h], q);
          else dequant_word_exact<T, INT4>(wd, sv[u][i][h], q);
        });
      }
    }
  }
  cp_async_wait<0>();  // (only empty groups can be left)

  // acc[i][nt]: (row 16i + g, tokens 8nt + 2t, + 1), (row 16i + g + 8, the same tokens). Partial sums through
  // shared memory ([WK][ROWS][MT + 1] floats, the ring's space), then added in a fixed order and stored with
  // consecutive threads on consecutive output rows.
  __syncthreads();  // every warp is done reading the ring
  float* red = reinterpret_cast<float*>(ring);
  constexpr int RED_S = MT + 1;
#pragma unroll
  for (int i = 0; i < RT; i++)
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int r = wr * RT * 16 + 16 * i + g + 8 * (e >> 1), mm = 8 * nt + 2 * t + (e & 1);
        red[(ks * ROWS + r) * RED_S + mm] = acc[i][nt][e];
      }
  __syncthreads();
  for (int idx = threadIdx.x; idx < ROWS * MT; idx += THREADS) {
    const int mm = idx / ROWS, r = idx % ROWS, n = nb + r, m = m0 + mm;
    if (n >= N || m >= M) continue;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < WK; k++) v += red[(k * ROWS + r) * RED_S + mm];
    store_out<T>(v, bias, res, out, m, n, N, act);
  }
}

// Dynamic shared memory of an instantiation: the ring, or the partial sums if more.
template <bool INT4, int RT, int WR, int WK, int NT, int P>
constexpr size_t wo_gemm_smem() {
  const size_t ring = size_t(P) * WoStage<INT4, WK, 8 * NT, WR * RT * 16>::UNITS * 16;
  const size_t red = size_t(WK) * WR * RT * 16 * (8 * NT + 1) * 4;
  return ring > red ? ring : red;
}

template <typename T, bool INT4, int RT, int WR, int WK, int NT, int P, int MINB>
cudaError_t launch_wo_gemm_nt(int M, const void* x, const void* w, const float* sc, int groups, int cpg_shift,
                              const void* bias, const void* res, void* out, int N, int K, Act act, bool pdl,
                              cudaStream_t s) {
  auto kern = wo_gemm_kernel<T, INT4, RT, WR, WK, NT, P, MINB>;
  constexpr size_t smem = wo_gemm_smem<INT4, RT, WR, WK, NT, P>();
  static PersistentCache pc;  // (per instantiation: the opt-in past 48 KB)
  if (cudaError_t e = opt_in_smem(pc, kern, smem); e != cudaSuccess) return e;
  const dim3 grid(unsigned((M + 8 * NT - 1) / (8 * NT)), unsigned((N + WR * RT * 16 - 1) / (WR * RT * 16)));
  return launch_pdl(kern, grid, WR * WK * 32, smem, pdl, s, static_cast<const T*>(x), static_cast<const uint8_t*>(w),
                    sc, groups, cpg_shift, static_cast<const T*>(bias), static_cast<const T*>(res),
                    static_cast<T*>(out), M, N, K, int(act));
}

// Token tiles of 16 rows up to 16, else of 32 (several past 32: grid.x).
template <typename T, bool INT4, int RT, int WR, int WK, int P, int MINB>
cudaError_t launch_wo_gemm(int M, const void* x, const void* w, const float* sc, int group, const void* bias,
                           const void* res, void* out, int N, int K, Act act, bool pdl, cudaStream_t s) {
  const QuantKind kind = INT4 ? QuantKind::Int4 : QuantKind::Int8;
  if (M < 1 || N > 65535 * WR * RT * 16 || !quant_gemv_takes(kind, kIntGemmVariant, M, K, group))
    return cudaErrorInvalidValue;
  const int cpg_shift = INT4 ? int4_chunk_shift(group) : 0, groups = INT4 ? K / group : 1;
  if (M <= 16)
    return launch_wo_gemm_nt<T, INT4, RT, WR, WK, 2, P, MINB>(M, x, w, sc, groups, cpg_shift, bias, res, out, N, K,
                                                              act, pdl, s);
  return launch_wo_gemm_nt<T, INT4, RT, WR, WK, 4, P, MINB>(M, x, w, sc, groups, cpg_shift, bias, res, out, N, K, act,
                                                            pdl, s);
}

// Variants 19-21: (row tiles of 16 a warp, warps over rows, warps splitting K, stages in flight, blocks an SM the
// registers must allow). 20: 128 rows a block of 4 warps, 3 stages (55 KB of shared memory at 32 token rows, 3 blocks
// an SM); 19: 64 rows of 2 warps, 4 stages (twice 20's blocks, for N = 4096); 21: 20 with 4 stages. Session 18 run 3
// (gemv_bench, 64 rows): 20 beat (1, 4, 1, 3) and (1, 2, 2, 3) on every Llama-2-7B shape, int4 gate_up 97.6 µs
// (118 TFLOP/s) against 161.7 and 242.7; ncu of (1, 4, 1, 3) at 16 warps an SM: a warp issued every 16.2 cycles,
// stalled mostly on the cp.async data (4.3 cycles an instruction) and on shared-memory loads (4.7). Before (run 2: 4
// stages of 64 token rows, 2 blocks an SM), 8 warps an SM issued every 10.4 cycles each, gate_up 137-209 µs.
template <typename T, bool INT4>
cudaError_t launch_wo_gemm_variant(int variant, int M, const void* x, const void* w, const float* sc, int group,
                                   const void* bias, const void* res, void* out, int N, int K, Act act, bool pdl,
                                   cudaStream_t s) {
  switch (variant) {
    case 19: return launch_wo_gemm<T, INT4, 2, 2, 1, 4, 6>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 20: return launch_wo_gemm<T, INT4, 2, 4, 1, 3, 3>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 21: return launch_wo_gemm<T, INT4, 2, 4, 1, 4, 3>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd
}  // namespace tsllm
