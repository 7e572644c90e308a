// The one home of the decode (M <= 4) gemvs' weight streaming, for every weight format: fp16 / bf16 and int8 / int4
// (gemv_impl.cuh's 4-warp kernel), fp8 (quant_gemv.cu, quant_gemv_fp8.cu: big blocks looping over row groups).
// Memory-bound: each warp streams ROWS weight rows with 16-byte non-caching loads, UN chunks per row in flight per
// lane, fp32 accumulation, one rounding at the end. The pieces:
//   - a weight format (WHalf, WInt, WFp8): how many weights a 16-byte chunk holds, a row's length, and how 8 of a
//     chunk's weights become floats (with the row's / group's scale where the format has one) and meet 8 of the
//     vector's (dot8) — all a format says;
//   - WeightStream: the warp's row pointers, the chunks in flight, the loop over a row's chunks;
//   - the vector: vec_chunk (x[m, :] or its rms_norm / gated-act prologue, 8 elements), vec_inv (the rms_norm's
//     inv_rms, block-wide), for_vec_chunks (the block's pass over the vector, e.g. staging it in shared memory);
//   - dot_chunk: the chunk's weights (dequantised by the format) · the vector in fp32 FMAs, in element order;
//   - warp sums, then lane r*M+m writes output (m, n0+r) (store_rows; store_out: the quantised epilogue);
//   - row_groups (the big-block kernels' loop over row groups), launch_persistent (launch_pdl: common.cuh).
// Programmatic dependent launch (pdl, sm_90): every kernel issues its first weight loads before griddepcontrol.wait
// (weights are never written); x / residual are read and out written after it.
#pragma once
#include <math.h>

#include <algorithm>
#include <atomic>

#include "common.cuh"
#include "fp8.cuh"

