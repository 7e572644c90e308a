// feed_tokens: pipelined steps take a sequence's input token from the previous step's sampled tokens on the
// device: ids[seq_start[s]] = prev[feed_src[s]] for every sequence s with feed_src[s] >= 0.
#include "common.cuh"

namespace tsllm {
namespace {

__global__ void feed_tokens_kernel(int32_t* __restrict__ ids, const int32_t* __restrict__ seq_start,
                                   const int32_t* __restrict__ feed_src, const int32_t* __restrict__ prev, int num_seqs) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s >= num_seqs) return;
  const int r = feed_src[s];
  if (r >= 0) ids[seq_start[s]] = prev[r];
}

}  // namespace

cudaError_t feed_tokens(int32_t* ids, const int32_t* seq_start, const int32_t* feed_src, const int32_t* prev,
                        int num_seqs, cudaStream_t s) {
  if (num_seqs <= 0) return cudaSuccess;
  feed_tokens_kernel<<<(num_seqs + 255) / 256, 256, 0, s>>>(ids, seq_start, feed_src, prev, num_seqs);
  return cudaGetLastError();
}

}  // namespace tsllm
