// What decode attention running beside the linear layers' GEMMs would save (issue #11's remaining lever): a
// Llama-3.1-8B bf16 decode layer (32 q / 8 KV heads x 128, context 145; linears qkv 6144x4096, o 4096x4096,
// gate_up 28672x4096, down 4096x14336) at batch B, as the runtime runs it today (attention, then the four GEMMs at
// M = B, one stream) against two micro-batches of B / 2 in lock-step on two streams: phase 1 runs half A's attention
// beside half B's GEMMs, phase 2 half B's attention beside half A's GEMMs (fork / join by events inside a CUDA
// graph, as a captured decode step would). cuBLASLt's Hopper GEMMs hold a whole SM each (shared memory and
// registers), so attention blocks find room only where a GEMM leaves SMs: the lock-step runs are repeated with the
// GEMMs' CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET below the SM count. Every GEMM takes the fastest of the heuristic's
// first 16 candidates timed alone (the runtime's tuner times up to 64). Times: µs per layer, medians of graph
// replays of 8 layers (attention cycles through enough layers of cache to miss L2).
//
//   native/build/overlap_bench [B ...]      (default 1024 256; about a minute)
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <tuple>
#include <vector>

#include "attn_setup.cuh"
#include "test_util.cuh"

using namespace tsllm;

namespace {

constexpr size_t kWs = size_t(32) << 20;
struct Linear {
  int N, K;
};
constexpr Linear kLinears[] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};

// One GEMM shape's tuned cuBLASLt plan: out[M, N] = x[M, K] W[N, K]^T, bf16 in and out, fp32 compute.
struct Plan {
  cublasLtMatmulDesc_t d;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
};

struct Gemms {
  cublasLtHandle_t h;
  void *w[4], *x, *out, *ws[2];  // a workspace per stream
  std::map<std::tuple<int, int, int>, Plan> plans;

  Gemms() {
    LT(cublasLtCreate(&h));
    for (int i = 0; i < 4; i++) {
      const size_t n = size_t(kLinears[i].N) * kLinears[i].K;
      CK(cudaMalloc(&w[i], n * 2));
      CK(random_fill(w[i], DType::BF16, n, 11 + i, 0.f, 0.02f, 0));
    }
    CK(cudaMalloc(&x, size_t(1024) * 14336 * 2));
    CK(random_fill(x, DType::BF16, size_t(1024) * 14336, 5, 0.f, 1.f, 0));
    CK(cudaMalloc(&out, size_t(1024) * 28672 * 2));
    CK(cudaMalloc(&ws[0], kWs));
    CK(cudaMalloc(&ws[1], kWs));
  }

  void run(const Plan& p, int i, int lane, cudaStream_t s) {
    const float alpha = 1.f, beta = 0.f;
    LT(cublasLtMatmul(h, p.d, &alpha, w[i], p.a, x, p.b, &beta, out, p.c, out, p.c, &p.algo, ws[lane], kWs, s));
  }

