// The persistent whole-layer decode (src/kernels/decode_layers.cu, batch 1, fp16) against the weight roofline of
// the same run: first its results against a plain kernel-per-op path on the GPU (one thread a row, written for
// obviousness: the same rounding points, another summation order), then its time for a launch of L layers at a
// context of pos + 1 keys, as GB/s of the bytes it must read (weights + the cache rows) and as a fraction of the
// device-to-device copy rate measured here (read + write, the project's roofline; a read-only stream can pass it);
// also with the grid barriers skipped and with the weight ring alone (no compute, no cache reads; its GB/s still
// count the cache's bytes), both timing only (wrong results), and clock counters of where the warps wait.
//
//   native/build/layers_bench [llama2|llama3] [layers 32] [pos 191] [slot bytes x slots a warp, e.g. 8192x1,11008x1]
//   (or nvcc -std=c++17 -O3 --expt-relaxed-constexpr -arch=sm_90 tests/layers_bench.cu src/kernels/decode_layers.cu
//    src/kernels/random_fill.cu src/kernels/embedding.cu)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../src/kernels/decode_layers.h"
#include "../src/kernels/kernels.h"
#include "test_util.cuh"

using namespace tsllm;

namespace {

__device__ inline float rndf(float x) { return __half2float(__float2half_rn(x)); }

// Uniform in [lo, hi]: the runtime's random weights (random_fill).
void fill(half* p, size_t n, unsigned seed, float lo, float hi) {
  CK(random_fill(p, DType::F16, n, seed, (lo + hi) / 2, (hi - lo) / 2, 0));
}

// The plain path: one block.
__global__ void ref_rms(const half* h, const half* g, half* xn, int H, float eps) {
  __shared__ float red[32];
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) ss += __half2float(h[i]) * __half2float(h[i]);
  for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  float tot = 0.f;
  for (int w = 0; w < (int)blockDim.x / 32; ++w) tot += red[w];
  const float r = rsqrtf(tot / H + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    xn[i] = __float2half_rn(__half2float(g[i]) * rndf(__half2float(h[i]) * r));
}
// y[n] = fp16(W[n] . x), one thread a row.
__global__ void ref_gemv(const half* W, const half* x, half* y, int N, int K) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  float s = 0.f;
  for (int k = 0; k < K; ++k) s += __half2float(W[(size_t)n * K + k]) * __half2float(x[k]);
  y[n] = __float2half_rn(s);
}
__global__ void ref_residual(half* h, const half* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) h[i] = __float2half_rn(__half2float(h[i]) + __half2float(y[i]));
}
__global__ void ref_act(const half* gu, half* act, int I) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= I) return;
  const float g = __half2float(gu[i]), u = __half2float(gu[I + i]);
  act[i] = __float2half_rn(rndf(g / (1.f + expf(-g))) * u);
}
// One block a query head, 128 threads (dims); rotate-half RoPE; the cache row at pos written by the group's first
// head, every head using its own copy of the new key.
__global__ void ref_attn(const half* qkv, half* attn, half* kv, int nH, int nKV, int pos, int max_ctx, float theta) {
  const int h = blockIdx.x, d = threadIdx.x, D = 128, gq = nH / nKV, kvh = h / gq;
  __shared__ float q[128], kn[128], sc[8192], red[2];
  auto rope = [&](const half* x) {
    const int i = d % 64;
    const float inv = powf(theta, -2.f * i / D), a = pos * inv;
    const float xd = __half2float(x[d]), xp = __half2float(x[d < 64 ? d + 64 : d - 64]);
    return rndf(d < 64 ? xd * cosf(a) - xp * sinf(a) : xd * cosf(a) + xp * sinf(a));
  };
  q[d] = rope(qkv + h * D);
  kn[d] = rope(qkv + (nH + kvh) * D);
  const float vn = __half2float(qkv[(nH + nKV + kvh) * D + d]);
  const size_t row = (size_t)nKV * D;
  half* K = kv + kvh * D;
  half* V = K + (size_t)max_ctx * row;
  if (h % gq == 0) {
    K[pos * row + d] = __float2half_rn(kn[d]);
    V[pos * row + d] = __float2half_rn(vn);
  }
  __syncthreads();
  for (int j = d; j <= pos; j += blockDim.x) {
    float s = 0.f;
    for (int e = 0; e < D; ++e) s += q[e] * (j == pos ? rndf(kn[e]) : __half2float(K[j * row + e]));
    sc[j] = s / sqrtf((float)D);
  }
  __syncthreads();
  if (d == 0) {
    float m = -1e30f;
    for (int j = 0; j <= pos; ++j) m = fmaxf(m, sc[j]);
    float l = 0.f;
    for (int j = 0; j <= pos; ++j) l += expf(sc[j] - m);
    red[0] = m;
    red[1] = l;
  }
  __syncthreads();
  float o = 0.f;
  for (int j = 0; j <= pos; ++j) o += expf(sc[j] - red[0]) * (j == pos ? vn : __half2float(V[j * row + d]));
  attn[h * D + d] = __float2half_rn(o / red[1]);
}

