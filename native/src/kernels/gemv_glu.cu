// gemv with the gated activation in its epilogue (gemv_impl.cuh, GLU = GemvPro::GatedSilu / GatedGeluTanh): the
// decode gate_up linear and the gated_act after it in one launch. Its own translation unit (parallel build).
// Why: at batch 1 a gated_act launch costs ~2 µs of a decode step (H200, Llama-2-7B fp16, session 19's in-step
// profile: 0.068 ms of 3.681), and the gate|up output it reads never needs to reach memory.
#include "gemv_impl.cuh"

namespace tsllm {
namespace {

// gemv's variants (gemv_impl.cuh kd::launch) but 2 and 7: four gate rows a group are eight weight rows in flight.
template <typename T, int GLU>
cudaError_t launch_glu(int variant, const void* x, const void* w, const void* bias, void* out, int M, int N, int K,
                       bool pdl, cudaStream_t s) {
  const EwChain none{};
  const kd::NormTail no_tail{};
  auto h = [&](auto launch) { return launch(x, w, bias, nullptr, out, M, N, K, nullptr, 0.f, none, pdl, s, no_tail); };
  switch (variant) {
    case 0: return h(kd::launch_h<T, 0, false, 2, 1, 4, GLU>);
    case 1: return h(kd::launch_h<T, 0, false, 1, 1, 4, GLU>);
    case 3: return h(kd::launch_h<T, 0, false, 1, 2, 4, GLU>);
    case 4: return h(kd::launch_h<T, 0, false, 2, 2, 4, GLU>);
    case 5: return h(kd::launch_h<T, 0, false, 1, 4, 4, GLU>);
    case 6: return h(kd::launch_h<T, 0, false, 2, 1, 8, GLU>);
    case 8: return h(kd::launch_h<T, 0, false, 2, 4, 4, GLU>);
    case 9: return h(kd::launch_h<T, 0, false, 1, 2, 8, GLU>);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool gemv_glu_takes(int variant) { return variant >= 0 && variant < kGemvVariants && variant != 2 && variant != 7; }

cudaError_t gemv_glu(int variant, GemvPro act, const void* x, const void* w, const void* bias, void* out, int M, int N,
                     int K, DType dt, bool pdl, cudaStream_t s) {
  constexpr int S = int(GemvPro::GatedSilu), G = int(GemvPro::GatedGeluTanh);
  const bool silu = act == GemvPro::GatedSilu;
  if ((!silu && act != GemvPro::GatedGeluTanh) || !gemv_glu_takes(variant) || !gemv_eligible(x, w, M, K, dt))
    return cudaErrorInvalidValue;
  if (N <= 0) return cudaSuccess;
  if (dt == DType::F16)
    return silu ? launch_glu<half, S>(variant, x, w, bias, out, M, N, K, pdl, s)
                : launch_glu<half, G>(variant, x, w, bias, out, M, N, K, pdl, s);
  return silu ? launch_glu<kd::bf16, S>(variant, x, w, bias, out, M, N, K, pdl, s)
              : launch_glu<kd::bf16, G>(variant, x, w, bias, out, M, N, K, pdl, s);
}

}  // namespace tsllm