namespace tsllm {
namespace kd {
namespace {

constexpr int kWarps = 4;  // warps per block of the 4-warp kernels (gemv_impl.cuh, fp8 variants 0-2)

// ---------------- weight formats ----------------
// A format either has dot8 (kDot8: dot8<XT>(raw, j, s, xv, acc) = acc + Σ w_i · x_i over weights 8j..8j+7 of the
// chunk raw, scale s where the format has one, and 8 values of the 16-bit type XT; dot_chunk then loops rows inside
// vector rows, the fp16 gemv's order, and the compiler shares a row's dequantisation between vector rows), or
// dequantises kStep weights of a chunk at a time (dequant(raw, j, s, f)), once per row for every vector row m
// (fp8's order: its x is already floats in shared memory).

// acc + Σ wf[i] · xv[i], xv 8 values of the 16-bit type XT.
template <typename XT>
__device__ __forceinline__ float fma8(const float (&wf)[8], const uint4& xv, float acc) {
  const uint32_t* px = &xv.x;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 f = to_f2<XT>(px[i]);
    acc = fmaf(wf[2 * i], f.x, acc);
    acc = fmaf(wf[2 * i + 1], f.y, acc);
  }
  return acc;
}

// fp16 / bf16 weights (the activation dtype T), no scale.
template <typename T>
struct WHalf {
  using Unit = T;                        // what a row pointer counts
  static constexpr int EPC = 8;          // weights per 16-byte chunk
  static constexpr int kStep = 8;
  static constexpr bool kDot8 = true;
  static constexpr bool kQuant = false;  // epilogue: gemv's (bias, folded chain, residual), no activation
  __device__ static size_t row_units(int K) { return size_t(K); }
  __device__ static int chunks(int K) { return K >> 3; }
  template <int ROWS>
  __device__ static void row_scales(const float*, int, int, float (&)[ROWS]) {}
  template <int ROWS>
  __device__ static void chunk_scales(const float*, int, int, int, int, int, float (&)[ROWS]) {}
  template <typename XT>
  __device__ static float dot8(const uint4& raw, int, float, const uint4& xv, float acc) {
    const uint32_t* pa = &raw.x;
    const uint32_t* pb = &xv.x;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float2 fa = to_f2<T>(pa[i]), fb = to_f2<XT>(pb[i]);
      acc = fmaf(fa.x, fb.x, acc);
      acc = fmaf(fa.y, fb.y, acc);
    }
    return acc;
  }
};

// int8 [N, K] with per-channel scales [N]; int4 packed pairs [N, K/2] (element k in the low nibble of byte k/2 when
// k is even) with group-wise scales [N, K/group]. Dequantised as the reference does: T(fp32(q · s)).
template <typename T, bool INT4>
struct WInt {
  using Unit = uint8_t;
  static constexpr int EPC = INT4 ? 32 : 16;
  static constexpr int kStep = 8;
  static constexpr bool kDot8 = true;
  static constexpr bool kQuant = true;  // epilogue: store_out
  __device__ static size_t row_units(int K) { return INT4 ? size_t(K) / 2 : size_t(K); }
  __device__ static int chunks(int K) { return int(row_units(K) >> 4); }
  // int8: the rows' scales, once; int4: 1 (per chunk below).
  template <int ROWS>
  __device__ static void row_scales(const float* sc, int n0, int N, float (&s)[ROWS]) {
#pragma unroll
    for (int r = 0; r < ROWS; r++) s[r] = !INT4 && n0 + r < N ? __ldg(sc + n0 + r) : 1.f;
  }
  // int4: the scale of chunk c's group (a chunk lies in one group: group % 32 == 0).
  template <int ROWS>
  __device__ static void chunk_scales(const float* sc, int group, int K, int n0, int N, int c, float (&s)[ROWS]) {
    if constexpr (INT4) {
#pragma unroll
      for (int r = 0; r < ROWS; r++)
        s[r] = n0 + r < N ? __ldg(sc + size_t(n0 + r) * (K / group) + c * EPC / group) : 1.f;
    }
  }
  // Weights 8j..8j+7 of the chunk.
  __device__ static void dequant(const uint4& raw, int j, float s, float (&f)[8]) {
    const uint32_t* p = &raw.x;
    if constexpr (INT4) {
      const uint32_t u = p[j];  // 8 nibbles: element i in bits [4i, 4i+4)
#pragma unroll
      for (int i = 0; i < 8; i++) {
        const int q = int(u << (28 - 4 * i)) >> 28;  // sign-extended nibble
        f[i] = to_f(from_f<T>(__fmul_rn(float(q), s)));
      }
    } else {
      const uint32_t u0 = p[2 * j], u1 = p[2 * j + 1];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        f[i] = to_f(from_f<T>(__fmul_rn(float(int8_t(u0 >> (8 * i))), s)));
        f[4 + i] = to_f(from_f<T>(__fmul_rn(float(int8_t(u1 >> (8 * i))), s)));
      }
    }
  }
  template <typename XT>
  __device__ static float dot8(const uint4& raw, int j, float s, const uint4& xv, float acc) {
    float wf[8];
    dequant(raw, j, s, wf);
    return fma8<XT>(wf, xv, acc);
  }
};

// E4M3 weights; the per-channel scale multiplies the whole dot (the kernels' epilogue), not each weight.
struct WFp8 {
  using Unit = uint8_t;
  static constexpr int EPC = 16;
  static constexpr int kStep = 16;
  static constexpr bool kDot8 = false;
  __device__ static size_t row_units(int K) { return size_t(K); }
  __device__ static int chunks(int K) { return K >> 4; }
  __device__ static void dequant(const uint4& raw, int, float, float (&f)[16]) { e4m3x16_to_f(raw, f); }
};

// ---------------- the weight stream ----------------
// A warp's ROWS rows of format F from n0: UN chunks per row in flight per lane, chunks c, c + STEP, ... (STEP: the
// lanes, times the warps splitting K). An inactive warp (n0 >= N) loads nothing. ROW_PTRS (the 4-warp kernel, one
// row group per warp): the rows' pointers are kept, rows past N read row N - 1 (their sums are never stored);
// otherwise (the big-block kernels, which move to the next row group) each load computes its address from the
// row index and rows past N load zeros — fewer registers live across the loop. GLU (with ROW_PTRS false: the FP8
// gemv's gated_act epilogue, quant_gemv.cu) the first ROWS / 2 rows are gate rows n0.. of a [2N, K] gate|up weight,
// the rest the up rows N + n0.. under them; N and n0 count output rows.
template <class F, int UN, int ROWS, int STEP, bool ROW_PTRS = true, bool GLU = false>
struct WeightStream {
  static_assert(!GLU || (!ROW_PTRS && ROWS % 2 == 0), "GLU streams: computed addresses, gate and up rows in pairs");
  static constexpr bool kGlu = GLU;
  using U = typename F::Unit;
  uint4 wv[UN][ROWS];
  const U* row[ROW_PTRS ? ROWS : 1];
  const U* base;
  size_t units;  // a row's units
  int n0, N;
  int chunks;  // 16-byte chunks per row
  bool active;

