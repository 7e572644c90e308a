// FP8 context FMHA (TensorRT-LLM's feature of that name): the context-step attention of attention_context.cu for an
// FP8 (E4M3) KV cache, with both products on mma.sync m16n8k32 e4m3 x e4m3 -> fp32 (sm_89+) and the cache's bytes
// used as they are. Same grid, query tiles, causal mask and online softmax as the fp16/bf16 kernel
// (attention_context.cuh). Numerics (kernels_test's "fmha8" reference computes exactly these in fp64):
//   Q: per (token, head) row as stored in T, s_q = amax(row) / 448 (e4m3_row_scale: 1 for a zero row) and
//      q8 = e4m3(q / s_q) (f8_to_e4m3x8: fp32 division, round to nearest even, saturating), as the FP8 linears
//      quantise their activations.
//   K, V: the cache's E4M3 bytes with its k_scale / v_scale, this step's own rows included: rope_cache.cu has just
//      stored them as e4m3(x / scale) (f8_to_e4m3x8), so a prompt attends to the same bytes as every later decode
//      step (the fp16/bf16 kernel attends to the step's own rows unrounded instead, the CPU reference's rule).
//   S = (q8 · k8) · s_q · k_scale in fp32, then the model's scale (log2 domain), the causal mask and the online
//      softmax in fp32.
//   P = 2^(s - running max) in [0, 1] is quantised as p8 = e4m3(P · 448), the full E4M3 range: relative error at
//      most 2^-4 for P >= 2^-6 / 448 (E4M3 normals), an absolute error of at most 2^-10 / 448 below that.
//   O = Σ p8 · v8 in fp32; the output is O · v_scale / 448 / l with l the fp32 sum of the unrounded P (the online
//      softmax's own sum, so each key's rounding error stays its own). Normalising by the sum of the rounded p8
//      instead made no consistent difference in a CPU emulation of these numerics on the tiny test engines (max
//      |Δlogit| against the reference 0.1593 vs 0.1604 for tiny-llama fp16 + FP8 KV, 0.2827 vs 0.2768 FP8 + FP8 KV).
// Shared memory: Q and K as bytes, rows padded by 16 bytes (an ldmatrix's 8 rows fall on distinct banks); V
// transposed (a row per head dim, its keys in the order that P's registers hold them: v_slot_key). K tiles arrive
// by cp.async (double-buffered); V tiles are loaded into registers a tile ahead and transposed into shared memory
// after the current tile's products.
// Runs where fp8_context_fmha_unavailable says so (head_dim % 16 == 0 and <= 128, sm_89+ code of this kernel);
// paged_attention falls back to the fp16/bf16 kernel elsewhere.
#include "attention_context.cuh"
#include "attention_internal.h"
#include "fp8.cuh"

