// The int8-wo decode gemv (quant_gemv_int.cuh), its own translation unit so the build compiles it in parallel.
#include <type_traits>

#include "quant_gemv_int.cuh"

namespace tsllm {

cudaError_t int8_gemv(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,
                      const void* res, void* out, int M, int N, int K, Act act, const void* nw, float eps, DType dt,
                      bool pdl, cudaStream_t s) {
  return int_gemv_dispatch<false>(variant, x, w, sc, group, bias, res, out, M, N, K, act, nw, eps, dt, pdl, s);
}

}  // namespace tsllm
