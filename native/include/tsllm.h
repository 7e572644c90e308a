/* tsllm native runtime: C ABI.
 *
 * One engine = one rank file of an engine directory (docs/engine-format.md) loaded on one GPU.
 * Every function returns 0 on success and -1 on failure; on failure a one-line message is written to
 * `err` (NUL-terminated, truncated to `errlen`). Nothing here aborts or exits the process.
 *
 * An engine is not thread-safe: call it from one thread at a time. Different engines are independent.
 *
 * Sequences are identified by a caller-chosen u64 id. Ids with the top bit set are reserved for
 * tsllm_generate. A sequence exists from the first step that names it until tsllm_release.
 */
#ifndef TSLLM_H_
#define TSLLM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TSLLM_ABI_VERSION 6

typedef struct tsllm_engine tsllm_engine;

/* All fields zero = defaults. */
typedef struct tsllm_options {
  int32_t device;                       /* CUDA device ordinal (default 0) */
  int32_t max_batch_size;               /* 0 = the engine's. Any of these three may also exceed the build's: the */
  int32_t max_seq_len;                  /* activation arena is planned again at load for the runtime limits */
  int32_t max_num_tokens;               /* (max_seq_len: the caller keeps it within the model's positions) */
  int32_t tokens_per_block;             /* 0 = the engine's kv_cache.tokens_per_block */
  float kv_cache_free_gpu_mem_fraction; /* 0 = 0.9: fraction of free GPU memory (after weights, arena and
                                           workspaces) given to the paged KV cache */
  int64_t kv_cache_max_blocks;          /* 0 = no cap beyond max_batch_size full sequences */
  int32_t disable_cuda_graphs;          /* 1 = run decode steps eagerly */
  int32_t max_logits_rows;              /* 0 = max_num_tokens: most rows one step may ask logits for (the logits
                                           activation and fp32 buffer are sized by it; a batch manager that wants
                                           one row per sequence gives max_batch_size) */
  const void* nccl_unique_id;           /* tp > 1: 128-byte ncclUniqueId shared by all ranks (tsllm_nccl_unique_id) */
  /* Kernel choices (0 = default). TSLLM_* environment variables override them, for benchmarking only
     (native/README.md lists them; src/runtime/options.cc is the one place that reads them). */
  int32_t gemm_tune;      /* 0: time cuBLASLt's algorithms and the gemv variants per shape for M <= 256; -1: off */
  int32_t gemv;           /* small-M gemv kernel for linears: 0 the tuner decides, 1 always where eligible, -1 never */
  int32_t gemv_variant;   /* 0 any; k + 1: only gemv variant k (0 <= k < 10) */
  int32_t gemv_prologue;  /* 0: decode (M <= 4) folds rms_norm / gated_act into the gemv where faster; -1: off */
  int32_t decode_variant; /* decode attention: 0 or 3 the one-launch small-batch kernel where it applies (16-bit
                             KV caches), else 4 at GQA ratios >= decode_mma_min_gqa, else 2; 2: always the
                             RoPE/cache-write kernel + the CUDA-core decode kernel (+ reduce); 4: always the
                             RoPE/cache-write kernel + the tensor-core GQA decode kernel (an FP8 cache needs a
                             head size that 16 divides, else 2) */
  int32_t decode_mma_min_gqa; /* 0 = 4: the smallest query-heads-per-KV-head ratio at which decode_variant 0/3 uses
                                 the tensor-core decode kernel outside the small-batch kernel's range (1: always) */
  int32_t pdl;            /* 0: programmatic dependent launch for gemv / decode on sm_90+; -1: off */
  int32_t strict_kernels; /* 1: a kernel these options force (gemv = 1, fp8_context_fmha = 1) that cannot run for a node is an error
                             naming the node and why, never a silent fallback (to cuBLASLt or an unfused pair) */
  int32_t profile;        /* 0 off; 1 events around every node (graphs off), table at unload; 2 per-op graph replay
                             breakdown after 8 decode replays (both print to stderr) */
  int32_t fp8_context_fmha; /* prefill / chunked-prefill attention over an FP8 KV cache with Q and the softmax weights
                               in E4M3 on FP8 tensor cores, where it can run (head_dim a multiple of 16 up to 128,
                               sm_89+; elsewhere the fp16/bf16 kernel). 0 (auto): off for now (slower than the
                               fp16/bf16 kernel on the H200, forward.cc has the figures); 1: on every FP8 KV cache, and with strict_kernels a context step where it cannot run
                               is an error; -1: off (the fp16/bf16 kernel, attending to the step's own K/V
                               unrounded as the CPU reference does) */
} tsllm_options;

typedef struct tsllm_sampling {
  float temperature; /* <= 0: greedy */
  int32_t top_k;     /* 0 = all; 1 = greedy */
  float top_p;       /* 0 or 1 = all */
  int32_t reserved;
  uint64_t seed;     /* a sequence with the same seed samples the same tokens */
} tsllm_sampling;

