// gemv with the rms_norm prologue (gemv_impl.cuh, PRO = GemvPro::RmsNorm): its own translation unit so the
// build compiles the variants in parallel with gemv.cu / gemv_gated.cu.
#include "gemv_impl.cuh"

namespace tsllm {

cudaError_t gemv_rms_launch(int variant, const void* x, const void* norm_w, float eps, const void* w, const void* bias,
                            const void* res, void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s) {
  constexpr int P = int(GemvPro::RmsNorm);
  return dt == DType::F16 ? kd::launch<__half, P>(variant, x, w, bias, res, out, M, N, K, norm_w, eps, pdl, s)
                          : kd::launch<__nv_bfloat16, P>(variant, x, w, bias, res, out, M, N, K, norm_w, eps, pdl, s);
}

}  // namespace tsllm
