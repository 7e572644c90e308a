// The standalone `rope` op (programs without fused attention): one thread per output element, angle
// pos * inv_freq[i] in fp32 (__fmul_rn, as the reference), dims >= rotary_dim copied.
#include "common.cuh"

namespace tsllm {
namespace {

using kd::from_f;
using kd::to_f;

// One thread per output element.
template <typename T>
__global__ void rope_kernel(const T* __restrict__ x, T* __restrict__ out, const int32_t* __restrict__ pos,
                            const float* __restrict__ inv_freq, int rows, int nH, int D, int R, int gptj) {
  int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t width = int64_t(nH) * D;
  if (idx >= int64_t(rows) * width) return;
  int64_t row = idx / width;
  int d = int(idx % width) % D;
  const T* xr = x + (idx - d);  // start of this head
  if (d >= R) {
    out[idx] = x[idx];
    return;
  }
  float p = float(pos[row]);
  float y;
  if (gptj) {
    int i = d >> 1;
    float s, c;
    sincosf(__fmul_rn(p, inv_freq[i]), &s, &c);
    float x0 = to_f(xr[2 * i]), x1 = to_f(xr[2 * i + 1]);
    y = (d & 1) ? x1 * c + x0 * s : x0 * c - x1 * s;
  } else {
    int half = R >> 1;
    int i = d < half ? d : d - half;
    float s, c;
    sincosf(__fmul_rn(p, inv_freq[i]), &s, &c);
    float x0 = to_f(xr[i]), x1 = to_f(xr[i + half]);
    y = d < half ? x0 * c - x1 * s : x1 * c + x0 * s;
  }
  out[idx] = from_f<T>(y);
}

}  // namespace

cudaError_t rope_standalone(const void* x, void* out, const int32_t* positions, const float* inv_freq, int rows,
                            int num_heads, int head_dim, int rotary_dim, RopeStyle style, DType dt, cudaStream_t s) {
  int64_t n = int64_t(rows) * num_heads * head_dim;
  if (n == 0) return cudaSuccess;
  int threads = 256;
  unsigned blocks = unsigned((n + threads - 1) / threads);
  int gptj = style == RopeStyle::Gptj;
  if (dt == DType::F16)
    rope_kernel<half><<<blocks, threads, 0, s>>>(static_cast<const half*>(x), static_cast<half*>(out), positions,
                                                  inv_freq, rows, num_heads, head_dim, rotary_dim, gptj);
  else if (dt == DType::BF16)
    rope_kernel<__nv_bfloat16><<<blocks, threads, 0, s>>>(static_cast<const __nv_bfloat16*>(x),
                                                          static_cast<__nv_bfloat16*>(out), positions, inv_freq, rows,
                                                          num_heads, head_dim, rotary_dim, gptj);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace tsllm
