// Usage: kernels_bench [decode|sweep|fmha8|context|fp8rows|decode-one B CTX bf16|fp8 CFG]. "decode": only the
// large-batch decode attention tables (old vs new kernel at the Llama-3.1-8B batch-256 shape of the throughput
// benchmark, GQA ratios 4, 2 and 1, with the kernel the runtime's rule picks; then variant 4's kernel configurations,
// bf16 and FP8 caches); "sweep": only the configurations table; "fmha8": only the FP8-cache context table (fp16 kernel
// vs FP8 context FMHA); "context": only the 16-bit context table; "fp8rows": the norm / gated_act writing FP8 rows
// against them + quantize_rows_fp8 (FP8 activation fusion); "decode-one": three calls of one variant 4 configuration,
// nothing timed, for a profiler; default: everything.
// Micro-benchmark of paged_attention (Llama-2-7B shapes: 32 heads, 32 KV heads, head_dim 128, fp16, 32 tokens per
// block) for decode at batch 1 / 64 and context 256 / 4096, plus context (prefill) attention and a few small
// kernels at decode sizes. Times are medians of CUDA-graph replays (the runtime replays graphs), per call;
// "stream" is back-to-back launches timed with events. Layers are cycled so that the KV read misses L2.
// GB/s counts the KV bytes the attention must read (K and V of every cached token) plus q/k/v/out traffic.
//
// Build: nvcc -std=c++17 -O3 -gencode=arch=compute_90,code=sm_90 -o kb tests/kernels_bench.cu src/kernels/*.cu
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "../src/kernels/attention_internal.h"
#include "../src/kernels/kernels.h"
#include "../src/kernels/quant.h"
#include "attn_setup.cuh"
#include "test_util.cuh"

using namespace tsllm;

// Graph and stream µs per call of fn(i) for i in [0, n) (fn ends the program on a launch error).
static void time_calls(int n, const std::function<void(int, cudaStream_t)>& fn, double* graph, double* stream) {
  *graph = graph_us(n, [&](int i, cudaStream_t s) { fn(i, s); return cudaSuccess; }, stream);
}

// Large-batch decode attention, old (variant 2: CUDA-core decode_kernel) vs new (variant 4: tensor-core GQA
// decode_mma_kernel) in the same run, at the shapes of the 128/128 throughput benchmark: Llama-3.1-8B bf16 (32 q
// heads, 8 KV heads, head_dim 128) at batch 256 and context ~145 (the H200 step profile: 2.740 ms for 32 layers
// of variant 2, ~1.8 TB/s), plus longer contexts, a GQA-2 model (32 q heads, 16 KV heads: where the crossover
// between the two kernels lies, AttnParams::mma_min_gqa) and Llama-2-7B fp16 (MHA). Times include the
// rope/cache-write kernel (and the split-K reduce where split), as in a step; GB/s counts the KV bytes read (K and
// V of every cached token) only, "%copy" relates that to the device-to-device copy's rate measured above. "rule"
// marks the row of the kernel the runtime runs at that shape with the default options (decode_variant 3,
// mma_min_gqa kDecodeMmaMinGqa; "rule: v3" when the small-batch kernel applies).
static void decode_at_scale(size_t l2_defeat, double copy) {
  struct Shape {
    const char* model;
    int nKV;
    DType dt;
    int B, ctx;
  };
  const Shape shapes[] = {
      {"llama3-8b bf16", 8, DType::BF16, 256, 145}, {"llama3-8b bf16", 8, DType::BF16, 512, 145},
      {"llama3-8b bf16", 8, DType::BF16, 64, 145},  {"llama3-8b bf16", 8, DType::BF16, 256, 1100},
      {"llama3-8b bf16", 8, DType::BF16, 64, 4096}, {"llama3-8b bf16", 8, DType::BF16, 8, 4096},
      {"gqa2 bf16", 16, DType::BF16, 256, 145},      {"gqa2 bf16", 16, DType::BF16, 64, 145},
      {"gqa2 bf16", 16, DType::BF16, 256, 1100},     {"gqa2 bf16", 16, DType::BF16, 64, 2048},
      {"llama2-7b f16", 32, DType::F16, 256, 145},  {"llama2-7b f16", 32, DType::F16, 64, 2048},
  };
  std::printf("decode attention at scale: variant 2 (old, CUDA cores) vs 4 (new, tensor-core GQA), 32 q heads x 128;\n"
              "rule: the runtime's choice at default options (variant 4 from GQA ratio %d)\n", kDecodeMmaMinGqa);
  std::printf("%-15s %4s %5s %6s %4s %7s %10s %8s %7s %10s %8s %5s\n", "model", "gqa", "batch", "ctx", "var", "splits",
              "us/layer", "KV GB/s", "%copy", "x32 ms", "speedup", "rule");
  for (const Shape& sh : shapes) {
    AttnSetup a(sh.B, sh.ctx, 1, l2_defeat, sh.nKV, sh.dt);
    AttnParams dflt = a.p;
    dflt.decode_variant = 3;
    dflt.mma_min_gqa = kDecodeMmaMinGqa;
    const int rule = kd::decode_variant_run(dflt, sh.B, sh.ctx, false, true);
    double base_us = 0;
    for (int variant : {2, 4}) {
      a.p.decode_variant = variant;
      double g, st;
      time_calls(64, [&](int i, cudaStream_t s) { a.call(i, s); }, &g, &st);
      const double kv_bytes = (double)sh.B * sh.ctx * a.nKV * a.D * 2 * 2;
      const auto sp = kd::decode_split(sh.B, a.nH, a.nKV, a.D, sh.ctx, variant);
      if (variant == 2) base_us = g;
      std::printf("%-15s %4d %5d %6d %4d %7d %10.2f %8.0f %6.0f%% %10.3f %7.2fx %5s\n", sh.model, a.nH / a.nKV, sh.B,
                  sh.ctx, variant, sp.splits, g, kv_bytes / (g * 1e3), 100.0 * kv_bytes / (g * 1e3) / copy,
                  32 * g / 1e3, base_us / g, rule == variant ? "<-" : rule == 3 && variant == 4 ? "v3" : "");
    }
  }
}