namespace tsllm {
namespace kd {
namespace {

constexpr int kBQ = 64;           // query rows per block: 4 warps of 16
constexpr int kCtxThreads = 128;
constexpr int kBK8 = 64;  // keys per K/V tile (two 32-key blocks of the P·V product)

template <int DP>
struct Fp8CtxCfg {
  static constexpr int LDQ = DP + 16;    // bytes per row of the Q and K tiles
  static constexpr int LDV = kBK8 + 16;  // bytes per row (head dim) of the transposed V tile
  static constexpr size_t smem_bytes = (size_t)(kBQ + 2 * kBK8) * LDQ + (size_t)2 * DP * LDV;
};

// The kernel's code exists for sm_89+ (E4M3 mma.sync) only: below that its body traps, and these helpers are left out.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 890
// Which key of a 32-key block sits at k position kp of the transposed V tile. P·V takes P straight from the S
// accumulators: a lane's C fragment of n-tile nt holds keys 8 nt + 2 tig, + 1, so of a 32-key block its A registers
// a0 / a1 (A's k = 4 tig .. + 3) pack keys {2 tig, 2 tig + 1, 8 + 2 tig, 9 + 2 tig} and a2 / a3 (k = 16 + 4 tig ..)
// the same + 16. B's b0 / b1 read k positions 4 tig .. + 3 / 16 + 4 tig .. + 3 of V^T's rows, so position
// kp = 4 tig + j must hold key (kp & 16) + 8 (j >> 1) + 2 tig + (j & 1).
__device__ __forceinline__ int v_slot_key(int kp) {
  return (kp & 16) | ((kp >> 1) & 1) << 3 | ((kp >> 2) & 3) << 1 | (kp & 1);
}


// The 4 x 4 bytes x[key][dim] -> out[dim][key] (32-bit words, byte i = element i).
__device__ __forceinline__ void transpose4x4(const uint32_t (&x)[4], uint32_t (&out)[4]) {
  const uint32_t t0 = __byte_perm(x[0], x[1], 0x5140), t1 = __byte_perm(x[0], x[1], 0x7362);
  const uint32_t t2 = __byte_perm(x[2], x[3], 0x5140), t3 = __byte_perm(x[2], x[3], 0x7362);
  out[0] = __byte_perm(t0, t2, 0x5410);
  out[1] = __byte_perm(t0, t2, 0x7632);
  out[2] = __byte_perm(t1, t3, 0x5410);
  out[3] = __byte_perm(t1, t3, 0x7632);
}
#endif

template <typename T, int DP>
__global__ void __launch_bounds__(kCtxThreads)
    fp8_context_kernel(const T* __restrict__ q, int q_stride, T* __restrict__ out, KVView<uint8_t> kv,
                       const int32_t* __restrict__ positions, const int32_t* __restrict__ seq_start, int nH, int G,
                       float scale_log2, float k_scale, float v_scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  __trap();  // never launched: fp8_context_fmha_unavailable refuses code below sm_89
#else
  constexpr int BK = kBK8, LDQ = Fp8CtxCfg<DP>::LDQ, LDV = Fp8CtxCfg<DP>::LDV;
  constexpr int CPR = DP / 8;  // 8-element chunks of a Q row
  // V: one item per (4 key positions, 16 head dims) of the tile; with DP <= 128 a thread has at most one.
  constexpr int kVItems = BK / 4 * DP / 16;
  static_assert(kVItems <= kCtxThreads, "one V item per thread");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint8_t* sQ = smem_raw;          // [kBQ][LDQ]
  uint8_t* sK = sQ + kBQ * LDQ;    // [2][BK][LDQ]
  uint8_t* sV = sK + 2 * BK * LDQ; // [2][DP][LDV]: V^T, keys in v_slot_key order
  __shared__ int s_pos[kBQ];
  __shared__ int s_mm[2];
  __shared__ float s_amax[kBQ];

  CtxTile<kBQ> t;
  if (!t.init(seq_start)) return;
  const int h = blockIdx.x, hk = h / G, D = kv.D;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tig = lane & 3;

  if (tid < kBQ) s_amax[tid] = 0.f;
  ctx_positions(t, positions, s_pos, s_mm);  // its __syncthreads also orders s_amax's zeros before the maxima
  // Q: per-row amax, then e4m3(q / s_q) into shared memory (rows past the sequence and dims past D are zeros).
  auto q_chunk = [&](int c, int& r, int& cc) -> const T* {
    r = c / CPR, cc = c % CPR;
    return r < t.rows && cc * 8 < D ? q + (size_t)(t.st + t.q0 + r) * q_stride + (size_t)h * D + cc * 8 : nullptr;
  };
  for (int c = tid; c < kBQ * CPR; c += kCtxThreads) {
    int r, cc;
    if (const T* src = q_chunk(c, r, cc)) {
      float f[8], m = 0.f;
      unpack8<T>(*reinterpret_cast<const uint4*>(src), f);
#pragma unroll
      for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(f[i]));
      atomicMax(reinterpret_cast<unsigned*>(&s_amax[r]), __float_as_uint(m));  // non-negative floats order as ints
    }
  }
  __syncthreads();
  const int kv_end = s_mm[0] + 1;
  const int min_pos = s_mm[1];  // -1 when the tile has padding rows
  const int ntiles = (kv_end + BK - 1) / BK;

