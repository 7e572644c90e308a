#include "quant_gemm.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace tsllm {

namespace {

std::string lt_err(const char* what, cublasStatus_t st) {
  return std::string(what) + " failed (cublasStatus " + std::to_string(int(st)) + ")";
}

#define QLT_TRY(expr)                                          \
  do {                                                         \
    cublasStatus_t st_ = (expr);                               \
    if (st_ != CUBLAS_STATUS_SUCCESS) return lt_err(#expr, st_); \
  } while (0)

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// The outer-vector plan's key in plans_ (and outer_pick_'s): the shape, 1 + bias + 2 · residual, the output dtype.
std::tuple<int, int, int, int, int> outer_key(int M, int N, int K, bool bias, bool residual, DType dt) {
  return std::make_tuple(M, N, K, 1 + int(bias) + 2 * int(residual), int(dt));
}

std::string shape_name(int M, int N, int K, const char* path) {
  return "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + " " + path;
}

}  // namespace

QuantGemm::~QuantGemm() {
  for (auto& kv : plans_) {
    if (kv.second.desc) cublasLtMatmulDescDestroy(kv.second.desc);
    if (kv.second.a) cublasLtMatrixLayoutDestroy(kv.second.a);
    if (kv.second.b) cublasLtMatrixLayoutDestroy(kv.second.b);
    if (kv.second.d) cublasLtMatrixLayoutDestroy(kv.second.d);
  }
  for (void* p : {lt_ws_, xq_, static_cast<void*>(acc_), deq_, flush_, tune_out_})
    if (p) cudaFree(p);
  if (handle_) cublasLtDestroy(handle_);
}

QuantWorkspace QuantGemm::need_for(QuantKind kind, int max_tokens, int N, int K, size_t act_elem_bytes) {
  QuantWorkspace w;
  if (kind == QuantKind::Fp8) {
    w.xq_bytes = align256(size_t(max_tokens) * size_t(K)) + align256(size_t(max_tokens) * 4);
    const size_t row = size_t(N) * 4;
    size_t rows = std::max<size_t>(1, kAccChunkBytes / row);
    if (rows > size_t(max_tokens)) rows = size_t(max_tokens);
    w.acc_bytes = rows * row;
  } else {
    // Also for engines whose steps never exceed the gemv's M: a shape the gemv cannot take (K, group) runs here.
    w.deq_bytes = size_t(N) * size_t(K) * act_elem_bytes;
  }
  return w;
}

void QuantGemm::init(const QuantWorkspace& need, const Tunables& tun) {
  auto ck = [](cudaError_t e, const std::string& what) {
    if (e != cudaSuccess) throw std::runtime_error("cudaMalloc of " + what + " failed: " + cudaGetErrorString(e));
  };
  gemv_on = tun.quant_gemv;
  gemv_force = tun.quant_gemv_variant;
  tune_below = tun.quant_gemv_tune_below;
  shape_picks = tun.quant_gemv_picks;
  fp8_outer = tun.fp8_outer_vec;
  fast_accum = tun.fp8_fast_accum;
  tune = tun.gemm_tune;
  tune_every_m = tun.gemm_tune_every_m;
  pdl = tun.pdl;
  verbose = tun.profile != 0 || tun.tune_log;
  force_pro = tun.prologue_force;
  if (need.xq_bytes) {
    cublasStatus_t st = cublasLtCreate(&handle_);
    if (st != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(lt_err("cublasLtCreate (FP8 GEMM)", st));
    ck(cudaMalloc(&lt_ws_, lt_ws_bytes_), "the FP8 GEMM's cuBLASLt workspace");
    ck(cudaMalloc(&xq_, need.xq_bytes), "the FP8 activation workspace");
    xq_bytes_ = need.xq_bytes;
    ck(cudaMalloc(reinterpret_cast<void**>(&acc_), need.acc_bytes), "the FP8 GEMM's fp32 output chunk");
    acc_bytes_ = need.acc_bytes;
  }
  if (need.deq_bytes) {
    ck(cudaMalloc(&deq_, need.deq_bytes), "the weight-only dequantisation workspace");
    deq_bytes_ = need.deq_bytes;
  }
}

bool QuantGemm::ensure_tune_out(size_t bytes) {
  const size_t kFlush = size_t(64) << 20;
  if (!flush_ && cudaMalloc(&flush_, kFlush) != cudaSuccess) {
    cudaGetLastError();
    flush_ = nullptr;
  }
  if (bytes <= tune_out_bytes_) return true;
  if (tune_out_) cudaFree(tune_out_);
  tune_out_bytes_ = 0;
  if (cudaMalloc(&tune_out_, bytes) != cudaSuccess) {
    cudaGetLastError();
    tune_out_ = nullptr;
    return false;
  }
  tune_out_bytes_ = bytes;
  return true;
}

template <typename Body>
float QuantGemm::time_runs(cudaStream_t s, Body&& body) {
  const size_t kFlush = size_t(64) << 20;
  cudaEvent_t a = nullptr, b = nullptr;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float total = 0;
  bool ok = true;
  for (int it = 0; it < 6 && ok; it++) {
    if (flush_) cudaMemsetAsync(flush_, it, kFlush, s);
    cudaEventRecord(a, s);
    ok = body();
    cudaEventRecord(b, s);
    if (cudaEventSynchronize(b) != cudaSuccess) ok = false;
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    if (it > 0) total += ms;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGetLastError();
  return ok ? total / 5 : -1.f;
}

// The gemv tuners' candidates, in variant order: a later one replaces the pick only when it is faster by more than
// kTuneMargin. Why: lone timings of near-equal variants order them by noise, and the order changed from load to load
// where the step did not agree (H200, Llama-2-7B FP8 bs 1: o_proj variants 1 and 5 both 0.0127 ms, down 3 and 5
// 0.0220 / 0.0221; TPOT 2.680 ms with 1 / 3 forced, 2.763 with 5 / 5, 2.774 in loads left to the tuner, session 25
// runs 2-3).
constexpr float kTuneMargin = 0.02f;

template <class Takes, class Run>
int QuantGemm::tuned_pick(std::map<PickKey, int>& picks, const QuantLinearCall& c, DType dt, int dflt, int first,
                          int last, Takes&& takes, Run&& run, const char* what, cudaStream_t s,
                          const LargePath& large) {
  PickKey key = pick_key(c, dt);
  // Past the gemvs' rows the int kinds' picks hold for 32 rows (the weight-only GEMM's token tile): the batch
  // manager's steps take many row counts, and each would otherwise time every candidate once per shape.
  if (c.kind != QuantKind::Fp8 && c.M > kIntMmaGemvMaxM) std::get<2>(key) = (c.M + 31) / 32 * 32;
  const bool plain = &picks == &gemv_pick_;  // (step tuning: the plain gemv's picks only)
  if (plain) step_gemv_.note(key);
  auto it = picks.find(key);
  if (it != picks.end()) return it->second;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaStreamIsCapturing(s, &cap);
  if (cap != cudaStreamCaptureStatusNone) return dflt;
  if (!ensure_tune_out(size_t(c.M) * size_t(c.N) * (dt == DType::F32 ? 4 : 2))) return dflt;
  int pick = dflt;
  float best = 1e30f;
  std::string all;
  for (int v = first; v <= last; v++) {
    if (!takes(v)) continue;
    const float ms = time_runs(s, [&] { return run(v) == cudaSuccess; });
    if (ms >= 0.f && ms < best * (1.f - kTuneMargin)) best = ms, pick = v;
    if (plain && ms >= 0.f) step_gemv_.timed(key, v, ms);
    char b[32];
    std::snprintf(b, sizeof b, " %d:%.4f", v, ms);
    all += b;
  }
  if (large) {
    const float ms = time_runs(s, [&] { return large(tune_out_); });
    if (ms >= 0.f && ms < best * (1.f - kTuneMargin)) best = ms, pick = -1;
    if (plain && ms >= 0.f) step_gemv_.timed(key, -1, ms);
    char b[32];
    std::snprintf(b, sizeof b, " dequantise+linear:%.4f", ms);
    all += b;
  }
  if (verbose)
    std::fprintf(stderr, "tsllm %s %s M=%d N=%d K=%d: variant %d (%.4f ms; all%s)\n", what, quant_kind_name(c.kind),
                 c.M, c.N, c.K, pick, best, all.c_str());
  picks.emplace(key, pick);
  return pick;
}

// The log's name of a QuantGemm decision key.
static std::string pick_name(const char* what, const QuantGemm::PickKey& k) {
  return std::string(what) + " " + quant_kind_name(QuantKind(std::get<0>(k))) + " M=" + std::to_string(std::get<2>(k)) +
         " N=" + std::to_string(std::get<3>(k)) + " K=" + std::to_string(std::get<4>(k));
}

void QuantGemm::step_choices(float within, std::vector<StepChoice>* out) {
  step_gemv_.offer_map(out, within, -1.f, gemv_pick_, [](const PickKey& k) { return pick_name("quant gemv", k); });
}

void QuantGemm::fusion_choices(float within, std::vector<StepChoice>* out) {
  step_pro_.offer_map(out, within, kFusionClose, pro_pick_, [](const PickKey& k) {
    return pick_name("quant gemv prologue (-1: unfused): rms_norm +", k);
  });
  step_glu_.offer_map(out, within, kFusionClose, glu_pick_, [](const PickKey& k) {
    return pick_name("quant gemv epilogue (-1: unfused): gated_act after", k);
  });
}

int QuantGemm::gemv_variant(const QuantLinearCall& c, DType dt, cudaStream_t s, const LargePath& large) {
  if (!gemv_on || quant_gemv_unsupported(c.kind, c.M, c.K, c.group, c.x, c.w, dt)) return -1;
  if (c.x_fp8) return rows_variant(c, dt, s);
  // Variant v exists for this kind (int8 / int4 have 0-21) and takes the call's shape. A forced variant that does
  // not leaves the call to the tuner, as does a TSLLM_QGEMV_PICKS entry.
  auto fits = [&](int v) { return quant_gemv_takes(c.kind, v, c.M, c.K, c.group); };
  if (fits(gemv_force)) return gemv_force;
  for (const auto& p : shape_picks)
    if (p.N == c.N && p.K == c.K && fits(p.variant)) return p.variant;
  // Untuned: variant 1; 5-256 rows (int kinds) only when the tuner has seen a tensor-core variant run the shape (it
  // refuses some: groups of a non-power-of-two count of chunks), else the large-M path.
  const int dflt = c.M <= kQuantGemvMaxM ? 1 : -1;
  if (!tune) return dflt;
  return tuned_pick(
      gemv_pick_, c, dt, dflt, 0, quant_gemv_variants(c.kind) - 1,
      [&](int v) { return fits(v) && !capped(v); },
      [&](int v) {
        return quant_gemv(v, c.kind, c.x, c.w, c.scales, c.group, c.bias, c.residual, tune_out_, c.M, c.N, c.K, c.act,
                          dt, pdl, s);
      },
      "quant gemv", s, large);
}

bool QuantGemm::rows_gemv_on() const {
  const bool forced_other = gemv_force >= 0 && (gemv_force < kFp8RowsGemvFirst || gemv_force > kFp8RowsGemvLast);
  return gemv_on && !forced_other && !capped(kFp8RowsGemvFirst) && fp8_gemv_rows_supported();
}

// The rows and scales of fp8_act_rows in the workspace.
static void rows_at(void* xq_ws, const QuantLinearCall& c, uint8_t** q, float** sx) {
  uint8_t* xq = static_cast<uint8_t*>(xq_ws);
  *q = xq;
  *sx = reinterpret_cast<float*>(xq + align256(size_t(c.M) * size_t(c.K)));
}

int QuantGemm::rows_variant(const QuantLinearCall& c, DType dt, cudaStream_t s) {
  if (gemv_force >= kFp8RowsGemvFirst && gemv_force <= kFp8RowsGemvLast) return gemv_force;
  const int dflt = kFp8RowsGemvFirst;
  if (!tune) return dflt;
  // Timed on the rows the producer just wrote (the eager step before capture).
  uint8_t* q = nullptr;
  float* sx = nullptr;
  rows_at(xq_, c, &q, &sx);
  return tuned_pick(
      rows_pick_, c, dt, dflt, kFp8RowsGemvFirst, kFp8RowsGemvLast,
      [&](int v) { return !capped(v); },
      [&](int v) {
        return fp8_gemv_rows(v, q, sx, c.w, c.scales, c.bias, c.residual, tune_out_, c.M, c.N, c.K, c.act, dt, pdl, s);
      },
      "gemv over FP8 rows", s);
}

std::string QuantGemm::rows_gemv(const QuantLinearCall& c, int variant, DType dt, cudaStream_t s) {
  uint8_t* q = nullptr;
  float* sx = nullptr;
  rows_at(xq_, c, &q, &sx);
  cudaError_t e =
      fp8_gemv_rows(variant, q, sx, c.w, c.scales, c.bias, c.residual, c.out, c.M, c.N, c.K, c.act, dt, pdl, s);
  return e == cudaSuccess ? std::string() : std::string("fp8_gemv_rows: ") + cudaGetErrorString(e);
}

int QuantGemm::prologue_variant(const QuantLinearCall& c, const GemvPrologue& pro, void* pro_y, DType dt,
                                cudaStream_t s, std::string* why) {
  auto no = [&](const char* reason) {
    if (why) *why = reason;
    return -1;
  };
  if (pro.kind != GemvPro::RmsNorm) return no("only rms_norm folds into a quantised gemv");
  if (!gemv_on) return no("quantised gemv off (TSLLM_QGEMV=0)");
  if (quant_gemv_unsupported(c.kind, c.M, c.K, c.group, c.x, c.w, dt) || c.M > kQuantGemvMaxM || !pro.norm_w ||
      (reinterpret_cast<uintptr_t>(pro.norm_w) & 15))
    return no("not eligible (M <= 4, K % 16 == 0, 16-byte aligned x, w and norm weight)");
  if (gemv_force >= 0 && gemv_force < quant_gemv_variants(c.kind))  // (as gemv_variant: beyond the kind's, tuned)
    return quant_gemv_has_prologue(c.kind, gemv_force) ? gemv_force : no("forced variant has no prologue");
  const PickKey key = pick_key(c, dt);
  step_pro_.note(key);
  const int known = fusion_cached(pro_pick_, key, s, why);
  if (known != kFusionUndecided) return known;
  int pick = -1;
  float best = 1e30f, base = -1.f;
  if (!tune) {
    pick = c.kind == QuantKind::Fp8 ? 3 : 1;
  } else if (ensure_tune_out(size_t(c.M) * size_t(c.N) * 2)) {
    void* tres = c.residual ? tune_out_ : nullptr;
    // Unfused: the rms_norm kernel into pro_y, then the plain call's tuned variant on it.
    QuantLinearCall u = c;
    u.x = pro_y;
    const int vu = gemv_variant(u, dt, s);
    if (vu >= 0)
      base = time_runs(s, [&] {
        return rms_norm(c.x, nullptr, pro.norm_w, 0.f, pro_y, nullptr, c.M, c.K, pro.eps, dt, s) == cudaSuccess &&
               quant_gemv(vu, c.kind, pro_y, c.w, c.scales, c.group, c.bias, tres, tune_out_, c.M, c.N, c.K, c.act,
                          dt, pdl, s) == cudaSuccess;
      });
    for (int v = 0; v < quant_gemv_variants(c.kind); v++) {
      if (!quant_gemv_has_prologue(c.kind, v) || capped(v)) continue;
      const float ms = time_runs(s, [&] {
        return quant_gemv(v, c.kind, c.x, c.w, c.scales, c.group, c.bias, tres, tune_out_, c.M, c.N, c.K, c.act, dt,
                          pdl, s, pro) == cudaSuccess;
      });
      if (ms >= 0.f && ms < best * (1.f - kTuneMargin)) best = ms, pick = v;
      if (ms >= 0.f && !force_pro) step_pro_.timed(key, v, ms);
    }
    if (pick >= 0 && base >= 0.f && !force_pro && !(best < base)) pick = -1;
    if (base >= 0.f && !force_pro) step_pro_.timed(key, -1, base);
  }
  if (verbose)
    std::fprintf(stderr, "tsllm quant gemv prologue: rms_norm + %s M=%d N=%d K=%d: %s (fused best %.4f ms, unfused %.4f ms)\n",
                 quant_kind_name(c.kind), c.M, c.N, c.K,
                 pick >= 0 ? ("fused, variant " + std::to_string(pick)).c_str() : "unfused", best < 1e29f ? best : -1.f,
                 base);
  pro_pick_.emplace(key, pick);
  return pick >= 0 ? pick : no("the tuner kept the unfused pair (or no fused variant launched)");
}

int QuantGemm::glu_variant(const QuantLinearCall& c, Act act, DType dt, cudaStream_t s, std::string* why) {
  auto no = [&](const char* reason) {
    if (why) *why = reason;
    return -1;
  };
  const int N = c.N / 2;
  if ((act != Act::Silu && act != Act::GeluTanh) || c.N % 2 || c.act != Act::None || c.residual)
    return no("gate_up without activation or residual, then silu / gelu-tanh");
  if (!gemv_on) return no("quantised gemv off (TSLLM_QGEMV=0)");
  if (quant_gemv_unsupported(c.kind, c.M, c.K, c.group, c.x, c.w, dt)) return no("not eligible");
  if (takes_fp8_rows(c, dt)) return no("x comes as FP8 rows from its producer");
  if (gemv_force >= 0 && gemv_force < quant_gemv_variants(c.kind))
    return quant_gemv_glu_takes(c.kind, gemv_force, c.M, c.K, c.group) ? gemv_force : no("forced variant has no GLU");
  const PickKey key = pick_key(c, dt);
  step_glu_.note(key);
  const int known = fusion_cached(glu_pick_, key, s, why);
  if (known != kFusionUndecided) return known;
  int pick = -1;
  float best = 1e30f, base = -1.f;
  const size_t gu_bytes = size_t(c.M) * size_t(c.N) * 2;
  if (tune && ensure_tune_out(gu_bytes + size_t(c.M) * size_t(N) * 2)) {
    void* t_gu = tune_out_;
    void* t_h = static_cast<char*>(tune_out_) + gu_bytes;
    const int vu = gemv_variant(c, dt, s);  // the plain call's tuned variant (-1: the large-M path, not timed here)
    if (vu >= 0)
      base = time_runs(s, [&] {
        return quant_gemv(vu, c.kind, c.x, c.w, c.scales, c.group, c.bias, nullptr, t_gu, c.M, c.N, c.K, Act::None,
                          dt, pdl, s) == cudaSuccess &&
               gated_act(t_gu, t_h, c.M, N, act, dt, s) == cudaSuccess;
      });
    for (int v = 0; v < quant_gemv_variants(c.kind); v++) {
      if (!quant_gemv_glu_takes(c.kind, v, c.M, c.K, c.group) || capped(v)) continue;
      const float ms = time_runs(s, [&] {
        return quant_gemv_glu(v, c.kind, c.x, c.w, c.scales, c.group, c.bias, t_h, c.M, N, c.K, act, dt, pdl, s) ==
               cudaSuccess;
      });
      if (ms >= 0.f && ms < best * (1.f - kTuneMargin)) best = ms, pick = v;
      if (ms >= 0.f) step_glu_.timed(key, v, ms);
    }
    if (pick >= 0 && !(base >= 0.f && best < base)) pick = -1;
    if (base >= 0.f) step_glu_.timed(key, -1, base);
  }
  cudaGetLastError();
  if (verbose)
    std::fprintf(stderr,
                 "tsllm quant gemv epilogue: %s M=%d N=%d K=%d + gated_act: %s (fused best %.4f ms, unfused %.4f ms)\n",
                 quant_kind_name(c.kind), c.M, c.N, c.K,
                 pick >= 0 ? ("fused, variant " + std::to_string(pick)).c_str() : "unfused", best < 1e29f ? best : -1.f,
                 base);
  glu_pick_.emplace(key, pick);
  return pick >= 0 ? pick : no("the tuner kept the unfused pair (or no fused variant launched)");
}

// cuBLASLt's heuristic algorithms for the plan's descriptors that fit the workspace, into p.algo: when `tuned` (a
// tuned M, gemm_tuned_m, with tuning on) and the stream is not capturing, the fastest of them as `run` runs them
// (L2 flushed before each run, the first discarded), else the first; p.ms: the pick's time, which fp8_gemm's
// outer-vector choice below 256 rows needs. Measured (H200, Llama-2-7B FP8 prefill M = 128, session 7 run 2): the
// fp32-D picks were the heuristic's first or second candidate within 1 %, and the outer-vector heuristic offered one;
// the TTFT gain came from that choice. CUBLAS_STATUS_NOT_SUPPORTED when none fits (*found: how many were offered).
cublasStatus_t QuantGemm::pick_algo(Fp8Plan& p, int* found, bool tuned, cudaStream_t s, const AlgoRun& run,
                                    const std::string& what) {
  constexpr int kCandidates = 32;
  cublasLtMatmulPreference_t pref = nullptr;
  cublasStatus_t st = cublasLtMatmulPreferenceCreate(&pref);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &lt_ws_bytes_,
                                       sizeof(lt_ws_bytes_));
  cublasLtMatmulHeuristicResult_t res[kCandidates] = {};
  *found = 0;
  st = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.d, p.d, pref, kCandidates, res, found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaStreamIsCapturing(s, &cap);
  const bool timed = tuned && cap == cudaStreamCaptureStatusNone && ensure_tune_out(0) && flush_;
  int pick = -1, first = -1;
  float best = 1e30f, first_ms = -1.f;
  for (int i = 0; i < *found; i++) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > lt_ws_bytes_) continue;
    if (first < 0) first = i;
    if (!timed) break;
    const float ms = time_runs(s, [&] { return run(res[i].algo); });
    if (i == first) first_ms = ms;
    if (ms >= 0.f && ms < best) best = ms, pick = i;
  }
  if (pick < 0) pick = first;
  if (pick < 0) return CUBLAS_STATUS_NOT_SUPPORTED;
  p.algo = res[pick].algo;
  p.ms = timed && best < 1e29f ? best : -1.f;
  if (verbose && timed)
    std::fprintf(stderr, "tsllm fp8 gemm %s: candidate %d of %d, %.4f ms (first %.4f ms)\n", what.c_str(), pick, *found,
                 p.ms, first_ms);
  return CUBLAS_STATUS_SUCCESS;
}

