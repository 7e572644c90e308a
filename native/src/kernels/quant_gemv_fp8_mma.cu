// FP8 W8A8 decode gemv on the E4M3 tensor cores (fp8 variants 8-10, sm_89+). Why: the CUDA-core variants (3-7)
// widen every weight E4M3 -> fp32 and FMA it, about four instructions a weight byte, and streamed 1.6-3.3 TB/s
// at batch 1 on the H200 (Llama-2-7B graph profile, session 13) where the fp16 gemv streams 3.1-4.4. Here a weight
// byte costs no instruction of its own: mma.sync m16n8k32 e4m3 x e4m3 -> fp32 takes the stored bytes as its A
// operand and the quantised activation rows as B.
//
// Layout. A block owns 16 weight rows (the mma's M); its warps split K into 64-byte slices (warp w takes slices w,
// w + WARPS, ...). Lane (g, t) loads 16 bytes of rows g and g + 8 at byte 16 t of a slice: registers .x .y feed one
// mma as a0..a3 = {row g .x, row g+8 .x, row g .y, row g+8 .y} and .z .w a second one. A dot product does not care
// which k slot a byte sits in as long as both operands agree, so B (x's E4M3 codes, token g in column g) is read
// at the same 16 bytes: b0 b1 = .x .y, then .z .w. Columns (tokens) >= M are zero. D: lane (g, t) holds rows g /
// g + 8 for tokens 2t, 2t + 1.
// Numerics: quant.h's (per-token s_x, e4m3(x / s_x) as quot8, exact E4M3 products, fp32 sums, y = acc · fp32(s_x ·
// s_w)); only the summation order differs. Each mma starts from zero and is added to fp32 registers, so the tensor
// core sums 32 products at a time and never carries the running total (whose precision Hopper's FP8 accumulation
// limits). The first weight loads are issued before griddepcontrol.wait (weights are never written).
// x comes one of two ways:
//   - XQ = false: as the activation (or the rms_norm prologue's input); every block quantises it itself (two passes
//     over it from L2: the amax, then the codes into shared memory) while its first weight loads are in flight;
//   - XQ = true (fp8_gemv_rows): as E4M3 codes and per-token scales its producer wrote (kernels.h Fp8Rows, the FP8
//     activation fusion). Lanes then read their 16 bytes of x from global memory beside their weights, in the same
//     ring, and the block has no prologue and no barrier before its loop. Why: a block that quantises x pays two
//     barriers and two trips to L2 before its loop, and at 16 rows a block there are up to 1,376 blocks a call
//     (gate_up), several waves of them.
#include "gemv_stream.cuh"
#include "mma.cuh"
#include "quant.h"

namespace tsllm {
namespace kd {
namespace {

constexpr int kMmaRows = 16;  // weight rows per block

// Bytes of one token row of the staged codes: K rounded up to whole slices, plus 16 so that rows fall on different
// shared-memory banks.
__host__ __device__ inline int mma_x_stride(int K) { return ((K + 63) & ~63) + 16; }

// XQ: x_q / s_x hold the producer's codes and scales (x, nw unused), else the block quantises x.
template <typename T, int M, int WARPS, int UN, int PRO, bool XQ>
__global__ void __launch_bounds__(WARPS * 32)
    fp8_gemv_mma_kernel(const T* __restrict__ x, const uint8_t* x_q, const float* s_x, const uint8_t* __restrict__ w,
                        const float* __restrict__ sw, const T* __restrict__ bias, const T* res, T* out, int N, int K,
                        int act, const T* __restrict__ nw, float eps) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  __trap();  // never launched: fp8_gemv_mma refuses devices whose code has no E4M3 mma
#else
  extern __shared__ __align__(16) uint8_t smem[];
  const int KP = XQ ? 0 : mma_x_stride(K);
  uint8_t* s_q = smem;                                           // [M][KP] E4M3 codes of x (XQ: none)
  float* s_red = reinterpret_cast<float*>(smem + size_t(M) * KP);  // [WARPS][32][4] the warps' D fragments
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * kMmaRows;
  // Rows past N read row N - 1 (their sums are never stored).
  const uint8_t* ra = w + size_t(min(n0 + g, N - 1)) * K + 16 * t;
  const uint8_t* rb = w + size_t(min(n0 + g + 8, N - 1)) * K + 16 * t;
  const int slices = (K + 63) >> 6;
  const int ns = slices > warp ? (slices - warp + WARPS - 1) / WARPS : 0;  // this warp's slices
  uint4 a[UN], b[UN], xr[XQ ? UN : 1];
  // XQ: lane (g, t)'s 16 bytes of x's row g (< M) at the slice's bytes; the codes are never past a row's K.
  const uint8_t* xg = XQ ? x_q + size_t(min(g, M - 1)) * K + 16 * t : nullptr;
  auto load_x = [&](int u, int i) {
    const int off = (warp + i * WARPS) * 64;
    xr[u] = g < M && i < ns && off + 16 * t < K ? *reinterpret_cast<const uint4*>(xg + off) : make_uint4(0, 0, 0, 0);
  };
  auto load = [&](int u, int i) {  // slice i of this warp into ring slot u (zeros past K)
    const int off = (warp + i * WARPS) * 64;
    const bool ok = i < ns && off + 16 * t < K;
    a[u] = ok ? ld_stream(ra + off) : make_uint4(0, 0, 0, 0);
    b[u] = ok ? ld_stream(rb + off) : make_uint4(0, 0, 0, 0);
  };
#pragma unroll
  for (int u = 0; u < UN; u++) load(u, u);
  pdl_wait();

