// Linear-layer GEMMs at in-flight-batching decode sizes (M = 256 / 512 / 1024 token rows): what the cuBLASLt
// heuristic's candidates reach, and whether splitting K helps the narrow layers. Why: at M = 256 the Llama-3.1-8B
// step's o_proj (N = K = 4096) and down_proj (N = 4096, K = 14336) ran at 0.56 / 0.65 of the 790 TFLOP/s this GPU
// sustains in bf16, gate/up at 0.77 (session 7 step profile): 256 × 4096 outputs are only 32-64 output tiles of
// 128 × 128-256 for 132 SMs, so K has to be split for the machine to fill.
// Same layouts and timing as the runtime's tuner (gemm.cc): W [N, K] as A (op T), x [M, K] as B, out [M, N]; each run
// after a 64 MB L2 flush, events around it, the first run dropped, the mean of the next 5.
//
//   native/build/gemm_bench            (about 30 s)
//   native/build/gemm_bench search     every configuration cuBLASLt enumerates (algorithm ids x tiles x stages x
//                                      cluster shapes x swizzle x custom options x split-K 1/2/4) against the
//                                      heuristic's candidates, alone after a flush and back to back (about 2 min).
//                                      Why: the heuristic offers 8 candidates, and at M = 256 the step's GEMMs run
//                                      at 0.4-0.55 of the tensor-core rate and of the copy rate at once.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../src/kernels/kernels.h"

#define CK(x)                                                                                       \
  do {                                                                                              \
    cudaError_t e_ = (x);                                                                           \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));      \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)
