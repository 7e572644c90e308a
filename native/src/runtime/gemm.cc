#include "gemm.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>

namespace tsllm {

namespace {

const char* lt_status(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "alloc failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "arch mismatch";
    case CUBLAS_STATUS_MAPPING_ERROR: return "mapping error";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "error";
  }
}

// Configurations of cuBLASLt's sm_90 algorithm (the heuristic's own id, 66 in cuBLASLt 13.1) that its heuristic's
// candidates lack, from session 37's gemm_bench search on the H200 (kernels-notes.md): (tile, cluster shape, custom
// option), the fastest back to back for Llama-3.1-8B bf16 qkv / o / gate_up / down at M = 256, 1,024 and 8,192. Data,
// not rules: the tuner checks each against the shape (cublasLtMatmulAlgoCheck) and keeps one only if it times faster.
struct ExtraConfig {
  uint32_t tile;
  uint16_t cluster;
  uint32_t custom;
};
constexpr ExtraConfig kExtraConfigs[] = {{28, 2, 4}, {28, 5, 0}, {17, 5, 1},  {30, 6, 2},  {227, 4, 4},
                                         {20, 5, 2}, {20, 2, 1}, {20, 5, 5},  {407, 5, 3}, {256, 3, 6}};

int ptr_align(const void* p) {
  if (!p) return 256;
  uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 2 && (v % uintptr_t(a)) != 0) a >>= 1;
  return a;
}

}  // namespace

#define LT_TRY(expr)                                                                                  \
  do {                                                                                                \
    cublasStatus_t st_ = (expr);                                                                      \
    if (st_ != CUBLAS_STATUS_SUCCESS) return std::string(#expr " failed: ") + lt_status(st_);         \
  } while (0)

GemmRunner::~GemmRunner() {
  for (auto& kv : cache_) {
    if (kv.second.desc) cublasLtMatmulDescDestroy(kv.second.desc);
    if (kv.second.a) cublasLtMatrixLayoutDestroy(kv.second.a);
    if (kv.second.b) cublasLtMatrixLayoutDestroy(kv.second.b);
    if (kv.second.c) cublasLtMatrixLayoutDestroy(kv.second.c);
  }
  if (workspace_) cudaFree(workspace_);
  if (tune_out_) cudaFree(tune_out_);
  if (flush_) cudaFree(flush_);
  if (tune_counter_) cudaFree(tune_counter_);
  if (handle_) cublasLtDestroy(handle_);
}

void GemmRunner::init(const Tunables& t) {
  cublasStatus_t st = cublasLtCreate(&handle_);
  if (st != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string("cublasLtCreate failed: ") + lt_status(st));
  cudaError_t e = cudaMalloc(&workspace_, kWorkspaceBytes);
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("cudaMalloc of the 32 MB cuBLASLt workspace failed: ") + cudaGetErrorString(e));
  tune_on = t.gemm_tune;
  tune_every_m = t.gemm_tune_every_m;
  tune_extra = t.gemm_extra >= 1;
  gemv_mode = t.gemv == 0 ? -1 : t.gemv == 1 ? 1 : 0;
  gemv_variant = t.gemv_variant;
  verbose = t.profile != 0 || t.tune_log;
  pdl = t.pdl;
  strict = t.strict;
  force_pro = t.prologue_force;
  force_norm = t.norm_tail == 2;
}

std::string GemmRunner::ensure_tune_buffers(size_t out_bytes) {
  const size_t kFlush = size_t(64) << 20;
  if (out_bytes > tune_out_bytes_) {
    if (tune_out_) cudaFree(tune_out_);
    tune_out_ = nullptr;
    tune_out_bytes_ = 0;
    if (cudaMalloc(&tune_out_, out_bytes) != cudaSuccess) return "cudaMalloc of the GEMM tuning scratch failed";
    tune_out_bytes_ = out_bytes;
  }
  if (!flush_ && cudaMalloc(&flush_, kFlush) != cudaSuccess) return "cudaMalloc of the L2 flush buffer failed";
  return "";
}

