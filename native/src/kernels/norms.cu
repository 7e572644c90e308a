// rms_norm / layer_norm with optional fused residual add. One block per row; the row stays in registers
// (16-byte vectors) between the reduction and the normalisation, so x (and residual) are read once.
// With a residual, sum = x + residual is rounded to the activation dtype, written to sum_out, and the
// rounded sum is what gets normalised (the same value the next layer reads back).
// EW (a compile-time variant, so norms without folded elementwise ops are the kernels they were): the pre chain
// is applied to x as it is read (before the residual add), the post chain to the result before its rounding.
// Q (kernels.h Fp8Rows, the FP8 GEMM's activation quantisation fused in): the rounded result stays in registers,
// the block takes its amax and writes E4M3 codes and the row's scale instead of y — quantize_rows_fp8's bytes
// without its pass over memory and its launch.
#include <type_traits>

#include "fp8.cuh"

namespace tsllm {
namespace {

// VPT: 16-byte vectors per thread. RES: fused residual add. LN: layer norm (else RMS norm). Q: FP8 rows out.
template <typename T, int VPT, bool RES, bool LN, bool EW, bool Q>
__global__ void __launch_bounds__(512) norm_vec_kernel(const T* x, const T* res, const T* __restrict__ w,
                                                         const T* __restrict__ b, T* y, T* sum_out, int hidden,
                                                         float eps, float w_off, const EwChain pre,
                                                         const EwChain post, uint8_t* q, float* qs, bool wait_first,
                                                         bool w_early) {
  constexpr int N = kd::Vec<T>::N;
  const size_t row = blockIdx.x;
  const int nvec = hidden / N;
  // The norm's weight (and bias) are model weights, never written by a predecessor: under PDL (w_early) they are
  // loaded before the wait, so their latency passes while the predecessor runs instead of after the block reduction
  // (H200 bs 1, TPOT with norm PDL mode 1: fp16 3.623 / 3.614 ms against 3.639 / 3.625, int4-wo 1.877 / 1.840
  // against 1.910 / 1.881; session 31 run 3). Only up to 2 vectors a thread (hidden <= 8192 at 512 threads): more
  // would spill (ptxas: 128 registers and up to 8 KB of stack at VPT 8), so wider rows load them at the end.
  const bool pre_w = VPT <= 2 && w_early;
  kd::Vec<T> wv[VPT], bv[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int vi = threadIdx.x + k * blockDim.x;
    if (pre_w && vi < nvec) {
      wv[k] = kd::ld_vec(w + vi * N);
      if (LN && b) bv[k] = kd::ld_vec(b + vi * N);
    }
  }
  kd::pdl_start(wait_first);  // lets a PDL-launched successor (gemv) start its weight loads early
  const T* xr = x + row * hidden;
  float v[VPT][N];
  float s1 = 0.f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int vi = threadIdx.x + k * blockDim.x;
    if (vi < nvec) {
      kd::Vec<T> a = kd::ld_vec(xr + vi * N);
      float f[N];
#pragma unroll
      for (int j = 0; j < N; ++j) f[j] = EW ? kd::apply_chain_call(kd::to_f(a.v[j]), pre) : kd::to_f(a.v[j]);
      if (RES) {
        kd::Vec<T> r = kd::ld_vec(res + row * hidden + vi * N);
#pragma unroll
        for (int j = 0; j < N; ++j) {
          a.v[j] = kd::from_f<T>(f[j] + kd::to_f(r.v[j]));
          f[j] = kd::to_f(a.v[j]);
        }
        if (sum_out) kd::st_vec(sum_out + row * hidden + vi * N, a);
      }
#pragma unroll
      for (int j = 0; j < N; ++j) {
        v[k][j] = f[j];
        s1 += LN ? v[k][j] : v[k][j] * v[k][j];
      }
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) v[k][j] = 0.f;
    }
  }
  s1 = kd::block_sum(s1);
  float mean = 0.f, rstd;
  if (LN) {
    mean = s1 / hidden;
    float s2 = 0.f;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      if (threadIdx.x + k * blockDim.x < nvec) {
#pragma unroll
        for (int j = 0; j < N; ++j) {
          const float d = v[k][j] - mean;
          s2 += d * d;
        }
      }
    }
    s2 = kd::block_sum(s2);
    rstd = rsqrtf(s2 / hidden + eps);
  } else {
    rstd = rsqrtf(s1 / hidden + eps);
  }
  float am = 0.f;  // Q: the amax of the rounded row
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int vi = threadIdx.x + k * blockDim.x;
    if (vi < nvec) {
      if (!pre_w) {
        wv[k] = kd::ld_vec(w + vi * N);
        if (LN && b) bv[k] = kd::ld_vec(b + vi * N);
      }
      kd::Vec<T> o;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        float r = (v[k][j] - mean) * rstd * (kd::to_f(wv[k].v[j]) + w_off);
        if (LN && b) r += kd::to_f(bv[k].v[j]);
        if (EW) r = kd::apply_chain_call(r, post);
        o.v[j] = kd::from_f<T>(r);
        if (Q) {
          v[k][j] = kd::to_f(o.v[j]);
          am = fmaxf(am, fabsf(v[k][j]));
        }
      }
      if (!Q) kd::st_vec(y + row * hidden + vi * N, o);
    }
  }
  if constexpr (Q) {
    static_assert(N == 8, "FP8 rows: 16-bit activations");
    kd::store_fp8_row<VPT>(v, am, nvec, q + row * hidden, qs + row);
  }
}

