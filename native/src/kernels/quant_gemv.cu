// Decode (M <= 4) linears over quantised weights, reading the stored bytes directly: FP8 W8A8 and int8 / int4
// weight-only (numerics in quant.h). Memory-bound like the half-precision gemv: each warp streams ROWS weight rows
// with 16-byte non-caching loads, several chunks in flight per lane, fp32 accumulation, one rounding at the end.
//   fp8: the block first quantises the M activation rows per token into shared memory (amax over K, scale, e4m3 of
//        x / scale: the kernel is the activation quantisation, no separate pass), then dots E4M3 x E4M3 in fp32
//        (every product is exact) and scales by fp32(s_x · s_w[n]). The grid is at most as many blocks as fit on
//        the GPU at once and loops over row groups, so the quantisation is done once per resident block.
//   int8 / int4: w = T(fp32(q · s)) per element (the reference's dequantisation), fp32 dot with x.
// Programmatic dependent launch (pdl and sm_90): the first weight loads are issued before
// griddepcontrol.wait; x / residual are read and out written after it.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "fp8.cuh"
#include "quant.h"

namespace tsllm {

const char* quant_kind_name(QuantKind k) {
  switch (k) {
    case QuantKind::Fp8: return "fp8";
    case QuantKind::Int8: return "int8-wo";
    case QuantKind::Int4: return "int4-wo";
  }
  return "?";
}

namespace kd {
namespace {

constexpr int kQWarps = 4;

// The reference's epilogue order: (+ bias) -> activation -> (+ residual), fp32, one rounding to T.
template <typename T>
__device__ __forceinline__ void store_out(float v, const T* bias, const T* res, T* out, int m, int n, int N, int act) {
  if (bias) v = __fadd_rn(v, to_f(bias[n]));
  v = act_value(v, Act(act));
  if (res) v = __fadd_rn(v, to_f(res[(size_t)m * N + n]));
  out[(size_t)m * N + n] = from_f<T>(v);
}

// Sum over the lanes of a warp of acc[r][m], then lane r*M+m writes (m, n0+r).
template <typename T, int M, int ROWS>
__device__ __forceinline__ void reduce_store(float (&acc)[ROWS][M], float (&mul)[ROWS][M], int n0, int lane,
                                             const T* bias, const T* res, T* out, int N, int act) {
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = warp_sum(acc[r][m]);
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++)
      if (lane == r * M + m && n0 + r < N) store_out<T>(acc[r][m] * mul[r][m], bias, res, out, m, n0 + r, N, act);
}

// ---------------- FP8 W8A8 ----------------
template <typename T, int M, int ROWS>
__global__ void __launch_bounds__(kQWarps * 32)
    fp8_gemv_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sw,
                    const T* __restrict__ bias, const T* res, T* out, int N, int K, int act) {
  constexpr int UN = ROWS >= 4 ? 2 : 4;  // 16-byte chunks in flight per lane and row
  extern __shared__ __align__(16) uint8_t s_q[];  // [M][K] e4m3 of the quantised activations
  __shared__ float s_red[kQWarps][M];
  __shared__ float s_sx[M];
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int chunks = K >> 4;  // 16 weights per chunk
  const int groups = (N + kQWarps * ROWS - 1) / (kQWarps * ROWS);
  int g = blockIdx.x;
  int n0 = (g * kQWarps + warp) * ROWS;
  uint4 wv[UN][ROWS];
  auto load = [&](int c0) {
#pragma unroll
    for (int u = 0; u < UN; u++) {
      const int c = c0 + u * 32;
#pragma unroll
      for (int r = 0; r < ROWS; r++)
        wv[u][r] = n0 + r < N && c < chunks ? ld_stream(w + (size_t)(n0 + r) * K + (size_t)c * 16)
                                            : make_uint4(0, 0, 0, 0);
    }
  };
  load(lane);
  pdl_wait();

  // Per-token scales: amax over the row (fp32 of T), s = fp32(amax / 448), 1 for a zero row.
  const int vchunks = K >> 3;  // 8 elements of T per 16 bytes
  float am[M];
#pragma unroll
  for (int m = 0; m < M; m++) am[m] = 0.f;
  for (int c = threadIdx.x; c < vchunks; c += blockDim.x) {
#pragma unroll
    for (int m = 0; m < M; m++) {
      float f[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(x + (size_t)m * K + (size_t)c * 8), f);
#pragma unroll
      for (int j = 0; j < 8; j++) am[m] = fmaxf(am[m], fabsf(f[j]));
    }
  }
#pragma unroll
  for (int m = 0; m < M; m++) {
    am[m] = warp_max(am[m]);
    if (lane == 0) s_red[warp][m] = am[m];
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float a = 0.f;
#pragma unroll
    for (int i = 0; i < kQWarps; i++) a = fmaxf(a, s_red[i][threadIdx.x]);
    s_sx[threadIdx.x] = a > 0.f ? __fdiv_rn(a, kE4m3Max) : 1.f;
  }
  __syncthreads();
  float sx[M];
#pragma unroll
  for (int m = 0; m < M; m++) sx[m] = s_sx[m];
  for (int c = threadIdx.x; c < vchunks; c += blockDim.x) {
#pragma unroll
    for (int m = 0; m < M; m++) {
      float f[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(x + (size_t)m * K + (size_t)c * 8), f);
      *reinterpret_cast<uint2*>(s_q + (size_t)m * K + (size_t)c * 8) = f8_to_e4m3x8(f, sx[m]);
    }
  }
  __syncthreads();

  for (;;) {
    float acc[ROWS][M];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int m = 0; m < M; m++) acc[r][m] = 0.f;
    if (n0 < N) {
      int c0 = lane;
      for (;;) {
#pragma unroll
        for (int u = 0; u < UN; u++) {
          const int c = c0 + u * 32;
          if (c >= chunks) break;
          float xf[M][16];
#pragma unroll
          for (int m = 0; m < M; m++)
            e4m3x16_to_f(*reinterpret_cast<const uint4*>(s_q + (size_t)m * K + (size_t)c * 16), xf[m]);
#pragma unroll
          for (int r = 0; r < ROWS; r++) {
            float wf[16];
            e4m3x16_to_f(wv[u][r], wf);
#pragma unroll
            for (int m = 0; m < M; m++)
#pragma unroll
              for (int j = 0; j < 16; j++) acc[r][m] = fmaf(wf[j], xf[m][j], acc[r][m]);
          }
        }
        c0 += 32 * UN;
        if (c0 >= chunks) break;
        load(c0);
      }
    }
    float mul[ROWS][M];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int m = 0; m < M; m++) mul[r][m] = n0 + r < N ? __fmul_rn(sx[m], __ldg(sw + n0 + r)) : 0.f;
    reduce_store<T, M, ROWS>(acc, mul, n0, lane, bias, res, out, N, act);
    g += gridDim.x;
    if (g >= groups) break;
    n0 = (g * kQWarps + warp) * ROWS;
    load(lane);
  }
}