std::string GemmRunner::tune(const Key& k, Plan* p, const cublasLtMatmulHeuristicResult_t* res, int n, const void* x,
                             const void* w, const void* bias, cudaStream_t s) {
  const size_t kFlush = size_t(64) << 20;
  std::string berr = ensure_tune_buffers(size_t(k.M) * size_t(k.N) * 2);
  if (!berr.empty()) return berr;
  cudaEvent_t a = nullptr, b = nullptr;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float best = 1e30f;
  int pick = 0;
  float alpha = 1.f, beta = k.has_c ? 1.f : 0.f;
  DType dt = cudaDataType_t(k.dt) == CUDA_R_16BF ? DType::BF16 : DType::F16;
  bool gemv_ok = (k.epi == int(GemmEpi::None) || k.epi == int(GemmEpi::Bias)) && gemv_mode != 0 &&
                 gemv_eligible(x, w, k.M, k.K, dt) && (k.align >= 16);
  int pick_gemv = -1;
  bool gemv_wins = false;
  for (int v = 0; gemv_ok && v < kGemvVariants; v++) {  // the gemv kernel's variants
    if (gemv_variant >= 0 && v != gemv_variant) continue;
    float total = 0;
    bool ok = true;
    for (int it = 0; it < 6 && ok; it++) {
      cudaMemsetAsync(flush_, it, kFlush, s);
      cudaEventRecord(a, s);
      ok = gemv(v, x, w, k.epi == int(GemmEpi::Bias) ? bias : nullptr, k.has_c ? tune_out_ : nullptr, tune_out_, k.M,
                k.N, k.K, dt, pdl, s) == cudaSuccess;
      cudaEventRecord(b, s);
      if (cudaEventSynchronize(b) != cudaSuccess) ok = false;
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      if (it > 0) total += ms;
    }
    if (ok) step_gemv_.timed(k, v, total / 5);
    if (ok && total < best) best = total, pick_gemv = v, gemv_wins = true;
  }
  // Sum of runs 2-6 of a cuBLASLt algorithm (L2 flushed before each), or a negative value when it fails.
  auto time_lt = [&](const cublasLtMatmulAlgo_t& algo) {
    float total = 0;
    for (int it = 0; it < 6; it++) {
      cudaMemsetAsync(flush_, it, kFlush, s);
      cudaEventRecord(a, s);
      const bool ok = cublasLtMatmul(handle_, p->desc, &alpha, w, p->a, x, p->b, &beta, tune_out_, p->c, tune_out_,
                                     p->c, &algo, workspace_, kWorkspaceBytes, s) == CUBLAS_STATUS_SUCCESS;
      cudaEventRecord(b, s);
      if (!ok || cudaEventSynchronize(b) != cudaSuccess) return -1.f;
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      if (it > 0) total += ms;
    }
    return total;
  };
  std::vector<cublasLtMatmulAlgo_t> alts;  // every cuBLASLt configuration timed, and its ms a call
  std::vector<float> alt_ms;
  int chosen_alt = -1;
  auto timed_lt = [&](const cublasLtMatmulAlgo_t& algo, float total) {
    alts.push_back(algo), alt_ms.push_back(total / 5);
    return int(alts.size()) - 1;
  };
  if (pick_gemv >= 0 && gemv_mode == 1) n = 0;  // forced
  float top[kSplitKTop];  // the fastest unsplit candidates, for the split-K trials below
  int top_i[kSplitKTop], ntop = 0;
  float first = -1.f;  // the heuristic's first candidate (what an untuned M runs), for the verbose line
  for (int i = 0; i < n; i++) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > kWorkspaceBytes) continue;
    const float total = time_lt(res[i].algo);
    if (i == 0) first = total;
    if (total < 0) continue;
    const int ai = timed_lt(res[i].algo, total);
    if (total < best) best = total, pick = i, gemv_wins = false, chosen_alt = ai;
    int j = ntop < kSplitKTop ? ntop++ : kSplitKTop;  // insertion into the sorted top list
    for (; j > 0 && top[j - 1] > total; j--)
      if (j < kSplitKTop) top[j] = top[j - 1], top_i[j] = top_i[j - 1];
    if (j < kSplitKTop) top[j] = total, top_i[j] = i;
  }
  cublasLtMatmulAlgo_t chosen = res[pick].algo;
  // The extra configurations (tune_extra), on the heuristic's first algorithm that ran: its id, stages and the rest
  // as the heuristic set them, tile / cluster shape / custom option from kExtraConfigs, unsplit.
  int extra_pick = -1;
  int base_i = -1;
  for (int i = 0; i < n && base_i < 0; i++)
    if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= kWorkspaceBytes) base_i = i;
  for (int e = 0; tune_extra && base_i >= 0 && e < int(sizeof(kExtraConfigs) / sizeof(kExtraConfigs[0])); e++) {
    cublasLtMatmulAlgo_t v = res[base_i].algo;
    const ExtraConfig& xc = kExtraConfigs[e];
    const uint32_t one = 1, no_reduction = 0;
    cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_TILE_ID, &xc.tile, sizeof(xc.tile));
    cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &xc.cluster, sizeof(xc.cluster));
    cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &xc.custom, sizeof(xc.custom));
    cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &one, sizeof(one));
    cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &no_reduction,
                                         sizeof(no_reduction));
    cublasLtMatmulHeuristicResult_t chk{};
    if (cublasLtMatmulAlgoCheck(handle_, p->desc, p->a, p->b, p->c, p->c, &v, &chk) != CUBLAS_STATUS_SUCCESS ||
        chk.workspaceSize > kWorkspaceBytes)
      continue;
    const float total = time_lt(v);
    if (total < 0) continue;
    const int ai = timed_lt(v, total);
    if (total < best) best = total, chosen = v, extra_pick = e, gemv_wins = false, chosen_alt = ai;
  }
  // Split-K variants of the fastest candidates: at decode batches (M = 256-1024) the narrow layers (N = 4096:
  // o_proj, down_proj) have fewer output tiles than the GPU has SMs, and the heuristic's own picks rarely split.
  // Only the fp32 (compute-type) reduction: the partial sums are not rounded to the output type before they meet.
  uint32_t split_k = 1;
  const float unsplit = best;
  for (int j = 0; j < ntop && !gemv_wins; j++) {
    int32_t sup = 0;
    uint32_t mask = 0;
    size_t wr = 0;
    const cublasLtMatmulAlgo_t& base = res[top_i[j]].algo;
    cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &sup, sizeof(sup), &wr);
    cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &mask, sizeof(mask), &wr);
    uint32_t red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    if (!sup || !(mask & red)) continue;
    for (uint32_t ks : {2u, 3u, 4u, 6u}) {
      cublasLtMatmulAlgo_t v = base;
      cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &ks, sizeof(ks));
      cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof(red));
      cublasLtMatmulHeuristicResult_t chk{};
      if (cublasLtMatmulAlgoCheck(handle_, p->desc, p->a, p->b, p->c, p->c, &v, &chk) != CUBLAS_STATUS_SUCCESS ||
          chk.workspaceSize > kWorkspaceBytes)
        continue;
      const float total = time_lt(v);
      if (total < 0) continue;
      const int ai = timed_lt(v, total);
      if (total < best) best = total, chosen = v, split_k = ks, extra_pick = -1, chosen_alt = ai;
    }
  }
  if (verbose && !gemv_wins)  // ms a call; "first" -1 when the heuristic's first candidate did not run
    std::fprintf(stderr, "tsllm gemm M=%d N=%d K=%d: candidate %d of %d%s, split-K %u, %.4f ms (unsplit %.4f, "
                 "first %.4f)\n", k.M, k.N, k.K, pick, n,
                 extra_pick >= 0 ? (" (extra configuration " + std::to_string(extra_pick) + ")").c_str() : "", split_k,
                 best / 5, unsplit / 5, first >= 0 ? first / 5 : -1.f);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGetLastError();
  p->gemv = gemv_wins ? pick_gemv : -1;
  if (!gemv_ok) p->no_gemv = "not eligible (needs K % 8 == 0, 16-byte aligned x and w, no GELU epilogue)";
  else if (pick_gemv < 0) p->no_gemv = "no gemv variant launched";
  else if (!gemv_wins) p->no_gemv = "cuBLASLt was faster";
  if (!gemv_wins) {
    p->algo = chosen;
    p->alt = chosen_alt;
    if (k.M > kGemvMaxM && chosen_alt >= 0) {  // (the gemv-sized shapes are step_gemv_'s)
      for (size_t i = 0; i < alts.size(); i++) step_lt_.timed(k, int(i), alt_ms[i]);
      p->alts = std::move(alts);
    }
  }
  return "";
}