  float sx[M];
  if constexpr (XQ) {
#pragma unroll
    for (int u = 0; u < UN; u++) load_x(u, u);
#pragma unroll
    for (int m = 0; m < M; m++) sx[m] = s_x[m];
  } else {
    // x (or the normalised row) -> per-token scale and E4M3 codes in shared memory.
    float inv[M];
    vec_inv<T, M, WARPS, PRO, true>(x, K, eps, inv);
    float am[M] = {};
    for_vec_chunks<T, M, WARPS * 32, PRO>(x, K, nw, inv,
                                          [&](int m, int, const uint4& v) { am[m] = amax8<T>(v, am[m]); });
    block_reduce<WARPS, M, false>(am, true);
    float rx[M];
#pragma unroll
    for (int m = 0; m < M; m++) sx[m] = e4m3_row_scale(am[m]), rx[m] = __frcp_rn(sx[m]);
    for_vec_chunks<T, M, WARPS * 32, PRO>(x, K, nw, inv, [&](int m, int c, const uint4& v) {
      float f[8];
      unpack8<T>(v, f);
      *reinterpret_cast<uint2*>(s_q + size_t(m) * KP + size_t(c) * 8) = f8_to_e4m3x8_fast(f, sx[m], rx[m]);
    });
    __syncthreads();
  }

  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  const uint8_t* xq = s_q + size_t(min(g, M - 1)) * KP + 16 * t;
  for (int i0 = 0; i0 < ns; i0 += UN) {
#pragma unroll
    for (int u = 0; u < UN; u++) {
      const int i = i0 + u;
      if (i >= ns) break;  // (warp-uniform)
      const int off = (warp + i * WARPS) * 64;
      uint4 xv;
      if constexpr (XQ) xv = xr[u];
      else xv = g < M && off + 16 * t < K ? *reinterpret_cast<const uint4*>(xq + off) : make_uint4(0, 0, 0, 0);
      float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
      mma_e4m3_16832(d0, {a[u].x, b[u].x, a[u].y, b[u].y}, xv.x, xv.y);
      mma_e4m3_16832(d1, {a[u].z, b[u].z, a[u].w, b[u].w}, xv.z, xv.w);
      load(u, i + UN);  // the ring slot's next slice goes out right away
      if constexpr (XQ) load_x(u, i + UN);
#pragma unroll
      for (int j = 0; j < 4; j++) acc[j] += d0[j] + d1[j];
    }
  }