  auto load_k = [&](int j, int stage) {
    uint8_t* dk = sK + stage * BK * LDQ;
    for (int c = tid; c < BK * (DP / 16); c += kCtxThreads) {
      const int r = c / (DP / 16), cc = c % (DP / 16);
      const int key = j * BK + r;
      const bool ok = key < kv_end && cc * 16 < D;
      cp_async16(dk + r * LDQ + cc * 16, ok ? kv.base + kv.row(t.seq, key, hk) + cc * 16 : kv.base, ok);
    }
  };
  // This thread's V item of tile j: 16 bytes (head dims 16 cc ..) of the 4 keys at positions 4 m .. 4 m + 3.
  const int vm = tid % (BK / 4), vcc = tid / (BK / 4);
  const bool v_item = tid < kVItems && vcc * 16 < D;
  auto load_v = [&](int j, uint4 (&vr)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int kp = vm * 4 + i;
      const int key = j * BK + (kp & ~31) + v_slot_key(kp & 31);
      vr[i] = v_item && key < kv_end
                  ? *reinterpret_cast<const uint4*>(kv.base + kv.row(t.seq, key, hk) + kv.v_off + vcc * 16)
                  : make_uint4(0, 0, 0, 0);
    }
  };
  auto store_v = [&](const uint4 (&vr)[4], int stage) {
    if (tid >= kVItems) return;
    uint8_t* dv = sV + stage * DP * LDV + (vcc * 16) * LDV + vm * 4;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const uint32_t x[4] = {(&vr[0].x)[w], (&vr[1].x)[w], (&vr[2].x)[w], (&vr[3].x)[w]};
      uint32_t y[4];
      transpose4x4(x, y);
#pragma unroll
      for (int i = 0; i < 4; ++i) *reinterpret_cast<uint32_t*>(dv + (w * 4 + i) * LDV) = y[i];
    }
  };

  load_k(0, 0);
  cp_async_commit();
  uint4 vr[4];
  load_v(0, vr);
  for (int c = tid; c < kBQ * CPR; c += kCtxThreads) {
    int r, cc;
    uint2 b = make_uint2(0, 0);
    if (const T* src = q_chunk(c, r, cc)) {
      float f[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(src), f);
      b = f8_to_e4m3x8(f, e4m3_row_scale(s_amax[r]));
    }
    *reinterpret_cast<uint2*>(sQ + r * LDQ + cc * 8) = b;
  }
  store_v(vr, 0);

