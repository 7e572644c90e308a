// Decode-linear microbenchmark (M = 1, Llama-2-7B shapes): every variant of the fp16 gemv and of the quantised
// gemv (fp8, int8-wo, int4-wo group 128), plain and with the rms_norm prologue, as GB/s of weight bytes (values +
// scales) against the device-to-device copy rate measured in the same run. Each variant runs as a CUDA graph of
// 32 back-to-back calls with programmatic dependent launch (as the runtime's decode graph does), cycling through
// enough weight copies that every call misses L2; the median of 15 replays. The summary lines per shape compare the
// best variant ("new") with the alternative it replaces ("old"): for fp8 the first design (variants 0-2) against
// the rest (3-10); with a prologue, the unfused pair (prologue kernel + best plain variant, printed as v1xx for
// fp16) against the best fused variant; fp16 / int8 / int4 without a prologue print only the best variant; fp8
// over FP8 rows (fp8_gemv_rows, x already quantised by its producer) against the best plain fp8 variant.
//
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90,code=sm_90 -o gemv_bench tests/gemv_bench.cu src/kernels/*.cu
//   ./gemv_bench                  (or native/build/gemv_bench after npm run build:native; about 30 s)
//   ./gemv_bench int4 gate_up 7   (one kind, shape and variant: for ncu)
//   ./gemv_bench int4 all -1 64   (M = 64 token rows: the quantised kinds' plain variants that take M, as GB/s and
//                                  TFLOP/s; int8 / int4 past 16 rows are the weight-only GEMM's variants 19-21)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "../src/kernels/kernels.h"
#include "../src/kernels/quant.h"
#include "test_util.cuh"

using namespace tsllm;

struct Best {
  double gbs = 0;
  int v = -1;
  void take(double g, int var) {
    if (g > gbs) gbs = g, v = var;
  }
};

int main(int argc, char** argv) {
  const char* only = argc > 1 ? argv[1] : nullptr;  // fp16 | fp8 | int8 | int4
  auto want = [&](const char* k) { return !only || std::string(only) == k; };
  const char* only_shape = argc > 2 ? argv[2] : nullptr;
  const int only_v = argc > 3 ? std::atoi(argv[3]) : -1;
  const int bm = argc > 4 ? std::atoi(argv[4]) : 1;  // token rows
  if (bm < 1 || bm > kIntGemmMaxM) {
    std::fprintf(stderr, "gemv_bench: rows %d outside 1..%d\n", bm, kIntGemmMaxM);
    return 2;
  }
  if (only_shape && std::string(only_shape) == "all") only_shape = nullptr;
  auto skip = [&](int v) { return only_v >= 0 && v != only_v; };
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const double copy = copy_gbs();
  std::printf("%s (%d SMs, L2 %d MB): device-to-device copy %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, copy);
  struct Shape {
    const char* name;
    int N, K;
  } shapes[] = {{"qkv", 12288, 4096}, {"o_proj", 4096, 4096}, {"gate_up", 22016, 4096}, {"down", 4096, 11008}};
  const int calls = 32;
  const size_t l2_defeat = size_t(prop.l2CacheSize) * 3 + (size_t(64) << 20);
  void *x, *xn, *out, *nw;
  const size_t xrows = std::max(bm, 4);
  CK(cudaMalloc(&x, xrows * 11008 * 2 * 2));
  CK(cudaMalloc(&xn, xrows * 11008 * 2));
  CK(cudaMalloc(&out, xrows * 32000 * 2));
  CK(cudaMalloc(&nw, 11008 * 2));
  CK(random_fill(x, DType::F16, xrows * 11008 * 2, 1, 0.f, 1.f, 0));
  CK(random_fill(nw, DType::F16, 11008, 2, 1.f, 0.1f, 0));
  std::vector<std::string> summary;
  auto line = [&](const char* kind, const Shape& sh, const char* pro, const Best& o, const Best& n) {
    char b[256], ob[96] = "";
    if (o.v >= 0)
      std::snprintf(ob, sizeof ob, "old best v%d %6.0f GB/s (%4.1f%%)  ", o.v, o.gbs, 100 * o.gbs / copy);
    std::snprintf(b, sizeof b, "%-5s %-8s N=%-5d K=%-5d %-9s %snew best v%d %6.0f GB/s (%4.1f%%)  %+5.1f%%", kind,
                  sh.name, sh.N, sh.K, pro, ob, n.v, n.gbs, 100 * n.gbs / copy,
                  o.gbs > 0 ? 100 * (n.gbs / o.gbs - 1) : 0.0);
    summary.push_back(b);
  };
  for (const Shape& sh : shapes) {
    if (only_shape && std::string(only_shape) != sh.name) continue;
    // fp16 gemv: variants 0-9; plain, and with the prologue that feeds the shape in Llama (rms_norm: K = hidden;
    // gated SiLU: down_proj).
    if (want("fp16") && bm == 1) {
      const size_t wb = size_t(sh.N) * sh.K * 2;
      const int copies = int(std::max<size_t>(2, (l2_defeat + wb - 1) / wb));
      std::vector<void*> w(copies);
      for (auto& p : w) {
        CK(cudaMalloc(&p, wb));
        CK(random_fill(p, DType::F16, wb / 2, 3, 0.f, 0.02f, 0));
      }
      std::printf("\nfp16 %s N=%d K=%d (%.1f MB)\n", sh.name, sh.N, sh.K, wb / 1e6);
      for (int pro = 0; pro < 2; pro++) {
        GemvPrologue gp;
        if (pro) {
          gp.kind = sh.K == 4096 ? GemvPro::RmsNorm : GemvPro::GatedSilu;
          gp.norm_w = nw, gp.eps = 1e-5f;
        }
        Best o, n;
        for (int v = 0; v < kGemvVariants; v++) {
          if (skip(v)) continue;
          const double us = graph_us(calls, [&](int i, cudaStream_t s) {
            return gemv_pro(v, gp, x, w[i % copies], nullptr, nullptr, out, 1, sh.N, sh.K, DType::F16, true, s);
          });
          if (us <= 0) continue;
          std::printf("  %s v%-2d %8.2f us %7.0f GB/s\n", pro ? (sh.K == 4096 ? "+rms_norm" : "+gated   ") : "plain    ", v,
                      us, wb / (us * 1e3));
          n.take(wb / (us * 1e3), v);
        }
        if (pro) {
          // The unfused pair ("old"): the prologue kernel + the best plain variant.
          double bus = 1e30;
          int bv = -1;
          for (int v = 0; v < kGemvVariants; v++) {
            const double us = graph_us(calls, [&](int i, cudaStream_t s) {
              cudaError_t e = sh.K == 4096 ? rms_norm(x, nullptr, nw, 0.f, xn, nullptr, 1, sh.K, 1e-5f, DType::F16, s)
                                           : gated_act(x, xn, 1, sh.K, Act::Silu, DType::F16, s);
              return e != cudaSuccess ? e : gemv(v, xn, w[i % copies], nullptr, nullptr, out, 1, sh.N, sh.K, DType::F16, true, s);
            });
            if (us > 0 && us < bus) bus = us, bv = v;
          }
          std::printf("  unfused prologue kernel + v%d %8.2f us %7.0f GB/s\n", bv, bus, wb / (bus * 1e3));
          o.take(wb / (bus * 1e3), 100 + bv);
        }
        line("fp16", sh, pro ? (sh.K == 4096 ? "+rms_norm" : "+gated") : "plain", o, n);
      }
      for (auto p : w) cudaFree(p);
    }
    for (QuantKind kind : {QuantKind::Fp8, QuantKind::Int8, QuantKind::Int4}) {
      const char* kn = kind == QuantKind::Fp8 ? "fp8" : kind == QuantKind::Int8 ? "int8" : "int4";
      if (!want(kn)) continue;
      const int group = kind == QuantKind::Int4 ? 128 : 0;
      const size_t wb = kind == QuantKind::Int4 ? size_t(sh.N) * sh.K / 2 : size_t(sh.N) * sh.K;
      const size_t nsc = kind == QuantKind::Int4 ? size_t(sh.N) * (sh.K / group) : size_t(sh.N);
      const size_t bytes = wb + nsc * 4;
      const int copies = int(std::max<size_t>(2, (l2_defeat + bytes - 1) / bytes));
      std::vector<void*> w(copies);
      std::vector<float*> sc(copies);
      for (int c = 0; c < copies; c++) {
        CK(cudaMalloc(&w[c], wb));
        CK(cudaMalloc(&sc[c], nsc * 4));
        // fp8: random E4M3 values of a uniform [-448, 448); int8: [-127, 127]; int4: random bytes.
        if (kind == QuantKind::Fp8) CK(random_fill(w[c], DType::FP8_E4M3, wb, 4 + c, 0.f, 448.f, 0));
        else if (kind == QuantKind::Int8) CK(random_fill(w[c], DType::I8, wb, 4 + c, 0.f, 127.f, 0));
        else CK(random_fill(w[c], DType::U8, wb, 4 + c, 127.5f, 128.f, 0));
        // 2^-9: exactly representable in fp16 / bf16, as the compiler now writes weight-only scales (the
        // tensor-core int variants multiply in T; an f32-only scale would time their exact per-weight path).
        CK(random_fill(sc[c], DType::F32, nsc, 5, 0.001953125f, 0.0f, 0));
      }
      std::printf("\n%s %s N=%d K=%d M=%d (%.1f MB incl. scales)\n", kn, sh.name, sh.N, sh.K, bm, bytes / 1e6);
      // "old" variants 0-2, "new" the rest: fp8 the first design vs 3-10; int8 / int4 the CUDA-core kernel vs the
      // tensor-core ones (3-12).
      Best plain;  // the best plain variant of all (the FP8 rows' "old" below)
      for (int pro = 0; pro < 2; pro++) {
        if (pro && (sh.K != 4096 || bm > 1)) continue;  // the rms_norm prologue feeds qkv / gate_up (K = hidden)
        GemvPrologue gp;
        if (pro) gp.kind = GemvPro::RmsNorm, gp.norm_w = nw, gp.eps = 1e-5f;
        Best o, n;
        for (int v = 0; v < quant_gemv_variants(kind); v++) {
          if (skip(v) || (pro && !quant_gemv_has_prologue(kind, v))) continue;
          const double us = graph_us(calls, [&](int i, cudaStream_t s) {
            return quant_gemv(v, kind, x, w[i % copies], sc[i % copies], group, nullptr, nullptr, out, bm, sh.N,
                              sh.K, Act::None, DType::F16, true, s, gp);
          });
          if (us <= 0) continue;
          const double g = bytes / (us * 1e3);
          std::printf("  %s v%d %8.2f us %7.0f GB/s %7.1f TFLOP/s\n", pro ? "+rms_norm" : "plain    ", v, us, g,
                      2.0 * bm * sh.N * sh.K / (us * 1e6));
          (v < 3 ? o : n).take(g, v);
          if (!pro) plain.take(g, v);
        }
        if (pro) {
          // The unfused pair for comparison: rms_norm kernel + the best plain variant.
          int bv = -1;
          double bus = 1e30;
          for (int v = 0; v < quant_gemv_variants(kind); v++) {
            const double us = graph_us(calls, [&](int i, cudaStream_t s) {
              cudaError_t e = rms_norm(x, nullptr, nw, 0.f, xn, nullptr, 1, sh.K, 1e-5f, DType::F16, s);
              return e != cudaSuccess ? e
                                      : quant_gemv(v, kind, xn, w[i % copies], sc[i % copies], group, nullptr, nullptr,
                                                   out, 1, sh.N, sh.K, Act::None, DType::F16, true, s);
            });
            if (us > 0 && us < bus) bus = us, bv = v;
          }
          o = Best();
          o.take(bytes / (bus * 1e3), bv);
          std::printf("  unfused rms_norm + v%d %8.2f us %7.0f GB/s\n", bv, bus, bytes / (bus * 1e3));
        }
        line(kn, sh, pro ? "+rms_norm" : "plain", o, n);
      }
      if (kind == QuantKind::Fp8 && bm == 1) {
        // The gemv over FP8 rows (fp8_gemv_rows): x already quantised, as an rms_norm / gated_act producer writes
        // it from 2 rows on; "old" is the best plain variant above (the gemv quantising x itself).
        uint8_t* xq;
        float* sxq;
        CK(cudaMalloc(&xq, size_t(sh.K)));
        CK(cudaMalloc(&sxq, 16));
        CK(quantize_rows_fp8(x, xq, sxq, 1, sh.K, DType::F16, 0));
        Best n;
        for (int v = kFp8RowsGemvFirst; v <= kFp8RowsGemvLast; v++) {
          const double us = graph_us(calls, [&](int i, cudaStream_t s) {
            return fp8_gemv_rows(v, xq, sxq, w[i % copies], sc[i % copies], nullptr, nullptr, out, 1, sh.N, sh.K,
                                 Act::None, DType::F16, true, s);
          });
          if (us <= 0) continue;
          std::printf("  FP8 rows  v%d %8.2f us %7.0f GB/s\n", v, us, bytes / (us * 1e3));
          n.take(bytes / (us * 1e3), v);
        }
        line(kn, sh, "FP8 rows", plain, n);
        cudaFree(xq), cudaFree(sxq);
      }
      for (int c = 0; c < copies; c++) cudaFree(w[c]), cudaFree(sc[c]);
    }
  }
  std::printf("\n== A/B summary (GB/s of weight bytes; %% of the %.0f GB/s copy; with a prologue, old includes the unfused pair as v1xx)\n", copy);
  for (auto& l : summary) std::printf("%s\n", l.c_str());
  return 0;
}
