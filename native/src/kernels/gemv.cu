// Small-M linear for decode: out[m, n] = post(x[m, :] · w[n, :] (+ bias[n])) (+ residual[m, n]) for M <= 4, post a
// folded elementwise chain (kernels.h; its kernels are in gemv_post.cu).
// Memory-bound: each warp streams ROWS weight rows with 16-byte non-caching loads, UN chunks in flight
// per lane and row, fp32 accumulation, one rounding at the end.
// Programmatic dependent launch (pdl, sm_90+): launched with programmatic stream serialization; the first weight
// loads (which do not depend on the previous kernel) are issued before griddepcontrol.wait, x/residual are read
// and out written after. The runtime's GemmRunner offers it to its autotuner next to cuBLASLt's algorithms and
// keeps whichever is faster for the shape.
// The kernel itself is in gemv_impl.cuh; gemv_rms.cu / gemv_gated.cu instantiate its prologue variants
// (rms_norm or gated activation folded into the vector read: the runtime's prologue fusion). Big-block variants
// (8-16 warps, the vector built once per block in shared memory, looping over row groups) were measured on the
// H200 (gemv_bench: 2-9 % slower than these on every Llama-2-7B shape) and removed.
#include "gemv_impl.cuh"

namespace tsllm {

bool gemv_eligible(const void* x, const void* w, int M, int K, DType dt) {
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return M >= 1 && M <= kGemvMaxM && K % 8 == 0 && al16(x) && al16(w) && (dt == DType::F16 || dt == DType::BF16);
}

bool gemv_pro_eligible(const GemvPrologue& pro, const void* x, const void* w, int M, int K, DType dt) {
  if (!gemv_eligible(x, w, M, K, dt)) return false;
  switch (pro.kind) {
    case GemvPro::None: return true;
    case GemvPro::RmsNorm: return pro.norm_w && (reinterpret_cast<uintptr_t>(pro.norm_w) & 15) == 0;
    case GemvPro::GatedSilu:
    case GemvPro::GatedGeluTanh: return true;
  }
  return false;
}

cudaError_t gemv(int variant, const void* x, const void* w, const void* bias, const void* residual, void* out, int M,
                 int N, int K, DType dt, bool pdl, cudaStream_t s, const EwChain* post) {
  if (!gemv_eligible(x, w, M, K, dt)) return cudaErrorInvalidValue;
  if (post && post->n) return gemv_post_launch(variant, x, w, bias, residual, out, M, N, K, dt, pdl, s, *post);
  return dt == DType::F16 ? kd::launch<half, 0>(variant, x, w, bias, residual, out, M, N, K, nullptr, 0.f, pdl, s)
                          : kd::launch<kd::bf16, 0>(variant, x, w, bias, residual, out, M, N, K, nullptr, 0.f, pdl, s);
}

cudaError_t gemv_pro(int variant, const GemvPrologue& pro, const void* x, const void* w, const void* bias,
                     const void* residual, void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s,
                     const EwChain* post) {
  if (!gemv_pro_eligible(pro, x, w, M, K, dt)) return cudaErrorInvalidValue;
  if (post && post->n && pro.kind != GemvPro::None) return cudaErrorInvalidValue;  // not instantiated
  switch (pro.kind) {
    case GemvPro::None: return gemv(variant, x, w, bias, residual, out, M, N, K, dt, pdl, s, post);
    case GemvPro::RmsNorm:
      return gemv_rms_launch(variant, x, pro.norm_w, pro.eps, w, bias, residual, out, M, N, K, dt, pdl, s);
    case GemvPro::GatedSilu:
    case GemvPro::GatedGeluTanh: return gemv_gated_launch(variant, pro.kind, x, w, bias, residual, out, M, N, K, dt, pdl, s);
  }
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
