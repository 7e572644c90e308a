// Decode (M <= 4) linears over quantised weights, reading the stored bytes directly: FP8 W8A8 and int8 / int4
// weight-only (numerics in quant.h). Memory-bound like the half-precision gemv: each warp streams ROWS weight rows
// with 16-byte non-caching loads, several chunks in flight per lane, fp32 accumulation, one rounding at the end.
//   fp8: the block first quantises the M activation rows per token into shared memory (amax over K, scale, e4m3 of
//        x / scale: the kernel is the activation quantisation, no separate pass), then dots E4M3 x E4M3 in fp32
//        (every product is exact) and scales by fp32(s_x · s_w[n]). The grid is at most as many blocks as fit on
//        the GPU at once and loops over row groups, so the quantisation is done once per resident block.
//   int8 / int4: w = T(fp32(q · s)) per element (the reference's dequantisation), fp32 dot with x
//        (quant_gemv_int.cuh, instantiated by quant_gemv_int8.cu / quant_gemv_int4.cu).
// This file holds FP8 variants 0-2 (the first design) and the dispatch; FP8 variants 3-7 are quant_gemv_fp8.cu,
// 8-10 quant_gemv_fp8_mma.cu.
// Programmatic dependent launch (pdl and sm_90): the first weight loads are issued before
// griddepcontrol.wait; x / residual are read and out written after it.
#include "gemv_stream.cuh"
#include "quant.h"

#include <string>

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

// ---------------- FP8 W8A8, first design (variants 0-2) ----------------
// GLU (fp8_gemv_glu, variants 1-2): w and sw are gate|up ([2N, K], [2N]), N the output width; each warp streams
// ROWS / 2 gate rows and their up rows, rounds both sums as the plain kernel writes a linear without activation or
// residual, and stores gated_act's T(act(gate) · up) (act: the gated activation). A row's sum does not depend on
// which rows share its warp, so the output is bit-identical to the plain kernel's gate_up followed by gated_act.
template <typename T, int M, int ROWS, bool GLU>
__global__ void __launch_bounds__(kWarps * 32)
    fp8_gemv_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sw,
                    const T* __restrict__ bias, const T* res, T* out, int N, int K, int act) {
  constexpr int UN = ROWS >= 4 ? 2 : 4;  // 16-byte chunks in flight per lane and row
  constexpr int RO = GLU ? ROWS / 2 : ROWS;  // output rows a warp
  extern __shared__ __align__(16) uint8_t s_q[];  // [M][K] e4m3 of the quantised activations
  pdl_trigger();
  WeightStream<WFp8, UN, ROWS, 32, false, GLU> ws;
  ws.start(w, K, (blockIdx.x * kWarps + (threadIdx.x >> 5)) * RO, N, threadIdx.x & 31);
  pdl_wait();

  // Per-token scales: amax over the row (fp32 of T), s = fp32(amax / 448), 1 for a zero row.
  float am[M] = {};
  for_vec_chunks<T, M, kWarps * 32, 0>(x, K, nullptr, nullptr,
                                       [&](int m, int, const uint4& v) { am[m] = amax8<T>(v, am[m]); });
  block_reduce<kWarps, M, false>(am, true);
  float sx[M];
#pragma unroll
  for (int m = 0; m < M; m++) sx[m] = e4m3_row_scale(am[m]);
  for_vec_chunks<T, M, kWarps * 32, 0>(x, K, nullptr, nullptr, [&](int m, int c, const uint4& v) {
    float f[8];
    unpack8<T>(v, f);
    *reinterpret_cast<uint2*>(s_q + size_t(m) * K + size_t(c) * 8) = f8_to_e4m3x8(f, sx[m]);
  });
  __syncthreads();

  auto xs = [&](int c, int, int m, float (&xf)[16]) {  // the quantised x's 16 E4M3 values under chunk c
    e4m3x16_to_f(*reinterpret_cast<const uint4*>(s_q + size_t(m) * K + size_t(c) * 16), xf);
  };
  if constexpr (GLU) {
    row_groups<WFp8, kWarps, ROWS, M>(ws, w, K, N, xs, [&](float gv, float uv, int m, int n) {
      store_glu<T>(gv * __fmul_rn(sx[m], __ldg(sw + n)), uv * __fmul_rn(sx[m], __ldg(sw + N + n)), bias, out, m, n, N,
                   act);
    });
  } else {
    row_groups<WFp8, kWarps, ROWS, M>(ws, w, K, N, xs, [&](float v, int m, int n) {
      store_out<T>(v * __fmul_rn(sx[m], __ldg(sw + n)), bias, res, out, m, n, N, act);
    });
  }
}

