// Tensor-core decode gemv over int8 / int4 weight-only weights (quant_gemv variants 3-6 of those kinds; 0-2 are
// quant_gemv_int.cuh's CUDA-core kernel). Why: the CUDA-core kernel spends ~6 instructions per int4 weight (extract,
// I2F, FMUL, round to T, widen, FFMA) and runs at 0.6-1.4 TB/s on the H200, issue-bound; here a weight costs about
// two half-precision instructions and the multiply-add goes to the tensor cores.
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
// the A operand (m = token row; rows ≥ M and 8-15 are zeros): lane (g, t) = (lane / 4, lane % 4) streams 16-byte
// chunks of output row n0 + g, and the four lanes of a row take four consecutive chunks, so B's k slots of lane t
// are that lane's own chunk. A dot product may visit K in any order, so the mma's k slots are mapped to weights in
// the order the dequantisation produces them, and x is loaded (from L1 / L2, lanes g < M) and permuted to match:
// int4 pairs nibbles (i, i + 4) of a 32-bit word, int8 pairs neighbours.
// A block of WARPS warps owns TILES tiles of 8 output rows and splits K between its warps (chunk c of a row:
// iteration i, warp w, lane t -> c = (i · WARPS + w) · 4 + t), UN iterations of loads in flight per lane, the first
// issued before griddepcontrol.wait (PDL: weights are never written).
#pragma once
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

template <typename T>
struct Half2Of;
template <>
struct Half2Of<half> {
  using V = half2;
  static constexpr uint32_t kMagic4 = 0x64006400u;  // 1024 in both halves: 1024 + n for a nibble n in the mantissa
  static constexpr uint32_t kMagic8 = 0x64646464u;  // byte 0x64 above a code byte b: 1024 + b
};
template <>
struct Half2Of<bf16> {
  using V = __nv_bfloat162;
  static constexpr uint32_t kMagic4 = 0x43004300u;  // 128 + n
  static constexpr uint32_t kMagic8 = 0;            // (unused: bf16 int8 goes through fp32)
};

