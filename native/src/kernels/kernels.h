// Launchers of tsllm's own CUDA kernels. One kernel family per .cu file beside this header.
// Every launcher is asynchronous on `stream`, never allocates, and returns cudaGetLastError().
// Activation dtype is fp16 or bf16 (DType), math accumulates in fp32.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "enums.h"

namespace tsllm {


// Programmatic dependent launch (PDL): launchers that take `pdl` launch with programmatic stream serialization
// when it is true and the current device is sm_90+ (pdl.cu); the runtime passes tsllm_options' choice (on by
// default: H100, Llama-2-7B decode at batch 1, 4.975 ms/step with PDL vs 5.021 without).
bool pdl_supported();

// ---- weights ----
// Random weights (docs/engine-format.md): value = mean + scale*(2r-1), r = (u>>8)/2^24,
// u = lowbias32(lowbias32(seed) ^ i); fp32 math without FMA, then RNE to dtype.
cudaError_t random_fill(void* out, DType dt, uint64_t n, uint32_t seed, float mean, float scale, cudaStream_t s);

// ---- elementwise / norms ----
// out[t,:] = table[ids[t]-vocab_start,:], zeros when the id is outside [vocab_start, vocab_start+vocab_rows).
cudaError_t embedding(const int32_t* ids, const void* table, void* out, int num_tokens, int hidden,
                      int vocab_start, int vocab_rows, DType dt, cudaStream_t s);
// FP8 rows for an FP8 GEMM (quant.h numerics), written by the producer of that GEMM's x instead of x itself (the
// activation quantisation fused into the norm / gated_act, forward.cc): q [rows, cols] holds the E4M3 codes and
// scales [rows] the per-token scales, byte for byte what quantize_rows_fp8 makes of the output rounded to the
// activation dtype. fp16 / bf16, cols a multiple of 8 up to kFp8RowsMaxCols, 16-byte aligned (else
// cudaErrorNotSupported / cudaErrorMisalignedAddress, nothing launched).
struct Fp8Rows {
  uint8_t* q = nullptr;
  float* scales = nullptr;
  int max_threads = 0;  // threads a row's block may take (0: 512); kernels_bench fp8rows times the choices
  // gated_act: 0 the rounded row in registers (VPT vectors a thread, max_threads a row); 1 staged in shared memory
  // as the activation dtype, 256 threads a row (kernels_bench fp8rows times both); -1 kGatedFp8Variant.
  int variant = -1;
};
constexpr int kGatedFp8Variant = 1;
constexpr int kFp8RowsMaxCols = 32768;
inline bool fp8_rows_supported(int cols, DType dt) {
  return (dt == DType::F16 || dt == DType::BF16) && cols > 0 && cols % 8 == 0 && cols <= kFp8RowsMaxCols;
}

// residual == nullptr: y = rmsnorm(x)*(w + w_offset). Otherwise sum = x + residual is written to sum_out and
// y = rmsnorm(sum)*(w + w_offset). w_offset (fp32) is the registry's weight_offset: Gemma's RMSNorm scales by 1 + w.
// y may not alias x; sum_out may alias x or residual.
// pre / post (may be null or empty; a compile-time variant of the kernel, so norms without them run unchanged):
// pre is applied to x as it is read (fp32, before the residual add: sum = pre(x) + residual), post to the
// normalised value before it is rounded to y. fp8 (may be null): y is not written (may be null); fp8's rows are.
// pdl (norms and gated_act; not their FP8-rows kernels): 0 an ordinary launch; 1 / 2 with programmatic dependent
// launch, the successor let go after (1) or before (2) the wait for the predecessor (A/B: Tunables::norm_pdl).
cudaError_t rms_norm(const void* x, const void* residual, const void* w, float w_offset, void* y, void* sum_out,
                     int rows, int hidden, float eps, DType dt, cudaStream_t s, const EwChain* pre = nullptr,
                     const EwChain* post = nullptr, const Fp8Rows* fp8 = nullptr, int pdl = 0);
// Same with LayerNorm (w + w_offset, b). b may be nullptr.
cudaError_t layer_norm(const void* x, const void* residual, const void* w, float w_offset, const void* b, void* y,
                       void* sum_out, int rows, int hidden, float eps, DType dt, cudaStream_t s,
                       const EwChain* pre = nullptr, const EwChain* post = nullptr, const Fp8Rows* fp8 = nullptr,
                       int pdl = 0);
// out[t,i] = act(x[t,i]) * x[t, inter+i] for i < inter (x is [rows, 2*inter]). fp8 (may be null): out is not
// written (may be null); fp8's rows are.
cudaError_t gated_act(const void* x, void* out, int rows, int inter, Act act, DType dt, cudaStream_t s,
                      const Fp8Rows* fp8 = nullptr, int pdl = 0);
// out = act(x) elementwise (out may alias x).
cudaError_t activation(const void* x, void* out, uint64_t n, Act act, DType dt, cudaStream_t s);
// out = a op b elementwise, fp32 math (elementwise.cu). out may alias a or b.
enum class BinaryOp : int { Add = 0, Sub = 1, Mul = 2, Div = 3 };
cudaError_t binary(const void* a, const void* b, void* out, uint64_t n, BinaryOp op, DType dt, cudaStream_t s);
// out = f(x) elementwise, fp32 math (elementwise.cu; UnaryOp in enums.h). out may alias x.
cudaError_t unary(const void* x, void* out, uint64_t n, UnaryOp op, float param, DType dt, cudaStream_t s);
// A linear's epilogue after its GEMM (elementwise.cu): out = post(act(x)) + residual, fp32 math, one rounding.
// residual may be null; out may alias x or residual. The runtime launches it only for linears with a post chain
// that neither the gemv nor cuBLASLt's alpha could apply.
cudaError_t linear_epilogue(const void* x, const void* residual, void* out, uint64_t n, Act act, const EwChain& post,
                            DType dt, cudaStream_t s);
// out[r,j] = x[r, col_start + j] for j < out_cols (x row stride in_cols). Used by split.
cudaError_t slice_cols(const void* x, void* out, int rows, int in_cols, int col_start, int out_cols, DType dt,
                       cudaStream_t s);
// out[r,:] = x[idx[r],:]
cudaError_t gather_rows(const void* x, const int32_t* idx, void* out, int num_rows, int hidden, DType dt,
                        cudaStream_t s);
// Converts n elements between dtypes (e.g. logits to fp32).
cudaError_t convert(const void* x, DType from, void* out, DType to, uint64_t n, cudaStream_t s);

// ---- rope (rope.cu) ----
// Standalone `rope` op: out[t, h*D + d] = rotate(x[t, h*D + d]) at positions[t] with angle
// pos * inv_freq[i] (fp32); dims >= rotary_dim pass through. out may not alias x.
cudaError_t rope_standalone(const void* x, void* out, const int32_t* positions, const float* inv_freq, int rows,
                            int num_heads, int head_dim, int rotary_dim, RopeStyle style, DType dt, cudaStream_t s);

// ---- small-M linear (gemv.cu, gemv_rms.cu, gemv_gated.cu; kernel in gemv_impl.cuh) ----
// out[m, n] = x[m, :] · w[n, :] (+ bias[n]) (+ residual[m, n]), w [N, K] row-major, fp32 accumulation, for
// decode. Needs M <= kGemvMaxM, K % 8 == 0 and 16-byte aligned x and w (gemv_eligible). residual may alias out.
// `variant` in [0, kGemvVariants) picks rows per warp group and the K split (the runtime's tuner times them all).
// post (may be null or empty): a chain of unary ops applied in registers after the bias, before the residual
// (out = post(x·wᵀ + bias) + residual), one rounding at the end: a compile-time kernel variant (gemv_post.cu).
constexpr int kGemvMaxM = 4;
constexpr int kGemvVariants = 10;  // 4-warp blocks (gemv_impl.cuh)
bool gemv_eligible(const void* x, const void* w, int M, int K, DType dt);
cudaError_t gemv(int variant, const void* x, const void* w, const void* bias, const void* residual, void* out, int M,
                 int N, int K, DType dt, bool pdl, cudaStream_t s, const EwChain* post = nullptr);

// The same kernel with a prologue folded into its vector read (the runtime's prologue fusion skips the
// rms_norm / gated_act node that feeds a decode linear):
//   RmsNorm: x is rms_norm's input [M, K]; every block computes inv_rms of the M rows (fp32) and uses
//     to_dtype(x * inv_rms * norm_w), rounded as rms_norm writes y (identical but for the order of the fp32
//     sum of squares: within 1 ulp).
//   GatedSilu / GatedGeluTanh: x is the [M, 2K] gate|up output; the vector is to_dtype(act(gate) * up) as
//     gated_act writes it.
// out must not overlap x.
enum class GemvPro : int { None = 0, RmsNorm = 1, GatedSilu = 2, GatedGeluTanh = 3 };
struct GemvPrologue {
  GemvPro kind = GemvPro::None;
  const void* norm_w = nullptr;  // RmsNorm: the norm's weight [K]
  float eps = 0.f;
};
bool gemv_pro_eligible(const GemvPrologue& pro, const void* x, const void* w, int M, int K, DType dt);
// The activation of a gated kind (GatedSilu: Silu, GatedGeluTanh: GeluTanh).
inline Act gated_act_of(GemvPro g) { return g == GemvPro::GatedSilu ? Act::Silu : Act::GeluTanh; }
// post: a folded chain (see gemv) with GemvPro::None only (the prologue variants have none: the runtime does not
// plan a prologue fusion into a linear with a chain).
cudaError_t gemv_pro(int variant, const GemvPrologue& pro, const void* x, const void* w, const void* bias,
                     const void* residual, void* out, int M, int N, int K, DType dt, bool pdl, cudaStream_t s,
                     const EwChain* post = nullptr);

// The gated activation in the gemv's epilogue (gemv_glu.cu; the runtime's epilogue fusion skips the gated_act node
// after a decode gate_up linear): w is gate|up [2N, K] (gate rows, then up rows), bias [2N] or null, act GatedSilu
// or GatedGeluTanh; out[m, n] = to_dtype(act(g) * u) [M, N] with g = to_dtype(x·w[n] + bias[n]) and
// u = to_dtype(x·w[N + n] + bias[N + n]): the linear's and gated_act's roundings, so the same values as the pair.
// Variants as gemv's, but not 2 and 7 (gemv_glu_takes). out must not overlap x.
bool gemv_glu_takes(int variant);
cudaError_t gemv_glu(int variant, GemvPro act, const void* x, const void* w, const void* bias, void* out, int M, int N,
                     int K, DType dt, bool pdl, cudaStream_t s);

// The gemv, then the rms_norm of the rows it wrote, by the grid's last block (gemv_norm.cu; the runtime's norm
// fusion skips an rms_norm right after a decode linear): out as gemv writes it (bias, residual), and
// norm_out[m, :] = to_dtype(out[m, :] · inv_rms · norm_w), inv_rms = rsqrtf(Σ out[m, :]² / N + eps) over the
// rounded out, as rms_norm writes y (its fp32 sum of squares in another order: within 1 ulp). N % 8 == 0 and
// out, norm_w, norm_out 16-byte aligned. counter: a zeroed unsigned the launch leaves zeroed (launches ordered on
// one stream may share one). norm_out may be out, or overlap x or residual; not part of out. gemv_norm_eligible:
// gemv_eligible and those shape and alignment needs.
bool gemv_norm_eligible(const void* x, const void* w, const void* out, const void* norm_w, const void* norm_out, int M,
                        int N, int K, DType dt);
cudaError_t gemv_norm(int variant, const void* x, const void* w, const void* bias, const void* residual, void* out,
                      int M, int N, int K, const void* norm_w, float eps, void* norm_out, unsigned* counter, DType dt,
                      bool pdl, cudaStream_t s);

// ---- mixture of experts (moe.cu: dispatch + combine; moe_route.cu; moe_gemv.cu; moe_grouped.cu) ----
// The `moe` op of src/ops/moe.ts (transformers' MixtralSparseMoeBlock after its router linear), per token t:
//   p = softmax(logits[t]) in fp32 → the top_k experts (ties: lowest index first, as torch.topk) → weights
//   renormalised to sum 1 when `normalize` → out[t] = Σ_k w_k · w2_e(act(w1_e·x) ⊙ w3_e·x).
// Experts stacked on axis 0 in Hugging Face's [out, in] layout: w1, w3 [E·I, H], w2 [E·H, I].
// Rounding: h = dtype(act(g)·u) from fp32 g, u; each expert's down projection stays fp32; the weighted sum is
// rounded once. The combine may fold the graph's next residual add (out = dtype(dtype(moe) + residual)) and
// an rms_norm of that sum (add_rms_norm: sum_out = the rounded sum, out = rmsnorm(sum)·(w + w_offset), as
// norms.cu rounds them).
// Paths (no host synchronisation in either, so decode steps capture into CUDA graphs):
//   gemv (T ≤ kMoeGemvMaxTokens): per (token, slot) pair, gate/up and down gemv kernels that stream only the
//     selected experts' rows;
//   grouped: tokens permuted by expert (counts by atomics in the routing kernel, offsets scanned on the GPU),
//     grouped mma.sync GEMMs whose tiles find their expert from the device counts, then the combine. Steps of
//     more than kMoeChunkTokens tokens run in chunks (bounded workspace).
constexpr int kMoeGemvMaxTokens = 4;
constexpr int kMoeChunkTokens = 2048;
enum class MoePath : int { Auto = 0, Gemv = 1, Grouped = 2 };
struct MoeArgs {
  const void* x = nullptr;       // [T, H]
  const void* logits = nullptr;  // [T, E] router logits (activation dtype)
  const void *w1 = nullptr, *w3 = nullptr, *w2 = nullptr;
  int T = 0, E = 0, K = 0, H = 0, I = 0;
  // Expert parallelism: this rank's weights hold experts [expert_start, expert_start + local_experts) of the E
  // the router scores (local_experts 0: all E); tokens are routed over all E and only local picks are added.
  int expert_start = 0, local_experts = 0;
  bool normalize = true;
  Act act = Act::Silu;
  void* out = nullptr;            // [T, H]; the normalised sum when norm_w is set
  const void* residual = nullptr; // fused residual add, or null
  const void* norm_w = nullptr;   // fused rms_norm weight [H] (needs residual and sum_out), or null
  float eps = 1e-5f, w_offset = 0.f;
  void* sum_out = nullptr;        // the rounded residual sum (may alias residual), with norm_w
  void* workspace = nullptr;      // moe_workspace_bytes(T, E, K, H, I, dt)
  MoePath path = MoePath::Auto;
};
// Whether the shapes are supported (H, I multiples of 8; 1 ≤ K ≤ E ≤ kMoeMaxExperts; K ≤ kMoeMaxTopK).
bool moe_supported(int E, int K, int H, int I);
size_t moe_workspace_bytes(int max_tokens, int E, int K, int H, int I, DType dt);
cudaError_t moe_forward(const MoeArgs& a, DType dt, cudaStream_t s);
// The routing kernel alone (one warp per token): ids / weights [T, K] best first, ids relative to expert_start
// and -1 for experts outside [expert_start, expert_start + local) (another rank's); counts [local] (may be null)
// gets each local expert's picks added (atomics; the caller zeroes it).
cudaError_t moe_route(const void* logits, int T, int E, int K, bool normalize, int expert_start, int local,
                      int32_t* ids, float* weights, int32_t* counts, DType dt, cudaStream_t s);

// ---- attention over the paged KV cache ----
// Per-layer cache: blocks of [2][num_kv_heads][tokens_per_block][head_dim] elements (K then V),
// block b of layer l at cache_base + (l*num_blocks + b) * block_elems.
// FP8_E4M3 cache: rows stored as e4m3(x / scale) with AttnParams::k_scale / v_scale (per layer), read back as
// stored · scale; this step's own tokens attend to their K/V before rounding (the reference's rule).
struct PagedKV {
  void* base;            // whole pool
  DType dtype;           // the activation dtype (F16/BF16), or FP8_E4M3
  int num_layers, num_blocks, num_kv_heads, head_dim, tokens_per_block;
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq] device
  int max_blocks_per_seq;
};
// Step layout, device arrays. Tokens of one sequence are contiguous in the packed batch.
struct StepLayout {
  int num_tokens, num_seqs;
  const int32_t* positions;    // [num_tokens] position = cache slot
  const int32_t* token_seq;    // [num_tokens] sequence index of each token
  const int32_t* seq_start;    // [num_seqs+1] first packed token of each sequence
  const int32_t* seq_len;      // [num_seqs] cached length after this step (= last position + 1)
  int max_new_tokens;          // max over sequences of tokens in this step (1 => pure decode)
  int max_seq_len;             // max over sequences of seq_len
  // Mixed steps: how many leading sequences bring exactly one token (the batch manager packs running requests'
  // decode tokens first); they go to the decode kernel, the rest to the context kernel. 0: all to the context kernel.
  int num_single = 0;
};
// Default of AttnParams::mma_min_gqa (tsllm_options.decode_mma_min_gqa): the tensor-core decode kernel's 16-row
// tile holds one KV head's query heads, so its work per K/V byte is the same at any GQA ratio, while the CUDA-core
// kernel's grows with the ratio (a dot product, shuffles and an exp per query head and key). Measured on the H200
// (kernels_bench decode): 1.00-1.29x for the tensor-core kernel at ratio 4 (Llama-3-8B), 0.75-0.86x at ratio 1
// (Llama-2-7B); ratio 2 is unmeasured, so it keeps the CUDA-core kernel (kernels-notes.md).
constexpr int kDecodeMmaMinGqa = 4;
struct AttnParams {
  int layer, num_heads, num_kv_heads, head_dim;
  float scale;
  int rotary_dim;              // 0 = no rope (q, k already rotated)
  RopeStyle rope_style;
  const float* inv_freq;       // [rotary_dim/2] fp32, may be null when rotary_dim == 0
  // Decode (max_new_tokens == 1) path: 0 or 3 = the single-launch small-batch kernel where it applies (16-bit
  // caches), else 4 when num_heads / num_kv_heads >= mma_min_gqa, otherwise 2; 2 = always the separate
  // RoPE/cache-write kernel + CUDA-core decode kernel (+ reduce); 4 = always the same with the tensor-core GQA decode
  // kernel (FP8 caches: head_dim a multiple of 16, else 2). See attention_internal.h (kd::decode_variant_run).
  int decode_variant;
  bool pdl;                    // launch the single-launch decode kernel with PDL (sm_90+)
  float k_scale = 1.f, v_scale = 1.f;  // FP8 KV cache only (the compiler's per-layer scales)
  int mma_min_gqa = kDecodeMmaMinGqa;  // decode variants 0/3 outside variant 3's range: 4 from this GQA ratio on
  // FP8 KV cache, steps with more than one new token: the FP8 context FMHA (attention_context_fp8.cu: Q and P in
  // E4M3 on tensor cores) where fp8_context_fmha_unavailable allows it, else the fp16/bf16 context kernel.
  bool fp8_context_fmha = false;
  // Decode variant 4's kernel configuration: an index into kd::kDecodeMmaConfigs (attention_internal.h; warps,
  // ring stages, block-table prefetch, FP8 fragments). 0 is the runtime's default; the others are for kernels_bench's
  // sweep, kernels_test and TSLLM_DECODE_MMA_CFG's A/B.
  int mma_cfg = 0;
  // The context kernel's block shape: an index into kd::kContextConfigs (attention_internal.h; warps per block,
  // m-tiles of 16 query rows per warp). 0 is the runtime's default; the other for kernels_bench, kernels_test and
  // TSLLM_CONTEXT_CFG's A/B.
  int ctx_cfg = 0;
  // Decode variant 3 (decode_fast_kernel) only: [l2_prefetch, + l2_prefetch_bytes) prefetched into L2 by the
  // blocks once the previous kernel is done — the runtime passes the weights of the linear after attention (o_proj):
  // a latency-bound batch-1 attention otherwise leaves the HBM idle while that linear's blocks wait for its output.
  // A hint: the output never depends on it. 16-byte aligned, bytes a multiple of 16.
  const void* l2_prefetch = nullptr;
  size_t l2_prefetch_bytes = 0;
};
// How many configurations AttnParams::mma_cfg / ctx_cfg index.
int decode_mma_config_count();
int context_config_count();
// Why the FP8 context FMHA cannot run for an FP8 KV cache of head size head_dim on the current device (head_dim
// not a multiple of 16 up to 128; no sm_89+ code of the kernel for the GPU), or nullptr when it can.
const char* fp8_context_fmha_unavailable(int head_dim);
// qkv: [T, (nH + 2*nKV)*D] packed rows, or separate q/k/v with their own row strides.
// Applies RoPE to q (into a scratch copy) and k, writes k and v into the cache at each token's position,
// then causal attention of each token over its sequence's cache [0, pos]. out: [T, nH*D].
// workspace: attention_workspace_bytes(...) bytes of device scratch (split-K partials, rotated q).
// fp8_kv_heads: the KV heads of an FP8 cache (room for this step's rotated k in the activation dtype), else 0.
size_t attention_workspace_bytes(int max_num_tokens, int max_num_seqs, int num_heads, int head_dim, int max_seq_len,
                                 int fp8_kv_heads = 0);
