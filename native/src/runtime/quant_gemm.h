// quant_linear on the GPU (docs/engine-format.md "Quantisation"; numerics in kernels/quant.h):
//   M <= 4 (decode; int8 / int4 up to kIntGemmMaxM = 256: their tensor-core gemvs to 16 rows, the weight-only GEMM
//     variants 19-21 to 256): kernels/quant_gemv.cu reads the quantised weights directly (FP8: x quantised per token
//     inside the kernel); the variant is timed once per shape (among those that take M rows), L2 flushed, like
//     GemmRunner's tuner.
//   larger M, FP8: quantize_rows_fp8 (x -> E4M3 + per-token scales, workspace) unless x's producer wrote those rows
//     (FP8 activation fusion, fp8_act_rows / QuantLinearCall::x_fp8), then the cuBLASLt FP8 GEMM (E4M3
//     A = W with op T and B = x, the "TN" layout Hopper's FP8 GEMM needs; fp32 accumulate):
//     - no activation: outer-vector scaling (per-channel s_w, per-token s_x vectors, CUDA 12.9+) with the bias
//       epilogue and the residual as C, output in the activation dtype: one GEMM;
//     - otherwise, or when cuBLASLt has no such algorithm for the shape (TSLLM_FP8_OUTER_VEC=0 forces it): fp32 D
//       into a workspace in chunks of rows, then fp8_scale_epilogue (acc · fp32(s_x·s_w) + bias -> act ->
//       + residual, one rounding).
//   larger M (prefill), or a shape no variant takes, int8 / int4 weight-only: the weight is dequantised to the
//     activation dtype into a workspace (dequantize_weight), then the ordinary linear (GemmRunner) runs on it.
// Switches (A/B, environment only, options.cc): TSLLM_QGEMV=0 never uses the quantised gemv (the large-M path for
// every M), TSLLM_QGEMV_VARIANT=k forces variant k, TSLLM_FP8_OUTER_VEC=0 (see below), TSLLM_FP8_FAST_ACCUM=0 (the
// FP8 GEMMs without CUBLASLT_MATMUL_DESC_FAST_ACCUM), TSLLM_FP8_ACT_FUSION=0 (options.h).
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../kernels/quant.h"
#include "fusion_cache.h"
#include "options.h"
#include "step_choice.h"

namespace tsllm {

struct QuantLinearCall {
  QuantKind kind;
  int group = 0;  // int4
  const void* x;
  const void* w;
  const float* scales;
  const void* bias;      // may be null
  const void* residual;  // may be null, may alias out
  void* out;
  int M, N, K;
  Act act = Act::None;
  // FP8: x's producer already wrote it as FP8 rows where fp8_act_rows said (forward.cc's FP8 activation
  // fusion); x itself was not written and is not read.
  bool x_fp8 = false;
};

// Workspace needs of an engine's quant_linear nodes at its limits (load.cc sizes them once).
struct QuantWorkspace {
  size_t xq_bytes = 0;   // FP8: quantised activations [max_tokens, K] + scales [max_tokens] (fp32)
  size_t acc_bytes = 0;  // FP8: fp32 GEMM output chunk
  size_t deq_bytes = 0;  // weight-only: one dequantised weight [N, K] in the activation dtype
};

class QuantGemm {
 public:
  static constexpr size_t kAccChunkBytes = size_t(64) << 20;  // FP8 fp32 D chunk: rows of M at a time

  QuantGemm() = default;
  ~QuantGemm();
  QuantGemm(const QuantGemm&) = delete;
  QuantGemm& operator=(const QuantGemm&) = delete;

  // Sizes the workspaces for these calls at max_tokens rows (K, N of every quant_linear), allocates them and a
  // cuBLASLt handle. Throws std::runtime_error with a one-line message.
  void init(const QuantWorkspace& need, const Tunables& tun);
  static QuantWorkspace need_for(QuantKind kind, int max_tokens, int N, int K, size_t act_elem_bytes);

