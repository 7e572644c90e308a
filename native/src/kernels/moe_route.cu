// moe routing: softmax + top-k + renormalise fused in one kernel (one warp per token), and the permutation of
// the grouped path (x rows gathered in expert order, offsets scanned from the routing kernel's counts on the
// GPU: no host synchronisation, so decode steps stay capturable).
#include <limits.h>
#include <algorithm>
#include <math.h>

#include "common.cuh"
#include "moe_internal.h"

namespace tsllm {
namespace {

constexpr int kPer = kMoeMaxExperts / 32;  // experts per lane

// Lane j of the warp keeps slot j's pick. Ties (equal probabilities): the lowest expert index wins, as
// torch.topk and src/ops/moe.ts's routeTopK pick.
template <typename T>
__global__ void __launch_bounds__(128) moe_route_kernel(const T* __restrict__ logits, int num_tokens, int E, int K,
                                                        bool normalize, int expert_start, int local,
                                                        int32_t* __restrict__ ids, float* __restrict__ wts,
                                                        int32_t* counts) {
  const int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (t >= num_tokens) return;
  const T* row = logits + size_t(t) * E;
  float p[kPer];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPer; i++) {
    const int e = lane + 32 * i;
    p[i] = e < E ? kd::to_f(row[e]) : -INFINITY;
    mx = fmaxf(mx, p[i]);
  }
  mx = kd::warp_max(mx);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; i++) {
    p[i] = lane + 32 * i < E ? expf(p[i] - mx) : 0.f;
    sum += p[i];
  }
  sum = kd::warp_sum(sum);
#pragma unroll
  for (int i = 0; i < kPer; i++) p[i] = lane + 32 * i < E ? p[i] / sum : -1.f;  // -1: never picked
  float mine_w = 0.f, kept = 0.f;
  int mine_e = 0;
  for (int k = 0; k < K; k++) {
    float bv = -3.f;
    int bi = INT_MAX;
#pragma unroll
    for (int i = 0; i < kPer; i++)
      if (p[i] > bv) bv = p[i], bi = lane + 32 * i;  // ascending index within the lane: strict > keeps the lowest
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (bi >= E) bi = k, bv = 0.f;  // only with NaN logits: keep the index in range
#pragma unroll
    for (int i = 0; i < kPer; i++)
      if (lane + 32 * i == bi) p[i] = -2.f;  // taken
    if (lane == k) mine_w = bv, mine_e = bi;
    kept += bv;
  }
  if (lane < K) {
    const int le = mine_e - expert_start;
    const bool here = le >= 0 && le < local;  // expert parallelism: another rank adds the others
    ids[size_t(t) * K + lane] = here ? le : -1;
    wts[size_t(t) * K + lane] = normalize ? mine_w / kept : mine_w;
    if (counts && here) atomicAdd(&counts[le], 1);
  }
}

// 256 threads: every block scans the E ≤ 256 (local) counts into offsets in shared memory, then each warp takes a
// pair of a local expert (slot_of = -1 for another rank's):
// slot = offset[e] + a per-expert cursor (atomics: the order within an expert varies, the values do not, since
// every GEMM row is computed independently of its neighbours), and copies the token's x row there.
template <typename T>
__global__ void __launch_bounds__(256) moe_permute_kernel(const T* __restrict__ x, const int32_t* __restrict__ ids,
                                                          int32_t* counts, T* __restrict__ xperm,
                                                          int32_t* __restrict__ slot_of, int pairs, int K, int E,
                                                          int H) {
  __shared__ int off[kMoeMaxExperts];
  const int tid = threadIdx.x;
  const int c = tid < E ? counts[tid] : 0;
  off[tid] = c;
  __syncthreads();
  for (int d = 1; d < kMoeMaxExperts; d <<= 1) {
    const int v = tid >= d ? off[tid - d] : 0;
    __syncthreads();
    off[tid] += v;
    __syncthreads();
  }
  const int excl = off[tid] - c;
  __syncthreads();
  off[tid] = excl;
  __syncthreads();
  const int lane = tid & 31, warp = tid >> 5;
  const int chunks = H / 8;
  for (int p = blockIdx.x * 8 + warp; p < pairs; p += gridDim.x * 8) {
    int slot = -1;
    if (lane == 0) {
      const int e = ids[p];
      if (e >= 0) slot = off[e] + atomicAdd(&counts[E + e], 1);
      slot_of[p] = slot;
    }
    slot = __shfl_sync(0xffffffffu, slot, 0);
    if (slot < 0) continue;  // another rank's expert
    const uint4* src = reinterpret_cast<const uint4*>(x + size_t(p / K) * H);
    uint4* dst = reinterpret_cast<uint4*>(xperm + size_t(slot) * H);
    for (int i = lane; i < chunks; i += 32) dst[i] = src[i];
  }
}

}  // namespace

cudaError_t moe_route(const void* logits, int T, int E, int K, bool normalize, int expert_start, int local,
                      int32_t* ids, float* weights, int32_t* counts, DType dt, cudaStream_t s) {
  if (T <= 0) return cudaGetLastError();
  if (E < 1 || E > kMoeMaxExperts || K < 1 || K > E || K > kMoeMaxTopK) return cudaErrorInvalidValue;
  if (expert_start < 0 || local < 1 || expert_start + local > E) return cudaErrorInvalidValue;
  const int blocks = (T + 3) / 4;
  TSLLM_DISPATCH_ACT(dt, Tp,
                     moe_route_kernel<Tp><<<blocks, 128, 0, s>>>(static_cast<const Tp*>(logits), T, E, K, normalize,
                                                                 expert_start, local, ids, weights, counts));
  return cudaGetLastError();
}

cudaError_t moe_permute(const void* x, const int32_t* ids, int32_t* counts, void* xperm, int32_t* slot_of, int pairs,
                        int K, int E, int H, DType dt, cudaStream_t s) {
  if (pairs <= 0) return cudaGetLastError();
  const int blocks = std::min((pairs + 7) / 8, 4 * kd::num_sms());
  TSLLM_DISPATCH_HALF(dt, T,
                      moe_permute_kernel<T><<<blocks, 256, 0, s>>>(static_cast<const T*>(x), ids, counts,
                                                                   static_cast<T*>(xperm), slot_of, pairs, K, E, H));
  return cudaGetLastError();
}

}  // namespace tsllm