  __device__ __forceinline__ void rows(const U* w, int K, int n0_, int N_) {
    active = n0_ < N_;
    chunks = F::chunks(K);
    if constexpr (ROW_PTRS) {
#pragma unroll
      for (int r = 0; r < ROWS; r++) row[r] = w + size_t(min(n0_ + r, N_ - 1)) * F::row_units(K);
    } else {
      base = w, units = F::row_units(K), n0 = n0_, N = N_;
    }
  }
  // GLU (gemv_impl.cuh): the first ROWS / 2 rows are gate rows n0.. of a [2N, K] gate|up weight, the rest the up
  // rows N + n0.. under them.
  __device__ __forceinline__ void rows_glu(const U* w, int K, int n0_, int N_) {
    static_assert(ROW_PTRS && ROWS % 2 == 0, "GLU: row pointers, gate and up rows in pairs");
    active = n0_ < N_;
    chunks = F::chunks(K);
#pragma unroll
    for (int r = 0; r < ROWS / 2; r++) {
      const size_t n = size_t(min(n0_ + r, N_ - 1));
      row[r] = w + n * F::row_units(K);
      row[ROWS / 2 + r] = w + (size_t(N_) + n) * F::row_units(K);
    }
  }
  // rows(), then load(c0): a kernel's first loads, issued before griddepcontrol.wait (weights are never written).
  __device__ __forceinline__ void start(const U* w, int K, int n0, int N, int c0) {
    rows(w, K, n0, N);
    load(c0);
  }
  __device__ __forceinline__ void load(int c0) {
#pragma unroll
    for (int u = 0; u < UN; u++) {
      const int c = c0 + u * STEP;
#pragma unroll
      for (int r = 0; r < ROWS; r++) {
        constexpr size_t kChunk = 16 / sizeof(U);
        if constexpr (ROW_PTRS) {
          wv[u][r] = active && c < chunks ? ld_stream(row[r] + size_t(c) * kChunk) : make_uint4(0, 0, 0, 0);
        } else {
          constexpr int kOut = GLU ? ROWS / 2 : ROWS;  // output rows: r's is n0 + r % kOut
          const int o = n0 + r % kOut;
          const size_t wr = GLU && r >= kOut ? size_t(N) + o : size_t(o);  // its weight row
          wv[u][r] = o < N && c < chunks ? ld_stream(base + wr * units + size_t(c) * kChunk) : make_uint4(0, 0, 0, 0);
        }
      }
    }
  }
  // body(wv[u], c) for every chunk c of the rows from c0 (whose loads are in flight), loading the next ones.
  template <class Body>
  __device__ __forceinline__ void run(int& c0, Body&& body) {
    for (;;) {
#pragma unroll
      for (int u = 0; u < UN; u++) {
        const int c = c0 + u * STEP;
        if (c >= chunks) break;
        body(wv[u], c);
      }
      c0 += STEP * UN;
      if (c0 >= chunks) break;
      load(c0);
    }
  }
};