// ---------------- int8 / int4 weight-only ----------------
// 8 consecutive weights of row chunk `raw` starting at element 8*j of the chunk -> floats, dequantised and rounded
// to T as the reference does (T(fp32(q * s))).
template <typename T, bool INT4>
__device__ __forceinline__ void dequant8(const uint4& raw, int j, float s, float (&f)[8]) {
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

// The same values as dequant8 with fp32 / integer ALU ops only, behind TSLLM_INT_GEMV_ALU=1 (read once per
// process; off by default until A/B'd on the GPU). dequant8 spends two conversions per weight (I2F, then F2F to T
// and back), and conversions issue at 16 per SM per clock against 128 for fp32 ops: at int4's 0.5 byte per weight
// that, not HBM, may bound the decode gemv. Here q = float(0x4B000000 | (q + 2^(bits-1))) - (2^23 + 2^(bits-1))
// (exact), and fp32 -> T -> fp32 is the integer round-to-nearest-even of the low mantissa bits: exact for bf16
// (fp32's exponent range) and for half while every q·s of the group is normal and finite in half (s in
// [2^-14, 8000] int4, [2^-14, 500] int8; checked on the host against _Float16 for 5.4e8 (q, s) pairs); a group
// outside that range takes dequant8's conversions.
template <typename T>
__device__ __forceinline__ float round_via_bits(float v) {
  uint32_t b = __float_as_uint(v);
  if constexpr (std::is_same_v<T, half>) b = (b + 0xFFFu + ((b >> 13) & 1u)) & 0xFFFFE000u;
  else b = (b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u;
  return __uint_as_float(b);
}

template <typename T, bool INT4>
__device__ __forceinline__ void dequant8_alu(const uint4& raw, int j, float s, float (&f)[8]) {
  const bool bits_ok =
      !std::is_same_v<T, half> || (s >= 6.103515625e-05f && s <= (INT4 ? 8000.f : 500.f));
  if (!bits_ok) return dequant8<T, INT4>(raw, j, s, f);
  const uint32_t* p = &raw.x;
  if constexpr (INT4) {
    const uint32_t u = p[j] ^ 0x88888888u;  // each nibble q + 8
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const float q = __uint_as_float(0x4B000000u | ((u >> (4 * i)) & 0xFu)) - 8388616.f;
      f[i] = round_via_bits<T>(__fmul_rn(q, s));
    }
  } else {
    const uint32_t u0 = p[2 * j] ^ 0x80808080u, u1 = p[2 * j + 1] ^ 0x80808080u;  // each byte q + 128
#pragma unroll
    for (int i = 0; i < 4; i++) {
      f[i] = round_via_bits<T>(__fmul_rn(__uint_as_float(0x4B000000u | ((u0 >> (8 * i)) & 0xFFu)) - 8388736.f, s));
      f[4 + i] = round_via_bits<T>(__fmul_rn(__uint_as_float(0x4B000000u | ((u1 >> (8 * i)) & 0xFFu)) - 8388736.f, s));
    }
  }
}

template <typename T, int M, int ROWS, bool INT4, bool ALU>
__global__ void __launch_bounds__(kQWarps * 32)
    int_gemv_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sc, int group,
                    const T* __restrict__ bias, const T* res, T* out, int N, int K, int act) {
  constexpr int UN = ROWS >= 4 ? 2 : 4;
  constexpr int EPC = INT4 ? 32 : 16;  // weights per 16-byte chunk
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n0 = (blockIdx.x * kQWarps + warp) * ROWS;
  const size_t row_bytes = INT4 ? (size_t)K / 2 : (size_t)K;
  const int chunks = int(row_bytes >> 4);
  const int gpr = INT4 ? K / group : 1;  // scales per row
  const bool active = n0 < N;
  uint4 wv[UN][ROWS];
  auto load = [&](int c0) {
#pragma unroll
    for (int u = 0; u < UN; u++) {
      const int c = c0 + u * 32;
#pragma unroll
      for (int r = 0; r < ROWS; r++)
        wv[u][r] = active && n0 + r < N && c < chunks ? ld_stream(w + (size_t)(n0 + r) * row_bytes + (size_t)c * 16)
                                                      : make_uint4(0, 0, 0, 0);
    }
  };
  int c0 = lane;
  load(c0);
  pdl_wait();
  float acc[ROWS][M];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = 0.f;
  float srow[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; r++) srow[r] = !INT4 && n0 + r < N ? __ldg(sc + n0 + r) : 1.f;
  if (active) {
    for (;;) {
#pragma unroll
      for (int u = 0; u < UN; u++) {
        const int c = c0 + u * 32;
        if (c >= chunks) break;
        const int k0 = c * EPC;
        float s[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++)
          s[r] = INT4 ? (n0 + r < N ? __ldg(sc + (size_t)(n0 + r) * gpr + k0 / group) : 1.f) : srow[r];
#pragma unroll
        for (int j = 0; j < EPC / 8; j++) {
          float xf[M][8];
#pragma unroll
          for (int m = 0; m < M; m++) unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x + (size_t)m * K + k0 + 8 * j)), xf[m]);
#pragma unroll
          for (int r = 0; r < ROWS; r++) {
            float wf[8];
            if constexpr (ALU) dequant8_alu<T, INT4>(wv[u][r], j, s[r], wf);
            else dequant8<T, INT4>(wv[u][r], j, s[r], wf);
#pragma unroll
            for (int m = 0; m < M; m++)
#pragma unroll
              for (int i = 0; i < 8; i++) acc[r][m] = fmaf(wf[i], xf[m][i], acc[r][m]);
          }
        }
      }
      c0 += 32 * UN;
      if (c0 >= chunks) break;
      load(c0);
    }
  }
  float one[ROWS][M];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) one[r][m] = 1.f;
  reduce_store<T, M, ROWS>(acc, one, n0, lane, bias, res, out, N, act);
}