struct Model {
  const char* name;
  int H, nH, nKV, I;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "llama2";
  const Model m = which == "llama3" ? Model{"Llama-3.1-8B", 4096, 32, 8, 14336} : Model{"Llama-2-7B", 4096, 32, 32, 11008};
  const int L = argc > 2 ? std::atoi(argv[2]) : 32;
  const int pos = argc > 3 ? std::atoi(argv[3]) : 191;
  // Ring shapes: slot bytes x slots a consumer warp ("8192x1,11008x1"; slots of at most 11,264 B).
  struct RingShape {
    int piece, spw;
  };
  std::vector<RingShape> rings;
  {
    std::string sl = argc > 4 ? argv[4] : "8192x1,11008x1";
    for (size_t i = 0; i < sl.size();) {
      size_t j = sl.find(',', i);
      if (j == std::string::npos) j = sl.size();
      const std::string t = sl.substr(i, j - i);
      const size_t x = t.find('x');
      rings.push_back({std::atoi(t.substr(0, x).c_str()), x == std::string::npos ? 1 : std::atoi(t.substr(x + 1).c_str())});
      i = j + 1;
    }
  }
  const int D = 128, max_ctx = std::max(pos + 1, 256);
  if (L < 2 || pos < 0 || pos >= 8192) {
    std::fprintf(stderr, "layers_bench: layers >= 2 and 0 <= pos < 8192\n");
    return 2;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const double copy = copy_gbs();
  std::printf("%s (%d SMs): device-to-device copy %.0f GB/s (read + write)\n", prop.name, prop.multiProcessorCount, copy);

  const int nqkv = (m.nH + 2 * m.nKV) * D;
  const size_t per_layer = (size_t)nqkv * m.H + (size_t)m.H * m.nH * D + 2 * (size_t)m.I * m.H + (size_t)m.H * m.I;
  half *w = nullptr, *g = nullptr, *h = nullptr, *h0 = nullptr, *qkv = nullptr, *attn = nullptr, *act = nullptr,
       *kv = nullptr, *xn = nullptr, *y = nullptr;
  unsigned* sync = nullptr;
  const size_t kv_elems = (size_t)L * 2 * max_ctx * m.nKV * D;
  CK(cudaMalloc(&w, per_layer * L * 2));
  CK(cudaMalloc(&g, (size_t)L * 2 * m.H * 2));
  CK(cudaMalloc(&h, m.H * 2));
  CK(cudaMalloc(&h0, m.H * 2));
  CK(cudaMalloc(&qkv, nqkv * 2));
  CK(cudaMalloc(&attn, m.nH * D * 2));
  CK(cudaMalloc(&act, m.I * 2));
  CK(cudaMalloc(&xn, std::max(m.H, m.I) * 2));
  CK(cudaMalloc(&y, std::max(nqkv, 2 * m.I) * 2));
  CK(cudaMalloc(&kv, kv_elems * 2));
  CK(cudaMalloc(&sync, 4));
  std::vector<DecodeLayerWeights> lw(L);
  for (int l = 0; l < L; ++l) {
    half* p = w + per_layer * l;
    lw[l].wqkv = p;
    p += (size_t)nqkv * m.H;
    lw[l].wo = p;
    p += (size_t)m.H * m.nH * D;
    lw[l].wgu = p;
    p += 2 * (size_t)m.I * m.H;
    lw[l].wd = p;
    lw[l].g_attn = g + (size_t)2 * l * m.H;
    lw[l].g_mlp = g + (size_t)(2 * l + 1) * m.H;
    const float aH = std::sqrt(3.f / m.H), aI = std::sqrt(3.f / m.I);
    fill(const_cast<half*>(lw[l].wqkv), (size_t)nqkv * m.H, 10 * l + 1, -aH, aH);
    fill(const_cast<half*>(lw[l].wo), (size_t)m.H * m.nH * D, 10 * l + 2, -aH, aH);
    fill(const_cast<half*>(lw[l].wgu), 2 * (size_t)m.I * m.H, 10 * l + 3, -aH, aH);
    fill(const_cast<half*>(lw[l].wd), (size_t)m.H * m.I, 10 * l + 4, -aI, aI);
  }
  fill(g, (size_t)L * 2 * m.H, 7, 0.8f, 1.2f);
  fill(h0, m.H, 8, -1.f, 1.f);
  fill(kv, kv_elems, 9, -1.f, 1.f);
  DecodeLayerWeights* dlw = nullptr;
  CK(cudaMalloc(&dlw, L * sizeof(DecodeLayerWeights)));
  CK(cudaMemcpy(dlw, lw.data(), L * sizeof(DecodeLayerWeights), cudaMemcpyHostToDevice));

  DecodeLayersArgs a{};
  a.H = m.H, a.nH = m.nH, a.nKV = m.nKV, a.D = D, a.I = m.I, a.L = L, a.pos = pos, a.max_ctx = max_ctx;
  a.eps = 1e-5f, a.rope_theta = 10000.f;
  a.layers = dlw, a.h = h, a.qkv = qkv, a.attn = attn, a.act = act, a.kv = kv, a.sync = sync;
  for (const RingShape& r : rings) {
    a.piece_bytes = r.piece;
    if (const char* why = decode_layers_unsupported(a, r.spw)) {
      std::fprintf(stderr, "layers_bench: pieces of %d bytes, %d a warp: %s\n", r.piece, r.spw, why);
      return 2;
    }
  }
  a.piece_bytes = rings[0].piece;

  // 1. Results: C layers through both paths from the same h and cache, compared (h and every layer's new cache row).
  const int C = 2;
  const size_t kv_pos = (size_t)pos * m.nKV * D;  // a layer's row at pos (keys; values max_ctx rows on)
  auto cache_rows = [&](std::vector<half>& out) {
    out.clear();
    for (int l = 0; l < C; ++l)
      for (int kind = 0; kind < 2; ++kind) {
        std::vector<half> r((size_t)m.nKV * D);
        CK(cudaMemcpy(r.data(), kv + ((size_t)(2 * l + kind) * max_ctx) * m.nKV * D + kv_pos, r.size() * 2,
                      cudaMemcpyDeviceToHost));
        out.insert(out.end(), r.begin(), r.end());
      }
  };
  std::vector<half> hm(m.H), hr(m.H), cm, cr;
  CK(cudaMemcpy(h, h0, m.H * 2, cudaMemcpyDeviceToDevice));
  DecodeLayersArgs ac = a;
  ac.L = C;
  CK(decode_layers(ac, rings[0].spw, 0));
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(hm.data(), h, m.H * 2, cudaMemcpyDeviceToHost));
  cache_rows(cm);
  CK(cudaMemcpy(h, h0, m.H * 2, cudaMemcpyDeviceToDevice));
  for (int l = 0; l < C; ++l) {
    half* kvl = kv + (size_t)(2 * l) * max_ctx * m.nKV * D;
    ref_rms<<<1, 1024>>>(h, lw[l].g_attn, xn, m.H, a.eps);
    ref_gemv<<<(nqkv + 127) / 128, 128>>>(lw[l].wqkv, xn, qkv, nqkv, m.H);
    ref_attn<<<m.nH, 128>>>(qkv, attn, kvl, m.nH, m.nKV, pos, max_ctx, a.rope_theta);
    ref_gemv<<<(m.H + 127) / 128, 128>>>(lw[l].wo, attn, y, m.H, m.nH * D);
    ref_residual<<<(m.H + 255) / 256, 256>>>(h, y, m.H);
    ref_rms<<<1, 1024>>>(h, lw[l].g_mlp, xn, m.H, a.eps);
    ref_gemv<<<(2 * m.I + 127) / 128, 128>>>(lw[l].wgu, xn, y, 2 * m.I, m.H);
    ref_act<<<(m.I + 255) / 256, 256>>>(y, act, m.I);
    ref_gemv<<<(m.H + 127) / 128, 128>>>(lw[l].wd, act, y, m.H, m.I);
    ref_residual<<<(m.H + 255) / 256, 256>>>(h, y, m.H);
  }
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(hr.data(), h, m.H * 2, cudaMemcpyDeviceToHost));
  cache_rows(cr);
  // fp16 results of another summation order: each value within 2 % of the larger magnitude or 0.02.
  auto compare = [](const char* what, const std::vector<half>& x, const std::vector<half>& r) {
    double worst = 0, maxabs = 0;
    size_t bad = 0, nonfinite = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double a = __half2float(x[i]), b = __half2float(r[i]);
      if (!std::isfinite(a) || !std::isfinite(b)) {
        ++nonfinite;
        continue;
      }
      const double d = std::fabs(a - b), bound = 0.02 * std::max({1.0, std::fabs(a), std::fabs(b)});
      worst = std::max(worst, d / bound);
      maxabs = std::max(maxabs, d);
      bad += d > bound;
    }
    std::printf("check %s: %zu values, max |diff| %.4g (%.2f of the bound), %zu outside, %zu not finite: %s\n", what,
                x.size(), maxabs, worst, bad, nonfinite, bad == 0 && nonfinite == 0 ? "PASS" : "FAIL");
    return bad == 0 && nonfinite == 0;
  };
  bool ok = compare("h after 2 layers", hm, hr);
  ok = compare("cache rows at pos", cm, cr) && ok;

  // 2. Time: launches of L layers, each from the same h (restored outside the timed region).
  const double wbytes = (double)per_layer * L * 2, kvbytes = (double)L * 2 * pos * m.nKV * D * 2;
  std::printf("%s, %d layers, context %d: weights %.1f MB + cache %.1f MB; roofline at the copy rate %.1f us "
              "(%.2f us a layer)\n",
              m.name, L, pos + 1, wbytes / 1e6, kvbytes / 1e6, (wbytes + kvbytes) / (copy * 1e3),
              (wbytes + kvbytes) / (copy * 1e3) / L);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const char* modes[] = {"           ", "no barriers", "ring alone "};
  for (int mode = 0; mode < 3; ++mode)
    for (const RingShape& r : rings) {
      a.mode = mode;
      a.piece_bytes = r.piece;
      const int sl = r.spw;
      std::vector<float> ms;
      for (int it = 0; it < 22; ++it) {
        CK(cudaMemcpy(h, h0, m.H * 2, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e0));
        CK(decode_layers(a, sl, 0));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float t = 0;
        CK(cudaEventElapsedTime(&t, e0, e1));
        if (it >= 2) ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      // One more launch with the clock counters (not timed).
      unsigned long long* prof = nullptr;
      CK(cudaMalloc(&prof, 11 * 8));
      CK(cudaMemset(prof, 0, 11 * 8));
      CK(cudaMemcpy(h, h0, m.H * 2, cudaMemcpyDeviceToDevice));
      a.prof = prof;
      CK(decode_layers(a, r.spw, 0));
      CK(cudaDeviceSynchronize());
      a.prof = nullptr;
      unsigned long long pc[11];
      CK(cudaMemcpy(pc, prof, sizeof pc, cudaMemcpyDeviceToHost));
      CK(cudaFree(prof));
      const double us = ms[ms.size() / 2] * 1e3;
      std::printf("decode_layers %s slots of %5d B, %d a warp (%zu KB smem): %.1f us (%.2f us a layer), "
                  "%.0f GB/s, %.1f %% of the copy rate (min %.1f us)\n",
                  modes[mode], r.piece, sl, decode_layers_smem(a, sl) >> 10, us, us / L,
                  (wbytes + kvbytes) / (us * 1e3), 100.0 * (wbytes + kvbytes) / (us * 1e3) / copy, ms[0] * 1e3);
      std::printf("    consumer warps: %.1f %% of their clocks waiting for pieces, %.1f %% on them; producer %.1f %% waiting "
                  "for free slots\n",
                  100.0 * pc[0] / pc[2], 100.0 * pc[1] / pc[2], 100.0 * pc[3] / pc[4]);
      if (mode != 2)
        std::printf("    thread 0 of each block: prologues %.1f %%, streams %.1f %%, epilogues %.1f %%, grid barriers "
                    "%.1f %%, attention %.1f %% of its clocks\n",
                    100.0 * pc[5] / pc[10], 100.0 * pc[6] / pc[10], 100.0 * pc[7] / pc[10], 100.0 * pc[8] / pc[10],
                    100.0 * pc[9] / pc[10]);
    }
  std::printf("SUMMARY %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