  // The plan of linear i at M rows with the GEMM aimed at sm_target SMs (0: all).
  const Plan& plan(int i, int M, int sm_target) {
    const auto key = std::make_tuple(i, M, sm_target);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    const Linear L = kLinears[i];
    Plan p{};
    LT(cublasLtMatmulDescCreate(&p.d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT(cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    LT(cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (sm_target > 0) {
      const int32_t t = sm_target;
      LT(cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &t, sizeof(t)));
    }
    LT(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, L.K, L.N, L.K));
    LT(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, L.K, M, L.K));
    LT(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16BF, L.N, M, L.N));
    cublasLtMatmulPreference_t pref;
    LT(cublasLtMatmulPreferenceCreate(&pref));
    size_t wsb = kWs;
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
    cublasLtMatmulHeuristicResult_t res[16] = {};
    int found = 0;
    LT(cublasLtMatmulAlgoGetHeuristic(h, p.d, p.a, p.b, p.c, p.c, pref, 16, res, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    float best = 1e30f;
    cublasLtMatmulAlgo_t pick{};
    for (int k = 0; k < found; k++) {
      if (res[k].state != CUBLAS_STATUS_SUCCESS || res[k].workspaceSize > kWs) continue;
      p.algo = res[k].algo;
      const float ms = median_event_ms(s, 5, [&](cudaStream_t st) {
        for (int r = 0; r < 4; r++) run(p, i, 0, st);
      });
      if (ms < best) best = ms, pick = res[k].algo;
    }
    cudaStreamDestroy(s);
    if (best == 1e30f) {
      std::printf("FAIL no cuBLASLt algorithm for M=%d N=%d K=%d (SM target %d)\n", M, L.N, L.K, sm_target);
      std::exit(2);
    }
    p.algo = pick;
    return plans.emplace(key, p).first->second;
  }

  // The layer's four linears at M rows on stream s (workspace lane).
  void layer(int M, int sm_target, int lane, cudaStream_t s) {
    for (int i = 0; i < 4; i++) run(plan(i, M, sm_target), i, lane, s);
  }
};

// Median µs per layer of a CUDA graph of `layers` calls of body(layer, s1, s2) captured on s1 (s2 joins through
// events), replayed 11 times after one warm-up replay.
double graph_layer_us(int layers, const std::function<void(int, cudaStream_t, cudaStream_t)>& body) {
  cudaStream_t s1, s2;
  CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  for (int l = 0; l < layers; l++) body(l, s1, s2);  // eager once: tuning and first-call setup outside the capture
  CK(cudaDeviceSynchronize());
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s1, cudaStreamCaptureModeThreadLocal));
  for (int l = 0; l < layers; l++) body(l, s1, s2);
  CK(cudaStreamEndCapture(s1, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  CK(cudaGraphLaunch(ge, s1));
  CK(cudaStreamSynchronize(s1));
  const double us = median_event_ms(s1, 11, [&](cudaStream_t st) { CK(cudaGraphLaunch(ge, st)); }) * 1000.0 / layers;
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
  return us;
}

// s2 starts after what s1 has enqueued so far; join() makes s1 wait for s2.
struct Fork {
  cudaEvent_t e[2];
  Fork() {
    for (auto& x : e) CK(cudaEventCreateWithFlags(&x, cudaEventDisableTiming));
  }
  void fork(cudaStream_t s1, cudaStream_t s2) {
    CK(cudaEventRecord(e[0], s1));
    CK(cudaStreamWaitEvent(s2, e[0], 0));
  }
  void join(cudaStream_t s1, cudaStream_t s2) {
    CK(cudaEventRecord(e[1], s2));
    CK(cudaStreamWaitEvent(s1, e[1], 0));
  }
};

void bench(int B, Gemms& gm, size_t l2_defeat, int sms) {
  constexpr int kLayers = 8;
  AttnSetup full(B, 145, 1, l2_defeat, 8, DType::BF16), ha(B / 2, 145, 1, l2_defeat, 8, DType::BF16),
      hb(B / 2, 145, 1, l2_defeat, 8, DType::BF16);
  Fork f;
  const double attn = graph_layer_us(kLayers, [&](int l, cudaStream_t s1, cudaStream_t) { full.call(l, s1); });
  const double lin = graph_layer_us(kLayers, [&](int, cudaStream_t s1, cudaStream_t) { gm.layer(B, 0, 0, s1); });
  const double serial = graph_layer_us(kLayers, [&](int l, cudaStream_t s1, cudaStream_t) {
    full.call(l, s1);
    gm.layer(B, 0, 0, s1);
  });
  const double attn_h = graph_layer_us(kLayers, [&](int l, cudaStream_t s1, cudaStream_t) { ha.call(l, s1); });
  const double lin_h = graph_layer_us(kLayers, [&](int, cudaStream_t s1, cudaStream_t) { gm.layer(B / 2, 0, 0, s1); });
  const double halves = graph_layer_us(kLayers, [&](int l, cudaStream_t s1, cudaStream_t) {
    ha.call(l, s1);
    gm.layer(B / 2, 0, 0, s1);
    hb.call(l, s1);
    gm.layer(B / 2, 0, 0, s1);
  });
  double flop = 0;
  for (const Linear& L : kLinears) flop += 2.0 * B * L.N * L.K;
  std::printf("B %d, context 145, us per layer: attention %.1f, linears %.1f (%.0f TFLOP/s), one stream %.1f; halves "
              "(B/2): attention %.1f, linears %.1f, both halves on one stream %.1f\n",
              B, attn, lin, flop / (lin * 1e6), serial, attn_h, lin_h, halves);
  const char* names[4] = {"qkv", "o_proj", "gate_up", "down"};
  std::printf("  linears alone at M = %d, back to back (us, TFLOP/s):", B);
  for (int i = 0; i < 4; i++) {
    const double us = graph_layer_us(kLayers, [&](int, cudaStream_t s1, cudaStream_t) {
      gm.run(gm.plan(i, B, 0), i, 0, s1);
    });
    std::printf(" %s %.1f %.0f", names[i], us, 2.0 * B * kLinears[i].N * kLinears[i].K / (us * 1e6));
  }
  std::printf("\n");
  std::printf("%-28s %10s %10s %8s\n", "lock-step halves, GEMM SMs", "us/layer", "vs 1 strm", "hidden");
  for (int target : {0, sms - 8, sms - 16, sms - 24, sms - 32, sms - 48}) {
    const double ls = graph_layer_us(kLayers, [&](int l, cudaStream_t s1, cudaStream_t s2) {
      f.fork(s1, s2);  // phase 1: half A's attention beside half B's linears
      ha.call(l, s1);
      gm.layer(B / 2, target, 1, s2);
      f.join(s1, s2);
      f.fork(s1, s2);  // phase 2: half B's attention beside half A's linears
      gm.layer(B / 2, target, 0, s1);
      hb.call(l, s2);
      f.join(s1, s2);
    });
    // "hidden": the share of the halves' attention time the lock-step saved against both halves on one stream.
    char name[40];
    std::snprintf(name, sizeof name, "%s %d", target ? "target" : "all", target ? target : sms);
    std::printf("%-28s %10.1f %9.3fx %7.0f%%\n", name, ls, serial / ls, 100.0 * (halves - ls) / (2 * attn_h));
  }
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::vector<int> batches;
  for (int i = 1; i < argc; i++) {
    const int b = std::atoi(argv[i]);
    if (b < 2 || b > 1024 || b % 2) {
      std::printf("usage: overlap_bench [B ...]   (even batches, 2-1024; default 1024 256)\n");
      return 2;
    }
    batches.push_back(b);
  }
  if (batches.empty()) batches = {1024, 256};
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  Gemms gm;
  for (int B : batches) bench(B, gm, size_t(4) * prop.l2CacheSize, prop.multiProcessorCount);
  return 0;
}