// Variant 4's kernel configurations (kd::kDecodeMmaConfigs: warps per block, cp.async ring stages per warp,
// block-table prefetch) at the throughput benchmark's Llama-3.1-8B bf16 shapes, with a bf16 cache and with an FP8
// cache (there with variant 2, the CUDA-core kernel, for reference). Times as in decode_at_scale (the
// rope/cache-write kernel and the split-K reduce included); GB/s counts the KV bytes read (1 byte an element for
// FP8). "<-" marks configuration 0, what the runtime runs; "vs cfg0" is cfg0's time over the row's.
static void decode_mma_sweep(size_t l2_defeat, double copy, bool fp8_only) {
  struct Shape {
    int B, ctx;
    bool fp8;
  };
  const Shape shapes[] = {{256, 145, false}, {512, 145, false}, {1024, 145, false}, {256, 1100, false},
                          {64, 4096, false}, {256, 145, true},  {1024, 145, true}};
  std::printf("\ndecode variant 4 configurations, llama3-8b bf16 (32 q heads, 8 KV heads, 128 dims, 32 tokens/block)\n");
  std::printf("%-5s %5s %6s %7s %-14s %10s %8s %7s %8s\n", "cache", "batch", "ctx", "splits", "kernel", "us/layer",
              "KV GB/s", "%copy", "vs cfg0");
  for (const Shape& sh : shapes) {
    if (fp8_only && !sh.fp8) continue;
    // An FP8 layer is half the bytes: twice the layers to keep the cycle out of L2.
    AttnSetup a(sh.B, sh.ctx, 1, sh.fp8 ? 2 * l2_defeat : l2_defeat, 8, DType::BF16);
    if (sh.fp8) a.use_fp8_cache();
    const double kv_bytes = (double)sh.B * sh.ctx * a.nKV * a.D * 2 * (sh.fp8 ? 1 : 2);
    const auto sp = kd::decode_split(sh.B, a.nH, a.nKV, a.D, sh.ctx, 2);
    double cfg0_us = 0;
    auto run = [&](int variant, int cfg) {
      a.p.decode_variant = variant;
      a.p.mma_cfg = cfg;
      double g, st;
      time_calls(64, [&](int i, cudaStream_t s) { a.call(i, s); }, &g, &st);
      if (variant == 4 && cfg == 0) cfg0_us = g;
      const kd::DecodeMmaConfig c = kd::kDecodeMmaConfigs[cfg];
      char name[32];
      if (variant == 4)
        std::snprintf(name, sizeof name, "v4 cfg%d %dw %ds%s%s", cfg, c.warps, c.stages, c.prefetch ? " pf" : "",
                      c.fp8_tile ? " tile" : "");
      else
        std::snprintf(name, sizeof name, "v%d", variant);
      char vs[16] = "";
      if (variant == 4 && cfg > 0) std::snprintf(vs, sizeof vs, "%.3fx", cfg0_us / g);
      std::printf("%-5s %5d %6d %7d %-14s %10.2f %8.0f %6.0f%% %8s %s\n", sh.fp8 ? "fp8" : "bf16", sh.B, sh.ctx,
                  sp.splits, name, g, kv_bytes / (g * 1e3), 100.0 * kv_bytes / (g * 1e3) / copy, vs,
                  variant == 4 && cfg == 0 ? "<-" : "");
    };
    for (int cfg = 0; cfg < kd::kDecodeMmaConfigCount; ++cfg)
      if (sh.fp8 || !kd::kDecodeMmaConfigs[cfg].fp8_tile) run(4, cfg);  // fp8_tile changes only an FP8 cache's kernel
    if (sh.fp8) run(2, 0);
  }
}