cudaError_t paged_attention(const void* q, int q_stride, const void* k, int k_stride, const void* v, int v_stride,
                            void* out, const PagedKV& kv, const StepLayout& step, const AttnParams& p,
                            DType dt, void* workspace, cudaStream_t s);

// ---- sampling ----
// logits [num_rows, vocab]. Per row: temperature <= 0 or top_k == 1 => greedy (argmax, lowest index on ties);
// otherwise softmax(logits/temperature) restricted to top_k (0 = all) and top_p (1 = all), sampled with a
// counter-based RNG from (seed[row], step[row]) so a seed repeats exactly. out_tokens int32 [num_rows].
// ---- pipelined steps ----
// ids[seq_start[s]] = prev[feed_src[s]] for each sequence s < num_seqs with feed_src[s] >= 0 (device arrays).
cudaError_t feed_tokens(int32_t* ids, const int32_t* seq_start, const int32_t* feed_src, const int32_t* prev,
                        int num_seqs, cudaStream_t s);

size_t sampling_workspace_bytes(int max_rows, int vocab);
// logits_dt: the logits as stored (fp32, fp16 or bf16), read directly: the same tokens as from their fp32 copy.
cudaError_t sample(const void* logits, DType logits_dt, int num_rows, int vocab, const float* temperature,
                   const int32_t* top_k, const float* top_p, const uint64_t* seed, const int32_t* step,
                   int32_t* out_tokens, void* workspace, cudaStream_t s);

}  // namespace tsllm