std::string QuantGemm::fp8_plan(int M, int N, int K, const void* w, const void* xq, cudaStream_t s, Fp8Plan** out) {
  const auto key = std::make_tuple(M, N, K, 0, 0);
  auto it = plans_.find(key);
  if (it != plans_.end()) {
    *out = &it->second;
    return it->second.desc ? "" : "cuBLASLt has no FP8 algorithm for M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                      " K=" + std::to_string(K) + " (as before)";
  }
  Fp8Plan p;
  auto fail = [&](const std::string& m) {
    if (p.desc) cublasLtMatmulDescDestroy(p.desc);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.d) cublasLtMatrixLayoutDestroy(p.d);
    return m;
  };
  auto lt = [&](cublasStatus_t st, const char* what) { return st == CUBLAS_STATUS_SUCCESS ? std::string() : lt_err(what, st); };
  std::string e;
  if (!(e = lt(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate")).empty())
    return fail(e);
  // outᵀ[N, M] = Wᵀ... as in gemm.cc: A = W stored K x N column-major (ld K) with op T, B = xq K x M (ld K) op N,
  // D = N x M column-major (ld N) = out row-major. This is the TN layout FP8 requires.
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  if (!(e = lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "TRANSA")).empty())
    return fail(e);
  if (!(e = lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "TRANSB")).empty())
    return fail(e);
  const int8_t fast = fast_accum ? 1 : 0;
  if (!(e = lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)),
               "FAST_ACCUM"))
           .empty())
    return fail(e);
  if (!(e = lt(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(N), int64_t(K)), "layout A"))
           .empty())
    return fail(e);
  if (!(e = lt(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(M), int64_t(K)), "layout B"))
           .empty())
    return fail(e);
  if (!(e = lt(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32F, uint64_t(N), uint64_t(M), int64_t(N)), "layout D")).empty())
    return fail(e);
  int found = 0;
  const float alpha = 1.f, beta = 0.f;
  const cublasStatus_t st = pick_algo(p, &found, tunes(M), s, [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, xq, p.b, &beta, acc_, p.d, acc_, p.d, &algo, lt_ws_,
                          lt_ws_bytes_, s) == CUBLAS_STATUS_SUCCESS;  // (acc_: the path's own scratch)
  }, shape_name(M, N, K, "fp32 D"));
  if (st != CUBLAS_STATUS_SUCCESS) {
    plans_.emplace(key, Fp8Plan{});  // remembered: later calls of this shape go straight to the fallback
    return fail("cuBLASLt has no FP8 (E4M3 x E4M3 -> fp32) algorithm for M=" + std::to_string(M) +
                " N=" + std::to_string(N) + " K=" + std::to_string(K) + " (cublasStatus " + std::to_string(int(st)) +
                ", " + std::to_string(found) + " candidates; FP8 needs sm 89+, K and N multiples of 16)");
  }
  *out = &plans_.emplace(key, p).first->second;
  return "";
}

