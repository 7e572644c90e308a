// The runtime's tunables, resolved once at load from tsllm_options and the TSLLM_* environment overrides.
#pragma once
#include <string>
#include <vector>

#include "../../include/tsllm.h"
#include "../kernels/kernels.h"

namespace tsllm {

// The decode graph sizes (load.cc captures one per size up to the first >= max_batch_size, each step pads its batch
// to one): 1, 2, 4, ..., 256, then every 128 up to kGraphMaxBatch (in-flight batching runs full batches of 512 or
// more; steps of 128 keep the padding of a partly full batch small).
constexpr int kGraphMaxBatch = 1024;
inline int next_graph_size(int b) { return b < 256 ? b * 2 : b + 128; }
inline bool is_graph_size(int M) {  // (next_graph_size's sequence: a dozen steps, once per new shape)
  for (int b = 1; b <= kGraphMaxBatch; b = next_graph_size(b))
    if (b == M) return true;
  return false;
}
// The GEMM shapes whose algorithm is timed on first use (gemm_tune on): the rows the runtime meets again and again, the
// decode graph sizes, and M <= kGemvMaxM (where the gemv competes); other M (prefill and mixed steps, whose tokens and
// logits rows vary step to step) take cuBLASLt's first heuristic choice. GemmRunner (fp16 / bf16) and QuantGemm (FP8)
// both follow it. Until session 23 every M <= 256 was timed: each new logits-row count of a mixed step timed the
// lm_head's algorithms inside that step (8B bf16 2048/128: 15-70 ms a count, e.g. M = 9 69.7 ms, where the call takes
// about 0.3 ms; H200, 256 requests, alternating: 1,933.9 / 1,936.7 output tok/s against 1,800.0 / 1,794.5 with every M
// timed; 128/128, 3,000 requests: 17,608.1 against 17,431.0). every_m (TSLLM_GEMM_TUNE=2, A/B only): that rule, every M
// <= 256 and the multiples of 128 up to 1024.
inline bool gemm_tuned_m(int M, bool every_m = false) {
  if (every_m) return M <= 256 || (M % 128 == 0 && M <= 1024);
  return M <= kGemvMaxM || is_graph_size(M);
}

struct Tunables {
  bool gemm_tune = true;      // time algorithms / gemv variants per shape (gemm_tuned_m)
  bool gemm_tune_every_m = false;  // gemm_tuned_m's every_m (TSLLM_GEMM_TUNE=2)
  int gemv = 0;               // -1 never, 0 the tuner decides, 1 always where eligible
  int gemv_variant = -1;      // -1 any, else only that variant
  bool gemv_prologue = true;  // decode prologue fusion (rms_norm / gated_act folded into the gemv)
  // decode epilogue fusion: gated_act folded into the gate_up gemv before it (plan_glu_fusion); environment
  // TSLLM_GLU_FUSE=0|1 for the A/B.
  bool glu_fuse = true;
  // The same for FP8 / int8 / int4 gate_up quant_linears (quant_gemv_glu), environment TSLLM_QGLU=0|1. H200,
  // Llama-2-7B TPOT, alternating, on / off: int4-wo g128 bs 1 1.988 / 1.986 against 2.041 / 2.049 ms, bs 4 2.465 /
  // 2.434 against 2.525 / 2.505; int8-wo bs 1 2.579 / 2.573 against 2.660 / 2.644, bs 4 3.001 / 3.006 against
  // 3.061 / 3.077 (session 21 run 1); FP8 bs 1 2.680 / 2.679 against 2.736 / 2.737 with the plain picks forced
  // (session 25 run 3).
  bool quant_glu = true;
  // decode norm fusion: an rms_norm computed by the last block of the gemv that writes its input (plan_norm_fusion);
  // environment TSLLM_NORM_TAIL=0|1|2 for the A/B (2: fused wherever planned, not only where the tuner's eager
  // timing finds it faster).
  int norm_tail = 1;
  // Environment only (A/B in the step): TSLLM_GEMV_PROLOGUE=2 / TSLLM_QGEMV_PROLOGUE=2 fold every planned pair into
  // its fastest fused variant, not only where the load-time tuner's eager timing finds the fused kernel faster
  // than the pair (that timing runs each alone; in the decode graph a kernel's start overlaps its predecessor's end).
  // One flag for both runners: either switch at 2 forces the fp16 / bf16 pairs and the quantised ones alike (the
  // quantised pairs are planned only with TSLLM_QGEMV_PROLOGUE >= 1).
  bool prologue_force = false;
  // TSLLM_NORM_PDL=0|1|2 (environment): how the norms and gated_act (kernels.h `pdl`) launch where programmatic
  // dependent launch is on: 0 ordinarily; 1 and 2 with PDL, so their launch overlaps the previous kernel's end and
  // the norm's weights load before its wait (norms.cu); 1 lets their successor launch after their wait for the
  // predecessor, 2 before it. 2 by default since session 31, the first time one mode helped every kind: H200 bs 1
  // TPOT, run 3, two alternating rounds, 0 / 1 / 2: Llama-2-7B fp16 3.695 / 3.623 / 3.600 and 3.695 / 3.614 /
  // 3.601 ms, FP8 2.645 / 2.580 / 2.546 and 2.645 / 2.560 / 2.564, int4-wo g128 1.911 / 1.877 / 1.833 and 1.947 /
  // 1.840 / 1.813 (session 19 had 2 slower for FP8 and int4; the early weight loads are new); run 4: Llama-3.1-8B
  // bf16 4.263 / 4.204 / 4.170 and 4.239 / 4.195 / 4.162; Llama-2-7B fp16 bs 4 and 16, 0 / 2: 4.669 / 4.471 and
  // 4.557 / 4.468, 5.034 / 4.908 and 5.049 / 4.914.
  int norm_pdl = 2;
  // Decode steps of at most attn_prefetch_rows tokens: the single-launch decode attention prefetches the first
  // attn_prefetch_mb MiB of the weights of the linear after it (o_proj) into L2 (kernels.h AttnParams::l2_prefetch),
  // so they stream while the latency-bound attention runs instead of after it. 0: off. Environment
  // TSLLM_ATTN_PREFETCH_MB=n, TSLLM_ATTN_PREFETCH_ROWS=n. H100, TPOT ms, alternating off / on (session 36,
  // kernels-notes.md): Llama-2-7B fp16 bs 1 4.775 / 4.722, 4.778 / 4.719 (8 MiB); 16 MiB 4.739 / 4.744, 24 4.757,
  // all 32 MiB 4.779 / 4.771, 4 MiB 4.738 / 4.743; bs 4 5.467 / 5.418, 5.464 / 5.410; Llama-3.1-8B bf16 bs 1 5.433
  // / 5.389, 5.444 / 5.374 (all: 5.496 / 5.568, slower); bs 4 5.999 / 5.914, 5.998 / 5.927; FP8 bs 1 3.032 / 3.017
  // (8 MiB); int4-wo equal within 0.2 %.
  int attn_prefetch_mb = 8;
  int attn_prefetch_rows = 4;
  // 1: the GEMM tuner also times configurations of cuBLASLt's own algorithm that its heuristic does not offer
  // (gemm.cc kExtraConfigs; session 37's gemm_bench search, H200: a Llama-3.1-8B layer's four GEMMs 6.9 % faster
  // back to back at M = 256, 3.9 % at 1,024). 2: also tunes prefill steps of max_num_tokens rows (untuned, they run
  // the heuristic's first pick: qkv at M = 8,192 0.614 ms alone against 0.503 for the search's best). Off until an
  // engine A/B says so. Environment TSLLM_GEMM_EXTRA=0|1|2.
  int gemm_extra = 0;
  int decode_variant = 3;     // 3 (falls back to 4 or 2 by GQA ratio, 2 for FP8 caches, outside its range), 2 or 4
  int decode_mma_min_gqa = kDecodeMmaMinGqa;  // the GQA ratio from which variant 3 falls back to 4 rather than 2
  int decode_mma_cfg = 0;  // variant 4's kernel configuration (kd::kDecodeMmaConfigs; others for A/B only)
  int context_cfg = 0;     // the context kernel's block shape (kd::kContextConfigs; others for A/B only)
  bool pdl = true;            // programmatic dependent launch where the GPU has it
  int fp8_context_fmha = 0;   // FP8 context FMHA: -1 off, 0 auto (off for now), 1 on every FP8 KV cache (strict)
  bool strict = false;        // forced kernels that cannot run are errors
  int profile = 0;            // 0 off, 1 per-node events, 2 graph breakdown
  bool tune_log = false;      // the tuners' picks to stderr without profiling (environment TSLLM_TUNE_LOG=1)
  // Step tuning (step_choice.h, step.cc step_tune): decode graphs of at most this many sequences decide their decode
  // fusions, then their gemv picks (fp16 / bf16 and quantised) again by timing the graph with each near candidate,
  // once per shape, when first captured (H200, Llama-2-7B bs 1: 1-2 s once; TPOT fp16 3.652 / 3.635 ms against
  // 3.709 / 3.668 off, session 26; FP8 2.624 against 2.679, int4-wo g128 1.924 against 1.990, session 25). 1, not 4:
  // batches 2 and 4 gained nothing (fp16 3.965 / 4.512 ms against 3.963 / 4.525, FP8 3.078 / 3.430 against
  // 3.076 / 3.428, session 26 run 3). 0: off. Environment TSLLM_STEP_TUNE=n.
  int step_tune = 1;
  // Decode graphs of at least this many sequences (0: none) decide their cuBLASLt configurations again in the step
  // (step.cc, after the decisions above): each GEMM shape's pick against the 3 fastest others its tuning timed within
  // 10 % alone (the heuristic's candidates, their split-K variants, gemm_extra's configurations). Why: the tuner
  // times each call alone, L2 flushed; session 38 (H100) had its lone picks of gemm_extra's configurations run the
  // 8B decode steps 3.8-4.7 % slower than the heuristic's, so lone timing misranks configurations close to each
  // other. Off: session 38's A/B (H100, 8B 128/128) was equal with it (18,087 / 18,095 against 18,116 / 18,073
  // tok/s), its logged step gains an artefact of timing the pick before the candidates. On, those graphs go through
  // the whole step tuner (its fusion and gemv rounds too, which offer nothing at such batches), and only fp16 / bf16
  // GemmRunner plans are offered (not QuantGemm's FP8 ones). Off, tune() still keeps what it timed (Plan::alts, 64 B
  // a configuration, and step_lt_'s times): a few hundred KB for a hundred tuned shapes. Environment
  // TSLLM_GEMM_STEP=n.
  int gemm_step = 0;
  // quant_linear (quant_gemm.h), environment only (A/B): decode through the quantised gemv where eligible,
  // a forced gemv variant (-1: tuned), FP8 context GEMMs with cuBLASLt outer-vector scaling where available.
  bool quant_gemv = true;
  int quant_gemv_variant = -1;
  int quant_gemv_tune_below = -1;  // the tuner tries only variants below this (-1: all), to A/B newly added ones
  // Per-shape forced variants (TSLLM_QGEMV_PICKS=NxK:v,...): the engine's step measured with picks the load-time
  // tuner would not make (session 16: its eager timings and gemv_bench's graph timings ranked int4 variants apart).
  struct ShapePick {
    int N, K, variant;
  };
  std::vector<ShapePick> quant_gemv_picks;
  // rms_norm folded into the quantised decode gemv (plan_prologue_fusion). Off: the load-time tuner times the fused
  // kernel alone and picks it by a few percent, but inside the decode graph it costs more than it saves (H200,
  // Llama-2-7B FP8 bs 1, TSLLM_PROFILE=graph step: 2.917 ms with the tuner's picks, 3.403 ms in a run where it
  // fused both qkv and gate/up, 2.756 ms unfused; int8 / int4: the tuner already keeps the unfused pair).
  bool quant_gemv_prologue = false;
  bool fp8_outer_vec = true;
  // FP8 cuBLASLt GEMMs with CUBLASLT_MATMUL_DESC_FAST_ACCUM: intermediate results are not periodically promoted to a
  // higher precision (cuBLASLt's words: "might be faster but at the cost of lower accuracy"), the mode TensorRT-LLM's
  // FP8 GEMM wrapper, FBGEMM and PyTorch's scaled_mm(use_fast_accum) offer for inference. Not the quantised gemv.
  bool fp8_fast_accum = true;
  // The activation quantisation of an FP8 GEMM fused into the norm / gated_act producing its x (engine.h
  // fp8_consumer): that node writes E4M3 rows and scales instead of its output, and the GEMM skips
  // quantize_rows_fp8 — a pass over the activations and a launch per linear. Environment only (A/B):
  // TSLLM_FP8_ACT_FUSION=0 turns it off. The same bytes reach the GEMM either way.
  bool fp8_act_fusion = true;
  // The weight pass (file_pass.h), environment only: reader threads (0: the hardware threads, at most 16),
  // O_DIRECT (-1: for chunks the page cache lacks, 0 never, 1 every chunk).
  int load_threads = 0;
  int load_direct = -1;
  // moe, environment only (A/B): 0 auto (gemv for T <= kMoeGemvMaxTokens, else grouped), 1 always the gemv
  // path, 2 always the grouped GEMMs; whether the combine absorbs the next add / add_rms_norm.
  int moe_path = 0;
  bool moe_fuse = true;
};

// Checks the option values (LoadError naming the field) and applies the environment overrides.
Tunables resolve_tunables(const tsllm_options& o, const std::string& path);

}  // namespace tsllm