  // The warps' partial sums meet in shared memory; thread r < 16 finishes row n0 + r for every token.
  *reinterpret_cast<float4*>(s_red + (warp * 32 + lane) * 4) = make_float4(acc[0], acc[1], acc[2], acc[3]);
  __syncthreads();
  const int r = threadIdx.x, n = n0 + r;
  if (r < kMmaRows && n < N) {
    const float s_w = __ldg(sw + n);
#pragma unroll
    for (int m = 0; m < M; m++) {
      const int src = ((r & 7) * 4 + (m >> 1)) * 4 + (r >> 3) * 2 + (m & 1);  // lane (r % 8, m / 2)'s register
      float v = 0.f;
#pragma unroll
      for (int q = 0; q < WARPS; q++) v += s_red[q * 128 + src];
      store_out<T>(__fmul_rn(v, __fmul_rn(sx[m], s_w)), bias, res, out, m, n, N, act);
    }
  }
#endif
}

// The call's operands (x or x_q / s_x as the kernel's XQ says).
struct MmaArgs {
  const void *x, *w;
  const uint8_t* x_q;
  const float *s_x, *sw;
  const void *bias, *res;
  void* out;
  int N, K;
  Act act;
  const void* nw;
  float eps;
  bool pdl;
};

template <typename T, int M, int WARPS, int UN, int PRO, bool XQ>
cudaError_t launch_mma_m(const MmaArgs& a, cudaStream_t s) {
  static PersistentCache pc;  // (only its shared-memory opt-in)
  auto kern = fp8_gemv_mma_kernel<T, M, WARPS, UN, PRO, XQ>;
  const size_t smem = (XQ ? 0 : size_t(M) * mma_x_stride(a.K)) + size_t(WARPS) * 32 * 4 * sizeof(float);
  if (cudaError_t e = opt_in_smem(pc, kern, smem); e != cudaSuccess) return e;
  return launch_pdl(kern, unsigned((a.N + kMmaRows - 1) / kMmaRows), WARPS * 32, smem, a.pdl, s,
                    static_cast<const T*>(a.x), a.x_q, a.s_x, static_cast<const uint8_t*>(a.w), a.sw,
                    static_cast<const T*>(a.bias), static_cast<const T*>(a.res), static_cast<T*>(a.out), a.N, a.K,
                    int(a.act), static_cast<const T*>(a.nw), a.eps);
}

template <typename T, int WARPS, int UN, int PRO, bool XQ>
cudaError_t launch_mma_v(int M, const MmaArgs& a, cudaStream_t s) {
  switch (M) {
    case 1: return launch_mma_m<T, 1, WARPS, UN, PRO, XQ>(a, s);
    case 2: return launch_mma_m<T, 2, WARPS, UN, PRO, XQ>(a, s);
    case 3: return launch_mma_m<T, 3, WARPS, UN, PRO, XQ>(a, s);
    case 4: return launch_mma_m<T, 4, WARPS, UN, PRO, XQ>(a, s);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T, int PRO, bool XQ>
cudaError_t launch_mma_variant(int variant, int M, const MmaArgs& a, cudaStream_t s) {
  // (warps splitting K, slices in flight per warp)
  switch (variant) {
    case 8: return launch_mma_v<T, 8, 4, PRO, XQ>(M, a, s);
    case 9: return launch_mma_v<T, 4, 8, PRO, XQ>(M, a, s);
    case 10: return launch_mma_v<T, 16, 2, PRO, XQ>(M, a, s);
    default: return cudaErrorInvalidValue;
  }
}

// Whether the device runs this file's E4M3 mma code (an sm_80 build on an sm_89 GPU has none).
bool mma_code() {
  static int cache[64] = {0};
  return per_device(cache, [](int) {
    cudaFuncAttributes fa;
    const bool ok = cudaFuncGetAttributes(&fa, fp8_gemv_mma_kernel<half, 1, 8, 4, 0, false>) == cudaSuccess &&
                    fa.binaryVersion >= 89;
    cudaGetLastError();
    return ok;
  });
}

template <bool XQ>
cudaError_t dispatch(int variant, int M, DType dt, const MmaArgs& a, cudaStream_t s) {
  if (!mma_code()) return cudaErrorNotSupported;
  const bool pro = !XQ && a.nw != nullptr;
  if (dt == DType::F16)
    return pro ? launch_mma_variant<half, 1, XQ>(variant, M, a, s) : launch_mma_variant<half, 0, XQ>(variant, M, a, s);
  if (dt == DType::BF16)
    return pro ? launch_mma_variant<bf16, 1, XQ>(variant, M, a, s) : launch_mma_variant<bf16, 0, XQ>(variant, M, a, s);
  return cudaErrorInvalidValue;
}

}  // namespace
}  // namespace kd

cudaError_t fp8_gemv_mma(int variant, const void* x, const void* w, const float* sw, const void* bias,
                         const void* res, void* out, int M, int N, int K, Act act, const void* norm_w, float eps,
                         DType dt, bool pdl, cudaStream_t s) {
  const kd::MmaArgs a{x, w, nullptr, nullptr, sw, bias, res, out, N, K, act, norm_w, eps, pdl};
  return kd::dispatch<false>(variant, M, dt, a, s);
}

bool fp8_gemv_rows_supported() { return kd::mma_code(); }

cudaError_t fp8_gemv_rows(int variant, const uint8_t* x_q, const float* s_x, const void* w, const float* sw,
                          const void* bias, const void* res, void* out, int M, int N, int K, Act act, DType dt,
                          bool pdl, cudaStream_t s) {
  if (M < 1 || M > kQuantGemvMaxM || K <= 0 || K % 16 || (reinterpret_cast<uintptr_t>(x_q) & 15) ||
      (reinterpret_cast<uintptr_t>(w) & 15))
    return cudaErrorInvalidValue;
  if (N <= 0) return cudaSuccess;
  const kd::MmaArgs a{nullptr, w, x_q, s_x, sw, bias, res, out, N, K, act, nullptr, 0.f, pdl};
  return kd::dispatch<true>(variant, M, dt, a, s);
}

}  // namespace tsllm
