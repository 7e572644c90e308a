// gemv variants 10-13 with the gated-act prologue (gemv_wide.cuh), its own translation unit (parallel build).
#include "gemv_wide.cuh"

namespace tsllm {

cudaError_t gemv_wide_gated_launch(int variant, GemvPro pro, const void* x, const void* w, const void* bias,
                                   const void* res, void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s) {
  constexpr int S = int(GemvPro::GatedSilu), G = int(GemvPro::GatedGeluTanh);
  if (pro == GemvPro::GatedSilu)
    return dt == DType::F16 ? kd::wide_launch<half, S>(variant, M, x, w, bias, res, out, N, K, nullptr, 0.f, pdl, s)
                            : kd::wide_launch<kd::bf16, S>(variant, M, x, w, bias, res, out, N, K, nullptr, 0.f, pdl, s);
  if (pro == GemvPro::GatedGeluTanh)
    return dt == DType::F16 ? kd::wide_launch<half, G>(variant, M, x, w, bias, res, out, N, K, nullptr, 0.f, pdl, s)
                            : kd::wide_launch<kd::bf16, G>(variant, M, x, w, bias, res, out, N, K, nullptr, 0.f, pdl, s);
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