  // Returns an empty string on success, else a one-line message. Not while capturing for a new shape (the tuner
  // runs eagerly on first use; forward runs an eager step before every capture).
  // linear(w, out, residual): the ordinary half-precision linear on the dequantised weight w (out = act(x·wᵀ + bias)
  // + residual, residual may be null).
  template <typename LinearFn>
  std::string run(const QuantLinearCall& c, DType dt, cudaStream_t s, LinearFn&& linear) {
    if (c.M <= 0) return "";
    // Past the gemvs' rows (int8 / int4 from kIntMmaGemvMaxM + 1) the tuner times the weight-only GEMM's variants
    // against the dequantise + linear path, run into its scratch output without the residual.
    auto large = [&](void* scratch) {
      return dequantize_weight(c.kind, c.w, c.scales, c.group, deq_, 0, c.N, c.K, dt, s) == cudaSuccess &&
             linear(static_cast<const void*>(deq_), scratch, static_cast<void*>(nullptr)).empty();
    };
    const bool with_large = c.kind != QuantKind::Fp8 && c.M > kIntMmaGemvMaxM && deq_fits(c, dt);
    const int v = gemv_variant(c, dt, s, with_large ? LargePath(large) : LargePath());
    if (c.x_fp8 && c.kind != QuantKind::Fp8) return "x came as FP8 rows but the call is not FP8";
    if (c.x_fp8 && v >= 0) return rows_gemv(c, v, dt, s);
    if (v >= 0) {
      cudaError_t e = quant_gemv(v, c.kind, c.x, c.w, c.scales, c.group, c.bias, c.residual, c.out, c.M, c.N, c.K,
                                 c.act, dt, pdl, s);
      return e == cudaSuccess ? std::string() : std::string("quant_gemv: ") + cudaGetErrorString(e);
    }
    if (c.kind == QuantKind::Fp8) return fp8_gemm(c, dt, s);
    if (!deq_fits(c, dt))
      return "dequantisation workspace too small for N=" + std::to_string(c.N) + " K=" + std::to_string(c.K);
    cudaError_t e = dequantize_weight(c.kind, c.w, c.scales, c.group, deq_, 0, c.N, c.K, dt, s);
    if (e != cudaSuccess) return std::string("dequantize_weight: ") + cudaGetErrorString(e);
    return linear(static_cast<const void*>(deq_), c.out, const_cast<void*>(c.residual));
  }

  // Prologue fusion (forward.cc, as GemmRunner::prologue_variant for linears): the quantised-gemv variant that runs
  // an rms_norm (pro) folded into this call — c.x is then the norm's input, pro_y its unfused output — or -1 when
  // the pair stays unfused. Timed once per shape (L2 flushed): the fused variants against rms_norm + the plain
  // call's tuned variant; *why says why not. Never during capture for a new shape.
  int prologue_variant(const QuantLinearCall& c, const GemvPrologue& pro, void* pro_y, DType dt, cudaStream_t s,
                       std::string* why);
  // Epilogue fusion (forward.cc, as GemmRunner::glu_variant; not planned with TSLLM_QGLU=0): the FP8, int8 or int4
  // variant that runs the gate_up call c (c.N = 2N rows, gate then up) with the gated_act after it (quant_gemv_glu,
  // writing [M, N]), or -1 when the pair stays apart. Timed once per shape like prologue_variant (into scratch): the
  // fused variants against the plain call's tuned variant + gated_act. Never for an FP8 call that takes FP8 rows
  // from its producer (fp8_act_rows: the fused kernel reads x in T, which that producer then does not write).
  int glu_variant(const QuantLinearCall& c, Act act, DType dt, cudaStream_t s, std::string* why);
  std::string run_fused(const QuantLinearCall& c, const GemvPrologue& pro, int variant, DType dt, cudaStream_t s) {
    cudaError_t e = quant_gemv(variant, c.kind, c.x, c.w, c.scales, c.group, c.bias, c.residual, c.out, c.M, c.N, c.K,
                               c.act, dt, pdl, s, pro);
    return e == cudaSuccess ? std::string() : std::string("quant_gemv (rms_norm prologue): ") + cudaGetErrorString(e);
  }