template <typename T, int M, int ROWS, bool GLU>
cudaError_t launch_fp8(const void* x, const void* w, const float* sw, const void* bias, const void* res, void* out,
                       int N, int K, Act act, bool pdl, cudaStream_t s) {
  // As many blocks as fit on the GPU at once (each block quantises x once, then loops over row groups).
  static PersistentCache pc;
  constexpr int RO = GLU ? ROWS / 2 : ROWS;
  return launch_persistent(pc, fp8_gemv_kernel<T, M, ROWS, GLU>, kWarps * 32, size_t(M) * K,
                           (N + kWarps * RO - 1) / (kWarps * RO), 255, pdl, s, static_cast<const T*>(x),
                           static_cast<const uint8_t*>(w), sw, static_cast<const T*>(bias), static_cast<const T*>(res),
                           static_cast<T*>(out), N, K, int(act));
}

template <typename T, int M, bool GLU>
cudaError_t launch_fp8_variant(int variant, const void* x, const void* w, const float* sc, const void* bias,
                               const void* res, void* out, int N, int K, Act act, bool pdl, cudaStream_t s) {
  switch (variant) {
    case 0:
      if constexpr (GLU) return cudaErrorInvalidValue;  // one row a warp: no gate / up pair
      else return launch_fp8<T, M, 1, false>(x, w, sc, bias, res, out, N, K, act, pdl, s);
    case 1: return launch_fp8<T, M, 2, GLU>(x, w, sc, bias, res, out, N, K, act, pdl, s);
    case 2: return launch_fp8<T, M, 4, GLU>(x, w, sc, bias, res, out, N, K, act, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T, bool GLU = false>
cudaError_t launch_fp8_m(int variant, int M, const void* x, const void* w, const float* sc, const void* bias,
                         const void* res, void* out, int N, int K, Act act, bool pdl, cudaStream_t s) {
  switch (M) {
    case 1: return launch_fp8_variant<T, 1, GLU>(variant, x, w, sc, bias, res, out, N, K, act, pdl, s);
    case 2: return launch_fp8_variant<T, 2, GLU>(variant, x, w, sc, bias, res, out, N, K, act, pdl, s);
    case 3: return launch_fp8_variant<T, 3, GLU>(variant, x, w, sc, bias, res, out, N, K, act, pdl, s);
    case 4: return launch_fp8_variant<T, 4, GLU>(variant, x, w, sc, bias, res, out, N, K, act, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd

const char* quant_gemv_unsupported(QuantKind kind, int M, int K, int group, const void* x, const void* w, DType dt) {
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (dt != DType::F16 && dt != DType::BF16) return "activation dtype is not fp16/bf16";
  int most = 0;  // the most rows any variant of the kind takes
  for (int v = 0; v < quant_gemv_variants(kind); v++) most = std::max(most, quant_gemv_max_m(kind, v));
  static const std::string wide = "M outside 1.." + std::to_string(kIntGemmMaxM),
                           narrow = "M outside 1.." + std::to_string(kQuantGemvMaxM);
  if (M < 1 || M > most) return (most == kIntGemmMaxM ? wide : narrow).c_str();
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

int quant_gemv_max_m(QuantKind kind, int variant) {
  if (kind == QuantKind::Fp8 || variant < kIntMmaFirstVariant) return kQuantGemvMaxM;
  if (variant >= kIntGemmVariant) return kIntGemmMaxM;
  return variant >= kIntMmaAVariant ? kIntMmaAGemvMaxM : kIntMmaGemvMaxM;
}

bool quant_gemv_post_scale(QuantKind kind, int variant) {
  return kind != QuantKind::Fp8 && variant >= kIntMmaPostVariant && variant < kIntGemmVariant;
}

bool quant_gemv_takes(QuantKind kind, int variant, int M, int K, int group) {
  if (variant < 0 || variant >= quant_gemv_variants(kind) || M > quant_gemv_max_m(kind, variant)) return false;
  if (kind == QuantKind::Fp8 || variant < kIntMmaFirstVariant) return true;
  const bool int4 = kind == QuantKind::Int4;
  if (int4 && int4_chunk_shift(group) < 0) return false;
  const bool whole = K % (int4 ? 128 : 64) == 0;  // whole iterations of 4 chunks a row
  if (variant >= kIntGemmVariant) return whole;
  if (!quant_gemv_post_scale(kind, variant)) return true;
  // Post-scale: one scale a row in an iteration too (int8's per-row scale always is one).
  return whole && (!int4 || int4_chunk_shift(group) >= 2);
}

int quant_gemv_variants(QuantKind kind) { return kind == QuantKind::Fp8 ? kFp8GemvVariants : kIntGemvVariants; }

bool quant_gemv_has_prologue(QuantKind kind, int variant) {
  return variant >= 0 && variant < quant_gemv_variants(kind) &&
         (kind == QuantKind::Fp8 ? variant >= 3 : variant < kIntMmaFirstVariant);
}

bool quant_gemv_glu_takes(QuantKind kind, int variant, int M, int K, int group) {
  if (kind == QuantKind::Fp8) return (variant == 1 || variant == 2) && quant_gemv_takes(kind, variant, M, K, group);
  const int base = variant >= kIntMmaPostVariant ? variant - (kIntMmaPostVariant - kIntMmaAVariant) : variant;
  const bool two_tiles =
      variant >= kIntMmaAVariant && variant < kIntGemmVariant && (base == 7 || base == 10 || base == 12);
  return two_tiles && quant_gemv_takes(kind, variant, M, K, group);
}

cudaError_t quant_gemv_glu(int variant, QuantKind kind, const void* x, const void* w, const float* scales, int group,
                           const void* bias, void* out, int M, int N, int K, Act act, DType dt, bool pdl,
                           cudaStream_t s) {
  if (quant_gemv_unsupported(kind, M, K, group, x, w, dt) || !quant_gemv_glu_takes(kind, variant, M, K, group) ||
      (act != Act::Silu && act != Act::GeluTanh))
    return cudaErrorInvalidValue;
  if (N <= 0) return cudaSuccess;
  if (kind == QuantKind::Fp8)
    return dt == DType::F16
               ? kd::launch_fp8_m<half, true>(variant, M, x, w, scales, bias, nullptr, out, N, K, act, pdl, s)
               : kd::launch_fp8_m<kd::bf16, true>(variant, M, x, w, scales, bias, nullptr, out, N, K, act, pdl, s);
  return kind == QuantKind::Int4 ? int4_gemv_glu(variant, x, w, scales, group, bias, out, M, N, K, act, dt, pdl, s)
                                 : int8_gemv_glu(variant, x, w, scales, group, bias, out, M, N, K, act, dt, pdl, s);
}

cudaError_t quant_gemv(int variant, QuantKind kind, const void* x, const void* w, const float* scales, int group,
                       const void* bias, const void* residual, void* out, int M, int N, int K, Act act, DType dt,
                       bool pdl, cudaStream_t s, const GemvPrologue& pro) {
  if (quant_gemv_unsupported(kind, M, K, group, x, w, dt)) return cudaErrorInvalidValue;
  if (!quant_gemv_takes(kind, variant, M, K, group)) return cudaErrorInvalidValue;
  const void* nw = nullptr;
  if (pro.kind == GemvPro::RmsNorm) {
    if (!pro.norm_w || (reinterpret_cast<uintptr_t>(pro.norm_w) & 15) || !quant_gemv_has_prologue(kind, variant))
      return cudaErrorInvalidValue;
    nw = pro.norm_w;
  } else if (pro.kind != GemvPro::None) {
    return cudaErrorInvalidValue;  // gated-act prologues: not for quantised linears
  }
  if (N <= 0) return cudaSuccess;
  switch (kind) {
    case QuantKind::Fp8:
      if (variant >= kFp8RowsGemvFirst)  // (the tensor-core variants, with x or over FP8 rows)
        return fp8_gemv_mma(variant, x, w, scales, bias, residual, out, M, N, K, act, nw, pro.eps, dt, pdl, s);
      if (variant >= 3) return fp8_gemv2(variant, x, w, scales, bias, residual, out, M, N, K, act, nw, pro.eps, dt, pdl, s);
      if (nw) return cudaErrorInvalidValue;  // variants 0-2 have no prologue
      return dt == DType::F16 ? kd::launch_fp8_m<half>(variant, M, x, w, scales, bias, residual, out, N, K, act, pdl, s)
                              : kd::launch_fp8_m<kd::bf16>(variant, M, x, w, scales, bias, residual, out, N, K, act, pdl, s);
    case QuantKind::Int8:
      return int8_gemv(variant, x, w, scales, group, bias, residual, out, M, N, K, act, nw, pro.eps, dt, pdl, s);
    case QuantKind::Int4:
      return int4_gemv(variant, x, w, scales, group, bias, residual, out, M, N, K, act, nw, pro.eps, dt, pdl, s);
  }
  return cudaErrorInvalidValue;
}

}  // namespace tsllm