// Outer-vector scaling (cuBLASLt, CUDA 12.9+: CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F): D[n, m] = s_w[n] · s_x[m] ·
// Σ_k W[n,k] x[m,k] (+ bias) + residual, written in the activation dtype by the GEMM itself — no fp32 chunk, no
// epilogue kernel. Op T on A = W gives rows n, so A's scale vector is s_w and B's (columns m) is s_x. Only for
// linears without an activation; a shape cuBLASLt has no algorithm for falls back (once, remembered).
std::string QuantGemm::fp8_outer_plan(int M, int N, int K, const void* bias_ptr, bool residual, DType dt,
                                      const void* w, const float* sw, const void* xq, const float* sx, cudaStream_t s,
                                      Fp8Plan** out) {
  const bool bias = bias_ptr != nullptr;
  const auto key = outer_key(M, N, K, bias, residual, dt);
  auto it = plans_.find(key);
  if (it != plans_.end()) {
    *out = it->second.desc ? &it->second : nullptr;
    return "";
  }
  Fp8Plan p;
  auto give_up = [&]() {
    if (p.desc) cublasLtMatmulDescDestroy(p.desc);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.d) cublasLtMatrixLayoutDestroy(p.d);
    plans_.emplace(key, Fp8Plan{});  // no desc: this shape takes the fp32 + epilogue path
    *out = nullptr;
    cudaGetLastError();
    return std::string();
  };
  const cudaDataType_t cdt = dt == DType::BF16 ? CUDA_R_16BF : CUDA_R_16F;
  if (cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) return give_up();
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
  const int8_t fast = fast_accum ? 1 : 0;
  cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  bool ok = cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)) ==
                CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)) ==
                CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)) ==
                CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)) ==
                CUBLAS_STATUS_SUCCESS;
  if (ok && bias)
    ok = cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &cdt, sizeof(cdt)) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)) ==
             CUBLAS_STATUS_SUCCESS;
  // The heuristic needs real scale vectors: with null placeholders cuBLASLt 13.1 answers CUBLAS_STATUS_INVALID_VALUE
  // (7) for every shape on the H200, while the same descriptor with this call's device pointers finds an algorithm
  // and runs (a probe of both forms, session 5) — which is why this path had always fallen back to the epilogue.
  // Each call sets its own pointers again before cublasLtMatmul.
  ok = ok &&
       cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof(sw)) ==
           CUBLAS_STATUS_SUCCESS &&
       cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof(sx)) ==
           CUBLAS_STATUS_SUCCESS &&
       cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(N), int64_t(K)) == CUBLAS_STATUS_SUCCESS &&
       cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(M), int64_t(K)) == CUBLAS_STATUS_SUCCESS &&
       cublasLtMatrixLayoutCreate(&p.d, cdt, uint64_t(N), uint64_t(M), int64_t(N)) == CUBLAS_STATUS_SUCCESS;
  if (!ok) return give_up();
  int found = 0;
  // Timed into scratch (out may be the residual): D = C = tune_out_, beta as the call's.
  const bool scratch = ensure_tune_out(size_t(M) * size_t(N) * 2);
  const float alpha = 1.f, beta = residual ? 1.f : 0.f;
  const bool tuned = scratch && tunes(M);
  const cublasStatus_t st = pick_algo(p, &found, tuned, s, [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, xq, p.b, &beta, tune_out_, p.d, tune_out_, p.d, &algo,
                          lt_ws_, lt_ws_bytes_, s) == CUBLAS_STATUS_SUCCESS;
  }, shape_name(M, N, K, "outer-vector"));
  if (st != CUBLAS_STATUS_SUCCESS) {
    if (verbose)
      std::fprintf(stderr, "tsllm fp8 gemm M=%d N=%d K=%d: no outer-vector-scaled cuBLASLt algorithm (status %d): "
                   "fp32 output + scale epilogue kernel\n", M, N, K, int(st));
    return give_up();
  }
  *out = &plans_.emplace(key, p).first->second;
  return "";
}