// ---------------- launch ----------------
template <typename Kern, typename... Args>
cudaError_t launch_pdl(Kern kern, unsigned blocks, size_t smem, bool pdl, cudaStream_t s, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(kQWarps * 32);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl && pdl_supported() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kern, args...);
}

template <typename T, int M, int ROWS>
cudaError_t launch_fp8(const void* x, const void* w, const float* sw, const void* bias, const void* res, void* out,
                       int N, int K, Act act, bool pdl, cudaStream_t s) {
  auto kern = fp8_gemv_kernel<T, M, ROWS>;
  const size_t smem = (size_t)M * K;
  // Opt in to more than 48 KB of dynamic shared memory and size the grid to the blocks that fit at once (each block
  // quantises x once, then loops over row groups). Cached per instantiation for 4 shared-memory sizes (one per K).
  static std::atomic<long long> conf[4] = {{-1}, {-1}, {-1}, {-1}};  // (smem << 16) | blocks per SM
  std::atomic<long long>& slot = conf[(smem >> 4) & 3];
  const long long c = slot.load(std::memory_order_relaxed);
  int per_sm = 0;
  static std::atomic<long long> opted{48 * 1024};  // the kernel's max dynamic shared memory, only ever raised
  if (c < 0 || (size_t)(c >> 16) != smem) {
    cudaError_t e = cudaSuccess;
    if ((long long)smem > opted.load(std::memory_order_relaxed)) {
      e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
      if (e != cudaSuccess) return e;
      opted.store((long long)smem, std::memory_order_relaxed);
    }
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kQWarps * 32, smem);
    if (e != cudaSuccess) return e;
    if (per_sm < 1) return cudaErrorInvalidConfiguration;
    slot.store(((long long)smem << 16) | per_sm, std::memory_order_relaxed);
  } else {
    per_sm = int(c & 0xffff);
  }
  const long long groups = (N + kQWarps * ROWS - 1) / (kQWarps * ROWS);
  const unsigned blocks = (unsigned)std::min<long long>(groups, (long long)per_sm * num_sms());
  return launch_pdl(kern, blocks, smem, pdl, s, static_cast<const T*>(x), static_cast<const uint8_t*>(w), sw,
                    static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(out), N, K, int(act));
}

