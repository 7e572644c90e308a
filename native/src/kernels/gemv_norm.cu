// gemv with the rms_norm of its output in the grid's last block (gemv_impl.cuh NT, gemv_stream.cuh norm_tail): a
// decode linear (o_proj, down: the residual add in its epilogue) and the rms_norm reading its output in one launch.
// Its own translation unit (parallel build).
#include "gemv_impl.cuh"

namespace tsllm {
namespace {

template <typename T>
cudaError_t launch_norm(int variant, const void* x, const void* w, const void* bias, const void* res, void* out, int M,
                        int N, int K, const kd::NormTail& t, bool pdl, cudaStream_t s) {
  const EwChain none{};
  auto h = [&](auto launch) { return launch(x, w, bias, res, out, M, N, K, nullptr, 0.f, none, pdl, s, t); };
  switch (variant) {  // gemv_impl.cuh kd::launch's variants
    case 0: return h(kd::launch_h<T, 0, false, 2, 1, 4, 0, true>);
    case 1: return h(kd::launch_h<T, 0, false, 1, 1, 4, 0, true>);
    case 2: return h(kd::launch_h<T, 0, false, 4, 1, 4, 0, true>);
    case 3: return h(kd::launch_h<T, 0, false, 1, 2, 4, 0, true>);
    case 4: return h(kd::launch_h<T, 0, false, 2, 2, 4, 0, true>);
    case 5: return h(kd::launch_h<T, 0, false, 1, 4, 4, 0, true>);
    case 6: return h(kd::launch_h<T, 0, false, 2, 1, 8, 0, true>);
    case 7: return h(kd::launch_h<T, 0, false, 4, 2, 4, 0, true>);
    case 8: return h(kd::launch_h<T, 0, false, 2, 4, 4, 0, true>);
    case 9: return h(kd::launch_h<T, 0, false, 1, 2, 8, 0, true>);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t gemv_norm(int variant, const void* x, const void* w, const void* bias, const void* residual, void* out,
                      int M, int N, int K, const void* norm_w, float eps, void* norm_out, unsigned* counter, DType dt,
                      bool pdl, cudaStream_t s) {
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (!gemv_eligible(x, w, M, K, dt) || N % 8 || !al16(out) || !al16(norm_w) || !al16(norm_out) || !counter)
    return cudaErrorInvalidValue;
  if (N <= 0) return cudaSuccess;
  const kd::NormTail t{norm_out, counter, norm_w, eps};
  return dt == DType::F16 ? launch_norm<half>(variant, x, w, bias, residual, out, M, N, K, t, pdl, s)
                          : launch_norm<kd::bf16>(variant, x, w, bias, residual, out, M, N, K, t, pdl, s);
}

}  // namespace tsllm