// Context attention over an FP8 cache: the fp16 kernel (FP8 history converted into shared memory) vs the FP8
// context FMHA (attention_context_fp8.cu), Llama-2-7B (MHA) and Llama-3-8B (GQA 4) shapes, fp16 activations.
// Times include the rope/cache-write kernel, as in a step.
static void fp8_context_table() {
  std::printf("paged_attention context over an FP8 KV cache, fp16, 32 heads x 128: fp16 kernel vs FP8 context FMHA\n");
  std::printf("%4s %6s %8s %13s %13s %9s %9s %8s\n", "nKV", "seqs", "tokens", "fp16_us", "fmha8_us", "TFLOP/s",
              "TFLOP/s8", "speedup");
  for (int nKV : {32, 8})
    for (auto cfg : {std::pair<int, int>{1, 128}, {1, 2048}, {1, 4096}, {8, 512}}) {
      const int B = cfg.first, L = cfg.second;
      AttnSetup a(B, L, L, 0, nKV);
      a.use_fp8_cache();
      double g[2], st;
      for (int f = 0; f < 2; ++f) {
        a.p.fp8_context_fmha = f == 1;
        time_calls(8, [&](int i, cudaStream_t s) { a.call(i, s); }, &g[f], &st);
      }
      const double flops = 4.0 * B * a.nH * a.D * ((double)L * (L + 1) / 2);
      std::printf("%4d %6d %8d %13.2f %13.2f %9.1f %9.1f %7.2fx\n", nKV, B, L, g[0], g[1], flops / (g[0] * 1e6),
                  flops / (g[1] * 1e6), g[0] / g[1]);
    }
}