/* One sequence's part of a step. */
typedef struct tsllm_seq_input {
  uint64_t id;
  const int32_t* tokens;  /* its new tokens */
  int32_t num_tokens;     /* >= 1 */
  int32_t start_pos;      /* position of tokens[0]: the sequence's cached length, or less to rewind it */
  int32_t all_logits;     /* 1: a logits row for every token; 0: only for the last token */
  int32_t reserved;
  tsllm_sampling sampling;
} tsllm_seq_input;

typedef struct tsllm_step_output {
  float* logits;          /* optional, fp32 [rows, vocab]; rows = sum over sequences of (all_logits ? num_tokens : 1),
                             in sequence order */
  size_t logits_capacity; /* floats available at `logits` */
  int32_t* tokens;        /* optional [num_seqs]: token sampled from each sequence's last row */
  int32_t num_logit_rows; /* out: rows written */
  int32_t vocab_size;     /* out */
} tsllm_step_output;

typedef struct tsllm_timings {
  double ttft_ms;   /* from the start of the call's GPU work to the first tokens of every prompt (prefill + sampling) */
  double decode_ms; /* all decode steps together */
  double total_ms;  /* GPU timeline, first prefill to last token */
  double wall_ms;   /* host wall clock of the whole call */
  double* step_ms;  /* optional, caller-owned [max_new_tokens - 1]: time of each decode step */
} tsllm_timings;

typedef struct tsllm_info {
  char gpu_name[128];
  int32_t gpu_sm;          /* compute capability of the GPU, e.g. 90 */
  int32_t engine_sm;       /* build.sm of the engine */
  int32_t tp, rank;
  int32_t vocab_size;
  int32_t max_batch_size, max_seq_len, max_num_tokens; /* runtime limits in force */
  int32_t tokens_per_block;
  int32_t num_layers;
  int32_t num_nodes;
  int32_t num_cuda_graphs; /* decode graphs captured so far */
  int32_t has_nccl;
  int64_t kv_blocks_total;  /* blocks in the pool (one is reserved as the padding rows' scratch block) */
  int64_t kv_blocks_free;
  int64_t num_sequences;    /* sequences alive */
  uint64_t weight_bytes, arena_bytes, kv_bytes, workspace_bytes;
  char dtype[8];            /* activation dtype: fp16 | bf16 | fp32 */
  char kv_dtype[8];
} tsllm_info;

/* Which kernels each node of the program launched, counted per step the node ran (eagerly or by replaying a
   CUDA graph that holds it). A linear runs cuBLASLt or the gemv (plain, or with an rms_norm / gated_act
   prologue folded in); a node folded into its consumer's gemv launches nothing and counts FOLDED. */
enum {
  TSLLM_KERNEL_OWN = 0,       /* the op's own kernel(s) (every op but linear) */
  TSLLM_KERNEL_FOLDED = 1,    /* skipped: folded into the gemv prologue of node `folded_into`, or done by the
                                 combine kernel of the moe node `folded_into` (an add / add_rms_norm after it) */
  TSLLM_KERNEL_CUBLASLT = 2,  /* linear through cuBLASLt */
  TSLLM_KERNEL_GEMV = 3,      /* linear through the gemv kernel */
  TSLLM_KERNEL_GEMV_RMS = 4,  /* linear through the gemv with the rms_norm prologue */
  TSLLM_KERNEL_GEMV_GATED = 5,/* linear through the gemv with the gated-activation prologue */
  TSLLM_KERNEL_FP8_FMHA = 6,  /* attention whose context step ran the FP8 context FMHA (fp8_context_fmha) */
  TSLLM_KERNEL_FP8_ACT = 7,   /* norm / gated_act that wrote its output as FP8 rows for the FP8 GEMM of the next
                                 node (the activation quantisation fused in; TSLLM_FP8_ACT_FUSION=0 turns it off) */
  TSLLM_KERNEL_KINDS = 8
};
typedef struct tsllm_node_stats {
  char op[24];           /* registry op name */
  char name[104];        /* linear: its weight's name; otherwise its first output's name */
  int32_t folded_into;   /* runtime prologue fusion plan: the linear this node folds into at decode (M <= 4) when
                            the tuner finds the fused gemv faster (or gemv = 1); or the moe node whose combine
                            does this add / add_rms_norm (every step); -1 when never */
  int32_t reserved;
  uint64_t launches[TSLLM_KERNEL_KINDS];
} tsllm_node_stats;

int32_t tsllm_abi_version(void);

/* CUDA devices this process sees: 0 when there is no driver or device or CUDA_VISIBLE_DEVICES hides them all
   (--device auto then runs the CPU reference executor). Initialises the CUDA runtime; never fails. */
int32_t tsllm_device_count(void);

/* Loads one rank file (e.g. engines/llama/rank0.engine). Returns NULL on failure. */
tsllm_engine* tsllm_load(const char* rank_file, const tsllm_options* options, char* err, size_t errlen);

/* tsllm_load, and in the same pass that uploads the weights, the SHA-256 of each `chunk_bytes` chunk of
   the rank file (32 bytes each into chunk_digests; num_chunks = ceil(file size / chunk_bytes) must match).
   The caller combines them and compares with config.json (docs/engine-format.md, "Content hash"). */
