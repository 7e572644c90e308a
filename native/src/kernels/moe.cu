// The moe op's dispatch (kernels.h "mixture of experts"): workspace layout, path choice, and the combine kernel
// (weighted sum of each token's expert outputs, with the graph's residual add and rms_norm folded in when the
// runtime fuses them).
#include <algorithm>
#include <initializer_list>

#include "common.cuh"
#include "moe_internal.h"

namespace tsllm {
namespace {

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// One block per token; a thread owns 8 consecutive columns. out / sum_out are written in the same pass; with the
// norm, each thread re-reads the rounded sums it wrote (no other thread touches them) after the block's sum of
// squares.
template <typename T, bool NORM>
__global__ void __launch_bounds__(256) moe_combine_kernel(const float* __restrict__ y, const int32_t* __restrict__ ids,
                                                          const int32_t* slot_of, const float* __restrict__ wts,
                                                          int K, int H, T* out,
                                                          const T* res, const T* __restrict__ nw, float eps,
                                                          float w_off, T* sum_out) {
  const size_t t = blockIdx.x;
  const int chunks = H / 8;
  T* dst = NORM ? sum_out : out;
  float ss = 0.f;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    float acc[8];
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j] = 0.f;
    for (int k = 0; k < K; k++) {
      const size_t p = t * K + k;
      if (ids[p] < 0) continue;  // another rank's expert
      const size_t row = slot_of ? size_t(slot_of[p]) : p;
      const float w = wts[p];
      const float4* yr = reinterpret_cast<const float4*>(y + row * H + size_t(c) * 8);
      const float4 a = yr[0], b = yr[1];
      acc[0] = fmaf(w, a.x, acc[0]), acc[1] = fmaf(w, a.y, acc[1]), acc[2] = fmaf(w, a.z, acc[2]);
      acc[3] = fmaf(w, a.w, acc[3]), acc[4] = fmaf(w, b.x, acc[4]), acc[5] = fmaf(w, b.y, acc[5]);
      acc[6] = fmaf(w, b.z, acc[6]), acc[7] = fmaf(w, b.w, acc[7]);
    }
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = kd::to_f(kd::from_f<T>(acc[j]));  // the moe output, as the unfused op writes it
    if (res) {
      const uint4 rv = *reinterpret_cast<const uint4*>(res + t * H + size_t(c) * 8);
      float r[8];
      kd::unpack8<T>(rv, r);
#pragma unroll
      for (int j = 0; j < 8; j++) v[j] = kd::to_f(kd::from_f<T>(v[j] + r[j]));  // the add node's rounding
    }
    *reinterpret_cast<uint4*>(dst + t * H + size_t(c) * 8) = kd::pack8<T>(v);
    if (NORM)
#pragma unroll
      for (int j = 0; j < 8; j++) ss += v[j] * v[j];
  }
  if (!NORM) return;
  ss = kd::block_sum(ss);
  const float rstd = rsqrtf(ss / H + eps);
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    float v[8], w[8], o[8];
    kd::unpack8<T>(*reinterpret_cast<const uint4*>(sum_out + t * H + size_t(c) * 8), v);
    kd::unpack8<T>(*reinterpret_cast<const uint4*>(nw + size_t(c) * 8), w);
#pragma unroll
    for (int j = 0; j < 8; j++) o[j] = (v[j] - 0.f) * rstd * (w[j] + w_off);  // norms.cu's expression
    *reinterpret_cast<uint4*>(out + t * H + size_t(c) * 8) = kd::pack8<T>(o);
  }
}

template <typename T>
cudaError_t combine(const MoeArgs& a, const MoeWs& ws, const int32_t* slot_of, int t0, int n, cudaStream_t s) {
  const size_t off = size_t(t0) * a.H;
  T* out = static_cast<T*>(a.out) + off;
  const T* res = a.residual ? static_cast<const T*>(a.residual) + off : nullptr;
  const int threads = std::min(256, std::max(32, (a.H / 8 + 31) / 32 * 32));
  if (a.norm_w)
    moe_combine_kernel<T, true><<<n, threads, 0, s>>>(ws.y, ws.ids, slot_of, ws.wts, a.K, a.H, out, res,
                                                      static_cast<const T*>(a.norm_w), a.eps, a.w_offset,
                                                      static_cast<T*>(a.sum_out) + off);
  else
    moe_combine_kernel<T, false><<<n, threads, 0, s>>>(ws.y, ws.ids, slot_of, ws.wts, a.K, a.H, out, res, nullptr, 0.f, 0.f,
                                                       nullptr);
  return cudaGetLastError();
}

}  // namespace

