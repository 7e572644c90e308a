// Linear layers through cuBLASLt: out[M,N] = epilogue(x[M,K] · w[N,K]ᵀ (+ bias)) (+ residual).
// Weights are stored [N,K] row-major, which is column-major K×N, so we compute outᵀ = Wᵀ·xᵀ with
// A = W (op T), B = x (op N), D = outᵀ (N×M column-major = out row-major). fp32 compute.
// Descriptors and the algorithm are chosen once per shape (cublasLtMatmulAlgoGetHeuristic) and cached,
// so a step (or a CUDA graph capture) does no heuristic search after the first time.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../kernels/kernels.h"
#include "fusion_cache.h"
#include "options.h"
#include "step_choice.h"

namespace tsllm {

enum class GemmEpi : int { None = 0, Bias = 1, Gelu = 2, GeluBias = 3 };
// Which kernel a linear ran (values of the TSLLM_KERNEL_* counters in tsllm.h); Fp8Fmha: an attention node's
// context step ran the FP8 context FMHA.
enum class LinearKernel : int { None = -1, Cublaslt = 2, Gemv = 3, GemvRms = 4, GemvGated = 5, Fp8Fmha = 6 };

class GemmRunner {
 public:
  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;

  GemmRunner() = default;
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  // Throws std::runtime_error on failure. t: gemm_tune, gemv, gemv_variant, pdl, strict, profile (verbose).
  void init(const Tunables& t);
  // dt: CUDA_R_16F / CUDA_R_16BF (inputs and output). residual may be null or alias out.
  // Returns an empty string on success, else a one-line message; *ran: the kernel that ran.
  // strict with gemv = always: a plain/bias linear with M <= kGemvMaxM that does not run the gemv is an error
  // saying why (not eligible, first seen during graph capture, no variant launched).
  // post (may be null or empty): a folded elementwise chain, out = post(epi(x·wᵀ + bias)) + residual. The gemv applies
  // it in registers; on cuBLASLt a leading scale rides on alpha when epi is None (and a chain of just that scale
  // keeps the residual as C), and what is left runs as one linear_epilogue kernel after the GEMM, which then
  // writes to `tmp` (room for out) when out aliases the residual. Without post, nothing here changes.
  std::string linear(const void* x, const void* w, const void* bias, const void* residual, void* out, int M, int N,
                     int K, cudaDataType_t dt, GemmEpi epi, cudaStream_t s, LinearKernel* ran,
                     const EwChain* post = nullptr, void* tmp = nullptr);

