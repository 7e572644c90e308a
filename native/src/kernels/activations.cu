// Activation and copy kernels: gated_act, activation, slice_cols, gather_rows, convert (binary / unary math: elementwise.cu).
// All of them are bandwidth-bound: 16-byte vectors where the shapes and pointers allow, element loops otherwise.
#include <math.h>

#include "fp8.cuh"

namespace tsllm {
namespace {

// common.cuh's act_value with the activation fixed at compile time (its switch folds away).
template <Act A>
__device__ __forceinline__ float act_f(float x) {
  return kd::act_value(x, A);
}

inline int ew_blocks(uint64_t work) { return kd::grid_for(work, 256, kd::num_sms() * 16); }

// ---- gated_act ----
template <typename T, Act A, bool VEC>
__global__ void gated_act_kernel(const T* __restrict__ x, T* __restrict__ out, int rows, int inter, bool wait_first) {
  kd::pdl_start(wait_first);  // lets a PDL-launched successor (gemv) start its weight loads early
  constexpr int N = VEC ? kd::Vec<T>::N : 1;
  const int per_row = inter / N;
  const uint64_t total = (uint64_t)rows * per_row;
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t r = i / per_row;
    const int c = (int)(i - r * per_row) * N;
    const T* xr = x + r * 2 * inter;
    if (VEC) {
      kd::Vec<T> a = kd::ld_vec(xr + c), g = kd::ld_vec(xr + inter + c), o;
#pragma unroll
      for (int j = 0; j < N; ++j) o.v[j] = kd::from_f<T>(act_f<A>(kd::to_f(a.v[j])) * kd::to_f(g.v[j]));
      kd::st_vec(out + r * inter + c, o);
    } else {
      out[r * inter + c] = kd::from_f<T>(act_f<A>(kd::to_f(xr[c])) * kd::to_f(xr[inter + c]));
    }
  }
}

template <typename T, Act A>
cudaError_t launch_gated_t(const void* x, void* out, int rows, int inter, int pdl, cudaStream_t s) {
  constexpr int N = kd::Vec<T>::N;
  const bool vec = inter % N == 0 && kd::aligned16(x) && kd::aligned16(out);
  const uint64_t work = (uint64_t)rows * (vec ? inter / N : inter);
  const cudaError_t e =
      vec ? kd::launch_pdl(gated_act_kernel<T, A, true>, dim3(ew_blocks(work)), 256, 0, pdl != 0, s,
                           static_cast<const T*>(x), static_cast<T*>(out), rows, inter, pdl == 1)
          : kd::launch_pdl(gated_act_kernel<T, A, false>, dim3(ew_blocks(work)), 256, 0, pdl != 0, s,
                           static_cast<const T*>(x), static_cast<T*>(out), rows, inter, pdl == 1);
  return e != cudaSuccess ? e : cudaGetLastError();
}

// gated_act with its output as FP8 rows (kernels.h Fp8Rows: the down projection's activation quantisation fused in):
// one block per row, the rounded row in registers (VPT 16-byte vectors per thread) between its amax and the
// quantisation; the values, the amax and the codes are gated_act_kernel's and quantize_rows_fp8's.
template <typename T, Act A, int VPT>
__global__ void __launch_bounds__(512)
    gated_act_fp8_kernel(const T* __restrict__ x, uint8_t* __restrict__ q, float* __restrict__ qs, int inter) {
  kd::pdl_trigger();
  constexpr int N = kd::Vec<T>::N;
  static_assert(N == 8, "FP8 rows: 16-bit activations");
  const size_t row = blockIdx.x;
  const int nvec = inter / N;
  const T* xr = x + row * 2 * inter;
  float v[VPT][N];
  float am = 0.f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int vi = threadIdx.x + k * blockDim.x;
    if (vi < nvec) {
      kd::Vec<T> a = kd::ld_vec(xr + vi * N), g = kd::ld_vec(xr + inter + vi * N);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        v[k][j] = kd::to_f(kd::from_f<T>(act_f<A>(kd::to_f(a.v[j])) * kd::to_f(g.v[j])));
        am = fmaxf(am, fabsf(v[k][j]));
      }
    }
  }
  kd::store_fp8_row<VPT>(v, am, nvec, q + row * inter, qs + row);
}