#define LT(x)                                                                              \
  do {                                                                                     \
    cublasStatus_t s_ = (x);                                                               \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                     \
      std::fprintf(stderr, "%s:%d: %s: status %d\n", __FILE__, __LINE__, #x, int(s_));     \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

namespace {

constexpr size_t kWs = size_t(32) << 20, kFlush = size_t(64) << 20;

struct Ctx {
  cublasLtHandle_t h;
  void *ws, *flush, *x, *w, *out;
  cudaEvent_t a, b;
  cudaStream_t s;
};

struct Shape {
  const char* name;
  int M, N, K;
};

// Mean ms of `timed` runs of `algo` after one untimed run (lazy module loading, first-launch costs), each after
// an L2 flush, or -1 when it does not launch.
float time_algo(Ctx& c, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                cublasLtMatrixLayout_t lc, const cublasLtMatmulAlgo_t& algo, int timed = 5) {
  const float alpha = 1.f, beta = 0.f;
  float total = 0;
  for (int it = 0; it <= timed; it++) {
    CK(cudaMemsetAsync(c.flush, it, kFlush, c.s));
    CK(cudaEventRecord(c.a, c.s));
    if (cublasLtMatmul(c.h, d, &alpha, c.w, la, c.x, lb, &beta, c.out, lc, c.out, lc, &algo, c.ws, kWs, c.s) !=
        CUBLAS_STATUS_SUCCESS) {
      cudaStreamSynchronize(c.s);
      return -1.f;
    }
    CK(cudaEventRecord(c.b, c.s));
    CK(cudaEventSynchronize(c.b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, c.a, c.b));
    if (it > 0) total += ms;
  }
  return total / timed;
}

template <typename V>
V cfg_get(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  V v{};
  size_t n = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof(v), &n);
  return v;
}

// One shape's descriptors (the runtime's layouts, gemm.cc) and the heuristic's candidates.
struct Problem {
  static constexpr int kMax = 64;
  cublasLtMatmulDesc_t d;
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatmulHeuristicResult_t res[kMax] = {};
  int found = 0;
  Problem(Ctx& c, const Shape& sh, cudaDataType_t dt) {
    LT(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    LT(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    LT(cublasLtMatrixLayoutCreate(&la, dt, sh.K, sh.N, sh.K));
    LT(cublasLtMatrixLayoutCreate(&lb, dt, sh.K, sh.M, sh.K));
    LT(cublasLtMatrixLayoutCreate(&lc, dt, sh.N, sh.M, sh.N));
    cublasLtMatmulPreference_t pref;
    LT(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = kWs;
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    LT(cublasLtMatmulAlgoGetHeuristic(c.h, d, la, lb, lc, lc, pref, kMax, res, &found));
    cublasLtMatmulPreferenceDestroy(pref);
  }
  ~Problem() {
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(d);
  }
};

void bench(Ctx& c, const Shape& sh, cudaDataType_t dt) {
  Problem pb(c, sh, dt);
  cublasLtMatmulDesc_t d = pb.d;
  cublasLtMatrixLayout_t la = pb.la, lb = pb.lb, lc = pb.lc;
  const cublasLtMatmulHeuristicResult_t* res = pb.res;
  const int found = pb.found;

  const double flop = 2.0 * sh.M * sh.N * sh.K;
  struct Timed {
    int i;
    float ms;
    cublasLtMatmulAlgo_t algo;
  };
  std::vector<Timed> t;
  int heur_split = 0;
  for (int i = 0; i < found; i++) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > kWs) continue;
    const float ms = time_algo(c, d, la, lb, lc, res[i].algo);
    if (ms > 0) t.push_back({i, ms, res[i].algo});
    if (cfg_get<uint32_t>(res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) > 1) heur_split++;
  }
  std::sort(t.begin(), t.end(), [](const Timed& x, const Timed& y) { return x.ms < y.ms; });
  if (t.empty()) {
    std::printf("%-10s M=%4d N=%5d K=%5d: no candidate launched\n", sh.name, sh.M, sh.N, sh.K);
    return;
  }
  const Timed best = t[0];
  const float first = time_algo(c, d, la, lb, lc, res[0].algo);

  // Split-K variants of the 8 fastest candidates that support it.
  float best_sk = 1e30f;
  uint32_t best_k = 0, best_red = 0;
  int tried = 0, sk_algos = 0;
  for (size_t j = 0; j < t.size() && j < 8; j++) {
    cublasLtMatmulAlgo_t algo = t[j].algo;
    int32_t sup = 0;
    uint32_t mask = 0;
    size_t n = 0;
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &sup, sizeof(sup), &n);
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &mask, sizeof(mask), &n);
    if (!sup) continue;
    sk_algos++;
    for (uint32_t k : {2u, 3u, 4u, 6u, 8u}) {
      for (uint32_t red : {uint32_t(CUBLASLT_REDUCTION_SCHEME_INPLACE), uint32_t(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE),
                           uint32_t(CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE)}) {
        if (!(mask & red)) continue;
        cublasLtMatmulAlgo_t v = algo;
        cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &k, sizeof(k));
        cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof(red));
        cublasLtMatmulHeuristicResult_t chk{};
        if (cublasLtMatmulAlgoCheck(c.h, d, la, lb, lc, lc, &v, &chk) != CUBLAS_STATUS_SUCCESS ||
            chk.workspaceSize > kWs)
          continue;
        const float ms = time_algo(c, d, la, lb, lc, v);
        tried++;
        if (ms > 0 && ms < best_sk) best_sk = ms, best_k = k, best_red = red;
      }
    }
  }
  std::printf("%-10s M=%4d N=%5d K=%5d: %2d candidates (%2d split by the heuristic), first %.4f ms %5.0f TFLOP/s, "
              "best #%d %.4f ms %5.0f TFLOP/s (split %u)",
              sh.name, sh.M, sh.N, sh.K, found, heur_split, first, flop / (first * 1e9), best.i, best.ms,
              flop / (best.ms * 1e9), cfg_get<uint32_t>(best.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM));
  if (best_k)
    std::printf("; split-K of the top 8 (%d support it, %d tried): %.4f ms %5.0f TFLOP/s (k %u, reduction %u), %.2fx\n",
                sk_algos, tried, best_sk, flop / (best_sk * 1e9), best_k, best_red, best.ms / best_sk);
  else
    std::printf("; split-K of the top 8: none (%d support it)\n", sk_algos);
}


