// The 4-warp decode linear kernel on gemv_stream.cuh's weight stream, for 16-bit weights (gemv.cu plain,
// gemv_rms.cu / gemv_gated.cu prologue fusions, gemv_post.cu folded chain: one translation unit each so the build
// compiles them in parallel; see gemv.cu for the design) and for int8 / int4 weights (quant_gemv_int.cuh).
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
//
// GLU (gemv_glu.cu, a GemvPro gated kind or 0): the gated act in the epilogue instead. w is gate|up [2N, K], a group
// streams its ROWS gate rows and the up rows under them, and writes to_dtype(act(gate) * up) with gate and up each
// rounded as the linear writes them: the gate_up linear and the gated_act after it in one launch, the [M, 2N]
// gate|up output never written.
//
// NT (gemv_norm.cu): after its store, the grid's last block to finish computes the rms_norm of the M rows written
// (gemv_stream.cuh norm_tail): the linear and the rms_norm reading its output in one launch.
#pragma once
#include "gemv_stream.cuh"

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

// Block of 4 warps: G = 4 / KS groups of KS warps; a group owns ROWS weight rows, its KS warps split K
// (interleaved 512-byte segments) and combine through shared memory. UN chunks per row in flight per lane.
// F: the weight format (gemv_stream.cuh): WHalf<T> for gemv (POST: a folded chain), WInt<T, INT4> for the int8 /
// int4 quant_gemv (sc / group: its scales; act: the quantised epilogue's activation).
template <class F, typename T, int M, int ROWS, int KS, int UN, int PRO, bool POST, int GLU, bool NT>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const T* __restrict__ x, const typename F::Unit* __restrict__ w, const float* __restrict__ sc, int group,
                const T* __restrict__ bias, const T* res, T* out, int N, int K, int act, const T* __restrict__ nw,
                float eps, const EwChain post, const NormTail tail) {
  constexpr int G = kWarps / KS;
  constexpr int RW = GLU ? 2 * ROWS : ROWS;  // weight rows a group streams (GLU: gate rows, then their up rows)
  static_assert(!GLU || (!F::kQuant && PRO == 0 && !POST), "GLU: 16-bit weights, no prologue or chain");
  static_assert(!NT || (!F::kQuant && PRO == 0 && !POST && !GLU), "NT: 16-bit weights, plain gemv");
  pdl_trigger();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = warp / KS, ks = warp % KS;
  const int n0 = (blockIdx.x * G + g) * ROWS;
  float acc[RW][M];
  zero(acc);
  WeightStream<F, UN, RW, 32 * KS> ws;
  if constexpr (GLU) ws.rows_glu(w, K, n0, N);
  else ws.rows(w, K, n0, N);
  int c0 = ks * 32 + lane;
  ws.load(c0);  // before waiting for the previous kernel (weights are never written)
  pdl_wait();
  float inv[M];
  vec_inv<T, M, kWarps, PRO>(x, K, eps, inv);
  float srow[RW];
  F::row_scales(sc, n0, N, srow);
  if (ws.active)
    ws.run(c0, [&](const uint4 (&wc)[RW], int c) {
      float s[RW];
#pragma unroll
      for (int r = 0; r < RW; r++) s[r] = srow[r];
      F::chunk_scales(sc, group, K, n0, N, c, s);
      const int xc = c * (F::EPC / 8);  // the vector's first 16-byte chunk under weight chunk c
      dot_chunk<F, T, M, RW>(
          wc, s, [&](int j) { return norm_chunk<T, PRO>(nw, xc + j); },
          [&](const uint4& nwv, int j, int m) { return vec_chunk<T, PRO>(x, m, xc + j, K, nwv, inv[m]); }, acc);
    });
  warp_sums(acc);
  bool store = ws.active;  // (no early return: with NT every thread of the block reaches norm_tail)
  if constexpr (KS > 1) {
    __shared__ float part[kWarps][RW][M];
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < RW; r++)
#pragma unroll
        for (int m = 0; m < M; m++) part[warp][r][m] = acc[r][m];
    __syncthreads();
    if constexpr (!NT)
      if (ks != 0) return;
    store = store && ks == 0;
#pragma unroll
    for (int r = 0; r < RW; r++)
#pragma unroll
      for (int m = 0; m < M; m++) {
        float v = 0.f;
#pragma unroll
        for (int j = 0; j < KS; j++) v += part[g * KS + j][r][m];
        acc[r][m] = v;
      }
  }
  if (store) {
    if constexpr (GLU) {
      // Lane r*M+m: output (m, n0+r) from the gate sum acc[r][m] and the up sum acc[ROWS+r][m] (warp_sum leaves
      // every sum in every lane), each rounded as the linear writes it, then gated_act's T(act(gate) · up).
#pragma unroll
      for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int m = 0; m < M; m++) {
          const int n = n0 + r;
          if (lane != r * M + m || n >= N) continue;
          float gv = acc[r][m], uv = acc[ROWS + r][m];
          if (bias) gv += to_f<T>(bias[n]), uv += to_f<T>(bias[N + n]);
          out[size_t(m) * N + n] = from_f<T>(pro_act<GLU>(to_f(from_f<T>(gv))) * to_f(from_f<T>(uv)));
        }
    } else {
      store_rows(acc, n0, N, lane, [&](float v, int m, int n) {
        if constexpr (F::kQuant) {
          store_out<T>(v, bias, res, out, m, n, N, act);
        } else {
          if (bias) v += to_f<T>(bias[n]);
          if constexpr (POST) v = apply_chain(v, post);
          if (res) v += to_f<T>(res[size_t(m) * N + n]);
          out[size_t(m) * N + n] = from_f<T>(v);
        }
      });
    }
  }
  if constexpr (NT) norm_tail<T, M, kWarps>(out, N, tail);
}