// Any hidden size / alignment: element loops, re-reading the row (from L1/L2) in later passes.
template <typename T, bool RES, bool LN, bool EW>
__global__ void __launch_bounds__(256) norm_scalar_kernel(const T* x, const T* res, const T* __restrict__ w,
                                                           const T* __restrict__ b, T* y, T* sum_out, int hidden,
                                                           float eps, float w_off, const EwChain pre,
                                                           const EwChain post, bool wait_first) {
  kd::pdl_start(wait_first);  // lets a PDL-launched successor (gemv) start its weight loads early
  const size_t row = blockIdx.x;
  const T* xr = x + row * hidden;
  // Source of the values to normalise in passes 2 and 3: the rounded sum, or x (through pre, again).
  const T* src = RES ? sum_out + row * hidden : xr;
  auto val = [&](int i) { return EW && !RES ? kd::apply_chain_call(kd::to_f(src[i]), pre) : kd::to_f(src[i]); };
  float s1 = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float a = EW ? kd::apply_chain_call(kd::to_f(xr[i]), pre) : kd::to_f(xr[i]);
    if (RES) {
      const T sv = kd::from_f<T>(a + kd::to_f(res[row * hidden + i]));
      sum_out[row * hidden + i] = sv;  // same thread re-reads this element below
      a = kd::to_f(sv);
    }
    s1 += LN ? a : a * a;
  }
  s1 = kd::block_sum(s1);
  float mean = 0.f, rstd;
  if (LN) {
    mean = s1 / hidden;
    float s2 = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
      const float d = val(i) - mean;
      s2 += d * d;
    }
    s2 = kd::block_sum(s2);
    rstd = rsqrtf(s2 / hidden + eps);
  } else {
    rstd = rsqrtf(s1 / hidden + eps);
  }
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float r = (val(i) - mean) * rstd * (kd::to_f(w[i]) + w_off);
    if (LN && b) r += kd::to_f(b[i]);
    if (EW) r = kd::apply_chain_call(r, post);
    y[row * hidden + i] = kd::from_f<T>(r);
  }
}

template <typename T, bool RES, bool LN, bool EW, bool Q>
cudaError_t launch_norm_t(const void* x_, const void* res_, const void* w_, const void* b_, void* y_, void* sum_,
                          int rows, int hidden, float eps, float w_off, const EwChain& pre, const EwChain& post,
                          const Fp8Rows& fp8, int pdl, cudaStream_t s) {
  const T* x = static_cast<const T*>(x_);
  const T* res = static_cast<const T*>(res_);
  const T* w = static_cast<const T*>(w_);
  const T* b = static_cast<const T*>(b_);
  T* y = static_cast<T*>(y_);
  T* sum = static_cast<T*>(sum_);
  constexpr int N = kd::Vec<T>::N;
  const bool vec = hidden % N == 0 && kd::aligned16(x) && kd::aligned16(w) && (Q || kd::aligned16(y)) &&
                   (!RES || (kd::aligned16(res) && (!sum || kd::aligned16(sum)))) && (!b || kd::aligned16(b)) &&
                   (!Q || (kd::aligned16(fp8.q) && (reinterpret_cast<uintptr_t>(fp8.scales) & 3) == 0));
  const int nvec = hidden / N;
  if (Q && (!vec || nvec > 8 * 512)) return vec ? cudaErrorNotSupported : cudaErrorMisalignedAddress;
  if (vec && nvec <= 8 * 512) {
    const int cap = Q && fp8.max_threads > 0 ? fp8.max_threads : 512;
    const int vpt = kd::row_vpt(nvec, cap), threads = kd::row_threads(nvec, vpt);
    // Early weight loads only under PDL: after an ordinary launch there is no predecessor to overlap, and
    // loading them first measured 0.3-1 % slower there (H200 bs 1, session 31 run 3).
    const bool w_early = pdl != 0;
    cudaError_t e = cudaSuccess;
#define TSLLM_NORM_CASE(V) \
  case V:                                                                                                        \
    e = kd::launch_pdl(norm_vec_kernel<T, V, RES, LN, EW, Q>, dim3(rows), threads, 0, pdl != 0, s, x, res, w, b, y, \
                       sum, hidden, eps, w_off, pre, post, fp8.q, fp8.scales, pdl == 1, w_early);                 \
    break;
    switch (vpt) {
      TSLLM_NORM_CASE(1)
      TSLLM_NORM_CASE(2)
      TSLLM_NORM_CASE(4)
      TSLLM_NORM_CASE(8)
    }
#undef TSLLM_NORM_CASE
    if (e != cudaSuccess) return e;
  } else if constexpr (!Q) {
    const cudaError_t e = kd::launch_pdl(norm_scalar_kernel<T, RES, LN, EW>, dim3(rows), 256, 0, pdl != 0, s, x, res,
                                         w, b, y, sum, hidden, eps, w_off, pre, post, pdl == 1);
    if (e != cudaSuccess) return e;
  }
  return cudaGetLastError();
}