// acc[r][m] += Σ over the chunk's F::EPC weights of row r (format F, scale s[r]) × the vector's elements, fp32
// FMAs in element order. p = pre(j) is what every row m's read of part j of the vector shares (e.g. a norm weight
// chunk); with a kDot8 format xs(p, j, m) returns the vector's 8 values (16-bit type XT) under weights 8j..8j+7,
// otherwise xs(p, j, m, xf) writes the kStep values under weights kStep·j.. as floats.
template <class F, typename XT, int M, int ROWS, class Pre, class X>
__device__ __forceinline__ void dot_chunk(const uint4 (&w)[ROWS], const float (&s)[ROWS], Pre&& pre, X&& xs,
                                          float (&acc)[ROWS][M]) {
  constexpr int S = F::kStep;
#pragma unroll
  for (int j = 0; j < F::EPC / S; j++) {
    const auto p = pre(j);
    if constexpr (F::kDot8) {
#pragma unroll
      for (int m = 0; m < M; m++) {
        const uint4 xv = xs(p, j, m);
#pragma unroll
        for (int r = 0; r < ROWS; r++) acc[r][m] = F::template dot8<XT>(w[r], j, s[r], xv, acc[r][m]);
      }
    } else {
      float xf[M][S];
#pragma unroll
      for (int m = 0; m < M; m++) xs(p, j, m, xf[m]);
#pragma unroll
      for (int r = 0; r < ROWS; r++) {
        float wf[S];
        F::dequant(w[r], j, s[r], wf);
#pragma unroll
        for (int m = 0; m < M; m++)
#pragma unroll
          for (int i = 0; i < S; i++) acc[r][m] = fmaf(wf[i], xf[m][i], acc[r][m]);
      }
    }
  }
}

template <int ROWS, int M>
__device__ __forceinline__ void zero(float (&acc)[ROWS][M]) {
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = 0.f;
}

// ---------------- the vector ----------------
// T(f(a_i, b_i)) for the 8 values of T in a and b, pairwise.
template <typename T, class Fn>
__device__ __forceinline__ uint4 map8(const uint4& a, const uint4& b, Fn&& f) {
  const uint32_t* pa = &a.x;
  const uint32_t* pb = &b.x;
  uint4 o;
  uint32_t* po = &o.x;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 fa = to_f2<T>(pa[i]), fb = to_f2<T>(pb[i]);
    po[i] = pack2<T>(f(fa.x, fb.x), f(fa.y, fb.y));
  }
  return o;
}

// The rms_norm prologue's value, rounded to T exactly as norms.cu writes y: T((x · inv) · w).
template <typename T>
__device__ __forceinline__ uint4 norm8(const uint4& xv, const uint4& wv, float inv) {
  return map8<T>(xv, wv, [inv](float x, float w) { return (x * inv) * w; });  // norms.cu: (v - 0) * rstd * w
}

// max(a, |v_i|) over the 8 values of T in v.
template <typename T>
__device__ __forceinline__ float amax8(const uint4& v, float a) {
  float f[8];
  unpack8<T>(v, f);
#pragma unroll
  for (int j = 0; j < 8; j++) a = fmaxf(a, fabsf(f[j]));
  return a;
}

// The gated prologues' activation: common.cuh's act_value, as gated_act computes it (so the same rounding).
template <int PRO>
__device__ __forceinline__ float pro_act(float x) {
  return act_value(x, PRO == int(GemvPro::GatedSilu) ? Act::Silu : Act::GeluTanh);
}

// The 16-byte chunk c of the vector of row m (8 elements of dtype T), after the prologue PRO (GemvPro):
// plain x[m, :]; rms_norm T((x · inv) · norm_w) with nwv the norm weight's chunk; gated: x is [M, 2K] gate|up and the
// vector T(act(gate) · up), as activations.cu's gated_act writes it.
template <typename T, int PRO>
__device__ __forceinline__ uint4 vec_chunk(const T* __restrict__ x, int m, int c, int K, const uint4& nwv, float inv) {
  if constexpr (PRO == 0) {
    return *reinterpret_cast<const uint4*>(x + size_t(m) * K + size_t(c) * 8);
  } else if constexpr (PRO == int(GemvPro::RmsNorm)) {
    return norm8<T>(*reinterpret_cast<const uint4*>(x + size_t(m) * K + size_t(c) * 8), nwv, inv);
  } else {
    const T* g = x + size_t(m) * 2 * K + size_t(c) * 8;
    const uint4 gv = *reinterpret_cast<const uint4*>(g);
    const uint4 uv = *reinterpret_cast<const uint4*>(g + K);
    return map8<T>(gv, uv, [](float gate, float up) { return pro_act<PRO>(gate) * up; });
  }
}

// The norm weight's chunk c for the rms_norm prologue (zeros otherwise: unused).
template <typename T, int PRO>
__device__ __forceinline__ uint4 norm_chunk(const T* __restrict__ nw, int c) {
  if constexpr (PRO == int(GemvPro::RmsNorm)) return __ldg(reinterpret_cast<const uint4*>(nw + size_t(c) * 8));
  return make_uint4(0, 0, 0, 0);
}