// One launch of gemv_kernel: grid of N / (G · ROWS) blocks (N: the output width); M (1-4) picks the instantiation.
template <class F, typename T, int PRO, bool POST, int ROWS, int KS, int UN, int GLU = 0, bool NT = false>
cudaError_t launch_v(const void* x, const void* w, const float* sc, int group, const void* bias, const void* res,
                     void* out, int M, int N, int K, int act, const void* nw, float eps, const EwChain& post, bool pdl,
                     cudaStream_t s, const NormTail& tail = NormTail{}) {
  constexpr int G = kWarps / KS;
  const unsigned blocks = unsigned((N + G * ROWS - 1) / (G * ROWS));
  auto go = [&](auto kern) {
    return launch_pdl(kern, blocks, kWarps * 32, 0, pdl, s, static_cast<const T*>(x),
                      static_cast<const typename F::Unit*>(w),
                      sc, group, static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(out), N, K,
                      act, static_cast<const T*>(nw), eps, post, tail);
  };
  switch (M) {
    case 1: return go(gemv_kernel<F, T, 1, ROWS, KS, UN, PRO, POST, GLU, NT>);
    case 2: return go(gemv_kernel<F, T, 2, ROWS, KS, UN, PRO, POST, GLU, NT>);
    case 3: return go(gemv_kernel<F, T, 3, ROWS, KS, UN, PRO, POST, GLU, NT>);
    case 4: return go(gemv_kernel<F, T, 4, ROWS, KS, UN, PRO, POST, GLU, NT>);
    default: return cudaErrorInvalidValue;
  }
}

// Variants (rows per group, warps splitting K, chunks in flight per row), chosen per shape by the tuner.
// 6-9 put more 16-byte loads in flight per lane (16) or spread K over more warps (more, shorter blocks) for the
// N = 4096 shapes (o_proj, down) that run below the copy rate with 0-5. The one table of them: the prologue (PRO),
// chain (POST), gated-epilogue (GLU, gemv_glu.cu) and norm-tail (NT, gemv_norm.cu) kernels all launch through it
// (launch below), and gemv_glu_takes reads it.
struct GemvShape {
  int rows, ks, un;
};
constexpr GemvShape kGemvShapes[kGemvVariants] = {{2, 1, 4}, {1, 1, 4}, {4, 1, 4}, {1, 2, 4}, {2, 2, 4},
                                                  {1, 4, 4}, {2, 1, 8}, {4, 2, 4}, {2, 4, 4}, {1, 2, 8}};
// GLU's gate rows a group at most: with four (eight weight rows in flight) it is not offered.
constexpr int kGluMaxRows = 2;

// The fp16 / bf16 gemv's launch of variant (ROWS, KS, UN). GLU above kGluMaxRows rows a group: refused, not
// instantiated.
template <typename T, int PRO, bool POST, int ROWS, int KS, int UN = 4, int GLU = 0, bool NT = false>
cudaError_t launch_h(const void* x, const void* w, const void* bias, const void* res, void* out, int M, int N, int K,
                     const void* nw, float eps, const EwChain& post, bool pdl, cudaStream_t s, const NormTail& tail) {
  if constexpr (GLU != 0 && ROWS > kGluMaxRows) {
    return cudaErrorInvalidValue;
  } else {
    return launch_v<WHalf<T>, T, PRO, POST, ROWS, KS, UN, GLU, NT>(x, w, nullptr, 0, bias, res, out, M, N, K, 0, nw,
                                                                   eps, post, pdl, s, tail);
  }
}

// One launch of variant `variant` (kGemvShapes).
template <typename T, int PRO, bool POST = false, int GLU = 0, bool NT = false>
cudaError_t launch(int variant, const void* x, const void* w, const void* bias, const void* res, void* out, int M,
                   int N, int K, const void* nw, float eps, bool pdl, cudaStream_t s, const EwChain& post = EwChain{},
                   const NormTail& tail = NormTail{}) {
#define TSLLM_GEMV(V)                                                                                                \
  case V:                                                                                                            \
    return launch_h<T, PRO, POST, kGemvShapes[V].rows, kGemvShapes[V].ks, kGemvShapes[V].un, GLU, NT>(              \
        x, w, bias, res, out, M, N, K, nw, eps, post, pdl, s, tail)
  static_assert(kGemvVariants == 10, "one case per kGemvShapes entry");
  switch (variant) {
    TSLLM_GEMV(0); TSLLM_GEMV(1); TSLLM_GEMV(2); TSLLM_GEMV(3); TSLLM_GEMV(4);
    TSLLM_GEMV(5); TSLLM_GEMV(6); TSLLM_GEMV(7); TSLLM_GEMV(8); TSLLM_GEMV(9);
    default: return cudaErrorInvalidValue;
  }
#undef TSLLM_GEMV
}

}  // namespace
}  // namespace kd
}  // namespace tsllm