  // Where the producer of c.x writes it as FP8 rows for this call: true when the call is FP8, the workspace holds
  // its rows, and it takes the FP8 GEMM path at its M or the gemv over FP8 rows (fp8_gemv_rows: 2 <= M <= 4, unless
  // a forced or capped variant leaves that out); *rows then points into the workspace, which fp8_gemm / rows_gemv
  // read when c.x_fp8. Times nothing.
  bool fp8_act_rows(const QuantLinearCall& c, DType dt, Fp8Rows* rows);
  // fp8_act_rows' answer without the rows.
  bool takes_fp8_rows(const QuantLinearCall& c, DType dt) const;

  bool fp8_outer = true;  // TSLLM_FP8_OUTER_VEC=0: FP8 GEMMs always through the fp32 chunk + scale epilogue kernel
  bool fast_accum = true;  // TSLLM_FP8_FAST_ACCUM=0: FP8 GEMMs promote their accumulators (options.h)
  bool gemv_on = true;    // TSLLM_QGEMV=0: never the quantised gemv
  int gemv_force = -1;    // TSLLM_QGEMV_VARIANT=k
  int tune_below = -1;    // TSLLM_QGEMV_TUNE_BELOW=k
  std::vector<Tunables::ShapePick> shape_picks;  // TSLLM_QGEMV_PICKS
  bool tune = true;       // tsllm_options.gemm_tune: time the gemv variants per shape (else variant 1)
  bool tune_every_m = false;  // Tunables::gemm_tune_every_m
  bool tunes(int M) const { return tune && gemm_tuned_m(M, tune_every_m); }  // cuBLASLt algorithms timed at M
  bool pdl = true;        // tsllm_options.pdl
  bool verbose = false;   // profiling on: tuning decisions to stderr
  bool force_pro = false;  // Tunables::prologue_force: every planned rms_norm pair fused

  // Step tuning (step_choice.h): while recording, every tuned plain gemv pick and fusion decision a call looks up is
  // listed once; step_choices offers the plain picks, fusion_choices the rms_norm prologue and GLU decisions (-1:
  // the unfused pair).
  using PickKey = std::tuple<int, int, int, int, int, int>;  // (kind, group, M, N, K, dt)
  void record_keys(bool on) {
    step_gemv_.record(on);
    step_pro_.record(on);
    step_glu_.record(on);
  }
  void step_choices(float within, std::vector<StepChoice>* out);
  void fusion_choices(float within, std::vector<StepChoice>* out);

 private:
  // The large-M path run once into a scratch output (tuning), true when it launched.
  using LargePath = std::function<bool(void* scratch)>;
  // The gemv variant for this call (tuned once per shape), or -1 for the large-M path; `large`, when set, is timed
  // with the variants and picked (-1) when it is faster.
  int gemv_variant(const QuantLinearCall& c, DType dt, cudaStream_t s, const LargePath& large = LargePath());
  bool deq_fits(const QuantLinearCall& c, DType dt) const {
    return size_t(c.N) * size_t(c.K) * (dt == DType::F32 ? 4 : 2) <= deq_bytes_;
  }
  // fp8_gemv_rows' variant for a call whose x came as FP8 rows (tuned once per shape, rows_pick_), and the call.
  int rows_variant(const QuantLinearCall& c, DType dt, cudaStream_t s);
  std::string rows_gemv(const QuantLinearCall& c, int variant, DType dt, cudaStream_t s);
  // The gemv over FP8 rows takes M <= 4 calls: not with a forced variant it lacks, nor capped below its variants.
  bool rows_gemv_on() const;
  // Variant v is above TSLLM_QGEMV_TUNE_BELOW's cap: no tuner times it.
  bool capped(int v) const { return tune_below >= 0 && v >= tune_below; }
  std::string fp8_gemm(const QuantLinearCall& c, DType dt, cudaStream_t s);