  float o[DP / 8][4];
#pragma unroll
  for (int i = 0; i < DP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
  const int r0 = warp * 16 + g;
  const int p0 = s_pos[r0], p1 = s_pos[r0 + 8];
  // Row factors of the scores: s_q · k_scale · the model's scale in the log2 domain.
  const float f0 = e4m3_row_scale(s_amax[r0]) * k_scale * scale_log2;
  const float f1 = e4m3_row_scale(s_amax[r0 + 8]) * k_scale * scale_log2;

  for (int j = 0; j < ntiles; ++j) {
    const int stage = j & 1;
    const bool next = j + 1 < ntiles;
    if (next) {
      load_k(j + 1, stage ^ 1);
      cp_async_commit();
      load_v(j + 1, vr);  // in flight during this tile's products; stored into the other stage after them
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint8_t* cK = sK + stage * BK * LDQ;
    const uint8_t* cV = sV + stage * DP * LDV;

    // S = Q K^T (Q rows and K rows as bytes).
    float sc[BK / 8][4];
    ctx_scores<BK, DP, LDQ>(sc, sQ, cK, warp, lane, [](float(&d)[4], const uint32_t(&a)[4], uint32_t b0, uint32_t b1) {
      mma_e4m3_16832(d, a, b0, b1);
    });
    ctx_mask(sc, j * BK, tig, p0, p1, j * BK + BK - 1 > min_pos);
    online_softmax_tile<true>(sc, mrow, lrow, o, f0, f1);
    // O += p8 V: P's registers in v_slot_key order, V^T rows through ldmatrix (rows = head dims).
#pragma unroll
    for (int k2 = 0; k2 < BK / 32; ++k2) {
      const float(&s0)[4] = sc[4 * k2];
      const float(&s1)[4] = sc[4 * k2 + 1];
      const float(&s2)[4] = sc[4 * k2 + 2];
      const float(&s3)[4] = sc[4 * k2 + 3];
      const float m = kE4m3Max;
      const uint32_t a[4] = {e4m3x4_of(s0[0] * m, s0[1] * m, s1[0] * m, s1[1] * m),
                             e4m3x4_of(s0[2] * m, s0[3] * m, s1[2] * m, s1[3] * m),
                             e4m3x4_of(s2[0] * m, s2[1] * m, s3[0] * m, s3[1] * m),
                             e4m3x4_of(s2[2] * m, s2[3] * m, s3[2] * m, s3[3] * m)};
#pragma unroll
      for (int d2 = 0; d2 < DP / 16; ++d2) {
        uint32_t b[4];
        ldmatrix_x4(b, cV + (d2 * 16 + (lane >> 4) * 8 + (lane & 7)) * LDV + k2 * 32 + ((lane >> 3) & 1) * 16);
        mma_e4m3_16832(o[2 * d2], a, b[0], b[1]);
        mma_e4m3_16832(o[2 * d2 + 1], a, b[2], b[3]);
      }
    }
    if (next) store_v(vr, stage ^ 1);  // that stage's last reader was tile j - 1, before the barrier below it
    __syncthreads();
  }
  ctx_store<T>(o, lrow, v_scale / kE4m3Max, out, t, r0, tig, h, nH, D);
#endif
}

template <typename T, int DP>
cudaError_t launch_fp8(const T* q, int q_stride, T* out, const KVView<uint8_t>& kv, const StepLayout& step, int nH,
                       int G, float scale_log2, float k_scale, float v_scale, cudaStream_t s) {
  constexpr size_t smem = Fp8CtxCfg<DP>::smem_bytes;
  static std::atomic<unsigned long long> configured{0};  // per instantiation, one bit per device
  const cudaError_t e = smem_limit_once(fp8_context_kernel<T, DP>, smem, configured);
  if (e != cudaSuccess) return e;
  dim3 grid(nH, (step.max_new_tokens + kBQ - 1) / kBQ, step.num_seqs);
  fp8_context_kernel<T, DP><<<grid, kCtxThreads, smem, s>>>(q, q_stride, out, kv, step.positions, step.seq_start, nH,
                                                             G, scale_log2, k_scale, v_scale);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention_context_fp8(const void* q, int q_stride, void* out, const PagedKV& kv, const StepLayout& step,
                                  const AttnParams& p, DType dt, cudaStream_t s) {
  if (kv.dtype != DType::FP8_E4M3 || fp8_context_fmha_unavailable(p.head_dim)) return cudaErrorInvalidValue;
  const int nH = p.num_heads, G = p.num_heads / p.num_kv_heads;
  const float scale_log2 = p.scale * 1.4426950408889634f;
  const KVView<uint8_t> v = make_kv_view<uint8_t>(kv, p.layer);
  TSLLM_DISPATCH_HALF(dt, T, {
    auto run = [&](auto dp) {
      return launch_fp8<T, decltype(dp)::value>(static_cast<const T*>(q), q_stride, static_cast<T*>(out), v, step,
                                                nH, G, scale_log2, p.k_scale, p.v_scale, s);
    };
    if (p.head_dim <= 32) return run(std::integral_constant<int, 32>{});
    if (p.head_dim <= 64) return run(std::integral_constant<int, 64>{});
    return run(std::integral_constant<int, 128>{});
  });
  return cudaErrorInvalidValue;
}

}  // namespace kd

const char* fp8_context_fmha_unavailable(int head_dim) {
  if (head_dim % 16 != 0 || head_dim > 128) return "head_dim is not a multiple of 16 up to 128";
  static int cache[64] = {0};
  const bool sm89 = kd::per_device(cache, [](int) {
    cudaFuncAttributes fa;  // the code the device runs: an sm_80 build on an sm_89 GPU has no FP8 mma
    const bool ok =
        cudaFuncGetAttributes(&fa, kd::fp8_context_kernel<half, 64>) == cudaSuccess && fa.binaryVersion >= 89;
    cudaGetLastError();
    return ok;
  });
  return sm89 ? nullptr : "the GPU (or this build's code for it) is below sm_89";
}

}  // namespace tsllm
