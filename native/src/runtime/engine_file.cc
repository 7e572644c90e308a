#include "engine_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "json.h"

namespace tsllm {

size_t elem_size(ElemType t) {
  switch (t) {
    case ElemType::F32: return 4;
    case ElemType::F16: return 2;
    case ElemType::BF16: return 2;
    case ElemType::FP8_E4M3: return 1;
    case ElemType::I32: return 4;
    case ElemType::I64: return 8;
    case ElemType::I8: return 1;
    case ElemType::U8: return 1;
  }
  return 1;
}

const char* elem_name(ElemType t) {
  switch (t) {
    case ElemType::F32: return "fp32";
    case ElemType::F16: return "fp16";
    case ElemType::BF16: return "bf16";
    case ElemType::FP8_E4M3: return "fp8_e4m3";
    case ElemType::I32: return "i32";
    case ElemType::I64: return "i64";
    case ElemType::I8: return "i8";
    case ElemType::U8: return "u8";
  }
  return "?";
}

namespace {
const OpInfo kOps[] = {
#define TSLLM_OP(E, name, min_in, max_in, outs) {name, min_in, max_in, outs},
#include "ops.def"
#undef TSLLM_OP
};
constexpr size_t kNumOps = sizeof(kOps) / sizeof(kOps[0]);
}  // namespace

const OpInfo& op_info(Op op) { return kOps[size_t(op)]; }
const char* op_name(Op op) { return size_t(op) < kNumOps ? kOps[size_t(op)].name : "?"; }

bool unary_of(Op op, UnaryOp* u) {
  switch (op) {
    case Op::Tanh: *u = UnaryOp::Tanh; return true;
    case Op::Sigmoid: *u = UnaryOp::Sigmoid; return true;
    case Op::Exp: *u = UnaryOp::Exp; return true;
    case Op::Scale: *u = UnaryOp::Scale; return true;
    case Op::Softcap: *u = UnaryOp::Softcap; return true;
    default: return false;
  }
}
const std::string& op_list() {
  static const std::string s = [] {
    std::string r;
    for (const OpInfo& o : kOps) r += (r.empty() ? "" : ", ") + std::string(o.name);
    return r;
  }();
  return s;
}

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool parse_elem(const std::string& name, ElemType* out) {
  static const std::pair<const char*, ElemType> table[] = {
      {"fp32", ElemType::F32},     {"f32", ElemType::F32},          {"float32", ElemType::F32},
      {"fp16", ElemType::F16},     {"f16", ElemType::F16},          {"float16", ElemType::F16},
      {"bf16", ElemType::BF16},    {"bfloat16", ElemType::BF16},    {"fp8", ElemType::FP8_E4M3},
      {"fp8_e4m3", ElemType::FP8_E4M3}, {"f8_e4m3", ElemType::FP8_E4M3}, {"e4m3", ElemType::FP8_E4M3}, {"fp8e4m3", ElemType::FP8_E4M3},
      {"i32", ElemType::I32},      {"int32", ElemType::I32},        {"i64", ElemType::I64},
      {"int64", ElemType::I64},    {"i8", ElemType::I8},            {"int8", ElemType::I8},
      {"u8", ElemType::U8},        {"uint8", ElemType::U8},
  };
  std::string l = lower(name);
  for (auto& e : table)
    if (l == e.first) {
      *out = e.second;
      return true;
    }
  return false;
}

bool parse_op(const std::string& name, Op* out) {
  for (size_t i = 0; i < kNumOps; i++)
    if (name == kOps[i].name) {
      *out = Op(i);
      return true;
    }
  return false;
}

Act parse_act(const std::string& s, const std::string& where) {
  if (s == "none" || s.empty()) return Act::None;
  if (s == "silu" || s == "swish") return Act::Silu;
  if (s == "gelu_tanh" || s == "gelu_new" || s == "gelu_pytorch_tanh") return Act::GeluTanh;
  if (s == "gelu" || s == "gelu_erf") return Act::GeluErf;
  throw LoadError(where + ": unknown activation \"" + s + "\" (none, silu, gelu_tanh, gelu)");
}

RopeStyle parse_rope_style(const std::string& s, const std::string& where) {
  if (s == "neox") return RopeStyle::Neox;
  if (s == "gptj") return RopeStyle::Gptj;
  throw LoadError(where + ": unknown rope style \"" + s + "\" (neox, gptj)");
}

uint64_t rd_u64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
uint32_t rd_u32(const unsigned char* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

std::string dirname_of(const std::string& p) {
  auto s = p.find_last_of('/');
  return s == std::string::npos ? "." : p.substr(0, s == 0 ? 1 : s);
}

// build.sm from config.json beside the rank file, 0 if absent/unreadable.
int sm_from_config(const std::string& rank_path) {
  std::ifstream f(dirname_of(rank_path) + "/config.json", std::ios::binary);
  if (!f) return 0;
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    Json c = Json::parse(ss.str());
    const Json* b = c.find("build");
    if (b && b->find("sm")) return int(b->at("sm").i64("config.json build.sm"));
  } catch (const JsonError&) {
  }
  return 0;
}

}  // namespace