tsllm_engine* tsllm_load_hashed(const char* rank_file, const tsllm_options* options, uint64_t chunk_bytes,
                                uint8_t* chunk_digests, uint64_t num_chunks, char* err, size_t errlen);

/* One forward step over a packed batch of sequences (prefill chunks and decode tokens mixed).
   Writes logits and/or sampled tokens; blocks until they are on the host. */
int tsllm_step(tsllm_engine* e, const tsllm_seq_input* seqs, int32_t num_seqs, tsllm_step_output* out, char* err,
               size_t errlen);

/* Pipelined steps (in-flight batching): tsllm_step_launch plans the step, enqueues its GPU work and an
   asynchronous copy of its sampled tokens, and returns at once with a ticket; tsllm_step_wait(ticket) blocks
   until that step is done and writes one sampled token per sequence (launch order). While the GPU runs step
   N the host prepares and launches step N+1, so the GPU never waits for the host between steps.
   A sequence whose `tokens` is NULL (num_tokens must be 1) takes the token sampled for it by the step launched
   just before (copied on the device: no host round trip); that step must have included it.
   Launches come from one thread; tsllm_step_wait may run on another thread concurrently with launches and
   releases (it touches only that step's record). At most TSLLM_MAX_PENDING steps may be launched and not
   yet waited for. Releasing a sequence that a pending step uses is safe: steps run in launch order. */
#define TSLLM_MAX_PENDING 4

typedef struct tsllm_step_times {
  double gpu_ms; /* the step on the GPU timeline (upload to tokens on the host) */
  double gap_ms; /* GPU idle between the end of the previously launched step and this one's start (0 if none) */
} tsllm_step_times;

int tsllm_step_launch(tsllm_engine* e, const tsllm_seq_input* seqs, int32_t num_seqs, int64_t* ticket, char* err,
                      size_t errlen);
int tsllm_step_wait(tsllm_engine* e, int64_t ticket, int32_t* tokens, int32_t capacity, tsllm_step_times* times,
                    char* err, size_t errlen);

/* Frees a sequence's KV blocks. Releasing an unknown id is not an error. */
int tsllm_release(tsllm_engine* e, uint64_t seq_id, char* err, size_t errlen);

/* Prefill `num_prompts` prompts (concatenated in `tokens`, lengths in `prompt_lens`) and decode
   `max_new_tokens` tokens for each, all in C++ with no host synchronisation between decode steps.
   sampling: per prompt, or NULL for greedy. out_tokens: [num_prompts, max_new_tokens]. timings: optional.
   Every prompt generates exactly max_new_tokens (no stop tokens; the caller truncates). */
int tsllm_generate(tsllm_engine* e, int32_t num_prompts, const int32_t* tokens, const int32_t* prompt_lens,
                   int32_t max_new_tokens, const tsllm_sampling* sampling, int32_t* out_tokens, tsllm_timings* timings,
                   char* err, size_t errlen);

int tsllm_get_info(tsllm_engine* e, tsllm_info* out, char* err, size_t errlen);

/* Where the time of tsllm_load / tsllm_load_hashed went (seconds), and how the weight pass read the file. */
typedef struct tsllm_load_stats {
  double total_s;        /* the whole call */
  double cuda_init_s;    /* device query and CUDA context creation */
  double header_s;       /* reading and checking the rank file's header */
  double weights_s;      /* waiting for the read/hash/upload pass, which runs from just after the header,
                            overlapping CUDA init and the rest */
  double rest_s;         /* weight allocation, random fills, arena, workspaces, step buffers, NCCL, KV cache */
  double pass_s;         /* the read/hash/upload pass alone */
  double read_thread_s;  /* the pass's threads' time in reads (summed over threads) */
  double hash_thread_s;  /* the hasher threads' time hashing (while the readers read on) */
  double wait_thread_s;  /* the readers' time waiting for a staging buffer (its copy or hash; CUDA init) */
  uint64_t direct_bytes; /* bytes read with O_DIRECT (not in the page cache) */
  uint64_t cached_bytes; /* bytes read through the page cache */
  int32_t threads;       /* the pass's threads */
  int32_t direct;        /* 1: O_DIRECT was available for chunks not in the page cache */
} tsllm_load_stats;

int tsllm_get_load_stats(tsllm_engine* e, tsllm_load_stats* out, char* err, size_t errlen);

/* Per-node kernel counters (see tsllm_node_stats): writes min(capacity, nodes) entries, *num_nodes = nodes. */
int tsllm_get_node_stats(tsllm_engine* e, tsllm_node_stats* out, int32_t capacity, int32_t* num_nodes, char* err,
                         size_t errlen);

/* Frees everything; NULL is allowed. */
void tsllm_unload(tsllm_engine* e);

/* tp > 1: writes a fresh 128-byte NCCL unique id (rank 0 makes it, every rank gets the same bytes). */
int tsllm_nccl_unique_id(void* out128, char* err, size_t errlen);

/* Median device-to-device copy bandwidth over `iters` copies of `bytes`, counting bytes read + written. */
int tsllm_copy_bandwidth(int32_t device, uint64_t bytes, int32_t iters, double* out_bytes_per_s, char* err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* TSLLM_H_ */
