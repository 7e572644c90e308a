// gemv with the rms_norm of its output in the grid's last block (gemv_impl.cuh NT, gemv_stream.cuh norm_tail): a
// decode linear (o_proj, down: the residual add in its epilogue) and the rms_norm reading its output in one launch.
// Its own translation unit (parallel build).
#include "gemv_impl.cuh"

namespace tsllm {

bool gemv_norm_eligible(const void* x, const void* w, const void* out, const void* norm_w, const void* norm_out, int M,
                        int N, int K, DType dt) {
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return gemv_eligible(x, w, M, K, dt) && N % 8 == 0 && al16(out) && al16(norm_w) && al16(norm_out);
}

cudaError_t gemv_norm(int variant, const void* x, const void* w, const void* bias, const void* residual, void* out,
                      int M, int N, int K, const void* norm_w, float eps, void* norm_out, unsigned* counter, DType dt,
                      bool pdl, cudaStream_t s) {
  if (!gemv_norm_eligible(x, w, out, norm_w, norm_out, M, N, K, dt) || !counter) return cudaErrorInvalidValue;
  if (N <= 0) return cudaSuccess;
  const kd::NormTail t{norm_out, counter, norm_w, eps};
  const EwChain none{};
  return dt == DType::F16
             ? kd::launch<half, 0, false, 0, true>(variant, x, w, bias, residual, out, M, N, K, nullptr, 0.f, pdl, s,
                                                   none, t)
             : kd::launch<kd::bf16, 0, false, 0, true>(variant, x, w, bias, residual, out, M, N, K, nullptr, 0.f, pdl,
                                                       s, none, t);
}

}  // namespace tsllm