EngineDesc read_engine_header(const std::string& path) {
  EngineDesc d;
  d.path = path;
  auto fail = [&](const std::string& msg) -> LoadError { return LoadError(path + ": " + msg); };

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  d.file_size = uint64_t(st.st_size);
  unsigned char pre[24];
  if (d.file_size < 24 || ::pread(fd, pre, 24, 0) != 24) {
    ::close(fd);
    throw fail("file too short to be a tsllm engine (" + std::to_string(d.file_size) + " bytes)");
  }
  if (std::memcmp(pre, "TSLLMENG", 8) != 0) {
    ::close(fd);
    throw fail("not a tsllm engine file (magic is not TSLLMENG)");
  }
  d.file_version = rd_u32(pre + 8);
  if (d.file_version != kEngineFormatVersion) {
    ::close(fd);
    throw fail("engine format version " + std::to_string(d.file_version) + ", but this runtime reads version " +
               std::to_string(kEngineFormatVersion) + "; rebuild the engine with a matching tsllm-compile");
  }
  uint64_t hlen = rd_u64(pre + 16);
  if (hlen == 0 || hlen > (uint64_t(256) << 20) || 24 + hlen > d.file_size) {
    ::close(fd);
    throw fail("header length " + std::to_string(hlen) + " does not fit the file (" + std::to_string(d.file_size) +
               " bytes)");
  }
  std::string text(hlen, '\0');
  uint64_t got = 0;
  while (got < hlen) {
    ssize_t n = ::pread(fd, &text[got], hlen - got, off_t(24 + got));
    if (n <= 0) {
      ::close(fd);
      throw fail("short read of the header");
    }
    got += uint64_t(n);
  }
  ::close(fd);
  d.data_offset = (24 + hlen + 4095) / 4096 * 4096;

  Json h;
  try {
    h = Json::parse(text);
  } catch (const JsonError& e) {
    throw fail(std::string("header: ") + e.what());
  }

  try {
    int64_t hv = h.i64_or("format_version", kEngineFormatVersion);
    if (hv != kEngineFormatVersion)
      throw fail("header says format_version " + std::to_string(hv) + ", this runtime reads version " +
                 std::to_string(kEngineFormatVersion));
    // Everything below is checked before the runtime relies on it: the header is untrusted input (an engine
    // loaded with --no-verify may have been tampered with), so every size, offset, id and attribute the
    // interpreter and the kernels use is bounded here, and a bad one is a LoadError naming it, never an
    // out-of-bounds access later. Integers are range-checked as int64 before any narrowing.
    auto in_range = [&](int64_t v, const std::string& what, int64_t lo, int64_t hi) -> int64_t {
      if (v < lo || v > hi)
        throw fail(what + " " + std::to_string(v) + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
      return v;
    };
    auto int_at = [&](const Json& o, const char* key, const std::string& what, int64_t lo, int64_t hi) -> int64_t {
      return in_range(o.at(key).i64(what.c_str()), what, lo, hi);
    };
    auto int_or = [&](const Json& o, const char* key, int64_t dflt, const std::string& what, int64_t lo,
                      int64_t hi) -> int64_t { return in_range(o.i64_or(key, dflt), what, lo, hi); };
    constexpr int64_t kMaxLimit = int64_t(1) << 24;  // tokens, sequences, positions
    constexpr int64_t kMaxDim = int64_t(1) << 40;
    constexpr uint64_t kMaxElems = uint64_t(1) << 48;
    constexpr int64_t kMaxBytes = int64_t(1) << 50;

    d.tp = int(int_or(h, "tp", 1, "tp", 1, 1024));
    d.rank = int(int_or(h, "rank", 0, "rank", 0, d.tp - 1));
    if (!parse_elem(h.at("dtype").str("dtype"), &d.dtype)) throw fail("unknown dtype \"" + h.at("dtype").str() + "\"");
    if (d.dtype != ElemType::F16 && d.dtype != ElemType::BF16)
      throw fail(std::string("activation dtype ") + elem_name(d.dtype) +
                 " runs only on the reference executor; the CUDA runtime needs fp16 or bf16");

    // sm: header "sm", header "build.sm", else config.json beside the file.
    if (h.find("sm")) d.sm = int(int_at(h, "sm", "sm", 0, 1000));
    else if (h.find("build") && h.at("build").find("sm")) d.sm = int(int_at(h.at("build"), "sm", "build.sm", 0, 1000));
    else d.sm = sm_from_config(path);

    const Json& lim = h.at("limits");
    d.max_batch_size = int_at(lim, "max_batch_size", "limits.max_batch_size", 1, kMaxLimit);
    d.max_seq_len = int_at(lim, "max_seq_len", "limits.max_seq_len", 1, kMaxLimit);
    d.max_num_tokens = int_at(lim, "max_num_tokens", "limits.max_num_tokens", 1, kMaxLimit);

    if (const Json* kv = h.find("kv_cache"); kv && !kv->is_null()) {
      d.kv.num_layers = int(int_at(*kv, "num_layers", "kv_cache.num_layers", 0, 4096));
      d.kv.num_kv_heads = int(int_at(*kv, "num_kv_heads", "kv_cache.num_kv_heads", 1, 1024));
      d.kv.head_dim = int(int_at(*kv, "head_dim", "kv_cache.head_dim", 8, 256));
      if (d.kv.head_dim % 8) throw fail("kv_cache.head_dim " + std::to_string(d.kv.head_dim) + " is not a multiple of 8");
      d.kv.tokens_per_block = int(int_or(*kv, "tokens_per_block", 32, "kv_cache.tokens_per_block", 1, 4096));
      std::string kd = kv->str_or("dtype", elem_name(d.dtype));
      if (!parse_elem(kd, &d.kv.dt)) throw fail("unknown kv_cache.dtype \"" + kd + "\"");
    }

    // ---- values ----
    std::unordered_map<int64_t, int> by_id;
    for (const Json& v : h.at("values").arr("values")) {
      ValueDesc vd;
      vd.id = v.at("id").i64("values[].id");
      vd.name = v.str_or("name", "");
      const std::string what = "value " + std::to_string(vd.id) + " (" + vd.name + ")";
      const std::string& dts = v.at("dtype").str("values[].dtype");
      if (!parse_elem(dts, &vd.dt)) throw fail(what + ": unknown dtype \"" + dts + "\"");
      uint64_t elems = 1;
      for (const Json& dim : v.at("shape").arr("values[].shape")) {
        Dim dm;
        if (dim.is_number()) {
          dm.n = in_range(dim.i64("dim"), what + ": dim", 1, kMaxDim);
        } else {
          const std::string& sym = dim.at("sym").str("dim.sym");
          if (sym == "num_tokens") dm.sym = Sym::NumTokens;
          else if (sym == "num_logits") dm.sym = Sym::NumLogits;
          else if (sym == "num_seqs" || sym == "batch") dm.sym = Sym::NumSeqs;
          else throw fail(what + ": unknown shape symbol \"" + sym + "\"");
          // The runtime feeds up to max_num_tokens tokens, logits rows and sequences (graph padding included);
          // the arena was sized with this bound, so it may not be smaller.
          dm.n = in_range(dim.at("max").i64("dim.max"), what + ": " + sym + " bound", d.max_num_tokens, kMaxLimit);
        }
        elems *= uint64_t(dm.n);
        if (elems > kMaxElems) throw fail(what + ": more than 2^48 elements");
        vd.shape.push_back(dm);
      }
      if (by_id.count(vd.id)) throw fail("value id " + std::to_string(vd.id) + " appears twice");
      by_id[vd.id] = int(d.values.size());
      d.values.push_back(std::move(vd));
    }
    auto value_index = [&](const Json& j, const std::string& where) -> int {
      int64_t id = j.i64(where.c_str());
      auto it = by_id.find(id);
      if (it == by_id.end()) throw fail(where + " refers to unknown value id " + std::to_string(id));
      return it->second;
    };

    // ---- inputs / outputs ----
    for (auto& kv : h.at("inputs").obj("inputs")) {
      int vi = value_index(kv.second, "inputs." + kv.first);
      ValueDesc& v = d.values[vi];
      Sym want = Sym::NumTokens;
      if (kv.first == "input_ids") v.input = InputSlot::InputIds;
      else if (kv.first == "positions") v.input = InputSlot::Positions;
      else if (kv.first == "logits_indices") v.input = InputSlot::LogitsIndices, want = Sym::NumLogits;
      else throw fail("unknown graph input \"" + kv.first + "\" (this runtime feeds input_ids, positions, logits_indices)");
      if (v.dt != ElemType::I32) throw fail("graph input " + kv.first + " must be i32, is " + elem_name(v.dt));
      if (v.kind != ValueKind::Unused) throw fail("graph input " + kv.first + ": its value is already another input");
      // The runtime's step buffer holds one i32 per token (logits row) for each input.
      if (v.shape.size() != 1 || v.shape[0].sym != want)
        throw fail("graph input " + kv.first + " must have shape [" +
                   (want == Sym::NumTokens ? "num_tokens" : "num_logits") + "]");
      v.kind = ValueKind::Input;
    }
    for (auto& kv : h.at("outputs").obj("outputs")) {
      if (kv.first == "logits") d.logits_value = value_index(kv.second, "outputs.logits");
      else throw fail("unknown graph output \"" + kv.first + "\" (this runtime reads logits)");
    }
    if (d.logits_value < 0) throw fail("the engine has no \"logits\" output");
    {
      // Read back as [logits rows, vocab] in the engine dtype (then converted to fp32 and sampled).
      const ValueDesc& lv = d.values[d.logits_value];
      if (lv.shape.size() != 2 || lv.shape[0].sym != Sym::NumLogits || lv.shape[1].sym != Sym::None)
        throw fail("the logits output must have shape [num_logits, vocab]");
      if (lv.dt != d.dtype && lv.dt != ElemType::F32)
        throw fail(std::string("the logits output is ") + elem_name(lv.dt) + ", expected " + elem_name(d.dtype) + " or fp32");
      d.vocab_size = int(in_range(lv.last_dim(), "vocab size", 1, int64_t(1) << 30));
    }

    // ---- weights ----
    const uint64_t data_bytes = d.file_size > d.data_offset ? d.file_size - d.data_offset : 0;
    uint64_t dev_off = 0;
    for (const Json& w : h.at("weights").arr("weights")) {
      WeightDesc wd;
      wd.value = value_index(w.at("value"), "weights[].value");
      ValueDesc& v = d.values[wd.value];
      if (v.kind != ValueKind::Unused) throw fail("value " + std::to_string(v.id) + " is a weight twice or also an input");
      if (v.has_sym()) throw fail("weight " + v.name + " has a symbolic shape");
      v.kind = ValueKind::Weight;
      v.weight = int(d.weights.size());
      wd.offset = uint64_t(int_or(w, "offset", 0, "weight " + v.name + " offset", 0, kMaxBytes));
      wd.nbytes = uint64_t(int_or(w, "nbytes", 0, "weight " + v.name + " nbytes", 0, kMaxBytes));
      const Json* r = w.find("random");
      if (r && !r->is_null()) {
        wd.random = true;
        wd.seed = uint32_t(int_or(*r, "seed", 0, "weight " + v.name + " random.seed", 0, 0xFFFFFFFFll));
        wd.mean = float(r->num_or("mean", 0.0));
        wd.scale = float(r->num_or("scale", 0.0));
      }
      const uint64_t natural = v.max_numel() * elem_size(v.dt);
      wd.device_bytes = natural;  // what the kernels read, so what is allocated and uploaded
      // i8 / u8 (int8 / int4 weight-only values) are drawn like the CPU reference does (rounded and clamped).
      if (wd.random && (v.dt == ElemType::I32 || v.dt == ElemType::I64))
        throw fail("random weight " + v.name + " has integer dtype " + elem_name(v.dt));
      if (!wd.random && wd.nbytes != natural)
        throw fail("weight " + v.name + " has nbytes " + std::to_string(wd.nbytes) + ", its shape and dtype make " +
                   std::to_string(natural));
      if (!wd.random && (wd.offset > data_bytes || wd.nbytes > data_bytes - wd.offset))
        throw fail("weight " + v.name + " (offset " + std::to_string(wd.offset) + ", " + std::to_string(wd.nbytes) +
                   " bytes) lies past the end of the file (" + std::to_string(d.file_size) +
                   " bytes; truncated engine?)");
      wd.device_offset = dev_off;
      dev_off += (wd.device_bytes + 255) / 256 * 256;
      d.weights.push_back(wd);
    }
    d.weight_device_bytes = dev_off;

    // ---- arena ----
    const Json& arena = h.at("arena");
    d.arena_bytes = uint64_t(int_at(arena, "bytes", "arena.bytes", 0, kMaxBytes));
    for (auto& kv : arena.at("offsets").obj("arena.offsets")) {
      int64_t id = 0;
      try {
        size_t used = 0;
        id = std::stoll(kv.first, &used);
        if (used != kv.first.size()) throw std::invalid_argument("trailing");
      } catch (...) {
        throw fail("arena.offsets key \"" + kv.first + "\" is not a value id");
      }
      auto it = by_id.find(id);
      if (it == by_id.end()) throw fail("arena.offsets names unknown value id " + kv.first);
      ValueDesc& v = d.values[it->second];
      const uint64_t off = uint64_t(in_range(kv.second.i64("arena offset"), "arena offset of value " + kv.first, 0, kMaxBytes));
      if (v.kind == ValueKind::Weight) throw fail("weight " + v.name + " also has an arena offset");
      if (v.kind == ValueKind::Input) continue;  // inputs live in the runtime's step metadata buffer
      if (v.kind == ValueKind::Arena) throw fail("value " + kv.first + " has two arena offsets");
      const uint64_t bytes = v.max_numel() * elem_size(v.dt);
      if (off % 16) throw fail("value " + std::to_string(v.id) + " (" + v.name + ") at arena offset " + std::to_string(off) + " is not 16-byte aligned");
      if (off > d.arena_bytes || bytes > d.arena_bytes - off)
        throw fail("value " + std::to_string(v.id) + " (" + v.name + ") at arena offset " + std::to_string(off) +
                   " overruns the arena (" + std::to_string(d.arena_bytes) + " bytes)");
      v.kind = ValueKind::Arena;
      v.arena_offset = off;
    }

    // ---- nodes ----
    int ni = 0;
    for (const Json& n : h.at("nodes").arr("nodes")) {
      const std::string& opname = n.at("op").str("nodes[].op");
      NodeDesc nd;
      std::string where = "node " + std::to_string(ni) + " (" + opname + ")";
      if (!parse_op(opname, &nd.op))
        throw fail(where + ": unknown op \"" + opname + "\"; this runtime implements " + op_list());
      for (const Json& i : n.at("inputs").arr("inputs")) nd.in.push_back(i.is_null() ? -1 : value_index(i, where + " input"));
      for (const Json& o : n.at("outputs").arr("outputs")) nd.out.push_back(value_index(o, where + " output"));
      static const Json kEmpty = Json::parse("{}");
      const Json* ap = n.find("attrs");
      const Json& a = (ap && ap->is_object()) ? *ap : kEmpty;

      // Input / output counts from ops.def.
      const OpInfo& info = op_info(nd.op);
      if (nd.in.size() < size_t(info.min_in) || nd.in.size() > size_t(info.max_in))
        throw fail(where + ": has " + std::to_string(nd.in.size()) + " inputs, expected " + std::to_string(info.min_in) +
                   (info.max_in != info.min_in ? ".." + std::to_string(info.max_in) : ""));
      for (int k = 0; k < info.min_in; k++)
        if (nd.in[size_t(k)] < 0) throw fail(where + ": required input " + std::to_string(k) + " is null");
      auto need_out = [&](size_t k) {
        if (nd.out.size() != k)
          throw fail(where + ": has " + std::to_string(nd.out.size()) + " outputs, expected " + std::to_string(k));
      };
      if (info.outs >= 0) need_out(size_t(info.outs));
      for (int vi : nd.in)
        if (vi >= 0 && d.values[vi].kind == ValueKind::Unused)
          throw fail(where + ": input value " + std::to_string(d.values[vi].id) + " (" + d.values[vi].name +
                     ") has no storage: it is not a weight, a graph input or in the arena");
      for (int vi : nd.out)
        if (d.values[vi].kind != ValueKind::Arena)
          throw fail(where + ": output value " + std::to_string(d.values[vi].id) + " (" + d.values[vi].name +
                     ") has no arena offset");

      // Operand checks: the kernels run every tensor in the engine dtype and size their work from these shapes.
      const ValueDesc* none = nullptr;
      auto in = [&](size_t k) -> const ValueDesc& { return d.values[size_t(nd.in[k])]; };
      auto opt = [&](size_t k) -> const ValueDesc* { return k < nd.in.size() && nd.in[k] >= 0 ? &in(k) : none; };
      auto out = [&](size_t k) -> const ValueDesc& { return d.values[size_t(nd.out[k])]; };
      auto role = [&](const ValueDesc& v) { return "value " + std::to_string(v.id) + " (" + v.name + ")"; };
      auto need_dt = [&](const ValueDesc& v, ElemType t) {
        if (v.dt != t)
          throw fail(where + ": " + role(v) + " is " + elem_name(v.dt) + ", this op needs " + elem_name(t));
      };
      auto act = [&](const ValueDesc& v) { need_dt(v, d.dtype); };
      auto dim_eq = [](const Dim& x, const Dim& y) { return x.sym == y.sym && x.n == y.n; };
      auto same_shape = [&](const ValueDesc& x, const ValueDesc& y) {
        bool ok = x.shape.size() == y.shape.size();
        for (size_t k = 0; ok && k < x.shape.size(); k++) ok = dim_eq(x.shape[k], y.shape[k]);
        if (!ok) throw fail(where + ": " + role(x) + " and " + role(y) + " must have the same shape");
      };
      // Same rows: equal shapes but for the last dim (rows are numel / last dim at run time).
      auto same_rows = [&](const ValueDesc& x, const ValueDesc& y) {
        bool ok = !x.shape.empty() && x.shape.size() == y.shape.size();
        for (size_t k = 0; ok && k + 1 < x.shape.size(); k++) ok = dim_eq(x.shape[k], y.shape[k]);
        if (!ok) throw fail(where + ": " + role(x) + " and " + role(y) + " must have the same rows");
      };
      auto last_is = [&](const ValueDesc& v, int64_t want) {
        if (v.shape.empty() || v.shape.back().sym != Sym::None || v.last_dim() != want)
          throw fail(where + ": " + role(v) + " must have last dim " + std::to_string(want));
      };
      auto numel_is = [&](const ValueDesc& v, int64_t want) {
        if (v.has_sym() || v.max_numel() != uint64_t(want))
          throw fail(where + ": " + role(v) + " must have " + std::to_string(want) + " elements");
      };
      auto fixed_last = [&](const ValueDesc& v) -> int64_t {
        if (v.shape.empty() || v.shape.back().sym != Sym::None)
          throw fail(where + ": " + role(v) + " needs a fixed last dim");
        return v.last_dim();
      };
      // [num_tokens, width]: rows read per token of the step.
      auto token_rows = [&](const ValueDesc& v) {
        if (v.shape.size() != 2 || v.shape[0].sym != Sym::NumTokens || v.shape[1].sym != Sym::None)
          throw fail(where + ": " + role(v) + " must have shape [num_tokens, width]");
      };
      auto positions = [&](const ValueDesc& v) {
        need_dt(v, ElemType::I32);
        if (v.shape.size() != 1 || v.shape[0].sym != Sym::NumTokens)
          throw fail(where + ": " + role(v) + " must have shape [num_tokens]");
      };
      auto eps_attr = [&]() {
        const double e = a.num_or("eps", 1e-5);
        if (!(e >= 0 && e < 1)) throw fail(where + ": eps " + std::to_string(e) + " is outside [0, 1)");
        nd.eps = float(e);
        const double off = a.num_or("weight_offset", 0.0);
        if (!std::isfinite(off) || std::fabs(off) > 1e6) throw fail(where + ": weight_offset " + std::to_string(off) + " is not a finite number");
        nd.w_offset = float(off);
      };
      // A unary op's number (scale: factor, finite; softcap: cap, finite and > 0); other ops take none.
      auto unary_param = [&](UnaryOp u, double v, const std::string& what) -> float {
        const bool positive = u == UnaryOp::Softcap;
        if ((u == UnaryOp::Scale || positive) && (!std::isfinite(v) || (positive && !(v > 0))))
          throw fail(where + ": " + what + " " + std::to_string(v) +
                     (positive ? " must be a finite number > 0" : " is not finite"));
        return float(v);
      };
      auto param_attr = [&](const char* key) {
        UnaryOp u;
        unary_of(nd.op, &u);
        nd.param = unary_param(u, a.at(key).num(key), key);
      };
      // attrs[key] = { ops: [names], args: [numbers] }: a chain folded in by the compiler (src/ops/ew-chain.ts).
      auto chain_attr = [&](const char* key, EwChain* c) {
        const Json* cj = a.find(key);
        if (!cj || cj->is_null()) return;
        const std::string k = key;
        const auto& ops = cj->at("ops").arr((k + ".ops").c_str());
        const auto& args = cj->at("args").arr((k + ".args").c_str());
        if (ops.size() != args.size() || ops.size() > size_t(kMaxEwChain))
          throw fail(where + ": " + k + " has " + std::to_string(ops.size()) + " ops and " + std::to_string(args.size()) +
                     " args (the same number, at most " + std::to_string(kMaxEwChain) + ")");
        for (size_t i = 0; i < ops.size(); i++) {
          const std::string& name = ops[i].str((k + ".ops[]").c_str());
          Op op;
          UnaryOp u;
          if (!parse_op(name, &op) || !unary_of(op, &u))
            throw fail(where + ": " + k + ".ops[" + std::to_string(i) + "] \"" + name +
                       "\" is not a unary op (tanh, sigmoid, exp, scale, softcap)");
          c->op[i] = u;
          c->arg[i] = unary_param(u, args[i].num((k + ".args[]").c_str()), k + ".args[" + std::to_string(i) + "]");
        }
        c->n = int(ops.size());
      };
      auto attn_attrs = [&]() {
        nd.layer = int(int_at(a, "layer", where + ": layer", 0, std::max(0, d.kv.num_layers - 1)));
        if (d.kv.num_layers == 0) throw fail(where + ": the engine has no KV cache");
        nd.num_heads = int(int_at(a, "num_heads", where + ": num_heads", 1, 4096));
        nd.num_kv_heads = int(int_at(a, "num_kv_heads", where + ": num_kv_heads", 1, 4096));
        nd.head_dim = int(int_at(a, "head_dim", where + ": head_dim", 8, 256));
        const double sc = a.at("scale").num("scale");
        if (!std::isfinite(sc)) throw fail(where + ": scale is not finite");
        nd.scale = float(sc);
        if (nd.num_heads % nd.num_kv_heads)
          throw fail(where + ": num_heads " + std::to_string(nd.num_heads) + " is not a multiple of num_kv_heads " +
                     std::to_string(nd.num_kv_heads));
        if (nd.num_kv_heads != d.kv.num_kv_heads || nd.head_dim != d.kv.head_dim)
          throw fail(where + ": KV heads/head_dim " + std::to_string(nd.num_kv_heads) + "/" + std::to_string(nd.head_dim) +
                     " differ from kv_cache " + std::to_string(d.kv.num_kv_heads) + "/" + std::to_string(d.kv.head_dim));
        // FP8 KV cache (docs/engine-format.md): per-layer k_scale / v_scale (1.0 uncalibrated).
        const std::string kvd = a.str_or("kv_cache_dtype", d.kv.dt == ElemType::FP8_E4M3 ? "fp8" : "");
        if ((kvd == "fp8") != (d.kv.dt == ElemType::FP8_E4M3))
          throw fail(where + ": kv_cache_dtype \"" + kvd + "\" but the engine's kv_cache.dtype is " + elem_name(d.kv.dt));
        if (kvd == "fp8") {
          const double ks = a.num_or("k_scale", 1.0), vs = a.num_or("v_scale", 1.0);
          if (!(ks > 0 && std::isfinite(ks) && vs > 0 && std::isfinite(vs)))
            throw fail(where + ": k_scale / v_scale must be positive and finite");
          nd.k_scale = float(ks), nd.v_scale = float(vs);
        }
      };
      auto rope_attrs = [&](const char* key, int64_t dflt) {
        nd.rotary_dim = int(int_or(a, key, dflt, where + ": " + key, 0, nd.head_dim));
        if (nd.rotary_dim % 2) throw fail(where + ": " + key + " " + std::to_string(nd.rotary_dim) + " is odd");
      };
      auto inv_freq = [&](const ValueDesc& v) {
        need_dt(v, ElemType::F32);
        if (v.has_sym() || v.max_numel() < uint64_t(nd.rotary_dim / 2))
          throw fail(where + ": " + role(v) + " must hold rotary_dim / 2 = " + std::to_string(nd.rotary_dim / 2) +
                     " frequencies");
      };

      switch (nd.op) {
        case Op::Embedding: {
          nd.vocab_start = int(int_or(a, "vocab_start", 0, where + ": vocab_start", 0, int64_t(1) << 30));
          const ValueDesc& ids = in(0);
          const ValueDesc& tab = in(1);
          need_dt(ids, ElemType::I32), act(tab), act(out(0));
          if (tab.shape.size() != 2 || tab.has_sym()) throw fail(where + ": table " + tab.name + " must be 2-D [vocab, hidden]");
          if (tab.shape[0].n > (int64_t(1) << 30)) throw fail(where + ": table " + tab.name + " has more than 2^30 rows");
          last_is(out(0), tab.shape[1].n);
          if (ids.shape.size() != 1 || out(0).shape.size() != 2 || !dim_eq(ids.shape[0], out(0).shape[0]))
            throw fail(where + ": ids [rows] and output [rows, hidden] must have the same rows");
          break;
        }
        case Op::Linear: {
          nd.act = parse_act(a.str_or("activation", "none"), where);
          chain_attr("post", &nd.post);
          const ValueDesc& x = in(0);
          const ValueDesc& w = in(1);
          if (w.shape.size() != 2 || w.has_sym()) throw fail(where + ": weight " + w.name + " must be 2-D [N, K]");
          if (w.dt != x.dt)
            throw fail(where + ": weight " + w.name + " is " + elem_name(w.dt) + " but x is " + elem_name(x.dt) +
                       " (quantised weights belong to quant_linear nodes)");
          act(x), act(out(0));
          const int64_t N = w.shape[0].n, K = w.shape[1].n;
          if (N > INT32_MAX || K > INT32_MAX) throw fail(where + ": weight " + w.name + " is too large");
          if (fixed_last(x) != K)
            throw fail(where + ": x has K=" + std::to_string(x.last_dim()) + ", weight " + w.name + " has K=" +
                       std::to_string(K));
          last_is(out(0), N);
          same_rows(x, out(0));
          if (const ValueDesc* b = opt(2)) act(*b), numel_is(*b, N);
          if (const ValueDesc* r = opt(3)) act(*r), same_shape(*r, out(0));
          break;
        }
        case Op::RmsNorm:
        case Op::AddRmsNorm:
        case Op::LayerNorm:
        case Op::AddLayerNorm: {
          eps_attr();
          chain_attr("pre", &nd.pre);
          chain_attr("post", &nd.post);
          const bool add = nd.op == Op::AddRmsNorm || nd.op == Op::AddLayerNorm;
          const ValueDesc& x = in(0);
          act(x);
          const int64_t H = fixed_last(x);
          if (H > INT32_MAX) throw fail(where + ": hidden size too large");
          if (add) act(in(1)), same_shape(in(1), x);
          const size_t wi = add ? 2 : 1;
          act(in(wi)), numel_is(in(wi), H);
          if (const ValueDesc* b = opt(wi + 1)) act(*b), numel_is(*b, H);
          for (size_t k = 0; k < nd.out.size(); k++) act(out(k)), same_shape(out(k), x);
          break;
        }
        case Op::Add:
        case Op::Sub:
        case Op::Mul:
        case Op::Div:
          act(in(0)), act(in(1)), act(out(0)), same_shape(in(0), out(0)), same_shape(in(1), out(0));
          break;
        case Op::Tanh:
        case Op::Sigmoid:
        case Op::Exp:
        case Op::Scale:
        case Op::Softcap:
          if (nd.op == Op::Scale) param_attr("factor");
          if (nd.op == Op::Softcap) param_attr("cap");
          act(in(0)), act(out(0)), same_shape(in(0), out(0));
          break;
        case Op::Silu:
          nd.act = Act::Silu;
          act(in(0)), act(out(0)), same_shape(in(0), out(0));
          break;
        case Op::Gelu:
          nd.act = a.str_or("approximate", "tanh") == "tanh" ? Act::GeluTanh : Act::GeluErf;
          act(in(0)), act(out(0)), same_shape(in(0), out(0));
          break;
        case Op::GatedAct: {
          nd.act = parse_act(a.str_or("activation", "silu"), where);
          act(in(0)), act(out(0));
          const int64_t I = fixed_last(out(0));
          last_is(in(0), 2 * I);
          same_rows(in(0), out(0));
          break;
        }
        case Op::Split: {
          for (const Json& sz : a.at("sizes").arr("sizes"))
            nd.sizes.push_back(in_range(sz.i64("sizes[]"), where + ": sizes[]", 1, kMaxDim));
          need_out(nd.sizes.size());
          act(in(0));
          int64_t tot = 0;
          for (size_t k = 0; k < nd.sizes.size(); k++) {
            tot += nd.sizes[k];
            act(out(k)), last_is(out(k), nd.sizes[k]), same_rows(in(0), out(k));
          }
          if (tot != fixed_last(in(0)))
            throw fail(where + ": sizes sum to " + std::to_string(tot) + ", input last dim is " +
                       std::to_string(in(0).last_dim()));
          break;
        }
        case Op::Rope:
          nd.num_heads = int(int_at(a, "num_heads", where + ": num_heads", 1, 4096));
          nd.head_dim = int(int_at(a, "head_dim", where + ": head_dim", 2, 4096));
          rope_attrs("rotary_dim", nd.head_dim);
          nd.rope_style = parse_rope_style(a.str_or("style", "neox"), where);
          act(in(0)), act(out(0)), same_shape(in(0), out(0)), token_rows(in(0));
          last_is(in(0), int64_t(nd.num_heads) * nd.head_dim);
          positions(in(1));
          inv_freq(in(2));
          break;
        case Op::Attention:
          attn_attrs();
          for (size_t k = 0; k < 3; k++) act(in(k)), token_rows(in(k));
          act(out(0)), token_rows(out(0));
          last_is(in(0), int64_t(nd.num_heads) * nd.head_dim);
          last_is(in(1), int64_t(nd.num_kv_heads) * nd.head_dim);
          last_is(in(2), int64_t(nd.num_kv_heads) * nd.head_dim);
          last_is(out(0), int64_t(nd.num_heads) * nd.head_dim);
          break;
        case Op::FusedAttention:
          attn_attrs();
          rope_attrs("rotary_dim", 0);
          nd.rope_style = parse_rope_style(a.str_or("rope_style", "neox"), where);
          act(in(0)), token_rows(in(0)), act(out(0)), token_rows(out(0));
          last_is(in(0), int64_t(nd.num_heads + 2 * nd.num_kv_heads) * nd.head_dim);
          last_is(out(0), int64_t(nd.num_heads) * nd.head_dim);
          positions(in(1));
          if (nd.rotary_dim > 0) {
            if (!opt(2)) throw fail(where + ": rotary_dim " + std::to_string(nd.rotary_dim) + " but no inv_freq input");
            inv_freq(in(2));
          }
          break;
        case Op::GatherRows:
          // Rows of x picked by the runtime's logits indices (each < the step's tokens): x is per token, the
          // indices are the logits_indices graph input, the output per logits row.
          act(in(0)), act(out(0)), token_rows(in(0));
          if (in(1).kind != ValueKind::Input || in(1).input != InputSlot::LogitsIndices)
            throw fail(where + ": indices must be the logits_indices graph input");
          if (out(0).shape.size() != 2 || out(0).shape[0].sym != Sym::NumLogits)
            throw fail(where + ": output must have shape [num_logits, hidden]");
          last_is(out(0), in(0).last_dim());
          break;
        case Op::AllReduce:
          act(in(0)), act(out(0)), same_shape(in(0), out(0));
          break;
        case Op::QuantLinear: {
          // docs/engine-format.md "Quantisation": fp8 [N,K] E4M3 + f32 [N]; int8-wo i8 [N,K] + f32 [N];
          // int4-wo u8 [N,K/2] (two per byte) + f32 [N, K/G].
          nd.act = parse_act(a.str_or("activation", "none"), where);
          chain_attr("post", &nd.post);
          const std::string q = a.str_or("quant", "");
          ElemType wdt;
          if (q == "fp8") nd.quant = QuantKind::Fp8, wdt = ElemType::FP8_E4M3;
          else if (q == "int8-wo") nd.quant = QuantKind::Int8, wdt = ElemType::I8;
          else if (q == "int4-wo") nd.quant = QuantKind::Int4, wdt = ElemType::U8;
          else
            throw fail(where + ": quant \"" + q + "\" is not implemented by this runtime (fp8, int8-wo, int4-wo)");
          const std::string cd = a.str_or("compute_dtype", elem_name(d.dtype));
          ElemType cdt;
          if (!parse_elem(cd, &cdt) || cdt != d.dtype)
            throw fail(where + ": compute_dtype " + cd + " differs from the engine dtype " + elem_name(d.dtype));
          const ValueDesc& x = in(0);
          const ValueDesc& w = in(1);
          const ValueDesc& sc = in(2);
          act(x), act(out(0)), need_dt(w, wdt), need_dt(sc, ElemType::F32);
          if (w.shape.size() != 2 || w.has_sym()) throw fail(where + ": weight " + w.name + " must be 2-D [N, K]");
          const int64_t N = w.shape[0].n;
          const int64_t K = nd.quant == QuantKind::Int4 ? 2 * w.shape[1].n : w.shape[1].n;
          if (N > INT32_MAX || K > INT32_MAX) throw fail(where + ": weight " + w.name + " is too large");
          if (fixed_last(x) != K)
            throw fail(where + ": x has K=" + std::to_string(x.last_dim()) + ", weight " + w.name + " holds K=" +
                       std::to_string(K));
          if (nd.quant == QuantKind::Int4) {
            nd.group_size = int(int_at(a, "group_size", where + ": group_size", 2, K));
            if (nd.group_size % 2 || K % nd.group_size)
              throw fail(where + ": group_size " + std::to_string(nd.group_size) + " must be even and divide K=" +
                         std::to_string(K));
            numel_is(sc, N * (K / nd.group_size));
          } else {
            numel_is(sc, N);
          }
          last_is(out(0), N);
          same_rows(x, out(0));
          if (const ValueDesc* b = opt(3)) act(*b), numel_is(*b, N);
          if (const ValueDesc* r = opt(4)) act(*r), same_shape(*r, out(0));
          break;
        }
        case Op::Moe: {
          // src/ops/moe.ts: x [T, H], router logits [T, E], w1 / w3 [E·I, H], w2 [E·H, I] (experts stacked).
          nd.num_experts = int(int_at(a, "num_experts", where + ": num_experts", 1, kMoeMaxExperts));
          nd.top_k = int(int_at(a, "top_k", where + ": top_k", 1, std::min(nd.num_experts, kMoeMaxTopK)));
          nd.normalize = a.num_or("normalize", 1) != 0;
          // Expert parallelism (--moe-ep-size): this rank's weights hold experts [expert_start, + local_experts).
          nd.expert_start = int(int_or(a, "expert_start", 0, where + ": expert_start", 0, nd.num_experts - 1));
          nd.local_experts = int(int_or(a, "local_experts", nd.num_experts - nd.expert_start, where + ": local_experts", 1,
                                        nd.num_experts - nd.expert_start));
          nd.act = parse_act(a.str_or("activation", "silu"), where);
          const std::string q = a.str_or("quant", "none");
          if (q != "none" || opt(5) || opt(6) || opt(7))
            throw fail(where + ": quantised experts (quant " + q +
                       ") are not implemented by the CUDA runtime yet; build without --quant, or run on the CPU "
                       "(tsllm-run --device cpu)");
          const ValueDesc& x = in(0);
          const ValueDesc& lg = in(1);
          act(x), act(lg), act(out(0)), token_rows(x), token_rows(lg), same_shape(x, out(0));
          const int64_t E = nd.local_experts, H = fixed_last(x);
          last_is(lg, nd.num_experts);
          auto weight = [&](size_t k, int64_t rows, int64_t cols, const char* what) {
            const ValueDesc& w = in(k);
            act(w);
            if (w.shape.size() != 2 || w.has_sym() || w.shape[0].n != rows || w.shape[1].n != cols)
              throw fail(where + ": " + what + " " + w.name + " must be [" + std::to_string(rows) + ", " +
                         std::to_string(cols) + "] (" + std::to_string(E) + " local experts stacked)");
          };
          const ValueDesc& w1 = in(2);
          if (w1.shape.size() != 2 || w1.has_sym() || w1.shape[0].n % E)
            throw fail(where + ": w1 " + w1.name + " must be [local_experts · I, H] with local_experts " + std::to_string(E));
          const int64_t I = w1.shape[0].n / E;
          weight(2, E * I, H, "w1"), weight(3, E * I, H, "w3"), weight(4, E * H, I, "w2");
          if (H % 8 || I % 8 || H > INT32_MAX / 16 || I > INT32_MAX / 16)
            throw fail(where + ": hidden " + std::to_string(H) + " and intermediate " + std::to_string(I) +
                       " must be multiples of 8 (16-byte rows)");
          nd.moe_hidden = int(H), nd.moe_inter = int(I);
          break;
        }
        case Op::AllGather:
          nd.tp = int(int_or(a, "tp", d.tp, where + ": tp", 1, 1024));
          if (nd.tp != d.tp)
            throw fail(where + ": tp " + std::to_string(nd.tp) + " differs from the engine's tp " + std::to_string(d.tp));
          act(in(0)), act(out(0)), same_rows(in(0), out(0));
          last_is(out(0), fixed_last(in(0)) * nd.tp);
          break;
      }
      d.nodes.push_back(std::move(nd));
      ni++;
    }
    if (d.values[d.logits_value].kind != ValueKind::Arena) throw fail("the logits output has no arena offset");
  } catch (const JsonError& e) {
    throw fail(std::string("header: ") + e.what());
  }
  return d;
}

}  // namespace tsllm
