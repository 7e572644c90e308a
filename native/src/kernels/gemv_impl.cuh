// The small-M (decode) linear kernel, shared by gemv.cu (plain), gemv_rms.cu and gemv_gated.cu (prologue
// fusions, one translation unit each so the build compiles them in parallel). See gemv.cu for the design.
//
// POST: the output goes through a folded elementwise chain (kernels.h gemv's post) before the residual. A
// compile-time variant (gemv_post.cu) so the kernels without one are exactly what they were.
//
// PRO (the vector's prologue, GemvPro in kernels.h):
//   0 plain: the vector is x[m, :].
//   1 rms_norm: every block first computes inv_rms of the M rows of x (fp32 sum of squares over K, after
//     griddepcontrol.wait while its first weight loads are in flight), then uses
//     to_dtype((x * inv_rms) * norm_w), rounded exactly as norms.cu writes rms_norm's y.
//   2 / 3 gated silu / gelu-tanh: x is the [M, 2K] gate|up output; the vector is to_dtype(act(gate) * up),
//     as activations.cu's gated_act writes it.
#pragma once
#include <math.h>

#include "common.cuh"

namespace tsllm {

// The prologue variants' launchers (gemv_rms.cu, gemv_gated.cu); `gemv_pro` in gemv.cu dispatches to them.
cudaError_t gemv_rms_launch(int variant, const void* x, const void* norm_w, float eps, const void* w, const void* bias,
                            const void* res, void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s);
cudaError_t gemv_gated_launch(int variant, GemvPro pro, const void* x, const void* w, const void* bias, const void* res,
                              void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s);
// The plain gemv with a folded elementwise chain (gemv_post.cu, POST = true).
cudaError_t gemv_post_launch(int variant, const void* x, const void* w, const void* bias, const void* res, void* out,
                             int M, int N, int K, DType dt, bool pdl, cudaStream_t s, const EwChain& post);

namespace kd {
namespace {

constexpr int kWarps = 4;   // warps per block

template <typename T>
__device__ __forceinline__ float dot8(const uint4& a, const uint4& b, float acc) {
  const uint32_t* pa = &a.x;
  const uint32_t* pb = &b.x;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 fa = to_f2<T>(pa[i]), fb = to_f2<T>(pb[i]);
    acc = fmaf(fa.x, fb.x, acc);
    acc = fmaf(fa.y, fb.y, acc);
  }
  return acc;
}

// The gated prologues' activation: common.cuh's act_value, as gated_act computes it (so the same rounding).
template <int PRO>
__device__ __forceinline__ float pro_act(float x) {
  return act_value(x, PRO == int(GemvPro::GatedSilu) ? Act::Silu : Act::GeluTanh);
}

// The 16-byte chunk c of the vector of row m (8 elements of dtype T), after the prologue.
template <typename T, int PRO>
__device__ __forceinline__ uint4 vec_chunk(const T* __restrict__ x, int m, int c, int K, const uint4& nwv, float inv) {
  if constexpr (PRO == 0) {
    return *reinterpret_cast<const uint4*>(x + size_t(m) * K + size_t(c) * 8);
  } else if constexpr (PRO == int(GemvPro::RmsNorm)) {
    const uint4 xv = *reinterpret_cast<const uint4*>(x + size_t(m) * K + size_t(c) * 8);
    const uint32_t* px = &xv.x;
    const uint32_t* pw = &nwv.x;
    uint4 o;
    uint32_t* po = &o.x;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float2 fx = to_f2<T>(px[i]), fw = to_f2<T>(pw[i]);
      po[i] = pack2<T>((fx.x * inv) * fw.x, (fx.y * inv) * fw.y);  // norms.cu: (v - 0) * rstd * w
    }
    return o;
  } else {
    const T* g = x + size_t(m) * 2 * K + size_t(c) * 8;
    const uint4 gv = *reinterpret_cast<const uint4*>(g);
    const uint4 uv = *reinterpret_cast<const uint4*>(g + K);
    const uint32_t* pg = &gv.x;
    const uint32_t* pu = &uv.x;
    uint4 o;
    uint32_t* po = &o.x;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float2 fg = to_f2<T>(pg[i]), fu = to_f2<T>(pu[i]);
      po[i] = pack2<T>(pro_act<PRO>(fg.x) * fu.x, pro_act<PRO>(fg.y) * fu.y);
    }
    return o;
  }
}