// Variant 1 of the above: the rounded row staged in shared memory as T (28 KB at Llama-3-8B's 14,336) instead of
// registers, 256 threads a row. Why: the register kernel holds a row's 57 KB of loads in one block and then computes,
// reduces and stores with nothing in flight; its 448-thread blocks fit two an SM (H200, 8B bs 1024: 37.6 µs a call
// against 24.6 for gated_act alone). Staged, up to eight rows share an SM (shared memory and 2,048 threads allow
// it), so one row's loads overlap another's quantisation. Same values, amax and codes.
template <typename T, Act A>
__global__ void __launch_bounds__(256)
    gated_act_fp8_staged_kernel(const T* __restrict__ x, uint8_t* __restrict__ q, float* __restrict__ qs, int inter) {
  kd::pdl_trigger();
  constexpr int N = kd::Vec<T>::N;
  static_assert(N == 8, "FP8 rows: 16-bit activations");
  extern __shared__ __align__(16) uint8_t smem[];
  T* srow = reinterpret_cast<T*>(smem);
  const size_t row = blockIdx.x;
  const int nvec = inter / N;
  const T* xr = x + row * 2 * inter;
  float am = 0.f;
#pragma unroll 4
  for (int vi = threadIdx.x; vi < nvec; vi += blockDim.x) {
    const kd::Vec<T> a = kd::ld_vec(xr + vi * N), g = kd::ld_vec(xr + inter + vi * N);
    kd::Vec<T> o;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      o.v[j] = kd::from_f<T>(act_f<A>(kd::to_f(a.v[j])) * kd::to_f(g.v[j]));
      am = fmaxf(am, fabsf(kd::to_f(o.v[j])));
    }
    kd::st_vec(srow + vi * N, o);
  }
  float rs;  // (the block max's first barrier also orders the row's shared-memory writes before the reads below)
  const float sc = kd::fp8_row_scale(am, qs + row, &rs);
  uint8_t* qr = q + row * inter;
  for (int vi = threadIdx.x; vi < nvec; vi += blockDim.x) {
    float f[N];
    kd::unpack8<T>(*reinterpret_cast<const uint4*>(srow + vi * N), f);
    *reinterpret_cast<uint2*>(qr + vi * N) = kd::f8_to_e4m3x8_fast(f, sc, rs);
  }
}

template <typename T, Act A>
cudaError_t launch_gated_fp8_t(const void* x, const Fp8Rows& fp8, int rows, int inter, cudaStream_t s) {
  constexpr int N = kd::Vec<T>::N;
  if (!kd::aligned16(x) || !kd::aligned16(fp8.q) || (reinterpret_cast<uintptr_t>(fp8.scales) & 3) != 0)
    return cudaErrorMisalignedAddress;
  const int nvec = inter / N;  // <= kFp8RowsMaxCols / 8 = 8 * 512
  const T* xp = static_cast<const T*>(x);
  if ((fp8.variant < 0 ? kGatedFp8Variant : fp8.variant) == 1) {
    const size_t smem = size_t(inter) * sizeof(T);
    if (smem > 48 * 1024) {  // (kFp8RowsMaxCols: 64 KB at most)
      static std::atomic<unsigned long long> configured{0};  // per instantiation, one bit per device
      const cudaError_t e = kd::smem_limit_once(gated_act_fp8_staged_kernel<T, A>, 64 * 1024, configured);
      if (e != cudaSuccess) return e;
    }
    gated_act_fp8_staged_kernel<T, A><<<rows, 256, smem, s>>>(xp, fp8.q, fp8.scales, inter);
    return cudaGetLastError();
  }
  const int cap = fp8.max_threads > 0 ? fp8.max_threads : 512;
  const int vpt = kd::row_vpt(nvec, cap), threads = kd::row_threads(nvec, vpt);
  switch (vpt) {
    case 1: gated_act_fp8_kernel<T, A, 1><<<rows, threads, 0, s>>>(xp, fp8.q, fp8.scales, inter); break;
    case 2: gated_act_fp8_kernel<T, A, 2><<<rows, threads, 0, s>>>(xp, fp8.q, fp8.scales, inter); break;
    case 4: gated_act_fp8_kernel<T, A, 4><<<rows, threads, 0, s>>>(xp, fp8.q, fp8.scales, inter); break;
    default: gated_act_fp8_kernel<T, A, 8><<<rows, threads, 0, s>>>(xp, fp8.q, fp8.scales, inter); break;
  }
  return cudaGetLastError();
}

