// gemv with the gated activation in its epilogue (gemv_impl.cuh, GLU = GemvPro::GatedSilu / GatedGeluTanh): the
// decode gate_up linear and the gated_act after it in one launch. Its own translation unit (parallel build).
// Why: at batch 1 a gated_act launch costs ~2 µs of a decode step (H200, Llama-2-7B fp16, session 19's in-step
// profile: 0.068 ms of 3.681), and the gate|up output it reads never needs to reach memory.
#include "gemv_impl.cuh"

namespace tsllm {

bool gemv_glu_takes(int variant) {
  return variant >= 0 && variant < kGemvVariants && kd::kGemvShapes[variant].rows <= kd::kGluMaxRows;
}

cudaError_t gemv_glu(int variant, GemvPro act, const void* x, const void* w, const void* bias, void* out, int M, int N,
                     int K, DType dt, bool pdl, cudaStream_t s) {
  constexpr int S = int(GemvPro::GatedSilu), G = int(GemvPro::GatedGeluTanh);
  const bool silu = act == GemvPro::GatedSilu;
  if ((!silu && act != GemvPro::GatedGeluTanh) || !gemv_glu_takes(variant) || !gemv_eligible(x, w, M, K, dt))
    return cudaErrorInvalidValue;
  if (N <= 0) return cudaSuccess;
  // gemv's variant table (gemv_impl.cuh kd::launch), its four-rows-a-group variants refused there.
  if (dt == DType::F16)
    return silu ? kd::launch<half, 0, false, S>(variant, x, w, bias, nullptr, out, M, N, K, nullptr, 0.f, pdl, s)
                : kd::launch<half, 0, false, G>(variant, x, w, bias, nullptr, out, M, N, K, nullptr, 0.f, pdl, s);
  return silu ? kd::launch<kd::bf16, 0, false, S>(variant, x, w, bias, nullptr, out, M, N, K, nullptr, 0.f, pdl, s)
              : kd::launch<kd::bf16, 0, false, G>(variant, x, w, bias, nullptr, out, M, N, K, nullptr, 0.f, pdl, s);
}

}  // namespace tsllm