// The block's pass over the vector: fn(m, c, v) for every 16-byte chunk c this thread owns (strided over the
// THREADS threads of the block) and every row m, v = vec_chunk (inv: the rms_norm's, when PRO is it).
template <typename T, int M, int THREADS, int PRO, class Fn>
__device__ __forceinline__ void for_vec_chunks(const T* __restrict__ x, int K, const T* __restrict__ nw,
                                               const float* inv, Fn&& fn) {
  for (int c = threadIdx.x; c < (K >> 3); c += THREADS) {
    const uint4 nwv = norm_chunk<T, PRO>(nw, c);
#pragma unroll
    for (int m = 0; m < M; m++) fn(m, c, vec_chunk<T, PRO>(x, m, c, K, nwv, PRO == int(GemvPro::RmsNorm) ? inv[m] : 1.f));
  }
}

// The block's reduction scratch (one per kernel and shape): block_reduce's partials.
template <int WARPS, int M>
__device__ __forceinline__ float (*block_red())[M] {
  __shared__ float red[WARPS][M];
  return red;
}

// v[m] = the sum (or max, of values >= 0) of v[m] over the block's WARPS warps, in every thread. SYNC_AFTER: the
// scratch may be reused right after.
template <int WARPS, int M, bool SYNC_AFTER>
__device__ __forceinline__ void block_reduce(float (&v)[M], bool is_max) {
  float(*red)[M] = block_red<WARPS, M>();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < M; m++) {
    v[m] = is_max ? warp_max(v[m]) : warp_sum(v[m]);
    if (lane == 0) red[warp][m] = v[m];
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < M; m++) {
    float t = 0.f;  // amax >= 0, sums from 0
#pragma unroll
    for (int i = 0; i < WARPS; i++) t = is_max ? fmaxf(t, red[i][m]) : t + red[i][m];
    v[m] = t;
  }
  if constexpr (SYNC_AFTER) __syncthreads();
}

// acc + Σ v_i² over the 8 values of T in v, fp32 FMAs in element order (the rms_norm's sum of squares).
template <typename T>
__device__ __forceinline__ float sumsq8(const uint4& v, float acc) {
  const uint32_t* pv = &v.x;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 f = to_f2<T>(pv[i]);
    acc = fmaf(f.x, f.x, acc);
    acc = fmaf(f.y, f.y, acc);
  }
  return acc;
}

// inv[m]: the rms_norm prologue's inv_rms of row m (1 for the other prologues), computed by every block over the
// whole row (M·K·2 bytes from L2) while its first weight loads are in flight: norms.cu's rsqrtf(s1 / hidden + eps).
template <typename T, int M, int WARPS, int PRO, bool SYNC_AFTER = false>
__device__ __forceinline__ void vec_inv(const T* __restrict__ x, int K, float eps, float (&inv)[M]) {
#pragma unroll
  for (int m = 0; m < M; m++) inv[m] = 1.f;
  if constexpr (PRO == int(GemvPro::RmsNorm)) {
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) ss[m] = 0.f;
    for_vec_chunks<T, M, WARPS * 32, 0>(x, K, nullptr, nullptr,
                                        [&](int m, int, const uint4& xv) { ss[m] = sumsq8<T>(xv, ss[m]); });
    block_reduce<WARPS, M, SYNC_AFTER>(ss, false);
#pragma unroll
    for (int m = 0; m < M; m++) inv[m] = rsqrtf(ss[m] / K + eps);
  }
}

// ---------------- the norm tail (gemv_norm.cu) ----------------
// The rms_norm of the M rows [M, N] a grid has just written to out, computed by the grid's last block to finish:
// y = T((out · inv_rms) · w) with inv_rms = rsqrtf(Σ out² / N + eps) over the stored (rounded) values, as norms.cu
// writes rms_norm's y (its fp32 sum in another order). Why: at batch 1 the norm after o_proj / down is one block of
// work whose own launch cost about as much again in the decode step. counter: zero before the launch; every block
// counts itself done after its stores (fenced), the one that makes it gridDim.x does the norm and sets it back to
// zero for the next launch (a graph replays it). By then every block has read its x and residual: y may overlap
// them, or be out itself (each thread reads a chunk before writing it).
struct NormTail {
  void* y = nullptr;
  unsigned* counter = nullptr;
  const void* w = nullptr;  // the norm's weight [N]
  float eps = 0.f;
};

