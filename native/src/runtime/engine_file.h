// Reading a rank file's header (docs/engine-format.md) into a plain description: values, weights,
// the op program with op names resolved to an enum and attributes parsed, arena offsets.
// No CUDA here; everything is checked once at load so a step never looks at a string.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernels/enums.h"

namespace tsllm {

constexpr uint32_t kEngineFormatVersion = 1;

// Raised for every load-time problem; the message is one line.
struct LoadError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class ElemType : int { F32, F16, BF16, FP8_E4M3, I32, I64, I8, U8 };
size_t elem_size(ElemType t);
const char* elem_name(ElemType t);

enum class Sym : int { None = -1, NumTokens = 0, NumLogits = 1, NumSeqs = 2 };

struct Dim {
  int64_t n;   // fixed size, or the symbol's upper bound
  Sym sym = Sym::None;
};

enum class ValueKind : int { Unused, Weight, Arena, Input };
enum class InputSlot : int { None = -1, InputIds = 0, Positions = 1, LogitsIndices = 2 };

struct ValueDesc {
  int64_t id = -1;
  std::string name;
  ElemType dt = ElemType::F32;
  std::vector<Dim> shape;
  ValueKind kind = ValueKind::Unused;
  uint64_t arena_offset = 0;  // ValueKind::Arena
  int weight = -1;            // ValueKind::Weight: index into EngineDesc::weights
  InputSlot input = InputSlot::None;

  int64_t last_dim() const { return shape.empty() ? 1 : shape.back().n; }
  bool has_sym() const {
    for (auto& d : shape)
      if (d.sym != Sym::None) return true;
    return false;
  }
  // Elements at the symbols' upper bounds.
  uint64_t max_numel() const {
    uint64_t n = 1;
    for (auto& d : shape) n *= uint64_t(d.n);
    return n;
  }
  uint64_t numel(int64_t num_tokens, int64_t num_logits, int64_t num_seqs) const {
    uint64_t n = 1;
    for (auto& d : shape) {
      switch (d.sym) {
        case Sym::None: n *= uint64_t(d.n); break;
        case Sym::NumTokens: n *= uint64_t(num_tokens); break;
        case Sym::NumLogits: n *= uint64_t(num_logits); break;
        case Sym::NumSeqs: n *= uint64_t(num_seqs); break;
      }
    }
    return n;
  }
};

struct WeightDesc {
  int value = -1;          // index into EngineDesc::values
  uint64_t offset = 0;     // from data_offset in the file
  uint64_t nbytes = 0;     // 0 for random weights
  bool random = false;
  uint32_t seed = 0;
  float mean = 0, scale = 0;
  uint64_t device_bytes = 0;   // bytes it occupies on the GPU (from shape and dtype)
  uint64_t device_offset = 0;  // in the runtime's weight allocation
};

// The runtime's ops, from ops.def (the one list; see there).
enum class Op : int {
#define TSLLM_OP(E, name, min_in, max_in, outs) E,
#include "ops.def"
#undef TSLLM_OP
};
struct OpInfo {
  const char* name;  // the registry's op name
  int min_in, max_in;
  int outs;  // -1: given by the attrs
};
const OpInfo& op_info(Op op);
const char* op_name(Op op);
// The UnaryOp (kernels' enums.h) an op of ops.def computes, for tanh, sigmoid, exp, scale and softcap: the standalone
// ops and the steps of the chains folded into linears and norms (attrs pre / post). False for other ops.
bool unary_of(Op op, UnaryOp* u);
// "embedding, linear, ...": every op this runtime implements, for messages.
const std::string& op_list();

struct NodeDesc {
  Op op;
  std::vector<int> in;   // value indices, -1 for absent optional inputs
  std::vector<int> out;  // value indices
  // Parsed attributes (only those the op uses are meaningful).
  float eps = 1e-5f;
  float w_offset = 0.f;  // norms: weight_offset (the norm multiplies by weight + w_offset)
  float param = 0.f;     // scale: factor; softcap: cap
  EwChain pre, post;     // linear / quant_linear: post; norms: pre and post (src/ops/ew-chain.ts)
  Act act = Act::None;
  int vocab_start = 0;
  std::vector<int64_t> sizes;
  int layer = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, rotary_dim = 0;
  float scale = 1.f;
  RopeStyle rope_style = RopeStyle::Neox;
  int tp = 1;  // all_gather
  QuantKind quant = QuantKind::Fp8;  // quant_linear
  int group_size = 0;                // quant_linear int4-wo
  float k_scale = 1.f, v_scale = 1.f;  // attention on an FP8 KV cache (the compiler's per-layer scales)
  int num_experts = 0, top_k = 0;      // moe
  int expert_start = 0, local_experts = 0;  // moe, expert parallelism: the experts this rank holds
  bool normalize = true;               // moe: renormalise the top-k weights to sum 1
  int moe_hidden = 0, moe_inter = 0;   // moe: H and I (per expert, this rank's share)
};

struct KvDesc {
  int num_layers = 0, num_kv_heads = 0, head_dim = 0, tokens_per_block = 32;
  ElemType dt = ElemType::F16;
};

struct EngineDesc {
  std::string path;
  uint32_t file_version = 0;
  uint64_t data_offset = 0;
  uint64_t file_size = 0;
  int rank = 0, tp = 1;
  int sm = 0;  // from the header, else config.json build.sm; 0 when neither says
  ElemType dtype = ElemType::F16;
  int64_t max_batch_size = 0, max_seq_len = 0, max_num_tokens = 0;
  KvDesc kv;
  std::vector<ValueDesc> values;
  std::vector<WeightDesc> weights;
  std::vector<NodeDesc> nodes;
  int logits_value = -1;
  uint64_t arena_bytes = 0;
  uint64_t weight_device_bytes = 0;
  int vocab_size = 0;  // last dim of the logits value
};

// Reads and checks the header of `path` (and config.json beside it for build.sm when the header has no
// sm). Throws LoadError with a one-line message naming the file.
EngineDesc read_engine_header(const std::string& path);

}  // namespace tsllm