std::string GemmRunner::make_plan(const Key& k, Plan* p, const void* x, const void* w, const void* bias,
                                  cudaStream_t s) {
  cudaDataType_t dt = cudaDataType_t(k.dt);
  LT_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  switch (GemmEpi(k.epi)) {
    case GemmEpi::None: epi = CUBLASLT_EPILOGUE_DEFAULT; break;
    case GemmEpi::Bias: epi = CUBLASLT_EPILOGUE_BIAS; break;
    case GemmEpi::Gelu: epi = CUBLASLT_EPILOGUE_GELU; break;
    case GemmEpi::GeluBias: epi = CUBLASLT_EPILOGUE_GELU_BIAS; break;
  }
  LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (k.epi == int(GemmEpi::Bias) || k.epi == int(GemmEpi::GeluBias)) {
    cudaDataType_t bt = dt;
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  // A = W: stored K×N column-major (ld K), op T -> N×K. B = x: K×M (ld K). C/D: N×M (ld N).
  LT_TRY(cublasLtMatrixLayoutCreate(&p->a, dt, uint64_t(k.K), uint64_t(k.N), int64_t(k.K)));
  LT_TRY(cublasLtMatrixLayoutCreate(&p->b, dt, uint64_t(k.K), uint64_t(k.M), int64_t(k.K)));
  LT_TRY(cublasLtMatrixLayoutCreate(&p->c, dt, uint64_t(k.N), uint64_t(k.M), int64_t(k.N)));

  cublasLtMatmulPreference_t pref = nullptr;
  LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = kWorkspaceBytes;
  uint32_t al = uint32_t(k.align);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof(al));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof(al));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof(al));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof(al));
  cublasLtMatmulHeuristicResult_t res[kHeuristics] = {};
  int found = 0;
  cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, p->desc, p->a, p->b, p->c, p->c, pref, kHeuristics, res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0)
    return "cuBLASLt has no algorithm for M=" + std::to_string(k.M) + " N=" + std::to_string(k.N) +
           " K=" + std::to_string(k.K) + " epilogue " + std::to_string(k.epi) + " (" + lt_status(st) + ")";
  p->algo = res[0].algo;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaStreamIsCapturing(s, &cap);
  bool gemv_cand = k.M <= kGemvMaxM && gemv_mode != 0;
  p->no_gemv = cap != cudaStreamCaptureStatusNone ? "shape first seen while a CUDA graph was being captured (no tuning)"
              : !gemv_cand                        ? "M > 4 or gemv off"
                                                  : "not tuned (gemm_tune off)";
  if ((found > 1 || gemv_cand) && (tunes(k.M) || gemv_mode == 1) && cap == cudaStreamCaptureStatusNone) {
    if (k.epi == int(GemmEpi::Bias) || k.epi == int(GemmEpi::GeluBias))
      LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    return tune(k, p, res, found, x, w, bias, s);
  }
  return "";
}

