// paged_attention: RoPE + KV-cache write, then causal attention over the paged cache.
//   1. rope_cache.cu: RoPE on q (into the workspace) and k; k, v written at slot positions[t];
//   2a. max_new_tokens == 1 (pure decode): flash-decoding (GQA-aware, split-K for long contexts, then a small
//       reduce kernel): variant 4 (attention_decode_mma.cu, tensor cores) or variant 2 (attention_decode.cu, CUDA
//       cores). Variant 3 (AttnParams::decode_variant 0 or 3, the default) runs the small-batch latency kernel
//       (decode_fast_kernel, one launch, skipping step 1; 16-bit caches) where it applies, else variant 4 at GQA
//       ratios >= AttnParams::mma_min_gqa, else 2 (kd::decode_variant_run).
//   2b. otherwise (prefill, chunked prefill, mixed steps): attention_context.cu, FlashAttention-2 tiles on tensor
//       cores, causal, GQA, any mix of sequences.
// Workspace layout (computed from this step's sizes, always within attention_workspace_bytes at the maxima):
//   [rotated q: num_tokens * nH * D * 2 bytes, 256-aligned (not used by variant 3)]
//   [FP8 cache only: this step's rotated k, num_tokens * nKV * D * 2 bytes][split-K partials]
// FP8 KV cache: always the rope_cache kernel first (it stores e4m3 rows and keeps the rotated k for this step's own
// keys), then variant 4's or 2's decode kernel or the context kernel, all reading the step's own K/V unrounded; or,
// with AttnParams::fp8_context_fmha, the FP8 context FMHA (attention_context_fp8.cu), which reads them as just
// stored.
#include <algorithm>

#include "attention_internal.h"

namespace tsllm {
namespace {

inline size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

}  // namespace

size_t attention_workspace_bytes(int max_num_tokens, int max_num_seqs, int num_heads, int head_dim,
                                 int max_seq_len, int fp8_kv_heads) {
  (void)max_num_seqs;
  (void)max_seq_len;
  const size_t qrot = align256((size_t)max_num_tokens * num_heads * head_dim * 2);
  const size_t kown = align256((size_t)max_num_tokens * fp8_kv_heads * head_dim * 2);
  const size_t parts = kd::kSplitBudget;  // num_tokens * nH * splits <= kSplitBudget whenever splits > 1
  return qrot + kown + align256(parts * head_dim * sizeof(float)) + align256(parts * sizeof(float2)) + 256;
}

cudaError_t paged_attention(const void* q, int q_stride, const void* k, int k_stride, const void* v, int v_stride,
                            void* out, const PagedKV& kv, const StepLayout& step, const AttnParams& p, DType dt,
                            void* workspace, cudaStream_t s) {
  if (step.num_tokens <= 0) return cudaGetLastError();
  const int D = p.head_dim;
  if (dt != DType::F16 && dt != DType::BF16) return cudaErrorInvalidValue;
  const bool fp8 = kv.dtype == DType::FP8_E4M3;
  if ((kv.dtype != dt && !fp8) || kv.head_dim != D || kv.num_kv_heads != p.num_kv_heads) return cudaErrorInvalidValue;
  if (fp8 && !(p.k_scale > 0.f && p.v_scale > 0.f)) return cudaErrorInvalidValue;
  if (D < 8 || D > kd::kMaxHeadDim || D % 8 != 0) return cudaErrorInvalidValue;
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0) return cudaErrorInvalidValue;
  if (p.rotary_dim < 0 || p.rotary_dim > D || p.rotary_dim % 2 != 0 || (p.rotary_dim > 0 && !p.inv_freq))
    return cudaErrorInvalidValue;
  if (q_stride % 8 || k_stride % 8 || v_stride % 8) return cudaErrorMisalignedAddress;  // 16-byte row chunks

  char* ws = static_cast<char*>(workspace);
  if (p.decode_variant != 0 && (p.decode_variant < 2 || p.decode_variant > 4)) return cudaErrorInvalidValue;
  if (p.mma_cfg < 0 || p.mma_cfg >= kd::kDecodeMmaConfigCount) return cudaErrorInvalidValue;
  if (p.ctx_cfg < 0 || p.ctx_cfg >= kd::kContextConfigCount) return cudaErrorInvalidValue;
  if (step.max_new_tokens == 1 && kd::decode_variant_run(p, step.num_tokens, step.max_seq_len, fp8, true) == 3)
    return kd::attention_decode(q, q_stride, k, k_stride, v, v_stride, true, out, kv, step, p, dt, ws, s);
  const bool rope = p.rotary_dim > 0;
  const size_t qrot_bytes = rope ? align256((size_t)step.num_tokens * p.num_heads * D * 2) : 0;
  void* q_rot = rope ? ws : nullptr;
  void* k_own = fp8 ? ws + qrot_bytes : nullptr;
  const size_t kown_bytes = fp8 ? align256((size_t)step.num_tokens * p.num_kv_heads * D * 2) : 0;
  cudaError_t e = kd::rope_and_cache_write(q, q_stride, k, k_stride, v, v_stride, q_rot, k_own, kv, step, p, dt, s);
  if (e != cudaSuccess) return e;
  const void* qa = rope ? q_rot : q;
  const int qa_stride = rope ? p.num_heads * D : q_stride;
  void* split_ws = ws + qrot_bytes + kown_bytes;
  if (step.max_new_tokens == 1)
    return kd::attention_decode(qa, qa_stride, k_own, p.num_kv_heads * D, fp8 ? v : nullptr, v_stride, false, out, kv,
                                step, p, dt, split_ws, s);
  // Mixed step: its leading one-token sequences (token t is sequence t) through the decode kernel, which reads
  // each K/V row once per GQA group (the context kernel gives each one a 64-row tile per query head), the rest
  // through the context kernel on views that start at sequence num_single.
  const int ns = std::min(step.num_single, step.num_seqs);
  if (ns <= 0) return kd::attention_context(qa, qa_stride, out, kv, step, p, k_own, v, v_stride, dt, s);
  StepLayout single = step;
  single.num_tokens = single.num_seqs = ns;
  single.max_new_tokens = 1;
  single.num_single = 0;
  e = kd::attention_decode(qa, qa_stride, k_own, p.num_kv_heads * D, fp8 ? v : nullptr, v_stride, false, out, kv,
                           single, p, dt, split_ws, s);
  if (e != cudaSuccess || ns == step.num_seqs) return e;
  StepLayout rest = step;
  rest.seq_start += ns;
  rest.seq_len += ns;
  rest.num_seqs -= ns;
  rest.num_single = 0;
  PagedKV kv_rest = kv;
  kv_rest.block_tables += (size_t)ns * kv.max_blocks_per_seq;
  return kd::attention_context(qa, qa_stride, out, kv_rest, rest, p, k_own, v, v_stride, dt, s);
}

int decode_mma_config_count() { return kd::kDecodeMmaConfigCount; }
int context_config_count() { return kd::kContextConfigCount; }

}  // namespace tsllm