// ---- activation (n elements, out may alias x) ----
template <typename T, Act A>
__global__ void activation_kernel(const T* x, T* out, uint64_t n) {
  constexpr int N = kd::Vec<T>::N;
  const uint64_t nv = n / N, stride = (uint64_t)gridDim.x * blockDim.x;
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  for (uint64_t i = tid; i < nv; i += stride) {
    kd::Vec<T> a = kd::ld_vec(x + i * N);
#pragma unroll
    for (int j = 0; j < N; ++j) a.v[j] = kd::from_f<T>(act_f<A>(kd::to_f(a.v[j])));
    kd::st_vec(out + i * N, a);
  }
  const uint64_t t = nv * N + tid;
  if (t < n) out[t] = kd::from_f<T>(act_f<A>(kd::to_f(x[t])));
}

template <typename T, Act A>
__global__ void activation_scalar_kernel(const T* x, T* out, uint64_t n) {
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
    out[i] = kd::from_f<T>(act_f<A>(kd::to_f(x[i])));
}

template <typename T, Act A>
cudaError_t launch_act_t(const void* x, void* out, uint64_t n, cudaStream_t s) {
  constexpr int N = kd::Vec<T>::N;
  if (kd::aligned16(x) && kd::aligned16(out))
    activation_kernel<T, A><<<ew_blocks(n / N + 1), 256, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out), n);
  else
    activation_scalar_kernel<T, A><<<ew_blocks(n), 256, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out), n);
  return cudaGetLastError();
}

// ---- row copies: slice_cols, gather_rows (one block per output row) ----
template <typename T, bool VEC>
__global__ void slice_cols_kernel(const T* __restrict__ x, T* __restrict__ out, int in_cols, int col_start,
                                  int out_cols) {
  const size_t r = blockIdx.x;
  const T* src = x + r * in_cols + col_start;
  T* dst = out + r * out_cols;
  if (VEC) {
    constexpr int N = kd::Vec<T>::N;
    for (int i = threadIdx.x; i < out_cols / N; i += blockDim.x)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else {
    for (int i = threadIdx.x; i < out_cols; i += blockDim.x) dst[i] = src[i];
  }
}

template <typename T, bool VEC>
__global__ void gather_rows_kernel(const T* __restrict__ x, const int32_t* __restrict__ idx, T* __restrict__ out,
                                   int hidden) {
  const size_t r = blockIdx.x;
  const T* src = x + (size_t)idx[r] * hidden;
  T* dst = out + r * hidden;
  if (VEC) {
    constexpr int N = kd::Vec<T>::N;
    for (int i = threadIdx.x; i < hidden / N; i += blockDim.x)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
  }
}

inline int row_threads(int work) {
  int t = (work + 31) / 32 * 32;
  return t < 32 ? 32 : (t > 256 ? 256 : t);
}

template <typename T>
cudaError_t launch_slice_t(const void* x, void* out, int rows, int in_cols, int col_start, int out_cols,
                           cudaStream_t s) {
  constexpr int N = kd::Vec<T>::N;
  const bool vec = in_cols % N == 0 && col_start % N == 0 && out_cols % N == 0 && kd::aligned16(x) && kd::aligned16(out);
  if (vec)
    slice_cols_kernel<T, true><<<rows, row_threads(out_cols / N), 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out),
                                                                          in_cols, col_start, out_cols);
  else
    slice_cols_kernel<T, false><<<rows, row_threads(out_cols), 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out),
                                                                       in_cols, col_start, out_cols);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gather_t(const void* x, const int32_t* idx, void* out, int num_rows, int hidden, cudaStream_t s) {
  constexpr int N = kd::Vec<T>::N;
  const bool vec = hidden % N == 0 && kd::aligned16(x) && kd::aligned16(out);
  if (vec)
    gather_rows_kernel<T, true><<<num_rows, row_threads(hidden / N), 0, s>>>(static_cast<const T*>(x), idx,
                                                                             static_cast<T*>(out), hidden);
  else
    gather_rows_kernel<T, false><<<num_rows, row_threads(hidden), 0, s>>>(static_cast<const T*>(x), idx,
                                                                          static_cast<T*>(out), hidden);
  return cudaGetLastError();
}

// ---- convert ----
template <typename Ti, typename To>
__global__ void convert_kernel(const Ti* __restrict__ x, To* __restrict__ out, uint64_t n, bool vec4) {
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  uint64_t done = 0;
  if (vec4) {
    struct alignas(4 * sizeof(Ti)) Pi { Ti v[4]; };
    struct alignas(4 * sizeof(To)) Po { To v[4]; };
    const uint64_t nv = n / 4;
    for (uint64_t i = tid; i < nv; i += stride) {
      Pi a = reinterpret_cast<const Pi*>(x)[i];
      Po b;
#pragma unroll
      for (int j = 0; j < 4; ++j) b.v[j] = kd::from_f<To>(kd::to_f(a.v[j]));
      reinterpret_cast<Po*>(out)[i] = b;
    }
    done = nv * 4;
  }
  for (uint64_t i = done + tid; i < n; i += stride) out[i] = kd::from_f<To>(kd::to_f(x[i]));
}