bool QuantGemm::fp8_act_rows(const QuantLinearCall& c, DType dt, Fp8Rows* rows) {
  if (!takes_fp8_rows(c, dt)) return false;
  rows_at(xq_, c, &rows->q, &rows->scales);
  return true;
}

bool QuantGemm::takes_fp8_rows(const QuantLinearCall& c, DType dt) const {
  if (c.kind != QuantKind::Fp8 || !handle_ || c.M <= 0 || !fp8_rows_supported(c.K, dt)) return false;
  if (align256(size_t(c.M) * size_t(c.K)) + align256(size_t(c.M) * 4) > xq_bytes_) return false;
  // An FP8 call the gemv can take (M <= 4, aligned, K % 16 == 0) runs it, whatever the tuner picks (gemv_variant is
  // never -1 for one), so that is decided here without tuning: when the producer asks, x is not written yet, and
  // the tuner timing stale rows picked worse variants (H200, Llama-2-7B FP8 bs 1: gate_up's variant 5 instead of
  // 1, 1.062 instead of 0.880 ms a step in the graph profile). Such a call takes FP8 rows from 2 rows on when the
  // gemv over them can run (rows_gemv_on), else quantises x itself. Not at 1 row: a producer writing FP8 rows is one
  // block a row, and at one row that block is the whole kernel (H200, Llama-2-7B FP8 bs 1 graph profile: gated_act
  // 0.372 ms a step against 0.059, rms_norm 0.159 against 0.113), more than the gemv saves (down 18.7 against
  // 22.2 µs); TPOT 2.870 ms with the rows against 2.727 without. At 4 rows: 3.435 against 4.923 ms.
  constexpr int kRowsGemvMinM = 2;
  return !(gemv_on && !quant_gemv_unsupported(c.kind, c.M, c.K, c.group, c.x, c.w, dt) &&
           (c.M < kRowsGemvMinM || !rows_gemv_on()));
}

