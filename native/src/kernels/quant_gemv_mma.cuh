// Tensor-core decode gemv over int8 / int4 weight-only weights (quant_gemv variants 3-6 of those kinds; 0-2 are
// quant_gemv_int.cuh's CUDA-core kernel). Why: the CUDA-core kernel spends ~6 instructions per int4 weight (extract,
// I2F, FMUL, round to T, widen, FFMA) and ran int4 at 0.9-1.5 TB/s on the H200; here a weight costs about two
// half-precision instructions and the multiply-add goes to the tensor cores.
//
// Numerics (quant.h): w = T(fp32(q · s)), then an fp32 dot with x. q is made exact in T by the magic-number trick
// (the nibble / byte OR-ed into the mantissa of 1024 (fp16) / 128 (bf16), minus the bias), then one HMUL2 by s
// rounded to T: q · s is exact in fp32 (≤ 8 + 11 bits), so RN(q · s) to T is exactly T(fp32(q · s)) when s is
// representable in T — engines built now have such scales (src/quant/weights.ts rounds weight-only scales up to
// the activation dtype). A chunk whose scale is not (an older engine) takes an exact per-weight path instead
// (fp32 multiply, one rounding), so the result never depends on the build. bf16 int8 goes through fp32 (2^23 + b),
// as 8-bit codes do not fit bf16's 7-bit mantissa. The products T·T are exact on the tensor cores, accumulated in
// fp32 (mma.sync m16n8k16), then summed over the block's warps in a fixed order.
//
// Layout: the weights stay [N, K] row-major as stored. The weights are the mma's B operand (n = output row), x
// the A operand (m = token row, rows g and g + 8 of lane (g, t): up to 16 tokens, kIntMmaGemvMaxM, where the
// CUDA-core kernels take 4; rows >= M are zeros): lane (g, t) = (lane / 4, lane % 4) streams 16-byte chunks of
// output row n0 + g, and the four lanes of a row take four consecutive chunks, so B's k slots of lane t are that
// lane's own chunk. A dot product may visit K in any order, so the mma's k slots are mapped to weights in the order
// the dequantisation produces them, and x is loaded (from L1 / L2) and permuted to match: int4 pairs nibbles
// (i, i + 4) of a 32-bit word, int8 pairs neighbours. Variants 5-6 (STAGED) copy x once per block into shared memory
// already in that order (stage_x8) instead.
// A block of WARPS warps owns TILES tiles of 8 output rows and splits K between its warps (chunk c of a row:
// iteration i, warp w, lane t -> c = (i · WARPS + w) · 4 + t), S iterations of loads in flight per lane through a
// per-warp cp.async ring in shared memory, issued only after griddepcontrol.wait (see the kernel: under PDL the
// ring's copies issued before it gave wrong results). The ring against a register pipeline (UN chunks held per
// lane, as the CUDA-core kernels do), H200 gemv_bench, session 6 runs 1-2: int8 down_proj 1851 -> 2489 GB/s, int4
// unchanged; int4's gain came from removing a 64-bit division per chunk and run-time half conversions
// (kernels-notes.md).
// Measured (H200, session 6 run 4, gemv_bench GB/s of weight bytes, M = 1, Llama-2-7B shapes, best CUDA-core variant
// -> best of these): int4 g128 qkv 1324 -> 1665, o_proj 903 -> 1426, gate_up 1471 -> 1947, down 1027 -> 1842; int8
// qkv 2745 -> 2999, o_proj 1740 -> 2026, gate_up 3058 -> 3255, down 2073 -> 2432. In the engine (the load-time tuner
// picks per shape): Llama-2-7B int4-wo g128 bs-1 TPOT 2.52 ms against 3.19 ms with variant 0 forced (+25 %; 2.645
// against 3.300 for variant 1 since the ring waits for the PDL predecessor, session 7 run 6); int8 within noise
// (2.91-2.95 ms either way: the tuner keeps variants 0-1 for int8 at bs 1); bs 8 / 16 TPOT, against the dequantise +
// GEMM path these batches took before: int8 3.53 / 4.34 ms vs 10.29 / 10.56 (session 6 run 6), int4 3.298 / 4.691
// vs 13.380 / 13.615 (session 7 run 6).
#pragma once
#include <atomic>
#include <type_traits>

