// Elementwise math ops: binary (add, sub, mul, div), unary (tanh, sigmoid, exp, scale, softcap) and a linear's
// post-GEMM epilogue (activation, unary chain, residual), fp32 math,
// one rounding to the activation dtype (src/ops/elementwise.ts's conventions). One grid-stride kernel over a
// functor: 16-byte vectors when every pointer is aligned, elements otherwise. out may alias the inputs.
#include <math.h>

#include "common.cuh"

namespace tsllm {
namespace {

inline int ew_blocks(uint64_t work) { return kd::grid_for(work, 256, kd::num_sms() * 16); }

template <BinaryOp OP>
struct Bin {
  __device__ __forceinline__ float operator()(float u, float v) const {
    if (OP == BinaryOp::Add) return u + v;
    if (OP == BinaryOp::Sub) return u - v;
    if (OP == BinaryOp::Mul) return u * v;
    return u / v;
  }
};

template <UnaryOp OP>
struct Un {
  float p;
  __device__ __forceinline__ float operator()(float x, float) const { return kd::unary_value(x, OP, p); }
};

// A linear's epilogue: post(act(x)) + residual (0 without one).
struct Epi {
  Act act;
  EwChain post;
  __device__ __forceinline__ float operator()(float x, float r) const {
    return kd::apply_chain(kd::act_value(x, act), post) + r;
  }
};

// out[i] = f(a[i], b[i]) (b == nullptr: f(a[i], 0)).
template <typename T, typename F, bool VEC>
__global__ void ew_kernel(const T* a, const T* b, T* out, uint64_t n, F f) {
  const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
  const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  uint64_t done = 0;
  if (VEC) {
    constexpr int N = kd::Vec<T>::N;
    const uint64_t nv = n / N;
    for (uint64_t i = tid; i < nv; i += stride) {
      kd::Vec<T> x = kd::ld_vec(a + i * N), y;
      if (b) y = kd::ld_vec(b + i * N);
#pragma unroll
      for (int j = 0; j < N; ++j) x.v[j] = kd::from_f<T>(f(kd::to_f(x.v[j]), b ? kd::to_f(y.v[j]) : 0.f));
      kd::st_vec(out + i * N, x);
    }
    done = nv * N;
  }
  for (uint64_t i = done + tid; i < n; i += stride) out[i] = kd::from_f<T>(f(kd::to_f(a[i]), b ? kd::to_f(b[i]) : 0.f));
}

template <typename T, typename F>
cudaError_t launch_ew(const void* a, const void* b, void* out, uint64_t n, F f, cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  const T* pa = static_cast<const T*>(a);
  const T* pb = static_cast<const T*>(b);
  T* po = static_cast<T*>(out);
  if (kd::aligned16(a) && (!b || kd::aligned16(b)) && kd::aligned16(out))
    ew_kernel<T, F, true><<<ew_blocks(n / kd::Vec<T>::N + 1), 256, 0, s>>>(pa, pb, po, n, f);
  else
    ew_kernel<T, F, false><<<ew_blocks(n), 256, 0, s>>>(pa, pb, po, n, f);
  return cudaGetLastError();
}

}  // namespace

cudaError_t binary(const void* a, const void* b, void* out, uint64_t n, BinaryOp op, DType dt, cudaStream_t s) {
  TSLLM_DISPATCH_ACT(dt, T, switch (op) {
    case BinaryOp::Add: return launch_ew<T>(a, b, out, n, Bin<BinaryOp::Add>{}, s);
    case BinaryOp::Sub: return launch_ew<T>(a, b, out, n, Bin<BinaryOp::Sub>{}, s);
    case BinaryOp::Mul: return launch_ew<T>(a, b, out, n, Bin<BinaryOp::Mul>{}, s);
    case BinaryOp::Div: return launch_ew<T>(a, b, out, n, Bin<BinaryOp::Div>{}, s);
  });
  return cudaErrorInvalidValue;
}

cudaError_t unary(const void* x, void* out, uint64_t n, UnaryOp op, float param, DType dt, cudaStream_t s) {
  if (op == UnaryOp::Softcap && !(param > 0.f)) return cudaErrorInvalidValue;
  TSLLM_DISPATCH_ACT(dt, T, switch (op) {
    case UnaryOp::Tanh: return launch_ew<T>(x, nullptr, out, n, Un<UnaryOp::Tanh>{param}, s);
    case UnaryOp::Sigmoid: return launch_ew<T>(x, nullptr, out, n, Un<UnaryOp::Sigmoid>{param}, s);
    case UnaryOp::Exp: return launch_ew<T>(x, nullptr, out, n, Un<UnaryOp::Exp>{param}, s);
    case UnaryOp::Scale: return launch_ew<T>(x, nullptr, out, n, Un<UnaryOp::Scale>{param}, s);
    case UnaryOp::Softcap: return launch_ew<T>(x, nullptr, out, n, Un<UnaryOp::Softcap>{param}, s);
  });
  return cudaErrorInvalidValue;
}

cudaError_t linear_epilogue(const void* x, const void* residual, void* out, uint64_t n, Act act, const EwChain& post,
                            DType dt, cudaStream_t s) {
  TSLLM_DISPATCH_ACT(dt, T, return launch_ew<T>(x, residual, out, n, Epi{act, post}, s));
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
