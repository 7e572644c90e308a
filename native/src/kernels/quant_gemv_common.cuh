// Shared by the quantised decode gemvs of quant_gemv.cu (FP8, first design) and quant_gemv_int.cuh (int8 / int4):
// block size, the epilogue (the reference's order: + bias -> activation -> + residual, one rounding) and the
// launch with programmatic dependent launch.
#pragma once
#include "fp8.cuh"
#include "quant.h"

namespace tsllm {
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

}  // namespace
}  // namespace kd
}  // namespace tsllm
