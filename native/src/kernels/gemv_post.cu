// The plain gemv with a folded elementwise chain applied in registers before the residual (gemv_impl.cuh, POST =
// true: e.g. Gemma 2's logit softcap on lm_head, a scaled o_proj / down_proj before the residual add). Its own
// translation unit (parallel build); gemv.cu's kernels without a chain are unchanged by it.
#include "gemv_impl.cuh"

namespace tsllm {

cudaError_t gemv_post_launch(int variant, const void* x, const void* w, const void* bias, const void* res, void* out,
                             int M, int N, int K, DType dt, bool pdl, cudaStream_t s, const EwChain& post) {
  return dt == DType::F16
             ? kd::launch<__half, 0, true>(variant, x, w, bias, res, out, M, N, K, nullptr, 0.f, pdl, s, post)
             : kd::launch<__nv_bfloat16, 0, true>(variant, x, w, bias, res, out, M, N, K, nullptr, 0.f, pdl, s, post);
}

}  // namespace tsllm
