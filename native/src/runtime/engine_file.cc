#include "engine_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
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
    d.rank = int(h.i64_or("rank", 0));
    d.tp = int(h.i64_or("tp", 1));
    if (d.tp < 1 || d.rank < 0 || d.rank >= d.tp)
      throw fail("rank " + std::to_string(d.rank) + " of tp " + std::to_string(d.tp) + " is inconsistent");
    if (!parse_elem(h.at("dtype").str("dtype"), &d.dtype)) throw fail("unknown dtype \"" + h.at("dtype").str() + "\"");

    // sm: header "sm", header "build.sm", else config.json beside the file.
    if (h.find("sm")) d.sm = int(h.at("sm").i64("sm"));
    else if (h.find("build") && h.at("build").find("sm")) d.sm = int(h.at("build").at("sm").i64("build.sm"));
    else d.sm = sm_from_config(path);

    const Json& lim = h.at("limits");
    d.max_batch_size = lim.at("max_batch_size").i64("limits.max_batch_size");
    d.max_seq_len = lim.at("max_seq_len").i64("limits.max_seq_len");
    d.max_num_tokens = lim.at("max_num_tokens").i64("limits.max_num_tokens");
    if (d.max_batch_size < 1 || d.max_seq_len < 1 || d.max_num_tokens < 1) throw fail("limits must be positive");

    if (const Json* kv = h.find("kv_cache"); kv && !kv->is_null()) {
      d.kv.num_layers = int(kv->at("num_layers").i64("kv_cache.num_layers"));
      d.kv.num_kv_heads = int(kv->at("num_kv_heads").i64("kv_cache.num_kv_heads"));
      d.kv.head_dim = int(kv->at("head_dim").i64("kv_cache.head_dim"));
      d.kv.tokens_per_block = int(kv->i64_or("tokens_per_block", 32));
      std::string kd = kv->str_or("dtype", elem_name(d.dtype));
      if (!parse_elem(kd, &d.kv.dt)) throw fail("unknown kv_cache.dtype \"" + kd + "\"");
    }

    // ---- values ----
    std::unordered_map<int64_t, int> by_id;
    for (const Json& v : h.at("values").arr("values")) {
      ValueDesc vd;
      vd.id = v.at("id").i64("values[].id");
      vd.name = v.str_or("name", "");
      const std::string& dts = v.at("dtype").str("values[].dtype");
      if (!parse_elem(dts, &vd.dt)) throw fail("value " + std::to_string(vd.id) + ": unknown dtype \"" + dts + "\"");
      for (const Json& dim : v.at("shape").arr("values[].shape")) {
        Dim dm;
        if (dim.is_number()) {
          dm.n = dim.i64("dim");
        } else {
          const std::string& sym = dim.at("sym").str("dim.sym");
          dm.n = dim.at("max").i64("dim.max");
          if (sym == "num_tokens") dm.sym = Sym::NumTokens;
          else if (sym == "num_logits") dm.sym = Sym::NumLogits;
          else if (sym == "num_seqs" || sym == "batch") dm.sym = Sym::NumSeqs;
          else throw fail("value " + std::to_string(vd.id) + " (" + vd.name + "): unknown shape symbol \"" + sym + "\"");
        }
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
      if (kv.first == "input_ids") v.input = InputSlot::InputIds;
      else if (kv.first == "positions") v.input = InputSlot::Positions;
      else if (kv.first == "logits_indices") v.input = InputSlot::LogitsIndices;
      else throw fail("unknown graph input \"" + kv.first + "\" (this runtime feeds input_ids, positions, logits_indices)");
      if (v.dt != ElemType::I32) throw fail("graph input " + kv.first + " must be i32, is " + elem_name(v.dt));
      v.kind = ValueKind::Input;
    }
    for (auto& kv : h.at("outputs").obj("outputs")) {
      if (kv.first == "logits") d.logits_value = value_index(kv.second, "outputs.logits");
      else throw fail("unknown graph output \"" + kv.first + "\" (this runtime reads logits)");
    }
    if (d.logits_value < 0) throw fail("the engine has no \"logits\" output");
    d.vocab_size = int(d.values[d.logits_value].last_dim());

    // ---- weights ----
    uint64_t dev_off = 0;
    for (const Json& w : h.at("weights").arr("weights")) {
      WeightDesc wd;
      wd.value = value_index(w.at("value"), "weights[].value");
      ValueDesc& v = d.values[wd.value];
      if (v.kind != ValueKind::Unused) throw fail("value " + std::to_string(v.id) + " is a weight twice or also an input");
      if (v.has_sym()) throw fail("weight " + v.name + " has a symbolic shape");
      v.kind = ValueKind::Weight;
      v.weight = int(d.weights.size());
      wd.offset = uint64_t(w.i64_or("offset", 0));
      wd.nbytes = uint64_t(w.i64_or("nbytes", 0));
      const Json* r = w.find("random");
      if (r && !r->is_null()) {
        wd.random = true;
        wd.seed = uint32_t(r->i64_or("seed", 0));
        wd.mean = float(r->num_or("mean", 0.0));
        wd.scale = float(r->num_or("scale", 0.0));
      }
      uint64_t natural = v.max_numel() * elem_size(v.dt);
      wd.device_bytes = wd.nbytes ? wd.nbytes : natural;
      if (wd.random && (v.dt == ElemType::I32 || v.dt == ElemType::I64 || v.dt == ElemType::I8 || v.dt == ElemType::U8))
        throw fail("random weight " + v.name + " has integer dtype " + elem_name(v.dt));
      if (!wd.random && wd.nbytes == 0 && natural != 0)
        throw fail("weight " + v.name + " has nbytes 0 and no random recipe");
      if (!wd.random && d.data_offset + wd.offset + wd.nbytes > d.file_size)
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
    d.arena_bytes = uint64_t(arena.at("bytes").i64("arena.bytes"));
    for (auto& kv : arena.at("offsets").obj("arena.offsets")) {
      int64_t id = 0;
      try {
        id = std::stoll(kv.first);
      } catch (...) {
        throw fail("arena.offsets key \"" + kv.first + "\" is not a value id");
      }
      auto it = by_id.find(id);
      if (it == by_id.end()) throw fail("arena.offsets names unknown value id " + kv.first);
      ValueDesc& v = d.values[it->second];
      uint64_t off = uint64_t(kv.second.i64("arena offset"));
      if (v.kind == ValueKind::Weight) throw fail("weight " + v.name + " also has an arena offset");
      if (v.kind == ValueKind::Input) continue;  // inputs live in the runtime's step metadata buffer
      if (off + v.max_numel() * elem_size(v.dt) > d.arena_bytes)
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
      auto attn_attrs = [&]() {
        nd.layer = int(a.at("layer").i64("layer"));
        nd.num_heads = int(a.at("num_heads").i64("num_heads"));
        nd.num_kv_heads = int(a.at("num_kv_heads").i64("num_kv_heads"));
        nd.head_dim = int(a.at("head_dim").i64("head_dim"));
        nd.scale = float(a.at("scale").num("scale"));
        if (nd.num_kv_heads <= 0 || nd.num_heads % nd.num_kv_heads)
          throw fail(where + ": num_heads " + std::to_string(nd.num_heads) + " is not a multiple of num_kv_heads " +
                     std::to_string(nd.num_kv_heads));
        if (nd.layer < 0 || nd.layer >= d.kv.num_layers)
          throw fail(where + ": layer " + std::to_string(nd.layer) + " outside the KV cache's " +
                     std::to_string(d.kv.num_layers) + " layers");
        if (nd.num_kv_heads != d.kv.num_kv_heads || nd.head_dim != d.kv.head_dim)
          throw fail(where + ": KV heads/head_dim " + std::to_string(nd.num_kv_heads) + "/" + std::to_string(nd.head_dim) +
                     " differ from kv_cache " + std::to_string(d.kv.num_kv_heads) + "/" + std::to_string(d.kv.head_dim));
      };

      switch (nd.op) {
        case Op::Embedding:
          nd.vocab_start = int(a.i64_or("vocab_start", 0));
          break;
        case Op::Linear: {
          nd.act = parse_act(a.str_or("activation", "none"), where);
          const ValueDesc& w = d.values[nd.in[1]];
          const ValueDesc& x = d.values[nd.in[0]];
          if (w.shape.size() != 2) throw fail(where + ": weight " + w.name + " must be 2-D [N, K]");
          if (x.last_dim() != w.shape[1].n)
            throw fail(where + ": x has K=" + std::to_string(x.last_dim()) + ", weight " + w.name + " has K=" +
                       std::to_string(w.shape[1].n));
          if (w.dt != x.dt)
            throw fail(where + ": weight " + w.name + " is " + elem_name(w.dt) + " but x is " + elem_name(x.dt) +
                       " (quantised GEMMs are not in this runtime yet)");
          break;
        }
        case Op::RmsNorm:
        case Op::AddRmsNorm:
        case Op::LayerNorm:
        case Op::AddLayerNorm: nd.eps = float(a.num_or("eps", 1e-5)); break;
        case Op::Add:
        case Op::Mul: break;
        case Op::Silu: nd.act = Act::Silu; break;
        case Op::Gelu:
          nd.act = a.str_or("approximate", "tanh") == "tanh" ? Act::GeluTanh : Act::GeluErf;
          break;
        case Op::GatedAct:
          nd.act = parse_act(a.str_or("activation", "silu"), where);
          break;
        case Op::Split: {
          for (const Json& s : a.at("sizes").arr("sizes")) nd.sizes.push_back(s.i64("sizes[]"));
          need_out(nd.sizes.size());
          int64_t tot = 0;
          for (auto s : nd.sizes) tot += s;
          if (tot != d.values[nd.in[0]].last_dim())
            throw fail(where + ": sizes sum to " + std::to_string(tot) + ", input last dim is " +
                       std::to_string(d.values[nd.in[0]].last_dim()));
          break;
        }
        case Op::Rope:
          nd.num_heads = int(a.at("num_heads").i64("num_heads"));
          nd.head_dim = int(a.at("head_dim").i64("head_dim"));
          nd.rotary_dim = int(a.i64_or("rotary_dim", nd.head_dim));
          nd.rope_style = parse_rope_style(a.str_or("style", "neox"), where);
          break;
        case Op::Attention: attn_attrs(); break;
        case Op::FusedAttention:
          attn_attrs();
          nd.rotary_dim = int(a.i64_or("rotary_dim", 0));
          nd.rope_style = parse_rope_style(a.str_or("rope_style", "neox"), where);
          if (nd.rotary_dim > 0 && (nd.in.size() < 3 || nd.in[2] < 0))
            throw fail(where + ": rotary_dim " + std::to_string(nd.rotary_dim) + " but no inv_freq input");
          break;
        case Op::GatherRows: break;
        case Op::AllReduce: break;
        case Op::AllGather:
          nd.tp = int(a.i64_or("tp", d.tp));
          if (nd.tp != d.tp)
            throw fail(where + ": tp " + std::to_string(nd.tp) + " differs from the engine's tp " + std::to_string(d.tp));
          if (d.values[nd.out[0]].last_dim() != d.values[nd.in[0]].last_dim() * nd.tp)
            throw fail(where + ": output last dim is not tp x the input's");
          break;
      }
      for (int vi : nd.in)
        if (vi >= 0 && d.values[vi].kind == ValueKind::Unused)
          throw fail(where + ": input value " + std::to_string(d.values[vi].id) + " (" + d.values[vi].name +
                     ") has no storage: it is not a weight, a graph input or in the arena");
      for (int vi : nd.out)
        if (d.values[vi].kind != ValueKind::Arena)
          throw fail(where + ": output value " + std::to_string(d.values[vi].id) + " (" + d.values[vi].name +
                     ") has no arena offset");
      d.nodes.push_back(std::move(nd));
      ni++;
    }
    if (d.values[d.logits_value].kind != ValueKind::Arena) throw fail("the logits output has no arena offset");
    if ((d.dtype != ElemType::F16 && d.dtype != ElemType::BF16))
      throw fail(std::string("activation dtype ") + elem_name(d.dtype) +
                 " runs only on the reference executor; the CUDA runtime needs fp16 or bf16");
  } catch (const JsonError& e) {
    throw fail(std::string("header: ") + e.what());
  }
  return d;
}

}  // namespace tsllm
