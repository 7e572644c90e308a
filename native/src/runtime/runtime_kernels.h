// Kernels the runtime needs that are not in kernels/kernels.h (one small family each).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "../kernels/kernels.h"

namespace tsllm {

// Standalone `rope` op: out[t, h*D + d] = rotate(x[t, h*D + d]) at positions[t] with angle
// pos * inv_freq[i] (fp32); dims >= rotary_dim pass through. out may not alias x.
cudaError_t rope_standalone(const void* x, void* out, const int32_t* positions, const float* inv_freq, int rows,
                            int num_heads, int head_dim, int rotary_dim, RopeStyle style, DType dt, cudaStream_t s);

// Small-M linear (decode): out[m, n] = x[m, :] · w[n, :] (+ bias[n]) (+ residual[m, n]), w [N, K] row-major,
// fp32 accumulation. Needs M <= kGemvMaxM, K % 8 == 0 and 16-byte aligned x and w (gemv_eligible).
// residual may alias out.
// `variant` in [0, kGemvVariants) picks rows per warp group and the K split (the tuner times them all).
constexpr int kGemvMaxM = 4;
constexpr int kGemvVariants = 10;
bool gemv_eligible(const void* x, const void* w, int M, int K, DType dt);
cudaError_t gemv(int variant, const void* x, const void* w, const void* bias, const void* residual, void* out, int M,
                 int N, int K, DType dt, cudaStream_t s);

// The same kernel with a prologue folded into its vector read (on by default, TSLLM_GEMV_PROLOGUE=0 turns it off: the interpreter skips the
// rms_norm / gated_act node that feeds a decode linear):
//   RmsNorm: x is rms_norm's input [M, K]; every block computes inv_rms of the M rows (fp32) and uses
//     to_dtype(x * inv_rms * norm_w), rounded as rms_norm writes y (identical but for the order of the fp32
//     sum of squares: within 1 ulp).
//   GatedSilu / GatedGeluTanh: x is the [M, 2K] gate|up output; the vector is to_dtype(act(gate) * up) as
//     gated_act writes it.
// out must not overlap x.
enum class GemvPro : int { None = 0, RmsNorm = 1, GatedSilu = 2, GatedGeluTanh = 3 };
struct GemvPrologue {
  GemvPro kind = GemvPro::None;
  const void* norm_w = nullptr;  // RmsNorm: the norm's weight [K]
  float eps = 0.f;
};
bool gemv_pro_eligible(const GemvPrologue& pro, const void* x, const void* w, int M, int K, DType dt);
cudaError_t gemv_pro(int variant, const GemvPrologue& pro, const void* x, const void* w, const void* bias,
                     const void* residual, void* out, int M, int N, int K, DType dt, cudaStream_t s);

}  // namespace tsllm