MoeWs moe_ws_layout(void* base, int C, int E, int K, int H, int I, size_t es) {
  MoeWs w{};
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* r = p ? p + off : nullptr;
    off += align256(bytes);
    return r;
  };
  const size_t pairs = size_t(C) * K;
  w.ids = reinterpret_cast<int32_t*>(take(4 * pairs));
  w.wts = reinterpret_cast<float*>(take(4 * pairs));
  w.counts = reinterpret_cast<int32_t*>(take(8 * size_t(E)));
  w.slot_of = reinterpret_cast<int32_t*>(take(4 * pairs));
  w.xperm = take(pairs * H * es);
  w.h = take(pairs * I * es);
  w.y = reinterpret_cast<float*>(take(pairs * H * 4));
  w.bytes = off;
  return w;
}

bool moe_supported(int E, int K, int H, int I) {
  return E >= 1 && E <= kMoeMaxExperts && K >= 1 && K <= E && K <= kMoeMaxTopK && H > 0 && I > 0 && H % 8 == 0 &&
         I % 8 == 0;
}

size_t moe_workspace_bytes(int max_tokens, int E, int K, int H, int I, DType dt) {
  const int C = std::max(1, std::min(max_tokens, kMoeChunkTokens));
  return moe_ws_layout(nullptr, C, E, K, H, I, dt == DType::F32 ? 4 : 2).bytes;
}

cudaError_t moe_forward(const MoeArgs& a, DType dt, cudaStream_t s) {
  if (a.T <= 0) return cudaGetLastError();
  if (!moe_supported(a.E, a.K, a.H, a.I) || (dt != DType::F16 && dt != DType::BF16)) return cudaErrorInvalidValue;
  if (a.norm_w && (!a.residual || !a.sum_out)) return cudaErrorInvalidValue;
  for (const void* p : std::initializer_list<const void*>{a.x, a.w1, a.w3, a.w2, a.out, a.residual, a.norm_w, a.sum_out, a.workspace})
    if (p && !kd::aligned16(p)) return cudaErrorInvalidValue;
  const int local = a.local_experts ? a.local_experts : a.E;
  if (a.expert_start < 0 || local < 1 || a.expert_start + local > a.E) return cudaErrorInvalidValue;
  const MoePath path = a.path != MoePath::Auto ? a.path : a.T <= kMoeGemvMaxTokens ? MoePath::Gemv : MoePath::Grouped;
  const size_t es = 2;
  const int chunk = std::min(a.T, kMoeChunkTokens);
  for (int t0 = 0; t0 < a.T; t0 += chunk) {
    const int n = std::min(chunk, a.T - t0), pairs = n * a.K;
    const MoeWs ws = moe_ws_layout(a.workspace, n, a.E, a.K, a.H, a.I, es);
    const char* x = static_cast<const char*>(a.x) + size_t(t0) * a.H * es;
    const char* logits = static_cast<const char*>(a.logits) + size_t(t0) * a.E * es;
    cudaError_t err;
    if (path == MoePath::Gemv) {
      if ((err = moe_route(logits, n, a.E, a.K, a.normalize, a.expert_start, local, ws.ids, ws.wts, nullptr, dt, s)))
        return err;
      if ((err = moe_gemv_gate_up(x, a.w1, a.w3, ws.ids, ws.h, pairs, a.K, a.H, a.I, a.act, dt, s))) return err;
      if ((err = moe_gemv_down(ws.h, a.w2, ws.ids, ws.y, pairs, a.H, a.I, dt, s))) return err;
    } else {
      if ((err = cudaMemsetAsync(ws.counts, 0, 8 * size_t(local), s))) return err;
      if ((err = moe_route(logits, n, a.E, a.K, a.normalize, a.expert_start, local, ws.ids, ws.wts, ws.counts, dt, s)))
        return err;
      if ((err = moe_permute(x, ws.ids, ws.counts, ws.xperm, ws.slot_of, pairs, a.K, local, a.H, dt, s))) return err;
      if ((err = moe_grouped_gate_up(ws.xperm, a.w1, a.w3, ws.counts, ws.h, pairs, local, a.H, a.I, a.act, dt, s)))
        return err;
      if ((err = moe_grouped_down(ws.h, a.w2, ws.counts, ws.y, pairs, local, a.H, a.I, dt, s))) return err;
    }
    const int32_t* slot_of = path == MoePath::Gemv ? nullptr : ws.slot_of;
    TSLLM_DISPATCH_HALF(dt, T, err = combine<T>(a, ws, slot_of, t0, n, s));
    if (err) return err;
  }
  return cudaGetLastError();
}

}  // namespace tsllm