  // Prologue fusion (tsllm_options.gemv_prologue, on by default): the gemv variant that runs `pro` (rms_norm or gated act, see
  // gemv_pro) fused into this linear, or -1 when the pair stays unfused (prologue kernel writing pro_y, then
  // linear(pro_y, ...)). pro_x is the prologue's input, pro_y its unfused output; w, bias, residual, out are the
  // linear's. Decided once per shape (cached, so static for CUDA graphs): M <= kGemvMaxM only; tuned like the
  // plain linear (L2 flushed, output to scratch): the fused variants against prologue kernel + the plain linear's
  // own tuned choice, fused only when faster. gemv = 1 always fuses (gemv_variant: that variant); gemv = -1
  // never; without tuning (gemm_tune off) fused exactly when the plain linear runs gemv, with its variant.
  // While the stream is capturing and the shape is new: -1, not cached. Call it with the same arguments from
  // the prologue node (to skip it) and from the linear node (to launch the fused gemv). *why (when not null and
  // the result is -1): the reason, for strict mode's message.
  int prologue_variant(const GemvPrologue& pro, const void* pro_x, void* pro_y, const void* w, const void* bias,
                       const void* residual, void* out, int M, int N, int K, cudaDataType_t dt, cudaStream_t s,
                       std::string* why = nullptr);
  // Epilogue fusion (Tunables::glu_fuse): the gemv_glu variant that runs a decode gate_up linear and the gated_act
  // after it in one launch, or -1 when the pair stays apart (linear into gu [M, 2N], then gated_act into out [M, N]).
  // x, w [2N, K], bias: the linear's; N: the output width. Decided once per shape as prologue_variant is: the fused
  // variants timed against the plain linear's own tuned choice + gated_act, fused only when faster; gemv = 1
  // always fuses, gemv = -1 never, without tuning fused exactly when the plain linear runs gemv.
  int glu_variant(GemvPro act, const void* x, const void* w, const void* bias, void* gu, void* out, int M, int N, int K,
                  cudaDataType_t dt, cudaStream_t s, std::string* why = nullptr);
  // Norm fusion (Tunables::norm_tail): the gemv_norm variant that runs a decode linear and the rms_norm reading its
  // output in one launch (kernels.h gemv_norm), or -1 when the pair stays apart. x, w, bias, residual, out: the
  // linear's; norm_w, eps, norm_out: the rms_norm's. Decided once per shape as prologue_variant is.
  int norm_variant(const void* x, const void* w, const void* bias, const void* residual, void* out, const void* norm_w,
                   float eps, void* norm_out, int M, int N, int K, cudaDataType_t dt, cudaStream_t s,
                   std::string* why = nullptr);
  bool verbose = false;  // profiling on: prologue fusion decisions and tuned cuBLASLt picks to stderr
  bool pdl = true;       // gemv launched with programmatic dependent launch (sm_90+)
  bool strict = false;   // see linear()
  bool force_pro = false;  // Tunables::prologue_force: every planned prologue pair fused
  bool force_norm = false;  // Tunables::norm_tail == 2: every planned norm tail fused

  size_t num_cached() const { return cache_.size(); }
  // Autotuning (gemm_tuned_m, options.h): the first call of a tuned shape times every algorithm the heuristic
  // offers (up to kHeuristics; L2 flushed before each run, output to scratch) and keeps the fastest. Never while
  // the stream is being captured.
  bool tune_on = true;  // gemm_tune
  static constexpr int kHeuristics = 64;
  static constexpr int kSplitKTop = 4;  // split-K is tried on this many of the fastest candidates
  bool tune_every_m = false;  // gemm_tune_every_m
  bool tune_extra = false;    // gemm_extra >= 1: kExtraConfigs timed too (gemm.cc)
  int tune_full_m = 0;        // gemm_extra 2: this M (max_num_tokens, load.cc) is tuned as well
  bool tunes(int M) const { return tune_on && (gemm_tuned_m(M, tune_every_m) || M == tune_full_m); }
  // 0: never use the small-M gemv kernel; 1: always when eligible (tests); -1: the tuner decides.
  int gemv_mode = -1;
  int gemv_variant = -1;  // >= 0: only that variant (tests)

  // Step tuning (step_choice.h): while recording, the decode-sized (M <= kGemvMaxM) plans and fusion decisions a step
  // looks up are listed once; step_choices offers the plans whose pick is the gemv, with its other variants that timed
  // within `within`; fusion_choices the fusion decisions, with the fused variants and the unfused pair (-1) that did.
  void record_keys(bool on) {
    step_gemv_.record(on);
    step_fusion_.record(on);
    step_lt_.record(on);
  }
  void step_choices(float within, std::vector<StepChoice>* out);
  // The cuBLASLt plans (M > kGemvMaxM) a step looked up while recording, each with at most `most` other
  // configurations its tuning timed within `within` of the pick (Tunables::gemm_step: large decode graphs).
  void lt_choices(float within, int most, std::vector<StepChoice>* out);
  void fusion_choices(float within, std::vector<StepChoice>* out);