template <typename Ti, typename To>
cudaError_t launch_convert_t(const void* x, void* out, uint64_t n, cudaStream_t s) {
  const bool vec4 = (reinterpret_cast<uintptr_t>(x) % (4 * sizeof(Ti))) == 0 &&
                    (reinterpret_cast<uintptr_t>(out) % (4 * sizeof(To))) == 0;
  convert_kernel<Ti, To><<<ew_blocks(vec4 ? n / 4 + 1 : n), 256, 0, s>>>(static_cast<const Ti*>(x), static_cast<To*>(out),
                                                                         n, vec4);
  return cudaGetLastError();
}

}  // namespace

cudaError_t gated_act(const void* x, void* out, int rows, int inter, Act act, DType dt, cudaStream_t s,
                      const Fp8Rows* fp8, int pdl) {
  if (rows <= 0 || inter <= 0) return cudaGetLastError();
  if (fp8) {
    if (!fp8_rows_supported(inter, dt)) return cudaErrorNotSupported;
    TSLLM_DISPATCH_HALF(dt, T, switch (act) {
      case Act::None: return (launch_gated_fp8_t<T, Act::None>(x, *fp8, rows, inter, s));
      case Act::Silu: return (launch_gated_fp8_t<T, Act::Silu>(x, *fp8, rows, inter, s));
      case Act::GeluTanh: return (launch_gated_fp8_t<T, Act::GeluTanh>(x, *fp8, rows, inter, s));
      case Act::GeluErf: return (launch_gated_fp8_t<T, Act::GeluErf>(x, *fp8, rows, inter, s));
    });
    return cudaErrorInvalidValue;
  }
  TSLLM_DISPATCH_ACT(dt, T, switch (act) {
    case Act::None: return (launch_gated_t<T, Act::None>(x, out, rows, inter, pdl, s));
    case Act::Silu: return (launch_gated_t<T, Act::Silu>(x, out, rows, inter, pdl, s));
    case Act::GeluTanh: return (launch_gated_t<T, Act::GeluTanh>(x, out, rows, inter, pdl, s));
    case Act::GeluErf: return (launch_gated_t<T, Act::GeluErf>(x, out, rows, inter, pdl, s));
  });
  return cudaErrorInvalidValue;
}

cudaError_t activation(const void* x, void* out, uint64_t n, Act act, DType dt, cudaStream_t s) {
  if (n == 0) return cudaGetLastError();
  TSLLM_DISPATCH_ACT(dt, T, switch (act) {
    case Act::None: return (launch_act_t<T, Act::None>(x, out, n, s));
    case Act::Silu: return (launch_act_t<T, Act::Silu>(x, out, n, s));
    case Act::GeluTanh: return (launch_act_t<T, Act::GeluTanh>(x, out, n, s));
    case Act::GeluErf: return (launch_act_t<T, Act::GeluErf>(x, out, n, s));
  });
  return cudaErrorInvalidValue;
}

cudaError_t slice_cols(const void* x, void* out, int rows, int in_cols, int col_start, int out_cols, DType dt,
                       cudaStream_t s) {
  if (rows <= 0 || out_cols <= 0) return cudaGetLastError();
  TSLLM_DISPATCH_ACT(dt, T, return launch_slice_t<T>(x, out, rows, in_cols, col_start, out_cols, s));
  return cudaErrorInvalidValue;
}

cudaError_t gather_rows(const void* x, const int32_t* idx, void* out, int num_rows, int hidden, DType dt,
                        cudaStream_t s) {
  if (num_rows <= 0 || hidden <= 0) return cudaGetLastError();
  TSLLM_DISPATCH_ACT(dt, T, return launch_gather_t<T>(x, idx, out, num_rows, hidden, s));
  return cudaErrorInvalidValue;
}

cudaError_t convert(const void* x, DType from, void* out, DType to, uint64_t n, cudaStream_t s) {
  if (n == 0) return cudaGetLastError();
  TSLLM_DISPATCH_ACT(from, Ti, TSLLM_DISPATCH_ACT(to, To, return (launch_convert_t<Ti, To>(x, out, n, s))));
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