GemmRunner::Plan* GemmRunner::get_plan(const Key& k, const void* x, const void* w, const void* bias, cudaStream_t s,
                                       std::string* err) {
  if (k.M <= kGemvMaxM) step_gemv_.note(k);
  else step_lt_.note(k);
  auto it = cache_.find(k);
  if (it != cache_.end()) return &it->second;
  Plan p;
  *err = make_plan(k, &p, x, w, bias, s);
  if (!err->empty()) {
    if (p.desc) cublasLtMatmulDescDestroy(p.desc);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    return nullptr;
  }
  return &cache_.emplace(k, p).first->second;
}

void GemmRunner::step_choices(float within, std::vector<StepChoice>* out) {
  step_gemv_.offer(
      out, within, -1.f,
      [this](const Key& k, int* pick) {
        auto it = cache_.find(k);
        if (it == cache_.end() || it->second.gemv < 0) return false;
        *pick = it->second.gemv;
        return true;
      },
      [this](const Key& k, int v) { cache_.find(k)->second.gemv = v; },
      [](const Key& k) {
        return "gemv M=" + std::to_string(k.M) + " N=" + std::to_string(k.N) + " K=" + std::to_string(k.K);
      });
}

void GemmRunner::lt_choices(float within, int most, std::vector<StepChoice>* out) {
  step_lt_.offer(
      out, within, -1.f,
      [this](const Key& k, int* pick) {
        auto it = cache_.find(k);
        if (it == cache_.end() || it->second.gemv >= 0 || it->second.alt < 0) return false;
        *pick = it->second.alt;
        return true;
      },
      [this](const Key& k, int v) {
        Plan& p = cache_.find(k)->second;
        p.alt = v, p.algo = p.alts[size_t(v)];
      },
      [](const Key& k) {
        return "cuBLASLt M=" + std::to_string(k.M) + " N=" + std::to_string(k.N) + " K=" + std::to_string(k.K);
      },
      most);
}

