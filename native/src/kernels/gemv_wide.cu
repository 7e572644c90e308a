// gemv variants 10-13, plain and with the rms_norm prologue (gemv_wide.cuh); gemv_wide_gated.cu has the gated ones.
#include "gemv_wide.cuh"

namespace tsllm {

cudaError_t gemv_wide_launch(int variant, const GemvPrologue& pro, const void* x, const void* w, const void* bias,
                             const void* res, void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s) {
  switch (pro.kind) {
    case GemvPro::None:
      return dt == DType::F16
                 ? kd::wide_launch<half, 0>(variant, M, x, w, bias, res, out, N, K, nullptr, 0.f, pdl, s)
                 : kd::wide_launch<kd::bf16, 0>(variant, M, x, w, bias, res, out, N, K, nullptr, 0.f, pdl, s);
    case GemvPro::RmsNorm:
      return dt == DType::F16
                 ? kd::wide_launch<half, 1>(variant, M, x, w, bias, res, out, N, K, pro.norm_w, pro.eps, pdl, s)
                 : kd::wide_launch<kd::bf16, 1>(variant, M, x, w, bias, res, out, N, K, pro.norm_w, pro.eps, pdl, s);
    case GemvPro::GatedSilu:
    case GemvPro::GatedGeluTanh: return gemv_wide_gated_launch(variant, pro.kind, x, w, bias, res, out, M, N, K, dt, pdl, s);
  }
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
