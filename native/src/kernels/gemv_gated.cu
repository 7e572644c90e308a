// gemv with the gated-activation prologue (gemv_impl.cuh, PRO = GemvPro::GatedSilu / GatedGeluTanh): x is the
// [M, 2K] gate|up output, the vector to_dtype(act(gate) * up). Its own translation unit (parallel build).
#include "gemv_impl.cuh"

namespace tsllm {

cudaError_t gemv_gated_launch(int variant, GemvPro pro, const void* x, const void* w, const void* bias, const void* res,
                              void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s) {
  constexpr int S = int(GemvPro::GatedSilu), G = int(GemvPro::GatedGeluTanh);
  const bool silu = pro == GemvPro::GatedSilu;
  if (!silu && pro != GemvPro::GatedGeluTanh) return cudaErrorInvalidValue;
  if (dt == DType::F16)
    return silu ? kd::launch<__half, S>(variant, x, w, bias, res, out, M, N, K, nullptr, 0.f, pdl, s)
                : kd::launch<__half, G>(variant, x, w, bias, res, out, M, N, K, nullptr, 0.f, pdl, s);
  return silu ? kd::launch<__nv_bfloat16, S>(variant, x, w, bias, res, out, M, N, K, nullptr, 0.f, pdl, s)
              : kd::launch<__nv_bfloat16, G>(variant, x, w, bias, res, out, M, N, K, nullptr, 0.f, pdl, s);
}

}  // namespace tsllm