void GemmRunner::fusion_choices(float within, std::vector<StepChoice>* out) {
  step_fusion_.offer_map(out, within, kFusionClose, pro_cache_, [](const Key& k) {
    const char* what = k.pro == kNormKey               ? "norm tail: linear + rms_norm"
                       : k.pro > kGluKey                ? "epilogue: linear + gated_act"
                       : k.pro == int(GemvPro::RmsNorm) ? "prologue: rms_norm + linear"
                                                        : "prologue: gated_act + linear";
    return std::string("gemv ") + what + " M=" + std::to_string(k.M) + " N=" + std::to_string(k.N) +
           " K=" + std::to_string(k.K) + " (-1: unfused)";
  });
}

std::string GemmRunner::run_plan(Plan& p, const void* x, const void* w, const void* bias, const void* residual,
                                 void* out, int M, int N, int K, cudaDataType_t dt, GemmEpi epi, cudaStream_t s,
                                 const EwChain* post, void* tmp) {
  const DType gdt = dt == CUDA_R_16BF ? DType::BF16 : DType::F16;
  if (p.gemv >= 0) {  // the chain, if any, in registers
    cudaError_t ge =
        gemv(p.gemv, x, w, epi == GemmEpi::Bias ? bias : nullptr, residual, out, M, N, K, gdt, pdl, s, post);
    return ge == cudaSuccess ? std::string() : std::string("gemv: ") + cudaGetErrorString(ge);
  }
  if (epi == GemmEpi::Bias || epi == GemmEpi::GeluBias)
    LT_TRY(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  float alpha = 1.f;
  EwChain rest = post ? *post : EwChain{};
  if (rest.n > 0 && rest.op[0] == UnaryOp::Scale && epi == GemmEpi::None) {  // scale(x·wᵀ) = alpha·x·wᵀ
    alpha = rest.arg[0];
    for (int i = 1; i < rest.n; i++) rest.op[i - 1] = rest.op[i], rest.arg[i - 1] = rest.arg[i];
    rest.n--;
  }
  // With a chain left, the residual is added after it (by linear_epilogue), not as C.
  const void* res_c = rest.n ? nullptr : residual;
  void* dst = rest.n && residual == out ? tmp : out;
  if (!dst) return "a linear with an elementwise chain whose output aliases its residual needs a scratch buffer";
  float beta = res_c ? 1.f : 0.f;
  const void* c = res_c ? res_c : dst;
  LT_TRY(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, c, p.c, dst, p.c, &p.algo, workspace_,
                        kWorkspaceBytes, s));
  if (rest.n) {
    cudaError_t ee = linear_epilogue(dst, residual, out, uint64_t(M) * uint64_t(N), Act::None, rest, gdt, s);
    if (ee != cudaSuccess) return std::string("linear_epilogue: ") + cudaGetErrorString(ee);
  }
  return "";
}