// ---- search mode ----
struct Cand {
  cublasLtMatmulAlgo_t algo;
  float ms;
  bool heur;
};

std::string describe(const cublasLtMatmulAlgo_t& a) {
  char b[160];
  std::snprintf(b, sizeof b, "id %d tile %u stages %u cluster %u swizzle %u custom %u split %u red %u",
                cfg_get<int32_t>(a, CUBLASLT_ALGO_CONFIG_ID), cfg_get<uint32_t>(a, CUBLASLT_ALGO_CONFIG_TILE_ID),
                cfg_get<uint32_t>(a, CUBLASLT_ALGO_CONFIG_STAGES_ID),
                unsigned(cfg_get<uint16_t>(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID)),
                cfg_get<uint32_t>(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
                cfg_get<uint32_t>(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
                cfg_get<uint32_t>(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                cfg_get<uint32_t>(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME));
  return b;
}

// Mean ms of `reps` calls back to back (no flush), each call on another copy of the weights so that a layer's
// weights come from HBM as in a step (32 layers' linears one after another), after 3 untimed calls.
float time_b2b(Ctx& c, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
               cublasLtMatrixLayout_t lc, const cublasLtMatmulAlgo_t& algo, const Shape& sh, size_t wcap) {
  const float alpha = 1.f, beta = 0.f;
  const size_t wbytes = size_t(sh.N) * sh.K * 2;
  const size_t copies = std::max<size_t>(1, wcap / wbytes);
  const int reps = 24;
  for (int it = -3; it < reps; it++) {
    if (it == 0) CK(cudaEventRecord(c.a, c.s));
    const char* w = static_cast<const char*>(c.w) + (size_t(it + 3) % copies) * wbytes;
    if (cublasLtMatmul(c.h, d, &alpha, w, la, c.x, lb, &beta, c.out, lc, c.out, lc, &algo, c.ws, kWs, c.s) !=
        CUBLAS_STATUS_SUCCESS) {
      cudaStreamSynchronize(c.s);
      return -1.f;
    }
  }
  CK(cudaEventRecord(c.b, c.s));
  CK(cudaEventSynchronize(c.b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, c.a, c.b));
  return ms / reps;
}

void search(Ctx& c, const Shape& sh, cudaDataType_t dt, size_t wcap) {
  Problem pb(c, sh, dt);
  cublasLtMatmulDesc_t d = pb.d;
  cublasLtMatrixLayout_t la = pb.la, lb = pb.lb, lc = pb.lc;
  const cublasLtMatmulHeuristicResult_t* res = pb.res;
  const int found = pb.found;
  const double flop = 2.0 * sh.M * sh.N * sh.K;

  std::vector<Cand> all;
  for (int i = 0; i < found; i++) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > kWs) continue;
    const float ms = time_algo(c, d, la, lb, lc, res[i].algo, 2);
    if (ms > 0) all.push_back({res[i].algo, ms, true});
  }
  const size_t nheur = all.size();

  int ids[256];
  int nids = 0;
  LT(cublasLtMatmulAlgoGetIds(c.h, CUBLAS_COMPUTE_32F, CUDA_R_32F, dt, dt, dt, dt, 256, ids, &nids));
  int cluster_ok = 0, dev = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&cluster_ok, cudaDevAttrClusterLaunch, dev));
  const uint16_t clusters = cluster_ok ? uint16_t(CUBLASLT_CLUSTER_SHAPE_END) : uint16_t(1);
  long checked = 0, valid = 0;
  const long kMaxTimed = 20000;  // valid configurations kept for timing
  std::vector<cublasLtMatmulAlgo_t> pending;
  for (int ii = 0; ii < nids && valid < kMaxTimed && checked < 400000; ii++) {
    cublasLtMatmulAlgo_t algo;
    if (cublasLtMatmulAlgoInit(c.h, CUBLAS_COMPUTE_32F, CUDA_R_32F, dt, dt, dt, dt, ids[ii], &algo) !=
        CUBLAS_STATUS_SUCCESS)
      continue;
    size_t n = 0;
    std::vector<uint32_t> tiles, stages;
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_TILE_IDS, nullptr, 0, &n);
    tiles.resize(std::max<size_t>(1, n / sizeof(uint32_t)), 0);  // 0: CUBLASLT_MATMUL_TILE_UNDEFINED
    if (n) cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_TILE_IDS, tiles.data(), n, &n);
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_STAGES_IDS, nullptr, 0, &n);
    stages.resize(std::max<size_t>(1, n / sizeof(uint32_t)), 0);
    if (n) cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_STAGES_IDS, stages.data(), n, &n);
    int32_t splitk = 0, swz = 0, custom_max = 0;
    uint32_t redmask = 0;
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splitk, sizeof(splitk), &n);
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &redmask, sizeof(redmask), &n);
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT, &swz, sizeof(swz), &n);
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX, &custom_max, sizeof(custom_max), &n);
    custom_max = std::min(custom_max, 7);
    for (uint32_t tile : tiles)
      for (uint32_t st : stages)
        for (uint16_t cl = 0; cl < clusters; cl++)
          for (uint32_t cu = 0; cu <= uint32_t(custom_max); cu++)
            for (uint32_t sw = 0; sw <= uint32_t(swz > 0 ? 1 : 0); sw++)
              for (uint32_t k : {1u, 2u, 4u}) {
                if (k > 1 && !splitk) continue;
                if (valid >= kMaxTimed) break;
                cublasLtMatmulAlgo_t v = algo;
                uint32_t red = k > 1 ? uint32_t(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) : 0u;
                if (k > 1 && !(redmask & red)) red = uint32_t(CUBLASLT_REDUCTION_SCHEME_INPLACE);
                if (k > 1 && !(redmask & red)) continue;
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile));
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_STAGES_ID, &st, sizeof(st));
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cl, sizeof(cl));
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &cu, sizeof(cu));
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &sw, sizeof(sw));
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &k, sizeof(k));
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof(red));
                cublasLtMatmulHeuristicResult_t chk{};
                checked++;
                if (cublasLtMatmulAlgoCheck(c.h, d, la, lb, lc, lc, &v, &chk) != CUBLAS_STATUS_SUCCESS ||
                    chk.workspaceSize > kWs)
                  continue;
                valid++;
                pending.push_back(v);
              }
  }
  // Timed in a shuffled order (fixed seed) within a budget of GPU time per shape, so that at M = 8,192 (ms a
  // call) every algorithm id has a chance before the budget ends (GEMM_SEARCH_S seconds, default 5).
  const char* env_budget = std::getenv("GEMM_SEARCH_S");
  const double budget_s = env_budget ? std::atof(env_budget) : 5.0;
  std::mt19937 rng(1234);
  std::shuffle(pending.begin(), pending.end(), rng);
  const auto t0 = std::chrono::steady_clock::now();
  size_t timed = 0;
  for (const cublasLtMatmulAlgo_t& v : pending) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > budget_s) break;
    const float ms = time_algo(c, d, la, lb, lc, v, 2);
    timed++;
    if (ms > 0) all.push_back({v, ms, false});
  }
  if (all.empty()) {
    std::printf("%-10s M=%4d N=%5d K=%5d: nothing launched\n", sh.name, sh.M, sh.N, sh.K);
    return;
  }
  const float heur_first = nheur ? all[0].ms : -1.f;
  float heur_best = 1e30f;
  for (size_t i = 0; i < nheur; i++) heur_best = std::min(heur_best, all[i].ms);
  std::sort(all.begin(), all.end(), [](const Cand& x, const Cand& y) { return x.ms < y.ms; });
  std::printf("%-10s M=%4d N=%5d K=%5d: %d algorithm ids, %ld configurations checked, %ld valid, %zu timed; alone: "
              "heuristic first %.4f ms, heuristic best %.4f (%.0f TFLOP/s), enumerated best %.4f (%.0f TFLOP/s) "
              "%.3fx\n",
              sh.name, sh.M, sh.N, sh.K, nids, checked, valid, timed, heur_first, heur_best,
              flop / (heur_best * 1e9), all[0].ms, flop / (all[0].ms * 1e9), heur_best / all[0].ms);
  // The 6 fastest alone and the heuristic's fastest, back to back (how a step runs them).
  std::vector<Cand> top(all.begin(), all.begin() + std::min<size_t>(6, all.size()));
  for (const Cand& x : all)
    if (x.heur) {
      bool in = false;
      for (const Cand& t : top) in = in || std::memcmp(&t.algo, &x.algo, sizeof(x.algo)) == 0;
      if (!in) top.push_back(x);
      break;
    }
  for (const Cand& x : top) {
    const float b1 = time_b2b(c, d, la, lb, lc, x.algo, sh, wcap);
    const float b2 = time_b2b(c, d, la, lb, lc, x.algo, sh, wcap);
    std::printf("    %s alone %.4f, back to back %.4f / %.4f ms (%.0f TFLOP/s, %.0f GB/s of weights)  %s\n",
                x.heur ? "heur" : "enum", x.ms, b1, b2, flop / (std::min(b1, b2) * 1e9),
                double(sh.N) * sh.K * 2 / (std::min(b1, b2) * 1e6), describe(x.algo).c_str());
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Ctx c;
  LT(cublasLtCreate(&c.h));
  CK(cudaStreamCreate(&c.s));
  CK(cudaEventCreate(&c.a));
  CK(cudaEventCreate(&c.b));
  CK(cudaMalloc(&c.ws, kWs));
  CK(cudaMalloc(&c.flush, kFlush));
  const size_t maxM = 8192, maxN = 28672, maxK = 14336;
  CK(cudaMalloc(&c.x, maxM * maxK * 2));
  CK(cudaMalloc(&c.w, maxN * maxK * 2));
  CK(cudaMalloc(&c.out, maxM * maxN * 2));
  // Random normal data as in the engines (tensor-core power, hence clocks, depends on the bits).
  CK(tsllm::random_fill(c.x, tsllm::DType::BF16, maxM * maxK, 1, 0.f, 1.f, 0));
  CK(tsllm::random_fill(c.w, tsllm::DType::BF16, maxN * maxK, 2, 0.f, 0.02f, 0));
  std::printf("cuBLASLt %zu; bf16 Llama-3.1-8B linears and fp16 Llama-2-7B linears at decode batch sizes\n",
              cublasLtGetVersion());
  if (argc > 1 && std::strcmp(argv[1], "search") == 0) {
    const size_t wcap = maxN * maxK * 2;
    for (int M : {256, 1024, 8192}) {
      const Shape l3[] = {{"l3 qkv", M, 6144, 4096}, {"l3 o", M, 4096, 4096}, {"l3 gate_up", M, 28672, 4096},
                          {"l3 down", M, 4096, 14336}};
      for (const Shape& sh : l3) search(c, sh, CUDA_R_16BF, wcap);
    }
    const Shape l2[] = {{"l2 qkv", 256, 12288, 4096}, {"l2 o", 256, 4096, 4096}, {"l2 gate_up", 256, 22016, 4096},
                        {"l2 down", 256, 4096, 11008}};
    for (const Shape& sh : l2) search(c, sh, CUDA_R_16F, wcap);
    return 0;
  }
  for (int M : {256, 512, 1024}) {
    const Shape l3[] = {{"l3 qkv", M, 6144, 4096}, {"l3 o", M, 4096, 4096}, {"l3 gate_up", M, 28672, 4096},
                        {"l3 down", M, 4096, 14336}};
    for (const Shape& sh : l3) bench(c, sh, CUDA_R_16BF);
  }
  for (int M : {256}) {
    const Shape l2[] = {{"l2 qkv", M, 12288, 4096}, {"l2 o", M, 4096, 4096}, {"l2 gate_up", M, 22016, 4096},
                        {"l2 down", M, 4096, 11008}};
    for (const Shape& sh : l2) bench(c, sh, CUDA_R_16F);
  }
  return 0;
}