  struct Fp8Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    float ms = -1.f;  // the picked algorithm's time when it was timed (a tuned M), else -1
  };
  // Runs the plan's GEMM once with the given algorithm into scratch (tuning); false when the launch failed.
  using AlgoRun = std::function<bool(const cublasLtMatmulAlgo_t&)>;
  cublasStatus_t pick_algo(Fp8Plan& p, int* found, bool tuned, cudaStream_t s, const AlgoRun& run,
                           const std::string& what);
  std::string fp8_plan(int M, int N, int K, const void* w, const void* xq, cudaStream_t s, Fp8Plan** out);
  // The outer-vector-scaled plan, or *out = nullptr when cuBLASLt has none for the shape (remembered).
  std::string fp8_outer_plan(int M, int N, int K, const void* bias, bool res, DType dt, const void* w,
                             const float* sw, const void* xq, const float* sx, cudaStream_t s, Fp8Plan** out);
  // Below kFp8OuterMinM rows, for a tuned M: whether the outer-vector plan beats the fp32 chunk + epilogue path,
  // both timed once per shape; the key is the outer plan's.
  std::map<std::tuple<int, int, int, int, int>, bool> outer_pick_;

  cublasLtHandle_t handle_ = nullptr;
  void* lt_ws_ = nullptr;  // cuBLASLt workspace
  size_t lt_ws_bytes_ = size_t(32) << 20;
  void* xq_ = nullptr;
  size_t xq_bytes_ = 0;
  float* acc_ = nullptr;
  size_t acc_bytes_ = 0;
  void* deq_ = nullptr;
  size_t deq_bytes_ = 0;
  void* flush_ = nullptr;  // 64 MB written before each timed tuning run (weights out of L2)
  void* tune_out_ = nullptr;  // gemv output while tuning
  size_t tune_out_bytes_ = 0;
  std::map<std::tuple<int, int, int, int, int>, Fp8Plan> plans_;  // (M chunk, N, K) -> plan
  static PickKey pick_key(const QuantLinearCall& c, DType dt) {
    return {int(c.kind), c.group, c.M, c.N, c.K, int(dt)};
  }
  std::map<PickKey, int> gemv_pick_;  // -> variant or -1
  std::map<PickKey, int> pro_pick_;   // -> fused variant or -1
  std::map<PickKey, int> glu_pick_;   // -> fused variant or -1
  std::map<PickKey, int> rows_pick_;  // -> fp8_gemv_rows variant
  // Step tuning: gemv_pick_'s (lone times: variant, ms; -1 the large-M path), pro_pick_'s and glu_pick_'s (-1 the
  // unfused pair).
  StepTuned<PickKey> step_gemv_, step_pro_, step_glu_;
  // The tuner shared by gemv_variant and rows_variant: picks' entry for c's shape when timed before; else, outside a
  // capture and with scratch for c's output, each variant v in [first, last] that takes(v) timed by run(v) (writing
  // to scratch: out may be the residual, which must survive until the real call), the fastest kept (dflt when none
  // ran) and, when verbose, every time printed after `what` and c's kind. dflt without recording while capturing
  // (forward runs an eager step before capturing). large, when set: timed too, as "variant" -1.
  template <class Takes, class Run>
  int tuned_pick(std::map<PickKey, int>& picks, const QuantLinearCall& c, DType dt, int dflt, int first, int last,
                 Takes&& takes, Run&& run, const char* what, cudaStream_t s, const LargePath& large = LargePath());
  // Times `body` (6 runs, L2 flushed before each, the first discarded): ms per run, or -1 when a launch failed.
  template <typename Body>
  float time_runs(cudaStream_t s, Body&& body);
  bool ensure_tune_out(size_t bytes);
};

}  // namespace tsllm