std::string GemmRunner::linear(const void* x, const void* w, const void* bias, const void* residual, void* out, int M,
                               int N, int K, cudaDataType_t dt, GemmEpi epi, cudaStream_t s, LinearKernel* ran,
                               const EwChain* post, void* tmp) {
  *ran = LinearKernel::None;
  if (M == 0) return "";
  const Key k = linear_key(x, w, bias, residual, out, M, N, K, dt, epi);
  std::string err;
  Plan* p = get_plan(k, x, w, bias, s, &err);
  if (!p) return err;
  if (strict && gemv_mode == 1 && M <= kGemvMaxM && (epi == GemmEpi::None || epi == GemmEpi::Bias) && p->gemv < 0)
    return "gemv forced (gemv = 1, strict_kernels) but cuBLASLt would run M=" + std::to_string(M) + " N=" +
           std::to_string(N) + " K=" + std::to_string(K) + ": " + (p->no_gemv.empty() ? "unknown" : p->no_gemv);
  err = run_plan(*p, x, w, bias, residual, out, M, N, K, dt, epi, s, post && post->n ? post : nullptr, tmp);
  if (err.empty()) *ran = p->gemv >= 0 ? LinearKernel::Gemv : LinearKernel::Cublaslt;
  return err;
}

GemmRunner::Key GemmRunner::linear_key(const void* x, const void* w, const void* bias, const void* residual,
                                       const void* out, int M, int N, int K, cudaDataType_t dt, GemmEpi epi) {
  int align = ptr_align(x);
  for (const void* p : {w, bias, residual, out})
    if (p && ptr_align(p) < align) align = ptr_align(p);
  return Key{M, N, K, int(dt), int(epi), residual != nullptr, align};
}

