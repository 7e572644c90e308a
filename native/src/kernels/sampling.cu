// Sampling on the GPU, one block of 1024 threads per row of logits, read as stored (fp32, fp16 or bf16: each value
// widened to fp32 exactly, so the tokens are those of the row converted to fp32 first).
//  - greedy (temperature <= 0 or top_k == 1): argmax, lowest index on ties.
//  - otherwise: the allowed set is {i : key(x_i) >= tau} where key is an order-preserving uint32 of the logit;
//    top-k: tau = key of the k-th largest logit (radix select, 4 passes of 8-bit histograms, exact counts);
//    top-p: tau = largest key whose suffix mass is >= ceil(top_p * total), probabilities computed as
//           fixed-point integers (2^32 * exp((x - max) / T)) so every sum is exact and order-independent.
//    Ties at tau are all kept. The token is drawn with the Gumbel-max trick over the allowed set:
//    argmax_i (x_i - max) / T + G_i, G_i = -log(-log(u_i)), u_i from Philox-4x32-10 with key = seed[row] and
//    counter = (i / 4, step[row], 0, 0). Results depend only on (logits, parameters, seed, step).
#include <math.h>

#include "common.cuh"

namespace tsllm {
namespace {

constexpr int kSampleThreads = 1024;

__device__ __forceinline__ uint32_t fkey(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k.x += 0x9E3779B9u;
    k.y += 0xBB67AE85u;
  }
  return c;
}

__device__ __forceinline__ float gumbel(uint32_t bits) {
  const float u = ((float)(bits >> 8) + 0.5f) * 5.9604644775390625e-08f;  // (0, 1)
  return -logf(-logf(u));
}

struct ArgMax {
  float v;
  int i;
};
__device__ __forceinline__ ArgMax better(ArgMax a, ArgMax b) {
  return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
}
__device__ __forceinline__ ArgMax warp_argmax(ArgMax a) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax b;
    b.v = __shfl_xor_sync(0xffffffffu, a.v, o);
    b.i = __shfl_xor_sync(0xffffffffu, a.i, o);
    a = better(a, b);
  }
  return a;
}
__device__ ArgMax block_argmax(ArgMax a) {
  __shared__ ArgMax sh[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  a = warp_argmax(a);
  if (lane == 0) sh[warp] = a;
  __syncthreads();
  a = warp_argmax(lane < (int)(blockDim.x >> 5) ? sh[lane] : ArgMax{-INFINITY, 0x7fffffff});
  __syncthreads();
  return a;
}

__device__ unsigned long long block_sum_u64(unsigned long long v) {
  __shared__ unsigned long long sh[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0ull;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;
}

// The E = 16 / sizeof(LT) logits of 16-byte vector i of a row, as floats.
template <typename LT>
__device__ __forceinline__ void load16(const LT* x, int i, float (&v)[16 / sizeof(LT)]) {
  if constexpr (sizeof(LT) == 4) {
    const float4 f = reinterpret_cast<const float4*>(x)[i];
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
    kd::unpack8<LT>(reinterpret_cast<const uint4*>(x)[i], v);
  }
}

// Logits 4·i4 .. 4·i4 + 3 of a row (16 bytes of fp32, 8 of a 16-bit type), as floats: one Philox draw's worth.
template <typename LT>
__device__ __forceinline__ void load4(const LT* x, int i4, float (&v)[4]) {
  if constexpr (sizeof(LT) == 4) {
    const float4 f = reinterpret_cast<const float4*>(x)[i4];
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
    const uint2 u = reinterpret_cast<const uint2*>(x)[i4];
    const float2 a = kd::to_f2<LT>(u.x), b = kd::to_f2<LT>(u.y);
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
  }
}

// Calls f(i, x[i]) for the row; 16-byte loads when the row is 16-byte aligned.
template <typename LT, typename F>
__device__ __forceinline__ void for_each(const LT* x, int vocab, bool vec, F&& f) {
  constexpr int E = 16 / sizeof(LT);
  int start = 0;
  if (vec) {
    const int nv = vocab / E;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) {
      float v[E];
      load16<LT>(x, i, v);
#pragma unroll
      for (int j = 0; j < E; ++j) f(E * i + j, v[j]);
    }
    start = nv * E;
  }
  for (int i = start + threadIdx.x; i < vocab; i += blockDim.x) f(i, kd::to_f(x[i]));
}

// Largest key tau with weight(key >= tau) >= target (weights from `weight(v)`, exact integer sums).
template <typename C, typename LT, typename W>
__device__ uint32_t radix_select(const LT* x, int vocab, bool vec, C target, W&& weight, C* hist) {
  __shared__ uint32_t s_sel;
  __shared__ C s_above;
  uint32_t prefix = 0, mask = 0;
  C remaining = target;
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for_each(x, vocab, vec, [&](int, float v) {
      const uint32_t key = fkey(v);
      if ((key & mask) == prefix) {
        const C w = weight(v, key);
        if (w) atomicAdd(&hist[(key >> shift) & 255], w);
      }
    });
    __syncthreads();
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      const int hi = 255 - 8 * lane;  // lane 0 holds the highest bins
      C local = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) local += hist[hi - j];
      C incl = local;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const C up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += up;
      }
      const C excl = incl - local;
      if (excl < remaining && incl >= remaining) {
        C cum = excl;
        for (int j = 0; j < 8; ++j) {
          const C c = hist[hi - j];
          if (cum + c >= remaining) {
            s_sel = (uint32_t)(hi - j);
            s_above = cum;
            break;
          }
          cum += c;
        }
      }
    }
    __syncthreads();
    prefix |= s_sel << shift;
    mask |= 0xffu << shift;
    remaining -= s_above;
  }
  return prefix;
}