// Context (prefill) attention, causal, includes the RoPE / cache-write kernel: fp16 Llama-2-7B heads (32 / 32 x 128)
// and bf16 Llama-3.1-8B (32 / 8), the latter at the 8,192-token prefill step of 4 x 2,048 that the throughput
// benchmark's 2048/128 shape runs; each shape under every block shape of kd::kContextConfigs (AttnParams::ctx_cfg),
// alternating twice, so the configurations' figures come from the same minutes.
static void context_table() {
  std::printf("\npaged_attention context (prefill, causal), 32 heads x 128; cfg = ctx_cfg (warps x m-tiles)\n");
  std::printf("%6s %6s %6s %8s %4s %11s %11s %9s %9s\n", "dtype", "kv", "seqs", "tokens", "cfg", "shape", "graph_us",
              "TFLOP/s", "rope_us");
  struct Shape { DType dt; int nKV, B, L; };
  for (const Shape c : {Shape{DType::F16, 32, 1, 128}, {DType::F16, 32, 1, 2048}, {DType::F16, 32, 1, 4096},
                        {DType::F16, 32, 8, 512}, {DType::BF16, 8, 4, 2048}, {DType::BF16, 8, 64, 128}}) {
    AttnSetup a(c.B, c.L, c.L, 0, c.nKV, c.dt);
    double st;
    double gr;  // of graph_us, the RoPE / cache-write kernel alone (the rest is the attention kernel)
    time_calls(8, [&](int i, cudaStream_t s) { a.rope(i, s); }, &gr, &st);
    const double flops = 4.0 * c.B * a.nH * a.D * ((double)c.L * (c.L + 1) / 2);
    for (int rep = 0; rep < 2; ++rep)
      for (int cfg = 0; cfg < kd::kContextConfigCount; ++cfg) {
        a.p.ctx_cfg = cfg;
        double g;
        time_calls(8, [&](int i, cudaStream_t s) { a.call(i, s); }, &g, &st);
        const kd::ContextConfig cc = kd::kContextConfigs[cfg];
        std::printf("%6s %6d %6d %8d %4d %3dx%-2d%s %11.2f %9.1f %9.2f\n", c.dt == DType::F16 ? "f16" : "bf16",
                    c.nKV, c.B, c.L, cfg, cc.warps, cc.mtiles, cc.fast_exp ? "      " : " exp2f", g, flops / (g * 1e6),
                    gr);
      }
  }
}

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string only = argc > 1 ? argv[1] : "";
  const bool one = only == "decode-one" && argc == 6;
  const bool sweep_fp8 = only == "sweep" && argc == 3 && std::string(argv[2]) == "fp8";
  const bool known = only == "decode" || (only == "sweep" && (argc == 2 || sweep_fp8)) || only == "fmha8" ||
                     only == "context" || only == "fp8rows" || one;
  if (argc > 1 && !known) {
    std::printf("usage: kernels_bench [decode|sweep [fp8]|fmha8|context|fp8rows|decode-one B CTX bf16|fp8 CFG]   "
                "(decode: only the large-batch decode attention tables; sweep: only variant 4's configurations (fp8: "
                "at the FP8-cache shapes only); fmha8: only "
                "the FP8-cache context table; context: only the 16-bit context table; fp8rows: the norm / gated_act "
                "writing FP8 rows against them + quantize_rows_fp8; decode-one: three calls of variant 4 "
                "configuration CFG at Llama-3.1-8B batch B, context CTX, for a profiler: ncu --kernel-name "
                "regex:decode_mma --launch-skip 2 --launch-count 1)\n");
    return 2;
  }
  if (one) {
    AttnSetup a(std::atoi(argv[2]), std::atoi(argv[3]), 1, 0, 8, DType::BF16);
    if (std::string(argv[4]) == "fp8") a.use_fp8_cache();
    a.p.decode_variant = 4;
    a.p.mma_cfg = std::atoi(argv[5]);
    for (int i = 0; i < 3; ++i) a.call(i, nullptr);
    CK(cudaDeviceSynchronize());
    return 0;
  }
  const bool only_decode = only == "decode";
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const size_t l2_defeat = (size_t)4 * prop.l2CacheSize;

  // Copy bandwidth reference (bytes read + written).
  double copy_us = 0;
  const double copy = copy_gbs(&copy_us);
  std::printf("device-to-device copy 1 GiB: %.1f us, %.0f GB/s (read+write)\n\n", copy_us, copy);
  if (only == "fmha8") {
    fp8_context_table();
    return 0;
  }
  if (only == "fp8rows") {  // FP8 activation fusion: producer + quantize_rows_fp8 vs the producer writing FP8 rows
    std::printf("FP8 rows at Llama-3.1-8B, 1024 and 8192 rows, and Llama-2-7B's one row (graph_us per call): "
                "unfused = producer + quantize_rows_fp8; fused: the producer writing the rows, by max threads a row "
                "(gated_act: also the staged variant)\n");
    // Decode (1,024 rows), the batch manager's prefill steps (8,192) and batch-1 decode (1 row, whose producer is
    // one block).
    for (int shape = 0; shape < 6; shape++) {
      const int gated = shape & 1, rows = shape < 2 ? 1024 : shape < 4 ? 8192 : 1;
      const int C = gated ? (rows == 1 ? 11008 : 14336) : 4096;
      void *x, *r, *w, *y, *s2, *q;
      float* sc;
      CK(cudaMalloc(&x, (size_t)rows * 2 * C * 2));
      CK(cudaMalloc(&r, (size_t)rows * C * 2));
      CK(cudaMalloc(&w, C * 2));
      CK(cudaMalloc(&y, (size_t)rows * C * 2));
      CK(cudaMalloc(&s2, (size_t)rows * C * 2));
      CK(cudaMalloc(&q, (size_t)rows * C));
      CK(cudaMalloc(&sc, rows * 4));
      CK(random_fill(x, DType::BF16, (size_t)rows * 2 * C, 1, 0.f, 1.f, 0));
      CK(random_fill(r, DType::BF16, (size_t)rows * C, 2, 0.f, 1.f, 0));
      CK(random_fill(w, DType::BF16, C, 3, 1.f, 0.1f, 0));
      auto produce = [&](const Fp8Rows* f, cudaStream_t s) {
        CK(gated ? gated_act(x, y, rows, C, Act::Silu, DType::BF16, s, f)
                 : rms_norm(x, r, w, 0.f, y, s2, rows, C, 1e-5f, DType::BF16, s, nullptr, nullptr, f));
      };
      const char* what = gated ? "gated_act silu" : "add+rms_norm";
      double g, st;
      time_calls(64, [&](int, cudaStream_t s) { produce(nullptr, s); }, &g, &st);
      std::printf("%-15s %dx%d alone        %8.2f\n", what, rows, C, g);
      time_calls(64, [&](int, cudaStream_t s) {
        produce(nullptr, s);
        CK(quantize_rows_fp8(y, q, sc, rows, C, DType::BF16, s));
      }, &g, &st);
      std::printf("%-15s %dx%d unfused      %8.2f\n", what, rows, C, g);
      for (int mt : {128, 256, 512}) {
        const Fp8Rows f{static_cast<uint8_t*>(q), sc, mt, 0};
        time_calls(64, [&](int, cudaStream_t s) { produce(&f, s); }, &g, &st);
        std::printf("%-15s %dx%d fused %4d   %8.2f\n", what, rows, C, mt, g);
      }
      if (gated) {
        const Fp8Rows f{static_cast<uint8_t*>(q), sc, 0, 1};
        time_calls(64, [&](int, cudaStream_t s) { produce(&f, s); }, &g, &st);
        std::printf("%-15s %dx%d fused staged %8.2f\n", what, rows, C, g);
      }
      cudaFree(x), cudaFree(r), cudaFree(w), cudaFree(y), cudaFree(s2), cudaFree(q), cudaFree(sc);
    }
    return 0;
  }
  if (only == "context") {
    context_table();
    return 0;
  }
  if (only != "sweep") decode_at_scale(l2_defeat, copy);
  decode_mma_sweep(l2_defeat, copy, sweep_fp8);
  if (only_decode || only == "sweep") return 0;
  std::printf("\n");

  std::printf("paged_attention decode (rope + cache write + attention [+ split-K reduce]), fp16, 32 heads x 128\n");
  std::printf("variant 3 (default): small-batch fast kernel (one launch, cluster/DSMEM combine; 'v4'/'v2' in the\n"
              "cluster column = outside its range, runs that variant)%s; 2: separate rope/cache-write kernel, reduce kernel\n",
              pdl_supported() ? ", launched with PDL" : "");
  std::printf("%6s %6s %4s %7s %8s %8s %11s %11s %9s\n", "batch", "ctx", "var", "splits", "cluster", "layers",
              "graph_us", "stream_us", "GB/s");
  for (int B : {1, 64})
    for (int ctx : {128, 256, 1024, 4096}) {
      if (B == 64 && (ctx == 128 || ctx == 1024)) continue;  // bs 64: 256 and 4096
      AttnSetup a(B, ctx, 1, l2_defeat);
      for (int variant : {2, 3}) {
        a.p.decode_variant = variant;
        const int n = 64;
        double g, st;
        time_calls(n, [&](int i, cudaStream_t s) { a.call(i, s); }, &g, &st);
        const double kv_bytes = (double)B * ctx * a.nKV * a.D * 2 * 2;
        const double io_bytes = (double)B * ((a.nH + 2 * a.nKV) * a.D * 2 + a.nH * a.D * 2 * 2);
        const auto sp = kd::decode_split(B, a.nH, a.nKV, a.D, ctx, variant);
        const int run = kd::decode_variant_run(a.p, B, ctx, false, true);
        const char* cl = run != 3 && variant == 3 ? (run == 4 ? "v4" : "v2")
                         : sp.cluster            ? (sp.fast && sp.warps == 8 ? "yes/8w" : "yes")
                                                 : "no";
        std::printf("%6d %6d %4d %7d %8s %8d %11.2f %11.2f %9.0f\n", B, ctx, variant, sp.splits, cl, a.layers, g, st,
                    (kv_bytes + io_bytes) / (g * 1e3));
      }
    }

  context_table();
  std::printf("\n");
  fp8_context_table();

  std::printf("\nsmall kernels (graph_us per call)\n");
  {
    const int H = 4096;
    for (int rows : {1, 64}) {
      void *x, *r, *w, *y, *s2;
      const size_t n = (size_t)rows * H;
      CK(cudaMalloc(&x, n * 2));
      CK(cudaMalloc(&r, n * 2));
      CK(cudaMalloc(&w, H * 2));
      CK(cudaMalloc(&y, n * 2));
      CK(cudaMalloc(&s2, n * 2));
      CK(random_fill(x, DType::F16, n, 1, 0.f, 1.f, 0));
      CK(random_fill(r, DType::F16, n, 2, 0.f, 1.f, 0));
      CK(random_fill(w, DType::F16, H, 3, 1.f, 0.1f, 0));
      double g, st;
      time_calls(64, [&](int, cudaStream_t s) { CK(rms_norm(x, r, w, 0.f, y, s2, rows, H, 1e-5f, DType::F16, s)); }, &g, &st);
      std::printf("add+rms_norm %dx%d: %.2f us (stream %.2f)\n", rows, H, g, st);
      cudaFree(x), cudaFree(r), cudaFree(w), cudaFree(y), cudaFree(s2);
    }
    for (int rows : {1, 64}) {
      const int I = 11008;
      void *x, *o;
      CK(cudaMalloc(&x, (size_t)rows * 2 * I * 2));
      CK(cudaMalloc(&o, (size_t)rows * I * 2));
      CK(random_fill(x, DType::F16, (size_t)rows * 2 * I, 4, 0.f, 1.f, 0));
      double g, st;
      time_calls(64, [&](int, cudaStream_t s) { CK(gated_act(x, o, rows, I, Act::Silu, DType::F16, s)); }, &g, &st);
      std::printf("gated_act silu %dx%d: %.2f us (stream %.2f)\n", rows, I, g, st);
      cudaFree(x), cudaFree(o);
    }
    for (int rows : {1, 64})
      for (int mode : {0, 1}) {
        const int V = 32000;
        float* lg;
        CK(cudaMalloc(&lg, (size_t)rows * V * 4));
        CK(random_fill(lg, DType::F32, (size_t)rows * V, 5, 0.f, 8.f, 0));
        std::vector<float> t(rows, mode ? 0.8f : 0.f), p(rows, mode ? 0.9f : 1.f);
        std::vector<int32_t> k(rows, mode ? 50 : 0), stp(rows, 1);
        std::vector<uint64_t> sd(rows, 42);
        float *dt, *dp;
        int32_t *dk, *ds, *out;
        uint64_t* dsd;
        CK(cudaMalloc(&dt, rows * 4));
        CK(cudaMalloc(&dp, rows * 4));
        CK(cudaMalloc(&dk, rows * 4));
        CK(cudaMalloc(&ds, rows * 4));
        CK(cudaMalloc(&out, rows * 4));
        CK(cudaMalloc(&dsd, rows * 8));
        CK(cudaMemcpy(dt, t.data(), rows * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dp, p.data(), rows * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dk, k.data(), rows * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(ds, stp.data(), rows * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dsd, sd.data(), rows * 8, cudaMemcpyHostToDevice));
        double g, st;
        time_calls(32, [&](int, cudaStream_t s) {
          CK(sample(lg, DType::F32, rows, V, dt, dk, dp, dsd, ds, out, nullptr, s));
        }, &g, &st);
        std::printf("sample %s %dx%d: %.2f us (stream %.2f)\n", mode ? "T=0.8 top_k=50 top_p=0.9" : "greedy", rows, V, g, st);
        cudaFree(lg), cudaFree(dt), cudaFree(dp), cudaFree(dk), cudaFree(ds), cudaFree(out), cudaFree(dsd);
      }
  }
  return 0;
}