template <bool LN, bool EW, bool RES>
cudaError_t launch_norm_ew(const void* x, const void* res, const void* w, const void* b, void* y, void* sum, int rows,
                           int hidden, float eps, float w_off, const EwChain& pre, const EwChain& post,
                           const Fp8Rows* fp8, int pdl, DType dt, cudaStream_t s) {
  if (fp8) {  // (an ordinary launch: kernels.h's pdl is for the plain kernels)
    if (!fp8_rows_supported(hidden, dt)) return cudaErrorNotSupported;
    TSLLM_DISPATCH_HALF(dt, T,
                        return (launch_norm_t<T, RES, LN, EW, true>(x, res, w, b, y, sum, rows, hidden, eps, w_off, pre,
                                                                    post, *fp8, 0, s)));
  } else {
    TSLLM_DISPATCH_ACT(dt, T,
                       return (launch_norm_t<T, RES, LN, EW, false>(x, res, w, b, y, sum, rows, hidden, eps, w_off, pre,
                                                                    post, Fp8Rows{}, pdl, s)));
  }
  return cudaErrorInvalidValue;
}

template <bool LN>
cudaError_t launch_norm(const void* x, const void* res, const void* w, const void* b, void* y, void* sum, int rows,
                        int hidden, float eps, float w_off, const EwChain* pre, const EwChain* post,
                        const Fp8Rows* fp8, int pdl, DType dt, cudaStream_t s) {
  if (rows <= 0) return cudaGetLastError();
  if (res && !sum) return cudaErrorInvalidValue;
  const EwChain none{};
  const EwChain& p0 = pre ? *pre : none;
  const EwChain& p1 = post ? *post : none;
  auto go = [&](auto ew) {
    constexpr bool EW = decltype(ew)::value;
    return res ? launch_norm_ew<LN, EW, true>(x, res, w, b, y, sum, rows, hidden, eps, w_off, p0, p1, fp8, pdl, dt, s)
               : launch_norm_ew<LN, EW, false>(x, res, w, b, y, sum, rows, hidden, eps, w_off, p0, p1, fp8, pdl, dt, s);
  };
  return p0.n || p1.n ? go(std::true_type{}) : go(std::false_type{});
}

}  // namespace

cudaError_t rms_norm(const void* x, const void* residual, const void* w, float w_offset, void* y, void* sum_out,
                     int rows, int hidden, float eps, DType dt, cudaStream_t s, const EwChain* pre,
                     const EwChain* post, const Fp8Rows* fp8, int pdl) {
  return launch_norm<false>(x, residual, w, nullptr, y, sum_out, rows, hidden, eps, w_offset, pre, post, fp8, pdl, dt,
                            s);
}

cudaError_t layer_norm(const void* x, const void* residual, const void* w, float w_offset, const void* b, void* y,
                       void* sum_out, int rows, int hidden, float eps, DType dt, cudaStream_t s, const EwChain* pre,
                       const EwChain* post, const Fp8Rows* fp8, int pdl) {
  return launch_norm<true>(x, residual, w, b, y, sum_out, rows, hidden, eps, w_offset, pre, post, fp8, pdl, dt, s);
}

}  // namespace tsllm
