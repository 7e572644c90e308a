// The loaded engine: device memory, the op program, the paged KV cache, per-step metadata buffers
// and the CUDA graphs of decode steps. load.cc builds it, forward.cc interprets the program,
// step.cc plans and runs steps (tsllm_step, tsllm_generate), api.cc is the C ABI.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <map>
#include <unordered_map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../../include/tsllm.h"
#include "../kernels/kernels.h"
#include "engine_file.h"
#include "gemm.h"
#include "quant_gemm.h"
#include "kv_cache.h"
#include "options.h"

namespace tsllm {

// A failure while running a step (one line).
struct StepError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

#define TSLLM_CUDA(expr, what)                                                                                  \
  do {                                                                                                          \
    cudaError_t e_ = (expr);                                                                                    \
    if (e_ != cudaSuccess) throw StepError(std::string(what) + ": " + cudaGetErrorString(e_));                  \
  } while (0)

// Byte offsets of the per-step metadata arrays inside one buffer (pinned on the host, mirrored on the
// device, uploaded with one cudaMemcpyAsync). Block tables come last so a step copies only the prefix
// up to its own sequences' rows.
// The metadata arrays of one buffer laid out by a MetaLayout (a host staging slot or the device copy), typed.
struct MetaArrays {
  uint64_t* seed;
  int32_t *input_ids, *positions, *token_seq, *logits_indices;
  float* temperature;
  int32_t* top_k;
  float* top_p;
  int32_t *sample_step, *seq_start, *seq_len, *feed_src, *block_tables;
};

struct MetaLayout {
  int tcap = 0, scap = 0, max_blocks = 0;
  size_t seed = 0;          // u64 [tcap]   per logits row
  size_t input_ids = 0;     // i32 [tcap]
  size_t positions = 0;     // i32 [tcap]
  size_t token_seq = 0;     // i32 [tcap]
  size_t logits_indices = 0;// i32 [tcap]
  size_t temperature = 0;   // f32 [tcap]   per logits row
  size_t top_k = 0;         // i32 [tcap]
  size_t top_p = 0;         // f32 [tcap]
  size_t sample_step = 0;   // i32 [tcap]
  size_t seq_start = 0;     // i32 [scap+1]
  size_t seq_len = 0;       // i32 [scap]
  size_t feed_src = 0;      // i32 [scap]   row of the previous step's sampled tokens feeding this sequence, or -1
  size_t block_tables = 0;  // i32 [scap, max_blocks]
  size_t total = 0;
  size_t bytes_for(int num_seqs) const { return block_tables + size_t(num_seqs) * size_t(max_blocks) * 4; }
  MetaArrays at(char* base) const;  // the arrays of the buffer at base
};
MetaLayout make_meta_layout(int tcap, int scap, int max_blocks);

// Everything one kind of step (general, or graph-captured decode) reads and writes at fixed addresses.
struct StepBuffers {
  static constexpr int kRing = 3;
  MetaLayout lay;
  char* dev = nullptr;                 // device copy of the metadata
  char* host[kRing] = {};              // pinned staging, reused round-robin
  cudaEvent_t uploaded[kRing] = {};    // recorded after each slot's upload
  int ring = 0;
  int32_t* out_tokens = nullptr;       // device [tcap] sampled tokens, one per logits row
  float* logits = nullptr;             // device fp32 [logits_rows, vocab] (unused when the engine's logits are fp32)
  int64_t logits_rows = 0;
  void* sample_ws = nullptr;
  size_t sample_ws_bytes = 0;
  int64_t sample_rows = 0;

  template <typename T> T* dptr(size_t off) const { return reinterpret_cast<T*>(dev + off); }
};

// One sequence's part of a step, after the C ABI.
struct SeqReq {
  uint64_t id;
  const int32_t* tokens;  // may be null when the ids come from the device (generate's decode)
  int32_t n;
  int32_t start;
  bool all_logits;
  tsllm_sampling sp;
};

// A launched, not yet waited-for step (tsllm_step_launch / tsllm_step_wait).
struct PendingStep {
  std::atomic<int> state{0};  // 0 free, 1 launched
  int64_t ticket = 0;
  cudaEvent_t start = nullptr, end = nullptr;
  cudaEvent_t prev_end = nullptr;  // end of the step launched before (for the GPU idle gap), or null
  int32_t* host_tokens = nullptr;  // pinned, one per logits row
  std::vector<int> last_row;
  int S = 0;
};

// What the host decided for one step; forward() reads it.
struct StepPlan {
  StepBuffers* buf = nullptr;
  int T = 0, S = 0, L = 0;      // tokens, sequences, logits rows as run (padded for graphs)
  int real_S = 0, real_L = 0;
  int max_new = 0, max_len = 0; // StepLayout's bounds (max_len bucketed for graphs)
  int single = 0;               // StepLayout::num_single: leading sequences of one token (mixed steps)
  bool graph = false;
  std::pair<int, int> graph_key{0, 0};
  std::vector<int> last_row;    // logits row of each real sequence's last token
};

struct Engine {
  EngineDesc desc;
  tsllm_options opts{};
  Tunables tun;  // resolved options (options.cc: the TSLLM_* environment overrides are applied there)
  int device = 0;
  int gpu_sm = 0;
  std::string gpu_name;
  tsllm_load_stats load_stats{};  // where the load's time went (load.cc)
  cudaStream_t stream = nullptr;
  DType dt = DType::F16;
  cudaDataType_t cuda_dt = CUDA_R_16F;

