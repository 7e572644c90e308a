// Launchers of the quantised-linear kernels (quant_linear, docs/engine-format.md "Quantisation"; the numerics are
// src/ops/quant-linear.ts and src/quant/weights.ts, bit for bit where the order of fp32 sums allows):
//   fp8      weights E4M3 [N,K] with per-channel scales sw[N]; activations quantised per token:
//            s_x[m] = fp32(amax(x[m,:]) / 448) (1 for a zero row), q_x = e4m3(fp32(x / s_x)) (RNE, saturating);
//            acc = Σ q_x·q_w (fp32); y = acc · fp32(s_x[m]·sw[n]); then + bias, activation, + residual, one rounding.
//   int8-wo  int8 [N,K], per-channel scales [N]; int4-wo: packed pairs [N,K/2] (element k in the low nibble of byte
//            k/2 when k is even), group-wise scales [N, K/G]. Dequantised w = T(fp32(q·s)) (RNE to the activation
//            dtype T), then x·wᵀ in fp32 (+ bias, activation, + residual). Engines built from now on hold scales
//            exactly representable in T (rounded up at build time, src/quant/weights.ts; one past T's largest
//            finite value stays f32), so T(fp32(q·s)) is one half-precision multiply; older engines' f32 scales
//            stay valid (the GPU kernel falls back to an exact per-chunk path for them).
// quant_gemv.cu, quant_gemv_fp8.cu: the decode kernels (M <= kQuantGemvMaxM) read the quantised weights directly.
// quant_convert.cu: per-token FP8 quantisation, the FP8 GEMM's scale epilogue, weight dequantisation (context GEMMs).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels.h"