template <typename LT>
__global__ void __launch_bounds__(kSampleThreads) sample_kernel(const LT* __restrict__ logits, int vocab,
                                                                const float* __restrict__ temperature,
                                                                const int32_t* __restrict__ top_k,
                                                                const float* __restrict__ top_p,
                                                                const uint64_t* __restrict__ seed,
                                                                const int32_t* __restrict__ step,
                                                                int32_t* __restrict__ out) {
  const int row = blockIdx.x;
  const LT* x = logits + (size_t)row * vocab;
  const bool vec = (reinterpret_cast<uintptr_t>(x) & 15) == 0;
  const float temp = temperature ? temperature[row] : 0.f;
  int k = top_k ? top_k[row] : 0;
  const float p = top_p ? top_p[row] : 1.f;

  ArgMax best{-INFINITY, 0x7fffffff};
  for_each(x, vocab, vec, [&](int i, float v) { best = better(best, ArgMax{v, i}); });
  best = block_argmax(best);
  // A +Infinity logit outweighs every finite one (and a row of -Infinity / NaN has no distribution): greedy, as the
  // reference executor does; sampling would weigh it exp(inf - inf) = NaN and pick a finite token instead.
  if (!(temp > 0.f) || k == 1 || isinf(best.v)) {
    if (threadIdx.x == 0) out[row] = best.i < vocab ? best.i : 0;
    return;
  }
  const float mx = best.v;
  const float inv_t = 1.f / temp;
  __shared__ unsigned long long hist64[256];
  __shared__ uint32_t hist32[256];

  uint32_t tau = 0;
  if (k > 1 && k < vocab)
    tau = radix_select<uint32_t>(x, vocab, vec, (uint32_t)k, [](float, uint32_t) { return 1u; }, hist32);
  if (p < 1.f) {
    const float c = inv_t * 1.4426950408889634f;
    auto weight = [&](float v, uint32_t key) -> unsigned long long {
      return key >= tau ? __float2ull_rz(exp2f((v - mx) * c) * 4294967296.0f) : 0ull;
    };
    unsigned long long tot = 0;
    for_each(x, vocab, vec, [&](int, float v) { tot += weight(v, fkey(v)); });
    tot = block_sum_u64(tot);
    double tgt = ceil((double)p * (double)tot);
    unsigned long long target = tgt < 1.0 ? 1ull : (unsigned long long)tgt;
    if (target > tot) target = tot;
    tau = radix_select<unsigned long long>(x, vocab, vec, target, weight, hist64);
  }

  const uint64_t sd = seed ? seed[row] : 0ull;
  const uint2 key = make_uint2((uint32_t)sd, (uint32_t)(sd >> 32));
  const uint32_t st = step ? (uint32_t)step[row] : 0u;
  ArgMax pick{-INFINITY, 0x7fffffff};
  const int n4 = (vocab + 3) >> 2;
  for (int i4 = threadIdx.x; i4 < n4; i4 += blockDim.x) {
    float v[4];
    if (vec && 4 * i4 + 3 < vocab) {
      load4<LT>(x, i4, v);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = 4 * i4 + j < vocab ? kd::to_f(x[4 * i4 + j]) : -INFINITY;
    }
    const uint4 r = philox4x32_10(make_uint4((uint32_t)i4, st, 0u, 0u), key);
    const uint32_t bits[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = 4 * i4 + j;
      if (i < vocab && fkey(v[j]) >= tau) pick = better(pick, ArgMax{(v[j] - mx) * inv_t + gumbel(bits[j]), i});
    }
  }
  pick = block_argmax(pick);
  if (threadIdx.x == 0) out[row] = pick.i < vocab ? pick.i : best.i;
}

}  // namespace

size_t sampling_workspace_bytes(int max_rows, int vocab) {
  (void)max_rows;
  (void)vocab;
  return 0;  // sample() needs no workspace (it may be null)
}

cudaError_t sample(const void* logits, DType logits_dt, int num_rows, int vocab, const float* temperature,
                   const int32_t* top_k, const float* top_p, const uint64_t* seed, const int32_t* step,
                   int32_t* out_tokens, void* workspace, cudaStream_t s) {
  (void)workspace;
  if (num_rows <= 0 || vocab <= 0) return cudaGetLastError();
  TSLLM_DISPATCH_ACT(logits_dt, LT, {
    sample_kernel<LT><<<num_rows, kSampleThreads, 0, s>>>(static_cast<const LT*>(logits), vocab, temperature, top_k,
                                                          top_p, seed, step, out_tokens);
    return cudaGetLastError();
  });
  return cudaErrorInvalidValue;
}

}  // namespace tsllm
