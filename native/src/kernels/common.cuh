// Shared device helpers of tsllm's kernels: dtype conversion, 16-byte vectors, warp/block reductions, dispatch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <atomic>

#include "kernels.h"

namespace tsllm {
namespace kd {

using bf16 = __nv_bfloat16;

template <typename T>
__device__ __forceinline__ float to_f(T x);
template <>
__device__ __forceinline__ float to_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_f<half>(half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_f<bf16>(bf16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ half from_f<half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

// Two floats packed into one 32-bit register of two 16-bit values (lower index in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<half>(float a, float b) {
  half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<bf16>(float a, float b) {
  __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

// Two 16-bit values packed in 32 bits -> two floats (lower index in .x).
template <typename T>
__device__ __forceinline__ float2 to_f2(uint32_t u);
template <>
__device__ __forceinline__ float2 to_f2<half>(uint32_t u) { return __half22float2(*reinterpret_cast<half2*>(&u)); }
template <>
__device__ __forceinline__ float2 to_f2<bf16>(uint32_t u) {
  return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
}

// 16-byte load that bypasses L1 (streamed data read once, e.g. GEMV weights).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// 16 bytes of T.
template <typename T>
struct alignas(16) Vec {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

template <typename T>
__device__ __forceinline__ Vec<T> ld_vec(const T* p) {
  Vec<T> r;
  *reinterpret_cast<uint4*>(&r) = *reinterpret_cast<const uint4*>(p);
  return r;
}
template <typename T>
__device__ __forceinline__ void st_vec(T* p, const Vec<T>& v) {
  *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&v);
}

// 8 x 16-bit values <-> 8 floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = to_f<T>(h[i]);
}
template <typename T>
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  uint4 u;
  u.x = pack2<T>(f[0], f[1]);
  u.y = pack2<T>(f[2], f[3]);
  u.z = pack2<T>(f[4], f[5]);
  u.w = pack2<T>(f[6], f[7]);
  return u;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (MAX: max, of values >= 0) over the block (blockDim.x a multiple of 32, at most 1024). Every thread gets it.
// Safe to call several times in a row.
template <bool MAX>
__device__ __forceinline__ float block_reduce_all(float v) {
  __shared__ float sh[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = MAX ? warp_max(v) : warp_sum(v);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  v = lane < nw ? sh[lane] : 0.f;
  v = MAX ? warp_max(v) : warp_sum(v);
  __syncthreads();
  return v;
}
__device__ __forceinline__ float block_sum(float v) { return block_reduce_all<false>(v); }
__device__ __forceinline__ float block_max(float v) { return block_reduce_all<true>(v); }

// One block per row of nvec 16-byte vectors, a row's values held in registers: vectors per thread (1, 2, 4 or 8: as
// few as let at most cap threads hold the row) and threads (those vectors' count, rounded up to a warp).
inline int row_vpt(int nvec, int cap) {
  int vpt = 1;
  while (nvec > vpt * cap && vpt < 8) vpt *= 2;
  return vpt;
}
inline int row_threads(int nvec, int vpt) { return ((nvec + vpt - 1) / vpt + 31) / 32 * 32; }

// Programmatic dependent launch (sm_90): a kernel that calls pdl_trigger() lets a successor launched with
// cudaLaunchAttributeProgrammaticStreamSerialization start early (no-op when the successor is launched normally);
// a kernel launched with that attribute must call pdl_wait() before it reads anything its predecessor writes or
// writes anything its predecessor reads (no-op when it was launched normally or on older GPUs).
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Part `part` of `parts` equal parts of [base, base + bytes) into L2 (cp.async.bulk.prefetch, sm_90; nothing
// elsewhere), issued by the 32 lanes of one warp in 16 KB pieces. A hint the memory system may drop: results never
// depend on it. base 16-byte aligned, bytes a multiple of 16.
__device__ __forceinline__ void l2_prefetch_part(const void* base, size_t bytes, unsigned part, unsigned parts,
                                                 int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr size_t kPiece = 16384;
  const size_t share = (bytes / parts + kPiece - 1) / kPiece * kPiece;
  const size_t lo = size_t(part) * share, hi = min(lo + share, bytes);
  const char* b = static_cast<const char*>(base);
  for (size_t o = lo + size_t(lane) * kPiece; o < hi; o += 32 * kPiece) {
    const uint32_t n = uint32_t(min(kPiece, hi - o));
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(b + o), "r"(n) : "memory");
  }
#else
  (void)base, (void)bytes, (void)part, (void)parts, (void)lane;
#endif
}

// The start of a kernel whose launch may or may not use programmatic dependent launch (the norms and gated_act,
// kernels.h's `pdl`): it lets its successor launch (pdl_trigger) before or after it waits for its predecessor
// (pdl_wait, a no-op after an ordinary launch).
__device__ __forceinline__ void pdl_start(bool wait_first) {
  if (wait_first) pdl_wait();
  pdl_trigger();
  if (!wait_first) pdl_wait();
}

// kern launched with programmatic stream serialization when pdl (and the device has it), else an ordinary launch.
template <typename Kern, typename... Args>
cudaError_t launch_pdl(Kern kern, dim3 blocks, int threads, size_t smem, bool pdl, cudaStream_t s, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = blocks;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl && pdl_supported() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kern, args...);
}

// A kernel's dynamic shared memory limit raised to `bytes` (above the 48 KB default), once per device: `configured`
// is the caller's static, one bit per device, and must be the kernel's own (a static of a launcher instantiated per
// kernel: kernels of one signature share a function template's statics). Atomic: engines on several devices may
// launch from several threads.
template <typename Kernel>
inline cudaError_t smem_limit_once(Kernel kernel, size_t bytes, std::atomic<unsigned long long>& configured) {
  int dev = 0;
  cudaGetDevice(&dev);
  const unsigned long long bit = 1ull << (dev & 63);
  if (configured.load(std::memory_order_relaxed) & bit) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  if (e == cudaSuccess) configured.fetch_or(bit, std::memory_order_relaxed);
  return e;
}

// A yes/no property of the current device, computed once per device (probe(dev)) and cached in `cache`
// (0 unknown, 1 yes, 2 no; devices beyond 64 share slots).
template <typename Probe>
inline bool per_device(int (&cache)[64], Probe probe) {
  int dev = 0;
  cudaGetDevice(&dev);
  int& c = cache[dev & 63];
  if (!c) c = probe(dev) ? 1 : 2;
  return c == 1;
}

// An activation's fp32 math, the one definition every kernel uses (activations.cu, the gemv's gated prologue, the
// quantised and elementwise epilogues), so fused and unfused paths round the same. A constant `a` folds the switch.
__device__ __forceinline__ float act_value(float x, Act a) {
  switch (a) {
    case Act::Silu: return x / (1.f + expf(-x));
    case Act::GeluTanh: {
      const float k0 = 0.7978845608028654f, k1 = 0.044715f;
      return 0.5f * x * (1.f + tanhf(k0 * (x + k1 * x * x * x)));
    }
    case Act::GeluErf: return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
    default: return x;
  }
}

// A unary elementwise op (UnaryOp, enums.h), fp32 math: the standalone ops (elementwise.cu) and the chains folded
// into linears and norms compute the same expression. With op a compile-time constant the switch folds away.
__device__ __forceinline__ float unary_value(float x, UnaryOp op, float p) {
  switch (op) {
    case UnaryOp::Tanh: return tanhf(x);
    case UnaryOp::Sigmoid: return 1.f / (1.f + expf(-x));
    case UnaryOp::Exp: return expf(x);
    case UnaryOp::Scale: return x * p;
    case UnaryOp::Softcap: return p * tanhf(x / p);
  }
  return x;
}

// A chain (EwChain, enums.h) in order, fp32 throughout (one rounding by the caller at the store). A real loop and,
// for kernels that apply it to many registers (norms), a call: one copy of the code instead of one per element.
__device__ __forceinline__ float apply_chain(float x, const EwChain& c) {
#pragma unroll 1
  for (int i = 0; i < c.n; i++) x = unary_value(x, c.op[i], c.arg[i]);
  return x;
}
static __device__ __noinline__ float apply_chain_call(float x, const EwChain& c) { return apply_chain(x, c); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline int grid_for(uint64_t work, int threads, int max_blocks = 65535 * 8) {
  uint64_t b = (work + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > (uint64_t)max_blocks) b = max_blocks;
  return (int)b;
}

int num_sms();  // cached multiprocessor count of the current device (defined in embedding.cu)

}  // namespace kd
}  // namespace tsllm

// One case of the dispatch macros below: DType::E runs the body with T = TYPE.
#define TSLLM_DISPATCH_CASE(E, TYPE, T, ...) \
  case ::tsllm::DType::E: {                  \
    using T = TYPE;                          \
    __VA_ARGS__;                             \
  } break;

// Dispatch on an activation dtype: F32, F16, BF16.
#define TSLLM_DISPATCH_ACT(dt, T, ...)                     \
  switch (dt) {                                            \
    TSLLM_DISPATCH_CASE(F32, float, T, __VA_ARGS__)        \
    TSLLM_DISPATCH_CASE(F16, half, T, __VA_ARGS__)         \
    TSLLM_DISPATCH_CASE(BF16, ::tsllm::kd::bf16, T, __VA_ARGS__) \
    default:                                               \
      return cudaErrorInvalidValue;                        \
  }

// Dispatch on a 16-bit dtype: F16, BF16.
#define TSLLM_DISPATCH_HALF(dt, T, ...)                    \
  switch (dt) {                                            \
    TSLLM_DISPATCH_CASE(F16, half, T, __VA_ARGS__)         \
    TSLLM_DISPATCH_CASE(BF16, ::tsllm::kd::bf16, T, __VA_ARGS__) \
    default:                                               \
      return cudaErrorInvalidValue;                        \
  }