namespace tsllm {

const char* quant_kind_name(QuantKind k);  // QuantKind: enums.h

// ---- decode GEMV (M <= kQuantGemvMaxM) ----
// out[m,n] = act(x[m,:]·w[n,:]ᵀ (numerics above) + bias[n]) + residual[m,n], out in dt (F16/BF16).
// fp8: x is quantised inside the kernel (every block quantises the M rows into shared memory once: no separate
// pass over memory, no extra launch). int4: group % 32 == 0. residual may alias out; out must not overlap x.
// `variant` in [0, kQuantGemvVariants), timed per shape by the caller:
//   fp8 0-2: 4-warp blocks, 1/2/4 rows per warp (quant_gemv.cu); 3-7: quant_gemv_fp8.cu (8-16-warp blocks, one or
//     two per SM, cheap exact quantisation, rms_norm prologue); 8-10: quant_gemv_fp8_mma.cu (E4M3 tensor cores,
//     sm_89+ code only, else cudaErrorNotSupported; rms_norm prologue);
//   int8 / int4 0-2: 1/2/4 rows per warp (quant_gemv_int.cuh); 3-6: tensor-core kernels (quant_gemv_mma.cuh, no
//     prologue; 5-6 are 3-4 with x staged in shared memory); 7-12: tensor-core kernels with the weights as the mma's
//     A operand (quant_gemv_mma_a.cuh, 1-8 rows, no prologue); 13-18: 7-12 with the scales after the mma; 19-21:
//     the weight-only GEMM (quant_gemm_wo.cuh, 1 to kIntGemmMaxM rows, for the batches past the gemvs' rows).
// Variants beyond a kind's count are refused, cudaErrorInvalidValue.
// pro: GemvPro::RmsNorm folds an rms_norm into the vector read (x is then the norm's input, as gemv_pro; the vector
// T((x · inv_rms) · norm_w) rounded as norms.cu writes it); fp8 3-10 and int 0-2 (quant_gemv_has_prologue).
constexpr int kQuantGemvMaxM = 4;   // fp8, and the CUDA-core int variants (0-2)
constexpr int kIntMmaFirstVariant = 3;  // int8 / int4: variants from here are the tensor-core kernels
// The tensor-core int8 / int4 variants 3-6: token rows are the mma's 16 A rows; 7-12 (from kIntMmaAVariant) B's 8
// columns.
constexpr int kIntMmaGemvMaxM = 16;
constexpr int kIntMmaAVariant = 7;
constexpr int kIntMmaAGemvMaxM = 8;
// 13-18: 7-12 with the scale applied to the mma's fp32 sums, not to each weight (int8, int4 groups >= 128, K a
// multiple of 128 int4 / 64 int8 weights; else refused): quant_gemv_post_scale.
constexpr int kIntMmaPostVariant = 13;
// 19-21: the weight-only GEMM (quant_gemm_wo.cuh), 1 to kIntGemmMaxM token rows (tiles of 16 or 32 a block), K a
// multiple of 128 int4 / 64 int8 weights; the reference's numerics as 3-12 (no prologue).
constexpr int kIntGemmVariant = 19;
constexpr int kIntGemmMaxM = 256;
// The most token rows variant `variant` of `kind` takes.
int quant_gemv_max_m(QuantKind kind, int variant);
constexpr int kFp8GemvVariants = 11;
constexpr int kIntGemvVariants = 22;
constexpr int kQuantGemvVariants = 22;  // the most of any kind
int quant_gemv_variants(QuantKind kind);  // fp8 11, int8 / int4 22
// Whether the variant scales the sums instead of the weights (its results then differ from the reference's
// T(q · s) weights by those weights' rounding: at most the unit roundoff of T times sum |x · w|).
bool quant_gemv_post_scale(QuantKind kind, int variant);
// Whether the variant takes the call's shape (beyond quant_gemv_unsupported's, which holds for every variant): M
// rows, int4 tensor-core variants a power-of-two count of 32-weight chunks a group, the post-scale ones and the
// GEMM whole iterations (K a multiple of 128 int4 / 64 int8 weights), the post-scale ones one scale a row in an
// iteration (int4 groups of >= 128).
bool quant_gemv_takes(QuantKind kind, int variant, int M, int K, int group);
// int4: log2 of a scale's chunks of 32 weights (group / 32), or -1 when that is not a power of two (the
// tensor-core kernels find a chunk's scale by a shift, no division per chunk: groups 32, 64, 128, ...).
inline int int4_chunk_shift(int group) {
  const int cpg = group / 32;
  if (cpg <= 0 || (cpg & (cpg - 1))) return -1;
  int shift = 0;
  while ((1 << shift) < cpg) shift++;
  return shift;
}
// Why a call is not eligible (nullptr when it is): shapes and alignment the kernels need.
const char* quant_gemv_unsupported(QuantKind kind, int M, int K, int group, const void* x, const void* w, DType dt);
bool quant_gemv_has_prologue(QuantKind kind, int variant);
// pdl: launch with programmatic dependent launch (when pdl_supported()), like gemv.
cudaError_t quant_gemv(int variant, QuantKind kind, const void* x, const void* w, const float* scales, int group,
                       const void* bias, const void* residual, void* out, int M, int N, int K, Act act, DType dt,
                       bool pdl, cudaStream_t s, const GemvPrologue& pro = GemvPrologue{});
// The gated act in the epilogue of an FP8, int8 or int4 gate_up decode call (as gemv_glu for 16-bit weights; the
// runtime plans it unless TSLLM_QGLU=0): w and scales are gate|up, 2N rows, gate rows first; out [M, N] =
// T(act(T(gate)) · T(up)), gate and up rounded as quant_gemv writes a call without activation or residual, then
// gated_act's rounding; act Silu or GeluTanh. int8 / int4: the variants with two 16-row tiles a block (7, 10, 12 and
// their post-scale 13, 16, 18), one gate tile and its up tile; FP8: variants 1 and 2 (quant_gemv.cu); where
// quant_gemv_takes the call. out must not overlap x.
bool quant_gemv_glu_takes(QuantKind kind, int variant, int M, int K, int group);
cudaError_t quant_gemv_glu(int variant, QuantKind kind, const void* x, const void* w, const float* scales, int group,
                           const void* bias, void* out, int M, int N, int K, Act act, DType dt, bool pdl,
                           cudaStream_t s);
cudaError_t int8_gemv_glu(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,
                          void* out, int M, int N, int K, Act act, DType dt, bool pdl, cudaStream_t s);
cudaError_t int4_gemv_glu(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,
                          void* out, int M, int N, int K, Act act, DType dt, bool pdl, cudaStream_t s);
// quant_gemv_fp8.cu (variants 3-7 of fp8), quant_gemv_fp8_mma.cu (8-10), quant_gemv_int8.cu / quant_gemv_int4.cu
// (the int variants); norm_w non-null: the rms_norm prologue. Called through quant_gemv (which checks eligibility).
cudaError_t int8_gemv(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,
                      const void* res, void* out, int M, int N, int K, Act act, const void* nw, float eps, DType dt,
                      bool pdl, cudaStream_t s);
cudaError_t int4_gemv(int variant, const void* x, const void* w, const float* sc, int group, const void* bias,
                      const void* res, void* out, int M, int N, int K, Act act, const void* nw, float eps, DType dt,
                      bool pdl, cudaStream_t s);
cudaError_t fp8_gemv2(int variant, const void* x, const void* w, const float* sw, const void* bias, const void* res,
                      void* out, int M, int N, int K, Act act, const void* norm_w, float eps, DType dt, bool pdl,
                      cudaStream_t s);
cudaError_t fp8_gemv_mma(int variant, const void* x, const void* w, const float* sw, const void* bias, const void* res,
                         void* out, int M, int N, int K, Act act, const void* norm_w, float eps, DType dt, bool pdl,
                         cudaStream_t s);
// The FP8 gemv over x already quantised by its producer (kernels.h Fp8Rows: x_q [M, K] E4M3 codes, s_x [M] per-token
// scales, as quantize_rows_fp8 writes them), variants 8-10 (quant_gemv_fp8_mma.cu; others cudaErrorInvalidValue):
// out = act(x_q·wᵀ · fp32(s_x · s_w) + bias) + residual, the numerics of quant_gemv on the x those rows came from.
// M <= kQuantGemvMaxM, K % 16 == 0, x_q and w 16-byte aligned.
cudaError_t fp8_gemv_rows(int variant, const uint8_t* x_q, const float* s_x, const void* w, const float* sw,
                          const void* bias, const void* res, void* out, int M, int N, int K, Act act, DType dt,
                          bool pdl, cudaStream_t s);
// fp8's tensor-core variants (quant_gemv_fp8_mma.cu): quant_gemv's 8-10, and the ones fp8_gemv_rows takes.
constexpr int kFp8RowsGemvFirst = 8, kFp8RowsGemvLast = 10;
bool fp8_gemv_rows_supported();  // the current device runs its code (E4M3 mma: an sm_89+ build)

// ---- FP8 context path: quantise_rows_fp8 -> cuBLASLt FP8 GEMM (fp32 D) -> fp8_scale_epilogue ----
// q[r, :] = e4m3(fp32(x[r,:] / s[r])), s[r] = fp32(amax(x[r,:]) / 448) (1 when amax is 0). cols % 8 == 0 when x
// is 16-byte aligned (vector path), else any.
cudaError_t quantize_rows_fp8(const void* x, void* q, float* scales, int rows, int cols, DType dt, cudaStream_t s);
// out[r,n] = T(act(acc[r,n] · fp32(sx[r]·sw[n]) + bias[n]) + residual[r,n]) for r < rows; acc fp32 [rows, N].
// bias / residual may be null; residual may alias out.
cudaError_t fp8_scale_epilogue(const float* acc, const float* sx, const float* sw, const void* bias,
                               const void* residual, void* out, int rows, int N, Act act, DType dt, cudaStream_t s);

// ---- weight-only context path: dequantise, then the ordinary half-precision GEMM ----
// out[n,k] = T(fp32(q[n,k] · s)) for the rows [n0, n0 + rows) of an int8 / int4 weight (out holds just those rows).
cudaError_t dequantize_weight(QuantKind kind, const void* w, const float* scales, int group, void* out, int n0,
                              int rows, int K, DType dt, cudaStream_t s);

// ---- FP8 KV cache ----
// (attention kernels, rope_cache.cu / attention_*.cu: stored = e4m3(x / scale), read back as stored · scale.)

}  // namespace tsllm