std::string QuantGemm::fp8_gemm(const QuantLinearCall& c, DType dt, cudaStream_t s) {
  if (!handle_) return "FP8 GEMM workspaces were not set up at load";
  const size_t xq_need = align256(size_t(c.M) * size_t(c.K)) + align256(size_t(c.M) * 4);
  if (xq_need > xq_bytes_)
    return "FP8 activation workspace too small for M=" + std::to_string(c.M) + " K=" + std::to_string(c.K);
  uint8_t* xq = static_cast<uint8_t*>(xq_);
  float* sx = reinterpret_cast<float*>(xq + align256(size_t(c.M) * size_t(c.K)));
  cudaError_t ce = cudaSuccess;
  if (!c.x_fp8) {  // else its producer wrote these rows (fp8_act_rows)
    ce = quantize_rows_fp8(c.x, xq, sx, c.M, c.K, dt, s);
    if (ce != cudaSuccess) return std::string("quantize_rows_fp8: ") + cudaGetErrorString(ce);
  }
  const float alpha = 1.f;
  // Outer-vector scaling (one GEMM writing T) from kFp8OuterMinM rows. Below, cuBLASLt's first pick for it was
  // slower than the plain FP8 GEMM + epilogue kernel (H200, Llama-2-7B FP8, decode M = 64: TPOT 6.06 ms with it,
  // 5.41 ms without; prefill M = 128: TTFT 5.06-5.15 vs 5.05 ms; M = 8,192: 111 vs 133 ms), so for a tuned M below
  // it both paths are timed once per shape with their tuned algorithms and the faster kept (outer_pick_); other M
  // below it take the plain path.
  constexpr int kFp8OuterMinM = 256;
  const bool outer_ok = fp8_outer && c.act == Act::None && dt != DType::F32;
  bool use_outer = outer_ok && c.M >= kFp8OuterMinM;
  const auto okey = outer_key(c.M, c.N, c.K, c.bias != nullptr, c.residual != nullptr, dt);
  if (outer_ok && !use_outer && tunes(c.M)) {
    auto hit = outer_pick_.find(okey);
    if (hit != outer_pick_.end()) {
      use_outer = hit->second;
    } else if (size_t(c.M) * size_t(c.N) * 4 <= acc_bytes_) {  // the plain path in one chunk, as timed
      Fp8Plan* op = nullptr;
      std::string err = fp8_outer_plan(c.M, c.N, c.K, c.bias, c.residual != nullptr, dt, c.w, c.scales, xq, sx, s, &op);
      if (!err.empty()) return err;
      Fp8Plan* pp = nullptr;
      const bool plain = fp8_plan(c.M, c.N, c.K, c.w, xq, s, &pp).empty();
      if (op && op->ms >= 0.f && plain && pp->ms >= 0.f && ensure_tune_out(size_t(c.M) * size_t(c.N) * 2)) {
        const float epi = time_runs(s, [&] {
          return fp8_scale_epilogue(acc_, sx, c.scales, c.bias, c.residual ? tune_out_ : nullptr, tune_out_, c.M, c.N,
                                    c.act, dt, s) == cudaSuccess;
        });
        use_outer = epi >= 0.f && op->ms < pp->ms + epi;
        if (verbose)
          std::fprintf(stderr,
                       "tsllm fp8 gemm M=%d N=%d K=%d: outer-vector %.4f ms vs fp32 + epilogue %.4f + %.4f ms: %s\n",
                       c.M, c.N, c.K, op->ms, pp->ms, epi, use_outer ? "outer-vector" : "fp32 + epilogue");
      }
      cudaGetLastError();
      outer_pick_.emplace(okey, use_outer);
    }
  }
  if (use_outer) {
    Fp8Plan* op = nullptr;
    std::string err = fp8_outer_plan(c.M, c.N, c.K, c.bias, c.residual != nullptr, dt, c.w, c.scales, xq, sx, s, &op);
    if (!err.empty()) return err;
    if (op) {
      const float beta = c.residual ? 1.f : 0.f;
      QLT_TRY(cublasLtMatmulDescSetAttribute(op->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &c.scales,
                                             sizeof(c.scales)));
      QLT_TRY(cublasLtMatmulDescSetAttribute(op->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof(sx)));
      if (c.bias)
        QLT_TRY(cublasLtMatmulDescSetAttribute(op->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &c.bias, sizeof(c.bias)));
      const void* cin = c.residual ? c.residual : c.out;
      QLT_TRY(cublasLtMatmul(handle_, op->desc, &alpha, c.w, op->a, xq, op->b, &beta, cin, op->d, c.out, op->d,
                             &op->algo, lt_ws_, lt_ws_bytes_, s));
      return "";
    }
  }
  const size_t row = size_t(c.N) * 4;
  int chunk = int(std::min<size_t>(size_t(c.M), acc_bytes_ / row));
  if (chunk < 1) return "FP8 GEMM output workspace too small for N=" + std::to_string(c.N);
  const size_t es = dt == DType::F32 ? 4 : 2;
  const float beta = 0.f;
  for (int m0 = 0; m0 < c.M; m0 += chunk) {
    const int mc = std::min(chunk, c.M - m0);
    Fp8Plan* p = nullptr;
    std::string err = fp8_plan(mc, c.N, c.K, c.w, xq + size_t(m0) * c.K, s, &p);
    if (!err.empty()) {
      // No cuBLASLt FP8 algorithm for this shape: the decode kernel over 4-row slices (same numerics, slower),
      // which quantises x itself — so not when only the FP8 rows exist.
      if (c.x_fp8) return err + " (x came as FP8 rows from its producer; TSLLM_FP8_ACT_FUSION=0 lets the gemv run)";
      if (quant_gemv_unsupported(QuantKind::Fp8, 1, c.K, 0, c.x, c.w, dt)) return err;
      if (verbose) std::fprintf(stderr, "tsllm %s: FP8 rows %d..%d through quant_gemv\n", err.c_str(), m0, m0 + mc);
      for (int r0 = m0; r0 < m0 + mc; r0 += kQuantGemvMaxM) {
        const int rm = std::min(kQuantGemvMaxM, m0 + mc - r0);
        const char* xr = static_cast<const char*>(c.x) + size_t(r0) * c.K * es;
        const char* rr = c.residual ? static_cast<const char*>(c.residual) + size_t(r0) * c.N * es : nullptr;
        ce = quant_gemv(1, QuantKind::Fp8, xr, c.w, c.scales, 0, c.bias, rr,
                        static_cast<char*>(c.out) + size_t(r0) * c.N * es, rm, c.N, c.K, c.act, dt, pdl, s);
        if (ce != cudaSuccess) return std::string("quant_gemv (FP8 fallback): ") + cudaGetErrorString(ce);
      }
      continue;
    }
    cublasStatus_t st = cublasLtMatmul(handle_, p->desc, &alpha, c.w, p->a, xq + size_t(m0) * c.K, p->b, &beta, acc_,
                                       p->d, acc_, p->d, &p->algo, lt_ws_, lt_ws_bytes_, s);
    if (st != CUBLAS_STATUS_SUCCESS) return lt_err("cublasLtMatmul (FP8)", st);
    const char* res = c.residual ? static_cast<const char*>(c.residual) + size_t(m0) * c.N * es : nullptr;
    const char* bias = static_cast<const char*>(c.bias);
    ce = fp8_scale_epilogue(acc_, sx + m0, c.scales, bias, res, static_cast<char*>(c.out) + size_t(m0) * c.N * es, mc,
                            c.N, c.act, dt, s);
    if (ce != cudaSuccess) return std::string("fp8_scale_epilogue: ") + cudaGetErrorString(ce);
  }
  return "";
}

}  // namespace tsllm
