// Internal launchers behind paged_attention (paged_attention.cu): RoPE + KV-cache write, decode, context.
#pragma once
#include <type_traits>

#include "attention_common.cuh"

namespace tsllm {
namespace kd {

template <typename T>
inline KVView<T> make_kv_view(const PagedKV& kv, int layer) {
  KVView<T> v;
  v.block_elems = (size_t)2 * kv.num_kv_heads * kv.tokens_per_block * kv.head_dim;
  v.v_off = (size_t)kv.num_kv_heads * kv.tokens_per_block * kv.head_dim;
  v.base = static_cast<T*>(kv.base) + (size_t)layer * kv.num_blocks * v.block_elems;
  v.block_tables = kv.block_tables;
  v.max_blocks = kv.max_blocks_per_seq;
  v.tpb = kv.tokens_per_block;
  v.tpb_shift = -1;
  for (int sh = 0; sh < 31; ++sh)
    if ((1 << sh) == kv.tokens_per_block) v.tpb_shift = sh;
  v.D = kv.head_dim;
  return v;
}

// The DecodeIO of a decode launch over layer p.layer (hgroups 1 until the launcher picks the group size).
template <typename T>
inline void set_decode_io(DecodeIO<T>& a, const void* q, int q_stride, void* out, float* ws_o, float2* ws_ml,
                          const PagedKV& kv, const StepLayout& step, const AttnParams& p, int chunk) {
  a.q = static_cast<const T*>(q);
  a.q_stride = q_stride;
  a.out = static_cast<T*>(out);
  a.ws_o = ws_o;
  a.ws_ml = ws_ml;
  a.kv = make_kv_view<T>(kv, p.layer);
  a.positions = step.positions;
  a.token_seq = step.token_seq;
  a.nH = p.num_heads;
  a.G = p.num_heads / p.num_kv_heads;
  a.hgroups = 1;
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.chunk = chunk;
}

// The largest head size paged_attention takes (rope_cache.cu sizes its table of pair angles by it).
constexpr int kMaxHeadDim = 256;

// f(DP) with DP the instantiated head size holding head_dim (32, 64, 128 or 256: padded in registers / shared
// memory), as a std::integral_constant so that f can instantiate kernels on it.
template <typename F>
inline auto with_head_dim(int head_dim, F&& f) -> decltype(f(std::integral_constant<int, 32>{})) {
  if (head_dim <= 32) return f(std::integral_constant<int, 32>{});
  if (head_dim <= 64) return f(std::integral_constant<int, 64>{});
  if (head_dim <= 128) return f(std::integral_constant<int, 128>{});
  return f(std::integral_constant<int, 256>{});
}

// RoPE on q (written to q_out, row stride nH*D; skipped when q_out is null) and k; k and v written to the cache.
// FP8 cache: k_out ([num_tokens, nKV*D], activation dtype) also receives the rotated k (this step's own keys).
cudaError_t rope_and_cache_write(const void* q, int q_stride, const void* k, int k_stride, const void* v, int v_stride,
                                 void* q_out, void* k_out, const PagedKV& kv, const StepLayout& step,
                                 const AttnParams& p, DType dt, cudaStream_t s);

// Decode (max_new_tokens == 1), chosen by AttnParams::decode_variant (decode_variant_run below):
//   3 (default): decode_fast_kernel, one launch (RoPE, cache write, attention, split-K combined through a
//                thread-block cluster's DSMEM), latency-first, for small batches of 16-bit caches; batches/contexts
//                outside its range (DecodeSplit::fast false: nKV x tokens > #SMs, max_seq_len > 1024, no sm_90
//                clusters) and FP8 caches run variant 4 when num_heads / num_kv_heads >= AttnParams::mma_min_gqa,
//                else variant 2.
//   4: rope_cache kernel, then decode_mma_kernel (attention_decode_mma.cu: keys as the rows and up to 8 of a GQA
//      group's query heads as the columns of tensor-core tiles, cp.async K/V pipeline; FP8 caches converted to fp16
//      per tile, head_dim a multiple of 16, else variant 2), then decode_reduce_kernel when split.
//   2: rope_cache kernel, then decode_kernel (CUDA cores) on the rotated q, then decode_reduce_kernel when split.
// (Variants 0/1, RoPE fused into decode_kernel, were removed: correct but 19-25% slower at batch 64 on H100,
// kernels-notes.md.)
// Split-K choice of the decode kernel (shared with the workspace bound).
struct DecodeSplit {
  int splits, chunk;
  bool cluster;  // splits combined inside the launch (thread-block cluster along y)
  bool fast;     // variant 3's decode_fast_kernel
  int warps;     // warps per block of decode_fast_kernel
};
DecodeSplit decode_split(int num_tokens, int num_heads, int num_kv_heads, int head_dim, int max_seq_len,
                         int variant);
constexpr int kSplitBudget = 8192;  // bound on num_tokens * num_heads * splits whenever splits > 1

// The decode kernel a pure-decode step of num_tokens tokens runs: 3 (decode_fast_kernel), 4 (decode_mma_kernel) or
// 2 (decode_kernel). allow_fast false: the choice after the rope_cache kernel ran (a mixed step's single-token
// sequences, or outside variant 3's range), 4 or 2. kernels_bench prints it next to its measurements.
int decode_variant_run(const AttnParams& p, int num_tokens, int max_seq_len, bool fp8_cache, bool allow_fast);

// One query token per block row: attends to cache [0, positions[t]]. ws: split-K partials.
// fast (variant 3): q, k, v are the step's raw rows (RoPE and the cache write happen inside); otherwise (variant 2)
// q is already rotated and the cache already holds k, v (rope_and_cache_write ran first).
cudaError_t attention_decode(const void* q, int q_stride, const void* k, int k_stride, const void* v, int v_stride,
                             bool fast, void* out, const PagedKV& kv, const StepLayout& step, const AttnParams& p,
                             DType dt, void* ws, cudaStream_t s);

// Variant 4's kernel configurations: warps per block, cp.async ring stages per warp, and prefetch (each warp reads
// the block-table entries of its split once, one coalesced load, instead of one per cache row, when 16 divides
// tokens_per_block, in a pure-decode step from row t alongside positions / token_seq; and the whole ring is issued
// before the Q tile is waited for). AttnParams::mma_cfg indexes this table; entry 0 is what the runtime runs. The
// others exist for kernels_bench decode's sweep and are instantiated only for the head size kDecodeMmaSweepDp
// (decode_mma_sweeps); other head sizes run entry 0. Entry 0, 2 warps x 2 stages with prefetch, won the sweep
// (session 9 run 1, H200, Llama-3.1-8B bf16, vs 4 warps x 2 stages without, now entry 10): 1.23x at batch 256 and
// 512, 1.21x at 1024 (ctx 145), 1.01x at 256 x 1100 and 64 x 4096; FP8 cache 1.20x / 1.29x at 256 / 1024. Fewer
// warps per block means more blocks per SM (the ring is shared memory per warp) for the same bytes in flight.
// fp8_tile: an FP8 cache's K and V tiles converted into a warp-private fp16 tile and read by ldmatrix (session 12's
// kernel, kept to A/B) instead of read by each lane as mma fragments straight from the ring's E4M3 bytes (head_dim
// 128 only; other head sizes always convert).
struct DecodeMmaConfig {
  int warps, stages;
  bool prefetch;
  bool fp8_tile = false;
};
constexpr DecodeMmaConfig kDecodeMmaConfigs[] = {
    {2, 2, true},  {4, 3, false}, {2, 3, false}, {2, 4, false}, {2, 2, false}, {8, 2, false},     {4, 2, true},
    {4, 3, true},  {2, 3, true},  {2, 4, true},  {4, 2, false}, {8, 2, true},  {2, 2, true, true}, {2, 3, true, true},
};
constexpr int kDecodeMmaConfigCount = sizeof(kDecodeMmaConfigs) / sizeof(kDecodeMmaConfigs[0]);
constexpr int kDecodeMmaSweepDp = 128;
// Whether AttnParams::mma_cfg selects a configuration at this head size (else entry 0 runs).
inline bool decode_mma_sweeps(int head_dim) {
  return with_head_dim(head_dim, [](auto dp) { return decltype(dp)::value == kDecodeMmaSweepDp; });
}

// The context kernel's block shapes at head_dim <= 128 (attention_context.cu; AttnParams::ctx_cfg indexes this
// table, entry 0 is what the runtime runs): warps per block and m-tiles of 16 query rows per warp, a query tile of
// 16 warps mtiles rows. Two m-tiles a warp read each K / V fragment from shared memory once for both (FlashAttention
// 2's layout: 4 warps of 2 x 16 rows); one m-tile a warp needs half the registers, so twice the warps fit an SM.
// Session 21 (H200, kernels_bench context, alternating; run 2): entry 1 is 1.03-1.04x at long prompts (bf16 32 / 8
// heads 4 x 2048: 706.3 against 723.1 us; f16 1 x 4096: 657.0 against 681.1) and 0.9-0.96x at short ones (64 x 128:
// 208.5 against 201.1; 1 x 128: 18.2 against 16.3), and 8B bf16 2048/128 through the batch manager did not move
// (1,673.5 / 1,687.4 against 1,675.0 / 1,683.7 tok/s, run 1). ncu at 4 x 2048 (run 3): entry 0 issues 300.7 M
// instructions in 648 us (issue slots 49 % busy, tensor pipe 34 %, 3.96 warps a scheduler of which 1.05 eligible),
// entry 1 259.9 M in 630 us (44 % busy, 1.98 warps, 0.59 eligible): fewer shared-memory reads did not make the
// kernel faster; about 9 instructions an mma and too few eligible warps bound both.
// fast_exp: online_softmax_tile's FX (one FFMA and ex2.approx.ftz a score); the entry without it keeps exp2f of
// pre-scaled scores for the A/B, and its output is not byte-identical to entry 0's. Session 23 (H200, kernels_bench
// context, run 2, with the RoPE kernel): entry 0 against entry 2, bf16 4 x 2048 665.6 / 664.4 against 691.6 / 691.2
// us, f16 1 x 4096 618.4 / 623.0 against 646.5 / 651.5, bf16 64 x 128 199.7 / 200.5 against 201.5 / 201.1.
struct ContextConfig {
  int warps, mtiles;
  bool fast_exp = true;
};
constexpr ContextConfig kContextConfigs[] = {{8, 1}, {4, 2}, {8, 1, false}};
constexpr int kContextConfigCount = sizeof(kContextConfigs) / sizeof(kContextConfigs[0]);

// Variant 4's kernel (q already rotated, the cache already holds k, v). splits/chunk: decode_split's (variant 2
// rules); when splits > 1, normalised partials go to ws_o / ws_ml for decode_reduce_kernel. FP8 cache: k_own
// (rope_and_cache_write's k_out, row stride nKV * head_dim) and v_own (the step's v rows, v_stride) hold this
// step's own K/V, unrounded; head_dim a multiple of 16.
cudaError_t attention_decode_mma(const void* q, int q_stride, void* out, float* ws_o, float2* ws_ml,
                                 const PagedKV& kv, const StepLayout& step, const AttnParams& p, int splits, int chunk,
                                 const void* k_own, const void* v_own, int v_stride, DType dt, cudaStream_t s);

// Tiles of up to 64 new tokens of one sequence (FlashAttention-2 style, tensor cores), any step.
// FP8 cache: attention_context_fp8 when p.fp8_context_fmha and it is available, else k_own (rope_and_cache_write's k_out) and v_own (the step's v rows, v_stride) hold this step's own K/V.
cudaError_t attention_context(const void* q, int q_stride, void* out, const PagedKV& kv, const StepLayout& step,
                              const AttnParams& p, const void* k_own, const void* v_own, int v_stride, DType dt,
                              cudaStream_t s);

// The same for an FP8 cache on E4M3 tensor cores (attention_context_fp8.cu), where fp8_context_fmha_unavailable
// (kernels.h) allows it; this step's own K/V are read from the cache (rope_and_cache_write stored them).
cudaError_t attention_context_fp8(const void* q, int q_stride, void* out, const PagedKV& kv, const StepLayout& step,
                                  const AttnParams& p, DType dt, cudaStream_t s);

}  // namespace kd
}  // namespace tsllm