#include "gemv_stream.cuh"
#include "mma.cuh"
#include "quant.h"

namespace tsllm {
namespace kd {
namespace {

__device__ __forceinline__ uint32_t lop3_and_xor(uint32_t a, uint32_t b, uint32_t c) {  // (a & b) ^ c
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0x6a;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Per activation dtype: the magic-number constants as raw bits (a half-precision constant built with __float2half
// is a conversion instruction at run time; conversions are the slow pipe this kernel avoids).
template <typename T>
struct Half2Of;
template <>
struct Half2Of<half> {
  using V = half2;
  static constexpr uint32_t kMagic4 = 0x64006400u;  // 1024 in both halves: 1024 + n for a nibble n in the mantissa
  static constexpr uint32_t kBias4 = 0x64086408u;   // 1032 = 1024 + 8 (the flipped nibble holds q + 8)
  static constexpr uint32_t kMagic8 = 0x64646464u;  // byte 0x64 above a code byte b: 1024 + b (fp16 only: 8-bit codes
  static constexpr uint32_t kBias8 = 0x64806480u;   // do not fit bf16's 7-bit mantissa); 1152 = 1024 + 128
};
template <>
struct Half2Of<bf16> {
  using V = __nv_bfloat162;
  static constexpr uint32_t kMagic4 = 0x43004300u;  // 128 + n
  static constexpr uint32_t kBias4 = 0x43084308u;   // 136
};

template <typename T>
__device__ __forceinline__ uint32_t h2_sub(uint32_t a, uint32_t b) {
  using V = typename Half2Of<T>::V;
  const V r = __hsub2(*reinterpret_cast<const V*>(&a), *reinterpret_cast<const V*>(&b));
  return *reinterpret_cast<const uint32_t*>(&r);
}
template <typename T>
__device__ __forceinline__ uint32_t h2_fma(uint32_t a, uint32_t b, uint32_t c) {
  using V = typename Half2Of<T>::V;
  const V r =
      __hfma2(*reinterpret_cast<const V*>(&a), *reinterpret_cast<const V*>(&b), *reinterpret_cast<const V*>(&c));
  return *reinterpret_cast<const uint32_t*>(&r);
}
template <typename T>
__device__ __forceinline__ uint32_t h2_mul(uint32_t a, uint32_t s2) {
  using V = typename Half2Of<T>::V;
  const V r = __hmul2_rn(*reinterpret_cast<const V*>(&a), *reinterpret_cast<const V*>(&s2));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// The B registers of a 16-byte chunk, per 32-bit word wd: int4 — 8 nibbles e0..e7 -> p[wd][0..3] = (e0,e4),
// (e1,e5), (e2,e6), (e3,e7); int8 — 4 bytes -> p[wd][0..1] = (b0,b1), (b2,b3). dequant_word_q: each value q itself
// in T (exact: 4 / 8-bit integers); dequant_word: T(q · s) with s2 = s in T as a pair (exact: the fast path, one
// rounding of the exact q · s); exact == false (s not representable in T): each weight rounded from fp32(q · s),
// the reference's words (dequant_word_exact). The branch is per chunk so the fast path stays free of the slow one's
// conversions.
// dequant_pairs: the q pairs through f (the scale, or nothing), pair by pair as the words are taken apart.
template <typename T, bool INT4, class F>
__device__ __forceinline__ void dequant_pairs(uint32_t u, uint32_t (&p)[INT4 ? 4 : 2], F&& f) {
  if constexpr (INT4 && std::is_same_v<T, half>) {
    // One shift per word: nibbles (0, 4) and (2, 6) sit in the mantissa's low bits as below; (1, 5) and (3, 7)
    // are masked in place (bits 4-7: 1024 + 16 (q + 8), as fp16's 10-bit mantissa has room) and brought down by
    // an fma with 1/16 and -(64 + 8): every step exact. Saves two shifts per word.
    constexpr uint32_t lo = Half2Of<T>::kMagic4 | 0x00080008u, hi = Half2Of<T>::kMagic4 | 0x00800080u;
    constexpr uint32_t k16 = 0x2C002C00u, kb16 = 0xD480D480u;  // 1/16, -72
    const uint32_t u8 = u >> 8;
    p[0] = f(h2_sub<T>(lop3_and_xor(u, 0x000F000Fu, lo), Half2Of<T>::kBias4));
    p[1] = f(h2_fma<T>(lop3_and_xor(u, 0x00F000F0u, hi), k16, kb16));
    p[2] = f(h2_sub<T>(lop3_and_xor(u8, 0x000F000Fu, lo), Half2Of<T>::kBias4));
    p[3] = f(h2_fma<T>(lop3_and_xor(u8, 0x00F000F0u, hi), k16, kb16));
  } else if constexpr (INT4) {
    // magic | the nibble's sign bit flipped: two's-complement q becomes q + 8 in the mantissa (bf16's 7-bit
    // mantissa has no room for the in-place trick above: a shift per nibble pair)
    constexpr uint32_t c = Half2Of<T>::kMagic4 | 0x00080008u;
#pragma unroll
    for (int i = 0; i < 4; i++) p[i] = f(h2_sub<T>(lop3_and_xor(u >> (4 * i), 0x000F000Fu, c), Half2Of<T>::kBias4));
  } else if constexpr (std::is_same_v<T, half>) {  // fp16: 1024 + (q + 128)
    const uint32_t v = u ^ 0x80808080u;
    p[0] = f(h2_sub<T>(__byte_perm(v, Half2Of<T>::kMagic8, 0x4140), Half2Of<T>::kBias8));
    p[1] = f(h2_sub<T>(__byte_perm(v, Half2Of<T>::kMagic8, 0x4342), Half2Of<T>::kBias8));
  } else {  // bf16 int8: 2^23 + (q + 128) as fp32, minus the bias (exact), packed (exact)
    const uint32_t v = u ^ 0x80808080u;
    float q[4];
#pragma unroll
    for (int i = 0; i < 4; i++) q[i] = __int_as_float(__byte_perm(v, 0x4B000000u, 0x7540 + i)) - 8388736.f;
    p[0] = f(pack2<T>(q[0], q[1]));
    p[1] = f(pack2<T>(q[2], q[3]));
  }
}
template <typename T, bool INT4>
__device__ __forceinline__ void dequant_word_q(uint32_t u, uint32_t (&p)[INT4 ? 4 : 2]) {
  dequant_pairs<T, INT4>(u, p, [](uint32_t v) { return v; });
}
template <typename T, bool INT4>
__device__ __forceinline__ void dequant_word(uint32_t u, uint32_t s2, uint32_t (&p)[INT4 ? 4 : 2]) {
  dequant_pairs<T, INT4>(u, p, [s2](uint32_t v) { return h2_mul<T>(v, s2); });
}
template <typename T, bool INT4>
__device__ __forceinline__ void dequant_word_exact(uint32_t u, float s, uint32_t (&p)[INT4 ? 4 : 2]) {
  if constexpr (INT4) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float a = float(int(u << (28 - 4 * i)) >> 28), b = float(int(u << (12 - 4 * i)) >> 28);
      p[i] = pack2<T>(__fmul_rn(a, s), __fmul_rn(b, s));
    }
  } else {
#pragma unroll
    for (int i = 0; i < 2; i++)
      p[i] = pack2<T>(__fmul_rn(float(int8_t(u >> (16 * i))), s), __fmul_rn(float(int8_t(u >> (16 * i + 8))), s));
  }
}
// int8's one scale a row into every pipeline slot of a lane's rows (int4 loads a chunk's group scale with its
// weights): sv[u][i][h] = *srow[i][h].
template <int D, int TILES>
__device__ __forceinline__ void row_scales_to_slots(float (&sv)[D][TILES][2], const float* const (&srow)[TILES][2]) {
#pragma unroll
  for (int i = 0; i < TILES; i++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const float s = __ldg(srow[i][h]);
#pragma unroll
      for (int u = 0; u < D; u++) sv[u][i][h] = s;
    }
}
// A scale as both dequantisations take it: *s2 = s rounded to T, as a pair (the fast path's multiplier); true when
// that is exact (s converts back to itself; an overflow to inf does not), else the per-weight path applies.
template <typename T>
__device__ __forceinline__ bool scale_pair(float s, uint32_t* s2) {
  const T sT = from_f<T>(s);
  *s2 = uint32_t(*reinterpret_cast<const uint16_t*>(&sT)) * 0x10001u;
  return to_f(sT) == s;
}
template <typename T, bool INT4>
__device__ __forceinline__ void dequant_chunk(const uint4& raw, uint32_t s2, float s, bool exact,
                                              uint32_t (&p)[4][INT4 ? 4 : 2]) {
  const uint32_t* pw = &raw.x;
  if (exact) {
#pragma unroll
    for (int wd = 0; wd < 4; wd++) dequant_word<T, INT4>(pw[wd], s2, p[wd]);
  } else {
#pragma unroll
    for (int wd = 0; wd < 4; wd++) dequant_word_exact<T, INT4>(pw[wd], s, p[wd]);
  }
}

// x staged in shared memory (STAGED, M <= 4 rows that fit kIntMmaStageBytes): the block copies x once, already in
// the A-fragment order a chunk's mma want (int4: word 2wd / 2wd + 1 = x pairs (8wd, 8wd + 4) / (8wd + 2, 8wd + 6),
// words 8 + ... the odd ones; int8: x's even words, then its odd words), so a lane reads its chunk's fragments with
// 16-byte shared loads instead of global loads held a whole iteration in registers and permuted (byte_perm) there.
constexpr size_t kIntMmaStageBytes = 64 * 1024;

// One chunk of 8 x values (16 bytes, x[m, 8 c8 .. 8 c8 + 7]) into the staged layout of row m.
template <bool INT4>
__device__ __forceinline__ void stage_x8(uint32_t* stage, int m, int c8, int K, const uint4& v) {
  const uint32_t* px = &v.x;
  if constexpr (INT4) {  // chunk c8 / 4, its word group wd = c8 % 4: (x0, x4), (x2, x6) | (x1, x5), (x3, x7)
    uint32_t* base = stage + size_t(m) * (K / 2) + (c8 >> 2) * 16 + 2 * (c8 & 3);
    *reinterpret_cast<uint2*>(base) = make_uint2(__byte_perm(px[0], px[2], 0x5410), __byte_perm(px[1], px[3], 0x5410));
    *reinterpret_cast<uint2*>(base + 8) =
        make_uint2(__byte_perm(px[0], px[2], 0x7632), __byte_perm(px[1], px[3], 0x7632));
  } else {  // chunk c8 / 2, half j = c8 % 2: words 0, 2 | 1, 3
    uint32_t* base = stage + size_t(m) * (K / 2) + (c8 >> 1) * 8 + 2 * (c8 & 1);
    *reinterpret_cast<uint2*>(base) = make_uint2(px[0], px[2]);
    *reinterpret_cast<uint2*>(base + 4) = make_uint2(px[1], px[3]);
  }
}

// The block's outputs: red[k][r][m] holds warp k's partial sum for output row n0 + r and token row m; summed over
// the warps in a fixed order (the result never depends on timing), then the quantised epilogue.
template <typename T, int WARPS, int ROWS, int MB>
__device__ __forceinline__ void store_warp_sums(const float (&red)[WARPS][ROWS][MB], int n0, int M, int N,
                                                const T* __restrict__ bias, const T* res, T* out, int act) {
  for (int idx = threadIdx.x; idx < ROWS * M; idx += WARPS * 32) {
    const int r = idx / M, m = idx % M, n = n0 + r;
    if (n >= N) continue;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < WARPS; k++) v += red[k][r][m];
    store_out<T>(v, bias, res, out, m, n, N, act);
  }
}

// store_warp_sums for a GLU block (quant_gemv_mma_a.cuh): rows 0..ROWS/2-1 of red are gate rows n0.., the rest their
// up rows; out is [M, N] (store_glu).
template <typename T, int WARPS, int ROWS, int MB>
__device__ __forceinline__ void store_warp_sums_glu(const float (&red)[WARPS][ROWS][MB], int n0, int M, int N,
                                                    const T* __restrict__ bias, T* out, int act) {
  constexpr int H = ROWS / 2;
  for (int idx = threadIdx.x; idx < H * M; idx += WARPS * 32) {
    const int r = idx / M, m = idx % M, n = n0 + r;
    if (n >= N) continue;
    float gv = 0.f, uv = 0.f;
#pragma unroll
    for (int k = 0; k < WARPS; k++) gv += red[k][r][m], uv += red[k][H + r][m];
    store_glu<T>(gv, uv, bias, out, m, n, N, act);
  }
}

// MB: the token rows the instantiation has room for (1-4, 8, 16), M <= MB the call's: lanes (g, t) carry token
// rows g and (MB > 8) g + 8 — the mma's 16 A rows.
template <typename T, bool INT4, int MB, int TILES, int WARPS, int S, bool STAGED>
__global__ void __launch_bounds__(WARPS * 32)
    int_mma_gemv_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sc,
                        int groups, int cpg_shift, const T* __restrict__ bias, const T* res, T* out, int M, int N,
                        int K, int act) {
  constexpr int EPC = INT4 ? 32 : 16;  // weights per 16-byte chunk
  constexpr int XV = EPC / 8;          // x's 16-byte vectors under a chunk
  constexpr int XR = MB > 8 ? 2 : 1;   // token rows per lane: g, g + 8
  static_assert(!STAGED || MB <= 4, "x is staged for 1-4 rows");
  extern __shared__ __align__(16) uint4 ring_all[];  // [WARPS][S][TILES][32]: each warp's private cp.async ring
                                                     // (then, STAGED, x: M rows of K / 2 words)
  pdl_trigger();
  // Under PDL this kernel waits for its predecessor before its first cp.async, unlike the register-pipelined gemvs
  // (which load weights before waiting). With the ring's first copies issued before the wait, the tiny int4 engines
  // gave wrong logits run after run (GPU suite, max |Δlogit| 2.2-4.3 against ≤ 1.25, varying between identical
  // runs; correct with TSLLM_PDL=0, with every call serialised, and with this wait moved first: session 7 runs 2-5).
  // The weights are never written, so the cause is not a data race on them; it was not found.
  pdl_wait();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * TILES * 8;
  const size_t row_bytes = INT4 ? size_t(K) / 2 : size_t(K);
  const int chunks = int(row_bytes >> 4);
  const int iters = (chunks + 4 * WARPS - 1) / (4 * WARPS);
  uint4* ring = ring_all + size_t(warp) * S * TILES * 32 + lane;  // this lane's slot of stage 0, tile 0
  const uint8_t* rowp[TILES];
  const float* scp[TILES];
#pragma unroll
  for (int i = 0; i < TILES; i++) {
    const int n = min(n0 + i * 8 + g, N - 1);  // rows past N read row N - 1 (never stored)
    rowp[i] = w + size_t(n) * row_bytes;
    scp[i] = sc + (INT4 ? size_t(n) * groups : size_t(n));
  }
  auto chunk_of = [&](int it) { return (it * WARPS + warp) * 4 + t; };

  // S iterations of weights in flight per lane through shared memory (no registers held, so many more bytes in
  // flight than a register pipeline at the same occupancy); a lane reads back only its own copies, so
  // cp.async.wait_group is the only synchronisation. One commit group per iteration, empty past the end.
  // (int4) the chunks' group scales ride along in registers, issued with the same iteration.
  float sv[S][TILES];
  auto issue = [&](int u, int it) {
    const int c = chunk_of(it);
    const bool ok = it < iters && c < chunks;
#pragma unroll
    for (int i = 0; i < TILES; i++) {
      cp_async16(ring + (u * TILES + i) * 32, rowp[i] + size_t(ok ? c : 0) * 16, ok);
      if constexpr (INT4) sv[u][i] = __ldg(scp[i] + ((ok ? c : 0) >> cpg_shift));  // (a shift: no division per chunk)
    }
    cp_async_commit();
  };
#pragma unroll
  for (int u = 0; u < S; u++) issue(u, u);
  if constexpr (!INT4) {
#pragma unroll
    for (int i = 0; i < TILES; i++) {
      const float s = __ldg(scp[i]);
#pragma unroll
      for (int u = 0; u < S; u++) sv[u][i] = s;
    }
  }

  // x under a chunk: token rows g (and g + 8) < M; zeros past K and in the other rows (0 · anything stays 0).
  // Staged: rows g >= M read row 0 instead (finite values in mma rows whose results are never stored).
  bool xrow[XR];
  const T* xr[XR];
#pragma unroll
  for (int h = 0; h < XR; h++) xrow[h] = g + 8 * h < M, xr[h] = x + size_t(xrow[h] ? g + 8 * h : 0) * K;
  uint4 xnext[STAGED ? 1 : XR][STAGED ? 1 : XV];
  auto load_x = [&](int it) {
    if constexpr (!STAGED) {
      const int c = chunk_of(it);
#pragma unroll
      for (int h = 0; h < XR; h++)
#pragma unroll
        for (int j = 0; j < XV; j++)
          xnext[h][j] = xrow[h] && it < iters && c < chunks
                            ? *reinterpret_cast<const uint4*>(xr[h] + size_t(c) * EPC + 8 * j)
                            : make_uint4(0, 0, 0, 0);
    }
  };
  const uint4* xs = nullptr;  // STAGED: this lane's row, as 16-byte vectors (XV per chunk)
  if constexpr (STAGED) {
    uint32_t* stage = reinterpret_cast<uint32_t*>(ring_all + size_t(WARPS) * S * TILES * 32);
    for (int c8 = threadIdx.x; c8 < M * (K >> 3); c8 += WARPS * 32) {
      const int m = c8 / (K >> 3), cm = c8 - m * (K >> 3);
      stage_x8<INT4>(stage, m, cm, K, *reinterpret_cast<const uint4*>(x + size_t(m) * K + size_t(cm) * 8));
    }
    __syncthreads();
    xs = reinterpret_cast<const uint4*>(stage + size_t(xrow[0] ? g : 0) * (K / 2));
  }
  load_x(0);

  // Two accumulators per tile (even / odd words of a chunk) halve the chain of dependent mma.
  float acc[TILES][2][4];
#pragma unroll
  for (int i = 0; i < TILES; i++)
#pragma unroll
    for (int h = 0; h < 2; h++) acc[i][h][0] = acc[i][h][1] = acc[i][h][2] = acc[i][h][3] = 0.f;

  for (int base = 0; base < iters; base += S) {
#pragma unroll
    for (int u = 0; u < S; u++) {
      const int it = base + u;
      if (it >= iters) break;
      cp_async_wait<S - 1>();  // iteration it's group has landed (S - 1 younger ones may still fly)
      uint4 cur[TILES];
      float s[TILES];
#pragma unroll
      for (int i = 0; i < TILES; i++) cur[i] = ring[(u * TILES + i) * 32], s[i] = sv[u][i];
      issue(u, it + S);  // the slot is free again: the next weights go out before this chunk's math
      // The A fragments, per token row h (g, g + 8; zero when MB <= 8): int4 word wd = weights 8wd..8wd+7, x halves
      // paired (i, i + 4) as the nibbles; int8 word wd = weights 4wd..4wd+3, x halves in order.
      constexpr int NA = INT4 ? 8 : 4;  // mma per chunk
      uint32_t a_lo[2][NA], a_hi[2][NA];
      if constexpr (STAGED) {  // row g's fragments as staged: a_lo then a_hi, NA words each (past K: never read)
        const int c = min(chunk_of(it), chunks - 1);
#pragma unroll
        for (int j = 0; j < XV; j++) {
          const uint4 v = xs[size_t(c) * XV + j];
          uint32_t* dst = j < XV / 2 ? &a_lo[0][4 * j] : &a_hi[0][4 * (j - XV / 2)];
          dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
        }
#pragma unroll
        for (int k = 0; k < NA; k++) a_lo[1][k] = a_hi[1][k] = 0u;
      }
      uint4 xv[STAGED ? 1 : XR][STAGED ? 1 : XV];
      if constexpr (!STAGED) {
#pragma unroll
        for (int h = 0; h < XR; h++)
#pragma unroll
          for (int j = 0; j < XV; j++) xv[h][j] = xnext[h][j];
        load_x(it + 1);
      }
#pragma unroll
      for (int h = 0; h < 2 && !STAGED; h++)
#pragma unroll
        for (int wd = 0; wd < 4; wd++) {
          if (h >= XR) {
#pragma unroll
            for (int j = 0; j < NA / 4; j++) a_lo[h][NA / 4 * wd + j] = a_hi[h][NA / 4 * wd + j] = 0u;
          } else if constexpr (STAGED) {
          } else if constexpr (INT4) {
            const uint32_t* px = &xv[h < XR ? h : 0][wd].x;
            a_lo[h][2 * wd] = __byte_perm(px[0], px[2], 0x5410), a_hi[h][2 * wd] = __byte_perm(px[0], px[2], 0x7632);
            a_lo[h][2 * wd + 1] = __byte_perm(px[1], px[3], 0x5410);
            a_hi[h][2 * wd + 1] = __byte_perm(px[1], px[3], 0x7632);
          } else {
            const uint32_t* px = &xv[h < XR ? h : 0][wd >> 1].x;
            a_lo[h][wd] = px[(wd & 1) * 2], a_hi[h][wd] = px[(wd & 1) * 2 + 1];
          }
        }
#pragma unroll
      for (int i = 0; i < TILES; i++) {
        uint32_t s2;  // (one conversion per chunk)
        const bool exact = scale_pair<T>(s[i], &s2);
        uint32_t p[4][INT4 ? 4 : 2];
        dequant_chunk<T, INT4>(cur[i], s2, s[i], exact, p);
#pragma unroll
        for (int wd = 0; wd < 4; wd++)
#pragma unroll
          for (int j = 0; j < (INT4 ? 2 : 1); j++) {
            const int k = (INT4 ? 2 : 1) * wd + j;
            const uint32_t a[4] = {a_lo[0][k], a_lo[1][k], a_hi[0][k], a_hi[1][k]};
            mma16816<T>(acc[i][wd & 1], a, p[wd][2 * j], p[wd][2 * j + 1]);
          }
      }
    }
  }
  cp_async_wait<0>();  // (only empty groups can be left; nothing may be in flight at exit)

  // acc[i][*][0..1]: token row g, output rows n0 + 8i + 2t, +1; acc[i][*][2..3]: token row g + 8.
  __shared__ float red[WARPS][TILES * 8][MB];
#pragma unroll
  for (int h = 0; h < XR; h++)
    if (xrow[h])
#pragma unroll
      for (int i = 0; i < TILES; i++) {
        red[warp][i * 8 + 2 * t][g + 8 * h] = acc[i][0][2 * h] + acc[i][1][2 * h];
        red[warp][i * 8 + 2 * t + 1][g + 8 * h] = acc[i][0][2 * h + 1] + acc[i][1][2 * h + 1];
      }
  __syncthreads();
  store_warp_sums<T>(red, n0, M, N, bias, res, out, act);
}

// Shared memory of the per-warp cp.async rings (the kernel's ring_all); a staged x follows it.
template <int TILES, int WARPS, int S>
constexpr size_t int_mma_ring_bytes() {
  return size_t(WARPS) * S * TILES * 32 * 16;
}

// One instantiation's launch. A staged kernel is opted in once to its largest size: the flag is a static of this
// function template, so every instantiation (rows, staging) has its own (one flag shared by kernels of the same
// signature left all but the first un-opted: "invalid argument", kernels_test, session 9 run 1). Every staged one,
// not only past 48 KB of dynamic memory: the default 48 KB counts the static reduction arrays too, and the ring's
// 32 KB + 16 KB of x (2 rows of K 4096) were refused at exactly 48 KB (kernels_test, session 17 run 2).
template <typename T, bool INT4, int MB, int TILES, int WARPS, int S, bool STAGED>
cudaError_t launch_int_mma_one(size_t smem, unsigned blocks, const void* x, const void* w, const float* sc, int groups,
                               int cpg_shift, const void* bias, const void* res, void* out, int M, int N, int K,
                               Act act, bool pdl, cudaStream_t s) {
  auto kern = int_mma_gemv_kernel<T, INT4, MB, TILES, WARPS, S, STAGED>;
  if (STAGED) {
    static std::atomic<unsigned long long> configured{0};  // per instantiation, one bit per device
    constexpr size_t most = int_mma_ring_bytes<TILES, WARPS, S>() + kIntMmaStageBytes;  // the largest staged size
    if (const cudaError_t e = smem_limit_once(kern, most, configured); e != cudaSuccess) return e;
  }
  return launch_pdl(kern, blocks, WARPS * 32, smem, pdl, s, static_cast<const T*>(x), static_cast<const uint8_t*>(w),
                    sc, groups, cpg_shift, static_cast<const T*>(bias), static_cast<const T*>(res),
                    static_cast<T*>(out), M, N, K, int(act));
}

// STAGE: x staged in shared memory where it fits (1-4 rows, M x K x 2 <= kIntMmaStageBytes), else as !STAGE.
template <typename T, bool INT4, int TILES, int WARPS, int S, bool STAGE>
cudaError_t launch_int_mma(int M, const void* x, const void* w, const float* sc, int group, const void* bias,
                           const void* res, void* out, int N, int K, Act act, bool pdl, cudaStream_t s) {
  const unsigned blocks = unsigned((N + TILES * 8 - 1) / (TILES * 8));
  // int4: a scale's chunks (group / 32) must be a power of two (groups 32, 64, 128, ...); other groups are refused
  // here and the tuner keeps the CUDA-core variants.
  const int cpg_shift = INT4 ? int4_chunk_shift(group) : 0;
  if (cpg_shift < 0) return cudaErrorInvalidValue;
  const int groups = INT4 ? K / group : 1;
  constexpr size_t ring = int_mma_ring_bytes<TILES, WARPS, S>();
  static_assert(ring <= 48 * 1024, "the ring fits the default dynamic shared memory (no opt-in needed)");
  const size_t stage = size_t(M) * size_t(K) * 2;
  const bool staged = STAGE && M <= 4 && stage <= kIntMmaStageBytes;
  const size_t smem = ring + (staged ? stage : 0);
  if (M < 1 || M > quant_gemv_max_m(INT4 ? QuantKind::Int4 : QuantKind::Int8, kIntMmaFirstVariant))
    return cudaErrorInvalidValue;
#define TSLLM_INT_MMA(MB, ST)                                                                                       \
  launch_int_mma_one<T, INT4, MB, TILES, WARPS, S, ST>(smem, blocks, x, w, sc, groups, cpg_shift, bias, res, out, M, \
                                                       N, K, act, pdl, s)
  switch (M) {  // 1-4 rows (decode's common case): an instantiation each
    case 1: return staged ? TSLLM_INT_MMA(1, STAGE) : TSLLM_INT_MMA(1, false);
    case 2: return staged ? TSLLM_INT_MMA(2, STAGE) : TSLLM_INT_MMA(2, false);
    case 3: return staged ? TSLLM_INT_MMA(3, STAGE) : TSLLM_INT_MMA(3, false);
    case 4: return staged ? TSLLM_INT_MMA(4, STAGE) : TSLLM_INT_MMA(4, false);
    default: break;
  }
  if (M <= 8) return TSLLM_INT_MMA(8, false);
  return TSLLM_INT_MMA(16, false);
#undef TSLLM_INT_MMA
}

// Variants 3-4 of the int kinds: (tiles of 8 rows per block, warps splitting K, iterations in flight per lane);
// 5-6 the same with x staged in shared memory. Measured on the H200 (session 6, Llama-2-7B shapes, M = 1): (2, 8, 4)
// and (2, 4, 4) won every shape in the engine; deeper rings (1, 4, 16) and (2, 4, 8) won gemv_bench's back-to-back
// replays on some shapes but lost 15-30 % inside the decode step (int8 bs-1 TPOT 3.56 / 3.75 ms against 2.91 for
// (2, 8, 4)) and were removed. Staging is a variant, not a rule, because it won int8 and lost int4 in one
// gemv_bench (session 9 run 1, staged for all: int8 gate_up 3328 GB/s vs 3063, int4 1662 vs 1801 unstaged before).
template <typename T, bool INT4>
cudaError_t launch_int_mma_variant(int variant, int M, const void* x, const void* w, const float* sc, int group,
                                   const void* bias, const void* res, void* out, int N, int K, Act act, bool pdl,
                                   cudaStream_t s) {
  switch (variant) {
    case 3: return launch_int_mma<T, INT4, 2, 8, 4, false>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 4: return launch_int_mma<T, INT4, 2, 4, 4, false>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 5: return launch_int_mma<T, INT4, 2, 8, 4, true>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 6: return launch_int_mma<T, INT4, 2, 4, 4, true>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd
}  // namespace tsllm