// Block of 4 warps: G = 4 / KS groups of KS warps; a group owns ROWS weight rows, its KS warps split K
// (interleaved 512-byte segments) and combine through shared memory. UN chunks per row in flight per lane.
template <typename T, int M, int ROWS, int KS, int UN, int PRO, bool POST>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                           const T* __restrict__ bias, const T* res, T* out, int N,
                                                           int K, const T* __restrict__ nw, float eps,
                                                           const EwChain post) {
  constexpr int G = kWarps / KS;
  pdl_trigger();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = warp / KS, ks = warp % KS;
  const int n0 = (blockIdx.x * G + g) * ROWS;
  const bool active = n0 < N;
  const int chunks = K >> 3;  // 8 elements = 16 bytes
  float acc[ROWS][M];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = 0.f;
  const T* wr[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; r++) wr[r] = w + size_t(min(n0 + r, N - 1)) * size_t(K);

  // The first weight loads are issued before waiting for the previous kernel (weights are never written).
  int c0 = ks * 32 + lane;
  uint4 wv[UN][ROWS];
  auto load = [&](int cb) {
#pragma unroll
    for (int u = 0; u < UN; u++) {
      const int c = cb + u * 32 * KS;
#pragma unroll
      for (int r = 0; r < ROWS; r++)
        wv[u][r] = active && c < chunks ? ld_stream(wr[r] + size_t(c) * 8) : make_uint4(0, 0, 0, 0);
    }
  };
  load(c0);
  pdl_wait();
  float inv[M];
#pragma unroll
  for (int m = 0; m < M; m++) inv[m] = 1.f;
  if constexpr (PRO == int(GemvPro::RmsNorm)) {
    // inv_rms of the M rows, recomputed by every block (M·K·2 bytes from L2) while the weights stream in.
    __shared__ float red[kWarps][M];
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) ss[m] = 0.f;
    for (int c = threadIdx.x; c < chunks; c += kWarps * 32) {
#pragma unroll
      for (int m = 0; m < M; m++) {
        const uint4 xv = *reinterpret_cast<const uint4*>(x + size_t(m) * K + size_t(c) * 8);
        const uint32_t* px = &xv.x;
#pragma unroll
        for (int i = 0; i < 4; i++) {
          const float2 f = to_f2<T>(px[i]);
          ss[m] = fmaf(f.x, f.x, ss[m]);
          ss[m] = fmaf(f.y, f.y, ss[m]);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], o);
      if (lane == 0) red[warp][m] = ss[m];
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < M; m++) {
      float t = 0.f;
#pragma unroll
      for (int j = 0; j < kWarps; j++) t += red[j][m];
      inv[m] = rsqrtf(t / K + eps);  // norms.cu: rsqrtf(s1 / hidden + eps)
    }
  }
  if (active) {
    for (;;) {
#pragma unroll
      for (int u = 0; u < UN; u++) {
        const int c = c0 + u * 32 * KS;
        if (c >= chunks) break;
        uint4 nwv = make_uint4(0, 0, 0, 0);
        if constexpr (PRO == int(GemvPro::RmsNorm)) nwv = __ldg(reinterpret_cast<const uint4*>(nw + size_t(c) * 8));
#pragma unroll
        for (int m = 0; m < M; m++) {
          const uint4 xv = vec_chunk<T, PRO>(x, m, c, K, nwv, inv[m]);
#pragma unroll
          for (int r = 0; r < ROWS; r++) acc[r][m] = dot8<T>(wv[u][r], xv, acc[r][m]);
        }
      }
      c0 += 32 * KS * UN;
      if (c0 >= chunks) break;
      load(c0);
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);
  if constexpr (KS > 1) {
    __shared__ float part[kWarps][ROWS][M];
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int m = 0; m < M; m++) part[warp][r][m] = acc[r][m];
    __syncthreads();
    if (ks != 0) return;
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int m = 0; m < M; m++) {
        float v = 0.f;
#pragma unroll
        for (int j = 0; j < KS; j++) v += part[g * KS + j][r][m];
        acc[r][m] = v;
      }
  }
  if (!active) return;
  // Lane (r * M + m) writes output (m, n0 + r).
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++)
      if (lane == r * M + m && n0 + r < N) {
        const int n = n0 + r;
        float v = acc[r][m];
        if (bias) v += to_f<T>(bias[n]);
        if constexpr (POST) v = apply_chain(v, post);
        if (res) v += to_f<T>(res[size_t(m) * N + n]);
        out[size_t(m) * N + n] = from_f<T>(v);
      }
}

