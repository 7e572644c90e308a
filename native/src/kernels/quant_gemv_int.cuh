// int8 / int4 weight-only decode gemv (numerics in quant.h), variants 0-2: gemv_impl.cuh's 4-warp kernel with the
// WInt weight format (gemv_stream.cuh): each warp streams ROWS weight rows, dequantises w = T(fp32(q · s)) per
// element as the reference does and accumulates x · w in fp32; the rms_norm prologue folds in as for the fp16 gemv.
// Variants 3-6: the tensor-core kernel of quant_gemv_mma.cuh, 7-18 quant_gemv_mma_a.cuh's, 19-21 the weight-only
// GEMM of quant_gemm_wo.cuh (no prologue).
// Instantiated once per weight kind (quant_gemv_int8.cu, quant_gemv_int4.cu) so the build compiles them in parallel;
// quant_gemv.cu dispatches.
#pragma once
#include "gemv_impl.cuh"
#include "quant.h"
#include "quant_gemv_mma.cuh"
#include "quant_gemm_wo.cuh"
#include "quant_gemv_mma_a.cuh"

namespace tsllm {
namespace kd {
namespace {

// int8 / int4 variants: (rows per warp, chunks in flight per row). Variants with ALU dequantisation (integer / fp32
// bit tricks instead of I2F + F2F) and more loads in flight were measured on the H200 (gemv_bench, 27-49 % slower
// than these on every Llama-2-7B shape) and removed.
template <typename T, bool INT4, int PRO>
cudaError_t launch_int_variant(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,
                               const void* res, void* out, int M, int N, int K, Act act, const void* nw, float eps,
                               bool pdl, cudaStream_t s) {
  using F = WInt<T, INT4>;
  const EwChain none{};
  switch (variant) {
    case 0: return launch_v<F, T, PRO, false, 1, 1, 4>(x, w, sc, group, bias, res, out, M, N, K, int(act), nw, eps, none, pdl, s);
    case 1: return launch_v<F, T, PRO, false, 2, 1, 4>(x, w, sc, group, bias, res, out, M, N, K, int(act), nw, eps, none, pdl, s);
    case 2: return launch_v<F, T, PRO, false, 4, 1, 2>(x, w, sc, group, bias, res, out, M, N, K, int(act), nw, eps, none, pdl, s);
    default:  // 3-6: the tensor-core kernel (quant_gemv_mma.cuh), 7-18 with the weights as A (quant_gemv_mma_a.cuh),
              // 19-21 the GEMM (quant_gemm_wo.cuh)
      if (PRO) return cudaErrorInvalidValue;
      if (variant >= kIntGemmVariant)
        return launch_wo_gemm_variant<T, INT4>(variant, M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
      if (variant >= kIntMmaAVariant)
        return launch_int_mma_a_variant<T, INT4>(variant, M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
      return launch_int_mma_variant<T, INT4>(variant, M, x, w, sc, group, bias, res, out, N, K, act, pdl, s);
  }
}

}  // namespace
}  // namespace kd

// int8_gemv / int4_gemv (quant.h), one per translation unit: nw non-null is the rms_norm prologue (PRO = 1).
#define TSLLM_INT_GEMV(NAME, INT4)                                                                                   \
  cudaError_t NAME(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,         \
                   const void* res, void* out, int M, int N, int K, Act act, const void* nw, float eps, DType dt,   \
                   bool pdl, cudaStream_t s) {                                                                      \
    auto go = [&](auto tag) {                                                                                       \
      using T = decltype(tag);                                                                                      \
      return nw ? kd::launch_int_variant<T, INT4, 1>(variant, x, w, sc, group, bias, res, out, M, N, K, act, nw,  \
                                                     eps, pdl, s)                                                   \
                : kd::launch_int_variant<T, INT4, 0>(variant, x, w, sc, group, bias, res, out, M, N, K, act, nw,  \
                                                     eps, pdl, s);                                                  \
    };                                                                                                              \
    if (dt == DType::F16) return go(half{});                                                                        \
    if (dt == DType::BF16) return go(kd::bf16{});                                                                   \
    return cudaErrorInvalidValue;                                                                                   \
  }                                                                                                                 \
  cudaError_t NAME##_glu(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,   \
                         void* out, int M, int N, int K, Act act, DType dt, bool pdl, cudaStream_t s) {             \
    if (dt == DType::F16)                                                                                           \
      return kd::launch_int_mma_a_variant<half, INT4, true>(variant, M, x, w, sc, group, bias, nullptr, out, N, K,  \
                                                            act, pdl, s);                                           \
    if (dt == DType::BF16)                                                                                          \
      return kd::launch_int_mma_a_variant<kd::bf16, INT4, true>(variant, M, x, w, sc, group, bias, nullptr, out, N, \
                                                                K, act, pdl, s);                                    \
    return cudaErrorInvalidValue;                                                                                   \
  }

}  // namespace tsllm