  // Runtime limits in force.
  int max_bs = 0, max_seq_len = 0, max_num_tokens = 0;
  int max_logits_rows = 0;  // most logits rows in one step (>= the largest decode graph)
  int tpb = 32, max_blocks_per_seq = 0;
  int embed_vocab_end = 0;  // ids must be below this (tp == 1), 0 = unchecked

  // Device memory.
  char* weights = nullptr;
  char* arena = nullptr;
  void* kv_pool = nullptr;
  size_t kv_bytes = 0;
  void* attn_ws = nullptr;
  size_t attn_ws_bytes = 0;
  void* scratch = nullptr;  // linear with a residual and a non-epilogue activation or chain whose out aliases the residual
  size_t scratch_bytes = 0;
  void* gather_scratch = nullptr;  // all_gather: [tp, rows, C] before the transpose to [rows, tp*C]
  size_t gather_scratch_bytes = 0;
  int32_t* gen_tokens = nullptr;  // generate(): [max_new, n] token history
  size_t gen_tokens_cap = 0;
  int32_t* host_tokens = nullptr;  // pinned [max_num_tokens]
  size_t workspace_bytes = 0;      // everything besides weights, arena and KV (for info)

  GemmRunner gemm;
  QuantGemm qgemm;  // quant_linear (quant_gemm.h)
  KvBlockManager kv;
  StepBuffers general, decode;

  // Pipelined steps: records round-robin by ticket; the tokens sampled by the last launched step stay on the
  // device (feed_out, row per sequence id in feed_rows) for sequences of the next step that give no tokens.
  PendingStep pending[TSLLM_MAX_PENDING];
  int64_t next_ticket = 0;
  cudaEvent_t last_end = nullptr;
  const int32_t* feed_out = nullptr;
  std::unordered_map<uint64_t, int> feed_rows;

  // CUDA graphs of decode steps: key (padded batch, max_seq_len bucket).
  bool graphs_enabled = true;
  std::vector<int> graph_sizes;  // ascending
  std::map<std::pair<int, int>, cudaGraphExec_t> graphs;
  std::map<std::pair<int, int>, int> graph_seen;  // first use runs eagerly (warms up modules and cuBLASLt), then captures

  // Kernel counters per node (TSLLM_KERNEL_* in tsllm.h), added by forward() for eager steps; a captured graph's
  // share is kept in graph_stats and added at each replay.
  using Counts = std::array<uint64_t, TSLLM_KERNEL_KINDS>;
  std::vector<Counts> stats;
  std::map<std::pair<int, int>, std::vector<Counts>> graph_stats;

  // Prologue fusion (tsllm_options.gemv_prologue, on by default): an rms_norm / gated_act node whose output only
  // feeds one linear's x is skipped when that linear runs the gemv with the prologue folded in (decided per M
  // by GemmRunner::prologue_variant). Empty when off; else per node: pro_consumer[i] = that linear (or -1),
  // pro_producer[j] = the skipped node (or -1).
  std::vector<int> pro_consumer, pro_producer;

  // Epilogue fusion (Tunables::glu_fuse): a 16-bit gate_up linear (or, with Tunables::quant_glu, an int8 / int4
  // quant_linear) whose output only feeds a gated_act runs, at decode sizes where GemmRunner::glu_variant
  // (QuantGemm::glu_variant) picks it, the gemv with the gated act in its epilogue (kernels.h gemv_glu, quant.h
  // quant_gemv_glu) writing gated_act's output, and the gated_act node is skipped. Empty when off; else per node:
  // glu_next[i] = the gated_act after linear i (or -1), glu_prev[j] = the linear doing gated_act j's work (or -1).
  std::vector<int> glu_next, glu_prev;
  // Where the fused gemv writes gated_act's output ([kGemvMaxM, inter], one buffer for every layer: each down
  // projection reads it before the next gate_up writes it). Not gated_act's arena slot: the arena may give that slot
  // to the gate_up's x, which the gemv reads while it writes. In a step where the pair is fused, forward() sets
  // redirect[gated_act's output] to it, so every reader's ptr() finds the values there; it clears them each step.
  void* glu_out = nullptr;
  size_t glu_out_bytes = 0;
  std::vector<void*> redirect;  // per value: where ptr() finds it instead (nullptr: as the value says); may be empty

  // Norm fusion (Tunables::norm_tail): a 16-bit linear whose output an rms_norm reads runs, at decode sizes where
  // GemmRunner::norm_variant picks it, the gemv whose last block computes that norm (kernels.h gemv_norm), and the
  // rms_norm node is skipped. Empty when off; else per node: nt_next[i] = the rms_norm after linear i (or -1),
  // nt_prev[j] = the linear doing rms_norm j's work (or -1). norm_counters: one zeroed block counter per node.
  std::vector<int> nt_next, nt_prev;
  unsigned* norm_counters = nullptr;