template <typename T, int M, int ROWS, int KS, int UN, int PRO, bool POST>
cudaError_t launch_m(unsigned blocks, const T* X, const T* W, const T* B, const T* R, T* O, int N, int K, const T* NW,
                     float eps, const EwChain& post, bool pdl, cudaStream_t s) {
  if (!pdl || !pdl_supported()) {
    gemv_kernel<T, M, ROWS, KS, UN, PRO, POST><<<blocks, kWarps * 32, 0, s>>>(X, W, B, R, O, N, K, NW, eps, post);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(kWarps * 32);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, gemv_kernel<T, M, ROWS, KS, UN, PRO, POST>, X, W, B, R, O, N, K, NW, eps, post);
}

template <typename T, int PRO, bool POST, int ROWS, int KS, int UN = 4>
cudaError_t launch_v(const void* x, const void* w, const void* bias, const void* res, void* out, int M, int N, int K,
                     const void* nw, float eps, const EwChain& post, bool pdl, cudaStream_t s) {
  constexpr int G = kWarps / KS;
  const unsigned blocks = unsigned((N + G * ROWS - 1) / (G * ROWS));
  auto X = static_cast<const T*>(x);
  auto W = static_cast<const T*>(w);
  auto B = static_cast<const T*>(bias);
  auto R = static_cast<const T*>(res);
  auto O = static_cast<T*>(out);
  auto NW = static_cast<const T*>(nw);
  switch (M) {
    case 1: return launch_m<T, 1, ROWS, KS, UN, PRO, POST>(blocks, X, W, B, R, O, N, K, NW, eps, post, pdl, s);
    case 2: return launch_m<T, 2, ROWS, KS, UN, PRO, POST>(blocks, X, W, B, R, O, N, K, NW, eps, post, pdl, s);
    case 3: return launch_m<T, 3, ROWS, KS, UN, PRO, POST>(blocks, X, W, B, R, O, N, K, NW, eps, post, pdl, s);
    case 4: return launch_m<T, 4, ROWS, KS, UN, PRO, POST>(blocks, X, W, B, R, O, N, K, NW, eps, post, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

// Variants (rows per group, warps splitting K, chunks in flight per row), chosen per shape by the tuner.
// 6-9 put more 16-byte loads in flight per lane (16) or spread K over more warps (more, shorter blocks) for the
// N = 4096 shapes (o_proj, down) that run below the copy rate with 0-5.
template <typename T, int PRO, bool POST = false>
cudaError_t launch(int variant, const void* x, const void* w, const void* bias, const void* res, void* out, int M,
                   int N, int K, const void* nw, float eps, bool pdl, cudaStream_t s, const EwChain& post = EwChain{}) {
  switch (variant) {
    case 0: return launch_v<T, PRO, POST, 2, 1>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    case 1: return launch_v<T, PRO, POST, 1, 1>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    case 2: return launch_v<T, PRO, POST, 4, 1>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    case 3: return launch_v<T, PRO, POST, 1, 2>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    case 4: return launch_v<T, PRO, POST, 2, 2>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    case 5: return launch_v<T, PRO, POST, 1, 4>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    case 6: return launch_v<T, PRO, POST, 2, 1, 8>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    case 7: return launch_v<T, PRO, POST, 4, 2>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    case 8: return launch_v<T, PRO, POST, 2, 4>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    case 9: return launch_v<T, PRO, POST, 1, 2, 8>(x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace kd
}  // namespace tsllm