template <typename T, int M, int WARPS>
__device__ __forceinline__ void norm_tail(const T* out, int N, const NormTail& t) {
  __shared__ bool last;
  __syncthreads();  // the block's stores of out happen before thread 0's fence (cumulative), one fence a block
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(t.counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  float ss[M];
#pragma unroll
  for (int m = 0; m < M; m++) ss[m] = 0.f;
  auto row = [&](int m, int c) { return __ldcg(reinterpret_cast<const uint4*>(out + size_t(m) * N + size_t(c) * 8)); };
  for (int c = threadIdx.x; c < (N >> 3); c += WARPS * 32)
#pragma unroll
    for (int m = 0; m < M; m++) ss[m] = sumsq8<T>(row(m, c), ss[m]);
  block_reduce<WARPS, M, false>(ss, false);
  float inv[M];
#pragma unroll
  for (int m = 0; m < M; m++) inv[m] = rsqrtf(ss[m] / N + t.eps);
  const T* w = static_cast<const T*>(t.w);
  T* y = static_cast<T*>(t.y);
  for (int c = threadIdx.x; c < (N >> 3); c += WARPS * 32) {
    const uint4 wv = __ldg(reinterpret_cast<const uint4*>(w + size_t(c) * 8));
#pragma unroll
    for (int m = 0; m < M; m++)
      *reinterpret_cast<uint4*>(y + size_t(m) * N + size_t(c) * 8) = norm8<T>(row(m, c), wv, inv[m]);
  }
  if (threadIdx.x == 0) *t.counter = 0u;
}

// ---------------- sums and the store ----------------
template <int ROWS, int M>
__device__ __forceinline__ void warp_sums(float (&acc)[ROWS][M]) {
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = warp_sum(acc[r][m]);
}

// GLU rows (WeightStream GLU): lane r*M+m, r < ROWS / 2, stores output (m, n0+r) from its gate and up sums:
// st(acc[r][m], acc[ROWS / 2 + r][m], m, n).
template <int ROWS, int M, class Store>
__device__ __forceinline__ void store_rows_glu(const float (&acc)[ROWS][M], int n0, int N, int lane, Store&& st) {
  constexpr int H = ROWS / 2;
#pragma unroll
  for (int r = 0; r < H; r++)
#pragma unroll
    for (int m = 0; m < M; m++)
      if (lane == r * M + m && n0 + r < N) st(acc[r][m], acc[H + r][m], m, n0 + r);
}

// Lane r*M+m stores output (m, n0+r): st(acc[r][m], m, n).
template <int ROWS, int M, class Store>
__device__ __forceinline__ void store_rows(const float (&acc)[ROWS][M], int n0, int N, int lane, Store&& st) {
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++)
      if (lane == r * M + m && n0 + r < N) st(acc[r][m], m, n0 + r);
}

// The quantised linears' epilogue, the reference's order: (+ bias) -> activation -> (+ residual), fp32, one
// rounding to T.
template <typename T>
__device__ __forceinline__ void store_out(float v, const T* bias, const T* res, T* out, int m, int n, int N, int act) {
  if (bias) v = __fadd_rn(v, to_f(bias[n]));
  v = act_value(v, Act(act));
  if (res) v = __fadd_rn(v, to_f(res[size_t(m) * N + n]));
  out[size_t(m) * N + n] = from_f<T>(v);
}

// The quantised GLU epilogue (quant_gemv_glu): a gate row's and its up row's scaled sums (+ bias [2N]: gate n, up
// N + n), each rounded to T as store_out writes a linear without activation or residual, then gated_act's
// T(act(gate) · up) into out [M, N].
template <typename T>
__device__ __forceinline__ void store_glu(float g, float u, const T* bias, T* out, int m, int n, int N, int act) {
  if (bias) g = __fadd_rn(g, to_f(bias[n])), u = __fadd_rn(u, to_f(bias[N + n]));
  out[size_t(m) * N + n] = from_f<T>(act_value(to_f(from_f<T>(g)), Act(act)) * to_f(from_f<T>(u)));
}

