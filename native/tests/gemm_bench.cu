// Linear-layer GEMMs at in-flight-batching decode sizes (M = 256 / 512 / 1024 token rows): what the cuBLASLt
// heuristic's candidates reach, and whether splitting K helps the narrow layers. Why: at M = 256 the Llama-3.1-8B
// step's o_proj (N = K = 4096) and down_proj (N = 4096, K = 14336) ran at 0.56 / 0.65 of the 790 TFLOP/s this GPU
// sustains in bf16, gate/up at 0.77 (session 7 step profile): 256 × 4096 outputs are only 32-64 output tiles of
// 128 × 128-256 for 132 SMs, so K has to be split for the machine to fill.
// Same layouts and timing as the runtime's tuner (gemm.cc): W [N, K] as A (op T), x [M, K] as B, out [M, N]; each run
// after a 64 MB L2 flush, events around it, the first run dropped, the mean of the next 5.
//
//   native/build/gemm_bench            (about 30 s)
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
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

// Mean ms of runs 2-6 of `algo`, or -1 when it does not launch.
float time_algo(Ctx& c, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                cublasLtMatrixLayout_t lc, const cublasLtMatmulAlgo_t& algo) {
  const float alpha = 1.f, beta = 0.f;
  float total = 0;
  for (int it = 0; it < 6; it++) {
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
  return total / 5;
}

template <typename V>
V cfg_get(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  V v{};
  size_t n = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof(v), &n);
  return v;
}

void bench(Ctx& c, const Shape& sh, cudaDataType_t dt) {
  cublasLtMatmulDesc_t d;
  LT(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LT(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LT(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  cublasLtMatrixLayout_t la, lb, lc;
  LT(cublasLtMatrixLayoutCreate(&la, dt, sh.K, sh.N, sh.K));
  LT(cublasLtMatrixLayoutCreate(&lb, dt, sh.K, sh.M, sh.K));
  LT(cublasLtMatrixLayoutCreate(&lc, dt, sh.N, sh.M, sh.N));
  cublasLtMatmulPreference_t pref;
  LT(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = kWs;
  LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  constexpr int kMax = 64;
  cublasLtMatmulHeuristicResult_t res[kMax] = {};
  int found = 0;
  LT(cublasLtMatmulAlgoGetHeuristic(c.h, d, la, lb, lc, lc, pref, kMax, res, &found));
  cublasLtMatmulPreferenceDestroy(pref);

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
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(d);
}

}  // namespace

int main() {
  Ctx c;
  LT(cublasLtCreate(&c.h));
  CK(cudaStreamCreate(&c.s));
  CK(cudaEventCreate(&c.a));
  CK(cudaEventCreate(&c.b));
  CK(cudaMalloc(&c.ws, kWs));
  CK(cudaMalloc(&c.flush, kFlush));
  const size_t maxM = 1024, maxN = 28672, maxK = 14336;
  CK(cudaMalloc(&c.x, maxM * maxK * 2));
  CK(cudaMalloc(&c.w, maxN * maxK * 2));
  CK(cudaMalloc(&c.out, maxM * maxN * 2));
  // Random normal data as in the engines (tensor-core power, hence clocks, depends on the bits).
  CK(tsllm::random_fill(c.x, tsllm::DType::BF16, maxM * maxK, 1, 0.f, 1.f, 0));
  CK(tsllm::random_fill(c.w, tsllm::DType::BF16, maxN * maxK, 2, 0.f, 0.02f, 0));
  std::printf("cuBLASLt %zu; bf16 Llama-3.1-8B linears and fp16 Llama-2-7B linears at decode batch sizes\n",
              cublasLtGetVersion());
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