template <typename T>
__device__ __forceinline__ uint32_t h2_sub(uint32_t a, float b) {
  using V = typename Half2Of<T>::V;
  const V r = __hsub2(*reinterpret_cast<const V*>(&a), V{from_f<T>(b), from_f<T>(b)});
  return *reinterpret_cast<const uint32_t*>(&r);
}
template <typename T>
__device__ __forceinline__ uint32_t h2_mul(uint32_t a, uint32_t s2) {
  using V = typename Half2Of<T>::V;
  const V r = __hmul2_rn(*reinterpret_cast<const V*>(&a), *reinterpret_cast<const V*>(&s2));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// The B registers of one 32-bit word of a chunk: int4 — 8 nibbles e0..e7 -> 4 pairs (e0,e4), (e1,e5), (e2,e6),
// (e3,e7); int8 — 4 bytes -> 2 pairs (b0,b1), (b2,b3); each value T(q · s). s2: s as a T pair (exact: fast path);
// exact == false: s is not representable in T, so each weight is rounded from fp32(q · s) (the reference's words).
template <typename T, bool INT4>
__device__ __forceinline__ void dequant_word(uint32_t u, uint32_t s2, float s, bool exact, uint32_t (&p)[INT4 ? 4 : 2]) {
  if (exact) {
    if constexpr (INT4) {
      constexpr uint32_t c = Half2Of<T>::kMagic4 | 0x00080008u;  // magic | the sign bit flip (q + 8 in the nibble)
      constexpr float bias = Half2Of<T>::kMagic4 == 0x64006400u ? 1032.f : 136.f;
#pragma unroll
      for (int i = 0; i < 4; i++) p[i] = h2_mul<T>(h2_sub<T>(lop3_and_xor(u >> (4 * i), 0x000F000Fu, c), bias), s2);
    } else if constexpr (sizeof(T) == 2 && Half2Of<T>::kMagic8 != 0) {  // fp16: 1024 + (q + 128)
      const uint32_t v = u ^ 0x80808080u;
      p[0] = h2_mul<T>(h2_sub<T>(__byte_perm(v, Half2Of<T>::kMagic8, 0x4140), 1152.f), s2);
      p[1] = h2_mul<T>(h2_sub<T>(__byte_perm(v, Half2Of<T>::kMagic8, 0x4342), 1152.f), s2);
    } else {  // bf16 int8: 2^23 + (q + 128) as fp32, minus the bias (exact), packed (exact), times s
      const uint32_t v = u ^ 0x80808080u;
      float f[4];
#pragma unroll
      for (int i = 0; i < 4; i++) f[i] = __int_as_float(__byte_perm(v, 0x4B000000u, 0x7540 + i)) - 8388736.f;
      p[0] = h2_mul<T>(pack2<T>(f[0], f[1]), s2);
      p[1] = h2_mul<T>(pack2<T>(f[2], f[3]), s2);
    }
  } else {
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
}

template <typename T, bool INT4, int M, int TILES, int WARPS, int UN>
__global__ void __launch_bounds__(WARPS * 32)
    int_mma_gemv_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sc, int group,
                        const T* __restrict__ bias, const T* res, T* out, int N, int K, int act) {
  constexpr int EPC = INT4 ? 32 : 16;  // weights per 16-byte chunk
  constexpr int XV = EPC / 8;          // x's 16-byte vectors under a chunk
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * TILES * 8;
  const size_t row_bytes = INT4 ? size_t(K) / 2 : size_t(K);
  const int chunks = int(row_bytes >> 4);
  const int iters = (chunks + 4 * WARPS - 1) / (4 * WARPS);
  const uint8_t* rowp[TILES];
#pragma unroll
  for (int i = 0; i < TILES; i++) rowp[i] = w + size_t(min(n0 + i * 8 + g, N - 1)) * row_bytes;
  auto chunk_of = [&](int it) { return (it * WARPS + warp) * 4 + t; };

  // The weights and (int4) their group scales, UN iterations ahead; rows past N read row N - 1 (never stored).
  uint4 wv[UN][TILES];
  float sv[UN][TILES];
  const int groups = INT4 ? K / group : 1;
  auto load = [&](int u, int it) {
    const int c = chunk_of(it);
#pragma unroll
    for (int i = 0; i < TILES; i++) {
      wv[u][i] = c < chunks ? ld_stream(rowp[i] + size_t(c) * 16) : make_uint4(0, 0, 0, 0);
      const int n = min(n0 + i * 8 + g, N - 1);
      sv[u][i] = __ldg(sc + (INT4 ? size_t(n) * groups + size_t(min(c, chunks - 1)) * EPC / group : size_t(n)));
    }
  };
#pragma unroll
  for (int u = 0; u < UN; u++) load(u, u);
  pdl_wait();

  // x under a chunk: lanes of token rows g < M; zeros past K and in the other rows (0 · anything stays 0).
  const bool xrow = g < M;
  const T* xr = x + size_t(xrow ? g : 0) * K;
  uint4 xnext[XV];
  auto load_x = [&](int it) {
    const int c = chunk_of(it);
#pragma unroll
    for (int j = 0; j < XV; j++)
      xnext[j] = xrow && it < iters && c < chunks ? *reinterpret_cast<const uint4*>(xr + size_t(c) * EPC + 8 * j)
                                                  : make_uint4(0, 0, 0, 0);
  };
  load_x(0);

  float acc[TILES][4];
#pragma unroll
  for (int i = 0; i < TILES; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

  for (int base = 0; base < iters; base += UN) {
#pragma unroll
    for (int u = 0; u < UN; u++) {
      const int it = base + u;
      if (it >= iters) break;
      uint4 cur[TILES];
      float s[TILES];
#pragma unroll
      for (int i = 0; i < TILES; i++) cur[i] = wv[u][i], s[i] = sv[u][i];
      if (it + UN < iters) load(u, it + UN);
      uint4 xv[XV];
#pragma unroll
      for (int j = 0; j < XV; j++) xv[j] = xnext[j];
      load_x(it + 1);
      // The A fragments (rows g + 8 zero): int4 word wd = weights 8wd..8wd+7, x halves paired (i, i + 4) as the
      // nibbles; int8 word wd = weights 4wd..4wd+3, x halves in order.
      constexpr int NA = INT4 ? 8 : 4;  // mma per chunk
      uint32_t a_lo[NA], a_hi[NA];
#pragma unroll
      for (int wd = 0; wd < 4; wd++) {
        if constexpr (INT4) {
          const uint32_t* px = &xv[wd].x;
          a_lo[2 * wd] = __byte_perm(px[0], px[2], 0x5410), a_hi[2 * wd] = __byte_perm(px[0], px[2], 0x7632);
          a_lo[2 * wd + 1] = __byte_perm(px[1], px[3], 0x5410), a_hi[2 * wd + 1] = __byte_perm(px[1], px[3], 0x7632);
        } else {
          const uint32_t* px = &xv[wd >> 1].x;
          a_lo[wd] = px[(wd & 1) * 2], a_hi[wd] = px[(wd & 1) * 2 + 1];
        }
      }
#pragma unroll
      for (int i = 0; i < TILES; i++) {
        const T sT = from_f<T>(s[i]);
        const bool exact = to_f(sT) == s[i];
        const uint32_t s2 = pack2<T>(to_f(sT), to_f(sT));
        const uint32_t* pw = &cur[i].x;
#pragma unroll
        for (int wd = 0; wd < 4; wd++) {
          uint32_t p[INT4 ? 4 : 2];
          dequant_word<T, INT4>(pw[wd], s2, s[i], exact, p);
#pragma unroll
          for (int j = 0; j < (INT4 ? 2 : 1); j++) {
            const int k = (INT4 ? 2 : 1) * wd + j;
            const uint32_t a[4] = {a_lo[k], 0u, a_hi[k], 0u};
            mma16816<T>(acc[i], a, p[2 * j], p[2 * j + 1]);
          }
        }
      }
    }
  }

  // acc[i][0..1]: token row g, output rows n0 + 8i + 2t, +1 (rows g + 8 of the tile are the zero rows of A).
  __shared__ float red[WARPS][TILES * 8][M];
  if (xrow)
#pragma unroll
    for (int i = 0; i < TILES; i++) {
      red[warp][i * 8 + 2 * t][g] = acc[i][0];
      red[warp][i * 8 + 2 * t + 1][g] = acc[i][1];
    }
  __syncthreads();
  for (int idx = threadIdx.x; idx < TILES * 8 * M; idx += WARPS * 32) {
    const int r = idx / M, m = idx % M, n = n0 + r;
    if (n >= N) continue;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < WARPS; k++) v += red[k][r][m];
    store_out<T>(v, bias, res, out, m, n, N, act);
  }
}

template <typename T, bool INT4, int TILES, int WARPS, int UN>
cudaError_t launch_int_mma(int M, const void* x, const void* w, const float* sc, int group, const void* bias,
                           const void* res, void* out, int N, int K, Act act, bool pdl, cudaStream_t s) {
  const unsigned blocks = unsigned((N + TILES * 8 - 1) / (TILES * 8));
  auto go = [&](auto kern) {
    return launch_pdl(kern, blocks, WARPS * 32, 0, pdl, s, static_cast<const T*>(x), static_cast<const uint8_t*>(w),
                      sc, group, static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(out), N, K,
                      int(act));
  };
  switch (M) {
    case 1: return go(int_mma_gemv_kernel<T, INT4, 1, TILES, WARPS, UN>);
    case 2: return go(int_mma_gemv_kernel<T, INT4, 2, TILES, WARPS, UN>);
    case 3: return go(int_mma_gemv_kernel<T, INT4, 3, TILES, WARPS, UN>);
    case 4: return go(int_mma_gemv_kernel<T, INT4, 4, TILES, WARPS, UN>);
    default: return cudaErrorInvalidValue;
  }
}

// Variants 3-6 of the int kinds: (tiles of 8 rows per block, warps splitting K, iterations of loads in flight).
template <typename T, bool INT4>
cudaError_t launch_int_mma_variant(int variant, int M, const void* x, const void* w, const float* sc, int group,
                                   const void* bias, const void* res, void* out, int N, int K, Act act, bool pdl,
                                   cudaStream_t s) {
  switch (variant) {
    case 3: return launch_int_mma<T, INT4, 1, 8, 4>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 4: return launch_int_mma<T, INT4, 2, 8, 2>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 5: return launch_int_mma<T, INT4, 2, 4, 4>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 6: return launch_int_mma<T, INT4, 1, 4, 4>(M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd
}  // namespace tsllm