 private:
  struct Key {
    int M, N, K, dt, epi, has_c, align;
    // GemvPro of a prologue-fusion decision (pro_cache_); kGluKey + GemvPro: an epilogue-fusion one; kNormKey: a
    // norm-tail one.
    int pro = 0;
    bool operator==(const Key& o) const {
      return M == o.M && N == o.N && K == o.K && dt == o.dt && epi == o.epi && has_c == o.has_c && align == o.align &&
             pro == o.pro;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      uint64_t h = 1469598103934665603ull;
      for (int v : {k.M, k.N, k.K, k.dt, k.epi, k.has_c, k.align, k.pro})
        h = (h ^ uint64_t(uint32_t(v))) * 1099511628211ull;
      return size_t(h);
    }
  };
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    int gemv = -1;  // >= 0: the kernels.h gemv variant that won the tuning
    // What tune() timed on cuBLASLt (the heuristic's candidates, the extra configurations, split-K variants) and
    // which of them algo is (-1: untuned): step tuning's variants for the shape (lt_choices).
    std::vector<cublasLtMatmulAlgo_t> alts;
    int alt = -1;
    std::string no_gemv;  // why the gemv is not used (strict mode's message)
  };
  // The plan of a shape (made, and tuned, on first use); nullptr with *err set on failure.
  Plan* get_plan(const Key& k, const void* x, const void* w, const void* bias, cudaStream_t s, std::string* err);
  std::string run_plan(Plan& p, const void* x, const void* w, const void* bias, const void* residual, void* out, int M,
                       int N, int K, cudaDataType_t dt, GemmEpi epi, cudaStream_t s, const EwChain* post = nullptr,
                       void* tmp = nullptr);
  std::string ensure_tune_buffers(size_t out_bytes);
  std::string make_plan(const Key& k, Plan* p, const void* x, const void* w, const void* bias, cudaStream_t s);
  std::string tune(const Key& k, Plan* p, const cublasLtMatmulHeuristicResult_t* res, int n, const void* x,
                   const void* w, const void* bias, cudaStream_t s);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  void* tune_out_ = nullptr;  // scratch D/C while tuning
  size_t tune_out_bytes_ = 0;
  void* flush_ = nullptr;     // 64 MB written before each timed run to evict the weights from L2
  std::unordered_map<Key, Plan, KeyHash> cache_;
  std::unordered_map<Key, int, KeyHash> pro_cache_;  // prologue / epilogue fusion: gemv variant, or -1 (unfused)
  // Step tuning: the plain gemv picks (cache_'s) and the fusion decisions (pro_cache_'s), their lone times.
  StepTuned<Key> step_gemv_, step_fusion_, step_lt_;
  static constexpr int kGluKey = 16, kNormKey = 32;
  unsigned* tune_counter_ = nullptr;  // gemv_norm's block counter while tuning
  // A linear's plan key, as linear() makes it: its shape, dtype, epilogue, whether it has a residual, and the
  // pointers' common alignment.
  static Key linear_key(const void* x, const void* w, const void* bias, const void* residual, const void* out, int M,
                        int N, int K, cudaDataType_t dt, GemmEpi epi);
  // Times body() like tune() does: 6 runs, L2 flushed before each, the first discarded; ms, or -1 if a run failed.
  float time_flushed(cudaStream_t s, const std::function<bool()>& body);
  // The decode gemv fusions' decisions (prologue_variant, glu_variant, norm_variant), one per key k in pro_cache_:
  // when fusion_cached (fusion_cache.h) has none, decide_fusion times the fused variants that `offers` (`fused`,
  // only gemv_variant when forced) against `pair` (the plain linear's tuned plan pu and the kernel the fusion
  // removes, into tune_out_: `scratch` bytes), keeps the fused one only when faster (always with gemv = 1 or
  // `force`; without tuning, the plain linear's own gemv variant), caches and prints (verbose) the pick.
  int decide_fusion(const Key& k, const char* what, Plan* pu, size_t scratch, bool force,
                    const std::function<bool()>& pair, const std::function<bool(int)>& fused,
                    const std::function<bool(int)>& offers, cudaStream_t s);
};

}  // namespace tsllm