float GemmRunner::time_flushed(cudaStream_t s, const std::function<bool()>& body) {
  const size_t kFlush = size_t(64) << 20;
  cudaEvent_t a = nullptr, b = nullptr;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float total = 0;
  for (int it = 0; it < 6; it++) {
    cudaMemsetAsync(flush_, it, kFlush, s);
    cudaEventRecord(a, s);
    const bool ok = body();
    cudaEventRecord(b, s);
    if (cudaEventSynchronize(b) != cudaSuccess || !ok) {
      total = -5.f;
      break;
    }
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    if (it > 0) total += ms;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return total < 0.f ? -1.f : total / 5;
}

int GemmRunner::prologue_variant(const GemvPrologue& pro, const void* pro_x, void* pro_y, const void* w,
                                 const void* bias, const void* residual, void* out, int M, int N, int K,
                                 cudaDataType_t dt, cudaStream_t s, std::string* why) {
  DType gdt = dt == CUDA_R_16BF ? DType::BF16 : DType::F16;
  auto no = [&](const char* reason) {
    if (why) *why = reason;
    return -1;
  };
  if (pro.kind == GemvPro::None || M < 1 || M > kGemvMaxM) return no("M > 4");
  if (gemv_mode == 0) return no("gemv off");
  if ((dt != CUDA_R_16F && dt != CUDA_R_16BF) || !gemv_pro_eligible(pro, pro_x, w, M, K, gdt))
    return no("not eligible (needs K % 8 == 0 and 16-byte aligned x, w and norm weight)");
  const GemmEpi epi = bias ? GemmEpi::Bias : GemmEpi::None;
  const Key ku = linear_key(pro_y, w, bias, residual, out, M, N, K, dt, epi);  // the plain linear(pro_y, ...)'s
  Key kp = ku;
  kp.pro = int(pro.kind);
  for (const void* p : {pro_x, pro.norm_w})
    if (p && ptr_align(p) < kp.align) kp.align = ptr_align(p);
  step_fusion_.note(kp);
  const int known = fusion_cached(pro_cache_, kp, s, why);
  if (known != kFusionUndecided) return known;
  std::string err;
  Plan* pu = get_plan(ku, pro_y, w, bias, s, &err);  // the unfused linear's own (tuned) choice
  const Act act = gated_act_of(pro.kind);
  const void* tb = epi == GemmEpi::Bias ? bias : nullptr;
  const int pick = decide_fusion(
      kp, pro.kind == GemvPro::RmsNorm ? "prologue: rms_norm + linear" : "prologue: gated_act + linear", pu,
      size_t(M) * size_t(N) * 2, force_pro,
      [&] {  // the prologue kernel into pro_y, then the plain linear's choice
        cudaError_t ke = pro.kind == GemvPro::RmsNorm
                             ? rms_norm(pro_x, nullptr, pro.norm_w, 0.f, pro_y, nullptr, M, K, pro.eps, gdt, s)
                             : gated_act(pro_x, pro_y, M, K, act, gdt, s);
        void* tres = residual ? tune_out_ : nullptr;
        return ke == cudaSuccess && run_plan(*pu, pro_y, w, bias, tres, tune_out_, M, N, K, dt, epi, s).empty();
      },
      [&](int v) {
        void* tres = residual ? tune_out_ : nullptr;
        return gemv_pro(v, pro, pro_x, w, tb, tres, tune_out_, M, N, K, gdt, pdl, s) == cudaSuccess;
      },
      [](int) { return true; }, s);
  return pick >= 0 ? pick : no("the tuner kept the unfused pair (or no fused variant launched)");
}

int GemmRunner::glu_variant(GemvPro act, const void* x, const void* w, const void* bias, void* gu, void* out, int M,
                            int N, int K, cudaDataType_t dt, cudaStream_t s, std::string* why) {
  const DType gdt = dt == CUDA_R_16BF ? DType::BF16 : DType::F16;
  auto no = [&](const char* reason) {
    if (why) *why = reason;
    return -1;
  };
  if (act != GemvPro::GatedSilu && act != GemvPro::GatedGeluTanh) return no("not a gated activation");
  if (M < 1 || M > kGemvMaxM) return no("M > 4");
  if (gemv_mode == 0) return no("gemv off");
  if ((dt != CUDA_R_16F && dt != CUDA_R_16BF) || !gemv_eligible(x, w, M, K, gdt))
    return no("not eligible (needs K % 8 == 0 and 16-byte aligned x and w)");
  const GemmEpi epi = bias ? GemmEpi::Bias : GemmEpi::None;
  const Key ku = linear_key(x, w, bias, nullptr, gu, M, 2 * N, K, dt, epi);  // the plain linear(x, ..., gu)'s
  Key kg = ku;
  kg.pro = kGluKey + int(act);
  if (ptr_align(out) < kg.align) kg.align = ptr_align(out);
  step_fusion_.note(kg);
  const int known = fusion_cached(pro_cache_, kg, s, why);
  if (known != kFusionUndecided) return known;
  std::string err;
  Plan* pu = get_plan(ku, x, w, bias, s, &err);  // the unfused linear's own (tuned) choice
  const size_t gu_bytes = size_t(M) * size_t(2 * N) * 2;
  auto t_out = [&] { return static_cast<void*>(static_cast<char*>(tune_out_) + gu_bytes); };
  const int pick = decide_fusion(
      kg, "epilogue: linear + gated_act", pu, gu_bytes + size_t(M) * size_t(N) * 2, false,
      [&] {  // the plain linear's choice into gu, then gated_act
        return run_plan(*pu, x, w, bias, nullptr, tune_out_, M, 2 * N, K, dt, epi, s).empty() &&
               gated_act(tune_out_, t_out(), M, N, gated_act_of(act), gdt, s) == cudaSuccess;
      },
      [&](int v) { return gemv_glu(v, act, x, w, bias, t_out(), M, N, K, gdt, pdl, s) == cudaSuccess; },
      gemv_glu_takes, s);
  return pick >= 0 ? pick : no("the tuner kept the unfused pair (or no fused variant launched)");
}

int GemmRunner::norm_variant(const void* x, const void* w, const void* bias, const void* residual, void* out,
                             const void* norm_w, float eps, void* norm_out, int M, int N, int K, cudaDataType_t dt,
                             cudaStream_t s, std::string* why) {
  const DType gdt = dt == CUDA_R_16BF ? DType::BF16 : DType::F16;
  auto no = [&](const char* reason) {
    if (why) *why = reason;
    return -1;
  };
  if (M < 1 || M > kGemvMaxM) return no("M > 4");
  if (gemv_mode == 0) return no("gemv off");
  if ((dt != CUDA_R_16F && dt != CUDA_R_16BF) || !gemv_norm_eligible(x, w, out, norm_w, norm_out, M, N, K, gdt))
    return no("not eligible (needs K % 8 == 0, N % 8 == 0 and 16-byte aligned x, w, out and the norm's tensors)");
  const GemmEpi epi = bias ? GemmEpi::Bias : GemmEpi::None;
  const Key ku = linear_key(x, w, bias, residual, out, M, N, K, dt, epi);  // the plain linear's
  Key kn = ku;
  kn.pro = kNormKey;
  step_fusion_.note(kn);
  const int known = fusion_cached(pro_cache_, kn, s, why);
  if (known != kFusionUndecided) return known;
  std::string err;
  Plan* pu = get_plan(ku, x, w, bias, s, &err);  // the unfused linear's own (tuned) choice
  if (!tune_counter_ && cudaMalloc(&tune_counter_, sizeof(unsigned)) == cudaSuccess)
    cudaMemset(tune_counter_, 0, sizeof(unsigned));
  const size_t out_bytes = size_t(M) * size_t(N) * 2;
  auto t_y = [&] { return static_cast<void*>(static_cast<char*>(tune_out_) + out_bytes); };
  const int pick = decide_fusion(
      kn, "norm tail: linear + rms_norm", pu, 2 * out_bytes, force_norm,
      [&] {  // the plain linear's choice, then rms_norm
        const void* tres = residual ? tune_out_ : nullptr;
        return run_plan(*pu, x, w, bias, tres, tune_out_, M, N, K, dt, epi, s).empty() &&
               rms_norm(tune_out_, nullptr, norm_w, 0.f, t_y(), nullptr, M, N, eps, gdt, s) == cudaSuccess;
      },
      [&](int v) {
        const void* tres = residual ? tune_out_ : nullptr;
        return tune_counter_ && gemv_norm(v, x, w, bias, tres, tune_out_, M, N, K, norm_w, eps, t_y(), tune_counter_,
                                          gdt, pdl, s) == cudaSuccess;
      },
      [](int) { return true; }, s);
  return pick >= 0 ? pick : no("the tuner kept the unfused pair (or no fused variant launched)");
}

int GemmRunner::decide_fusion(const Key& k, const char* what, Plan* pu, size_t scratch, bool force,
                              const std::function<bool()>& pair, const std::function<bool(int)>& fused,
                              const std::function<bool(int)>& offers, cudaStream_t s) {
  const bool timed = gemv_mode == 1 ? gemv_variant < 0 : tunes(k.M);
  int pick = -1;
  float best = 1e30f, base = -1.f;
  if (!timed) {
    pick = gemv_mode == 1 ? gemv_variant : (pu ? pu->gemv : -1);
    if (pick >= 0 && !offers(pick)) pick = -1;
  } else if (ensure_tune_buffers(scratch).empty()) {
    // (Step tuning may revisit an unforced decision: the pair as -1, each fused variant.)
    const bool choice = gemv_mode != 1 && !force;
    if (pu && gemv_mode != 1) base = time_flushed(s, pair);
    if (choice && base >= 0.f) step_fusion_.timed(k, -1, base);
    for (int v = 0; v < kGemvVariants; v++) {
      if ((gemv_variant >= 0 && v != gemv_variant) || !offers(v)) continue;
      const float ms = time_flushed(s, [&] { return fused(v); });
      if (ms >= 0.f && ms < best) best = ms, pick = v;
      if (choice && ms >= 0.f) step_fusion_.timed(k, v, ms);
    }
    if (pick >= 0 && gemv_mode != 1 && !force && !(base >= 0.f && best < base)) pick = -1;
  }
  cudaGetLastError();
  if (verbose)
    std::fprintf(stderr, "tsllm gemv %s M=%d N=%d K=%d: %s (fused best %.4f ms, unfused %s %.4f ms)\n", what, k.M,
                 k.N, k.K, pick >= 0 ? ("fused, gemv variant " + std::to_string(pick)).c_str() : "unfused",
                 best < 1e29f ? best : -1.f,
                 pu && pu->gemv >= 0 ? ("gemv " + std::to_string(pu->gemv)).c_str() : "cuBLASLt", base);
  pro_cache_.emplace(k, pick);
  return pick;
}

}  // namespace tsllm
