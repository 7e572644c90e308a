// embedding: out[t,:] = table[ids[t]-vocab_start,:]; zeros for ids outside this rank's vocab shard.
#include "common.cuh"

namespace tsllm {
namespace kd {

int num_sms() {
  static int cached[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) dev = 0;
  if (cached[dev] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) n = 132;
    cached[dev] = n;
  }
  return cached[dev];
}

}  // namespace kd

namespace {

// One block per token; 16-byte vectors when the row is 16-byte aligned.
template <typename T, bool VEC>
__global__ void embedding_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table, T* __restrict__ out,
                                 int hidden, int vocab_start, int vocab_rows) {
  const int t = blockIdx.x;
  const int row = ids[t] - vocab_start;
  const bool in = row >= 0 && row < vocab_rows;
  T* o = out + (size_t)t * hidden;
  const T* src = table + (size_t)(in ? row : 0) * hidden;
  if (VEC) {
    constexpr int N = kd::Vec<T>::N;
    const int nv = hidden / N;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) {
      uint4 v = make_uint4(0, 0, 0, 0);
      if (in) v = reinterpret_cast<const uint4*>(src)[i];
      reinterpret_cast<uint4*>(o)[i] = v;
    }
  } else {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = in ? src[i] : kd::from_f<T>(0.f);
  }
}

template <typename T>
cudaError_t launch_embedding(const int32_t* ids, const void* table, void* out, int num_tokens, int hidden,
                             int vocab_start, int vocab_rows, cudaStream_t s) {
  constexpr int N = kd::Vec<T>::N;
  const bool vec = hidden % N == 0 && kd::aligned16(table) && kd::aligned16(out);
  const int nwork = vec ? hidden / N : hidden;
  int threads = nwork >= 256 ? 256 : ((nwork + 31) / 32) * 32;
  if (threads < 32) threads = 32;
  if (vec)
    embedding_kernel<T, true><<<num_tokens, threads, 0, s>>>(ids, static_cast<const T*>(table), static_cast<T*>(out),
                                                             hidden, vocab_start, vocab_rows);
  else
    embedding_kernel<T, false><<<num_tokens, threads, 0, s>>>(ids, static_cast<const T*>(table),
                                                              static_cast<T*>(out), hidden, vocab_start, vocab_rows);
  return cudaGetLastError();
}

}  // namespace

cudaError_t embedding(const int32_t* ids, const void* table, void* out, int num_tokens, int hidden, int vocab_start,
                      int vocab_rows, DType dt, cudaStream_t s) {
  if (num_tokens <= 0 || hidden <= 0) return cudaGetLastError();
  TSLLM_DISPATCH_ACT(dt, T, return launch_embedding<T>(ids, table, out, num_tokens, hidden, vocab_start, vocab_rows, s));
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