template <typename T, int M, int ROWS, bool INT4>
cudaError_t launch_int(const void* x, const void* w, const float* sc, int group, const void* bias, const void* res,
                       void* out, int N, int K, Act act, bool pdl, cudaStream_t s) {
  const unsigned blocks = (unsigned)((N + kQWarps * ROWS - 1) / (kQWarps * ROWS));
  static const bool alu = [] {
    const char* v = std::getenv("TSLLM_INT_GEMV_ALU");
    return v && std::strcmp(v, "1") == 0;
  }();
  return launch_pdl(alu ? int_gemv_kernel<T, M, ROWS, INT4, true> : int_gemv_kernel<T, M, ROWS, INT4, false>, blocks,
                    0, pdl, s, static_cast<const T*>(x), static_cast<const uint8_t*>(w), sc, group,
                    static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(out), N, K, int(act));
}

template <typename T, int M, int ROWS>
cudaError_t launch_kind(QuantKind kind, const void* x, const void* w, const float* sc, int group, const void* bias,
                        const void* res, void* out, int N, int K, Act act, bool pdl, cudaStream_t s) {
  switch (kind) {
    case QuantKind::Fp8: return launch_fp8<T, M, ROWS>(x, w, sc, bias, res, out, N, K, act, pdl, s);
    case QuantKind::Int8: return launch_int<T, M, ROWS, false>(x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case QuantKind::Int4: return launch_int<T, M, ROWS, true>(x, w, sc, group, bias, res, out, N, K, act, pdl, s);
  }
  return cudaErrorInvalidValue;
}

template <typename T, int ROWS>
cudaError_t launch_m(int M, QuantKind kind, const void* x, const void* w, const float* sc, int group,
                     const void* bias, const void* res, void* out, int N, int K, Act act, bool pdl, cudaStream_t s) {
  switch (M) {
    case 1: return launch_kind<T, 1, ROWS>(kind, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 2: return launch_kind<T, 2, ROWS>(kind, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 3: return launch_kind<T, 3, ROWS>(kind, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 4: return launch_kind<T, 4, ROWS>(kind, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_variant(int variant, int M, QuantKind kind, const void* x, const void* w, const float* sc,
                           int group, const void* bias, const void* res, void* out, int N, int K, Act act,
                           bool pdl, cudaStream_t s) {
  switch (variant) {
    case 0: return launch_m<T, 1>(M, kind, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 1: return launch_m<T, 2>(M, kind, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    case 2: return launch_m<T, 4>(M, kind, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd

const char* quant_gemv_unsupported(QuantKind kind, int M, int K, int group, const void* x, const void* w, DType dt) {
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (dt != DType::F16 && dt != DType::BF16) return "activation dtype is not fp16/bf16";
  if (M < 1 || M > kQuantGemvMaxM) return "M outside 1..4";
  if (!al16(x) || !al16(w)) return "x or w not 16-byte aligned";
  switch (kind) {
    case QuantKind::Fp8:
    case QuantKind::Int8:
      if (K % 16) return "K is not a multiple of 16";
      break;
    case QuantKind::Int4:
      if (K % 32) return "K is not a multiple of 32";
      if (group <= 0 || group % 32 || K % group) return "int4 group size is not a multiple of 32 dividing K";
      break;
  }
  return nullptr;
}

cudaError_t quant_gemv(int variant, QuantKind kind, const void* x, const void* w, const float* scales, int group,
                       const void* bias, const void* residual, void* out, int M, int N, int K, Act act, DType dt,
                       bool pdl, cudaStream_t s) {
  if (quant_gemv_unsupported(kind, M, K, group, x, w, dt)) return cudaErrorInvalidValue;
  if (N <= 0) return cudaSuccess;
  return dt == DType::F16
             ? kd::launch_variant<half>(variant, M, kind, x, w, scales, group, bias, residual, out, N, K, act, pdl, s)
             : kd::launch_variant<kd::bf16>(variant, M, kind, x, w, scales, group, bias, residual, out, N, K, act, pdl, s);
}

}  // namespace tsllm