  // Per node: for an attention node, the linear reading its output (o_proj), whose weights the decode attention
  // prefetches into L2 (Tunables::attn_prefetch_mb); else -1. Empty when off.
  std::vector<int> attn_next;

  // FP8 activation fusion (Tunables::fp8_act_fusion): a norm / gated_act node whose output is only the x of the
  // FP8 quant_linear right after it writes that x as FP8 rows (kernels.h Fp8Rows) into the quantised-activation
  // workspace in steps where the linear takes the FP8 GEMM path (fp8_act_rows in forward.cc), and the linear skips
  // its quantize_rows_fp8 pass. Empty when off; else per node: fp8_consumer[i] = that linear (or -1),
  // fp8_producer[j] = that node (or -1).
  std::vector<int> fp8_consumer, fp8_producer;
  int fp8_rows_from = -1;  // in forward(): the producer whose FP8 rows wait in the workspace for the next node, or -1

  // moe: the workspace of the largest moe node (routing, permutation, per-pair intermediates), and the runtime
  // fusion of the node right after a moe node (an add or add_rms_norm taking the moe output as its only use)
  // into the moe's combine kernel: moe_next[i] = that node (or -1), moe_prev[j] = the moe node doing j's work.
  void* moe_ws = nullptr;
  size_t moe_ws_bytes = 0;
  std::vector<int> moe_next, moe_prev;

  void* nccl_comm = nullptr;  // ncclComm_t when built with NCCL and tp > 1

  // profile 1: CUDA graphs off, events around every node of every step, a per-op table printed
  // to stderr at unload.
  bool profile = false;
  bool profile_graph = false;  // profile 2: per-op-type replay timing of one decode graph
  int graph_replays = 0;
  std::vector<cudaEvent_t> prof_events;
  std::map<std::string, std::pair<int64_t, double>> prof;  // key -> (calls, total ms)
  std::map<int, int> prof_seen;  // steps seen per token count: the first (GEMM tuning, module loads) is skipped
  void profile_report();
  uint64_t gen_counter = 0;

  ~Engine();

  const ValueDesc& val(int vi) const { return desc.values[size_t(vi)]; }
  void* ptr(int vi, const StepPlan& p) const;
  int64_t numel(int vi, const StepPlan& p) const { return int64_t(val(vi).numel(p.T, p.L, p.S)); }
};

DType to_dtype(ElemType t);

// load.cc
// hash: optional chunk digests of the rank file, computed in the upload pass (upload.h).
struct ContentHash;
std::unique_ptr<Engine> load_engine(const std::string& path, const tsllm_options& opts, const ContentHash* hash = nullptr);
// forward.cc: enqueues the op program for plan p on e.stream (capturable). only: node mask (profiling).
void forward(Engine& e, const StepPlan& p, const std::vector<uint8_t>* only = nullptr);
// Prologue fusion: finds the rms_norm / gated_act nodes the gemv can absorb (fills pro_consumer/producer).
void plan_prologue_fusion(Engine& e);
// Epilogue fusion: finds the gate_up linears whose gated_act their gemv can take (fills glu_next/prev). After
// plan_prologue_fusion: a gated_act it takes is no longer a prologue for the down projection.
void plan_glu_fusion(Engine& e);
// Norm fusion: finds the linears whose output's rms_norm the gemv's last block can compute (fills nt_next/prev).
// After plan_glu_fusion; a norm it takes is no longer a prologue of the linear after it.
void plan_norm_fusion(Engine& e);
// Fills attn_next (Tunables::attn_prefetch_mb).
void plan_attn_prefetch(Engine& e);
// Whether node i is skipped (fused into its consumer's gemv, or into the gate_up gemv before it) in a step of plan p
// (tunes on first use, eagerly).
bool node_fused(Engine& e, const StepPlan& p, size_t i);
// moe fusion: finds the add / add_rms_norm right after each moe node that its combine can do (fills moe_next/prev).
void plan_moe_fusion(Engine& e);
// FP8 activation fusion: finds the norm / gated_act nodes that can write the next FP8 GEMM's x (fills
// fp8_consumer/producer).
void plan_fp8_act_fusion(Engine& e);
void nccl_destroy(Engine& e);
void nccl_init(Engine& e, const void* unique_id);
// step.cc
void run_step(Engine& e, const SeqReq* reqs, int num_seqs, tsllm_step_output* out);
int64_t launch_step(Engine& e, const SeqReq* reqs, int num_seqs);
void wait_step(Engine& e, int64_t ticket, int32_t* tokens, int capacity, tsllm_step_times* times);
void generate(Engine& e, int n, const int32_t* tokens, const int32_t* lens, int max_new, const tsllm_sampling* sp,
              int32_t* out_tokens, tsllm_timings* t);
void alloc_step_buffers(Engine& e, StepBuffers& b, int tcap, int scap, int64_t logits_rows);

}  // namespace tsllm