// The big-block kernels' loop over row groups: group g = blockIdx.x, + gridDim.x, ...; each warp takes ROWS rows
// of its group. ws holds the first group's rows with their first chunks in flight; the weights (format F, unscaled
// in the dot) meet the vector staged by the block: xs(c, j, m, xf) writes row m's F::kStep values under weights
// kStep·j.. of chunk c as floats. st stores as store_rows (a GLU stream: store_rows_glu, N its output rows); the
// next group's first loads go out right after a group's last chunk.
template <class F, int WARPS, int ROWS, int M, class WS, class X, class Store>
__device__ __forceinline__ void row_groups(WS& ws, const typename WS::U* w, int K, int N, X&& xs, Store&& st) {
  constexpr int RO = WS::kGlu ? ROWS / 2 : ROWS;  // output rows a warp
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int groups = (N + WARPS * RO - 1) / (WARPS * RO);
  float none[ROWS];  // (no per-weight scale)
  int g = blockIdx.x;
  for (;;) {
    float acc[ROWS][M];
    zero(acc);
    int c0 = lane;
    if (ws.active)
      ws.run(c0, [&](const uint4 (&wc)[ROWS], int c) {
        dot_chunk<F, float, M, ROWS>(
            wc, none, [](int) { return 0; },
            [&](int, int j, int m, float (&xf)[F::kStep]) { xs(c, j, m, xf); }, acc);
      });
    warp_sums(acc);
    if constexpr (WS::kGlu) store_rows_glu(acc, (g * WARPS + warp) * RO, N, lane, st);
    else store_rows(acc, (g * WARPS + warp) * RO, N, lane, st);
    g += gridDim.x;
    if (g >= groups) break;
    ws.start(w, K, (g * WARPS + warp) * RO, N, lane);
  }
}

// ---------------- launches ----------------
// A kernel's shared-memory opt-in (only ever raised) and resident blocks per SM for up to 4 sizes (one per K of the
// model); one per kernel instantiation (a static of its launcher).
struct PersistentCache {
  std::atomic<long long> opted{48 * 1024};
  std::atomic<long long> occ[4] = {{-1}, {-1}, {-1}, {-1}};  // (smem << 8) | blocks per SM
  std::atomic<int> next{0};
};

// kern's dynamic shared memory raised to smem where that is above what pc says it already allows. (Not to the
// device's opt-in maximum once per device, as smem_limit_once could: the limit counts the kernel's static shared
// memory too, and raising it to the maximum failed with invalid argument on the H200, session 15 kernels_test.)
template <typename Kern>
cudaError_t opt_in_smem(PersistentCache& pc, Kern kern, size_t smem) {
  if ((long long)smem > pc.opted.load(std::memory_order_relaxed)) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
    pc.opted.store((long long)smem, std::memory_order_relaxed);
  }
  return cudaSuccess;
}

// A kernel that loops over `groups` row groups (row_groups): as many blocks as fit on the GPU at once, at most bps
// per SM, at most one per group. smem: its dynamic shared memory.
template <typename Kern, typename... Args>
cudaError_t launch_persistent(PersistentCache& pc, Kern kern, int threads, size_t smem, long long groups, int bps,
                              bool pdl, cudaStream_t s, Args... args) {
  if (cudaError_t e = opt_in_smem(pc, kern, smem); e != cudaSuccess) return e;
  int per_sm = 0;
  for (auto& slot : pc.occ) {
    const long long c = slot.load(std::memory_order_relaxed);
    if (c >= 0 && size_t(c >> 8) == smem) per_sm = int(c & 0xff);
  }
  if (per_sm == 0) {
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, smem);
    if (e != cudaSuccess) return e;
    if (per_sm < 1) return cudaErrorInvalidConfiguration;
    pc.occ[pc.next.fetch_add(1, std::memory_order_relaxed) & 3].store(((long long)smem << 8) | std::min(per_sm, 255),
                                                                     std::memory_order_relaxed);
  }
  const unsigned blocks = unsigned(std::min<long long>(groups, (long long)std::min(per_sm, bps) * num_sms()));
  return launch_pdl(kern, blocks, threads, smem, pdl, s, args...);
}

}  // namespace
}  // namespace kd
}  // namespace tsllm
