// The interpreter: runs the op program of one step on e.stream. Everything here is asynchronous and
// capturable into a CUDA graph (no allocation, no synchronisation, no host reads of device data).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine.h"
#include "runtime_kernels.h"

#ifdef TSLLM_WITH_NCCL
#include <nccl.h>
#endif

namespace tsllm {

namespace {

[[noreturn]] void node_fail(size_t i, const NodeDesc& n, const std::string& msg) {
  throw StepError("node " + std::to_string(i) + " (" + op_name(n.op) + "): " + msg);
}

// The prologue a skippable node turns into (GemvPro::None when it cannot be fused).
GemvPro prologue_kind(const NodeDesc& n) {
  if (n.op == Op::RmsNorm) return GemvPro::RmsNorm;
  if (n.op == Op::GatedAct && n.act == Act::Silu) return GemvPro::GatedSilu;
  if (n.op == Op::GatedAct && n.act == Act::GeluTanh) return GemvPro::GatedGeluTanh;
  return GemvPro::None;
}

// The gemv variant that runs producer node i fused into its consumer linear in this step, or -1.
int prologue_variant(Engine& e, const StepPlan& p, size_t i) {
  const int j = e.pro_consumer[i];
  if (j < 0) return -1;
  const NodeDesc& n = e.desc.nodes[i];
  const NodeDesc& l = e.desc.nodes[size_t(j)];
  const ValueDesc& w = e.val(l.in[1]);
  const int N = int(w.shape[0].n), K = int(w.shape[1].n);
  const int M = int(e.numel(l.in[0], p) / K);
  if (M < 1 || M > kGemvMaxM) return -1;
  GemvPrologue pro;
  pro.kind = prologue_kind(n);
  if (pro.kind == GemvPro::RmsNorm) {
    pro.norm_w = e.ptr(n.in[1], p);
    pro.eps = n.eps;
  }
  const void* x = e.ptr(n.in[0], p);
  void* y = e.ptr(n.out[0], p);
  const void* bias = l.in.size() > 2 && l.in[2] >= 0 ? e.ptr(l.in[2], p) : nullptr;
  const void* res = l.in.size() > 3 && l.in[3] >= 0 ? e.ptr(l.in[3], p) : nullptr;
  void* out = e.ptr(l.out[0], p);
  // The fused gemv reads x while writing out: they must not overlap (the arena may reuse x's slot for out
  // once the skipped node was x's last reader).
  const size_t es = elem_size(e.desc.dtype);
  const size_t xb = size_t(M) * size_t(K) * es * (pro.kind == GemvPro::RmsNorm ? 1 : 2);
  const size_t ob = size_t(M) * size_t(N) * es;
  const char *x0 = static_cast<const char*>(x), *o0 = static_cast<const char*>(out);
  if (x0 < o0 + ob && o0 < x0 + xb) return -1;
  return e.gemm.prologue_variant(pro, x, y, e.ptr(l.in[1], p), bias, res, out, M, N, K, e.cuda_dt, e.stream);
}

}  // namespace

void plan_prologue_fusion(Engine& e) {
  e.pro_consumer.clear();
  e.pro_producer.clear();
  // On by default (H100, Llama-2-7B bs 1: 4.93 vs 4.99 ms/step); TSLLM_GEMV_PROLOGUE=0 turns it off.
  const char* env = std::getenv("TSLLM_GEMV_PROLOGUE");
  if (env && env[0] == '0' && env[1] == 0) return;
  const EngineDesc& d = e.desc;
  e.pro_consumer.assign(d.nodes.size(), -1);
  e.pro_producer.assign(d.nodes.size(), -1);
  for (size_t i = 0; i < d.nodes.size(); i++) {
    const NodeDesc& n = d.nodes[i];
    if (prologue_kind(n) == GemvPro::None || n.in.empty() || n.out.size() != 1) continue;
    if (n.op == Op::RmsNorm && (n.in.size() < 2 || n.in[1] < 0)) continue;
    const int v = n.out[0];
    if (v == d.logits_value || e.val(v).kind != ValueKind::Arena) continue;
    // Every use of v in the program: exactly one, as the x of a linear without an activation.
    int uses = 0, cons = -1;
    for (size_t k = 0; k < d.nodes.size(); k++)
      for (size_t a = 0; a < d.nodes[k].in.size(); a++)
        if (d.nodes[k].in[a] == v) {
          uses++;
          cons = a == 0 ? int(k) : -2;
        }
    if (uses != 1 || cons < 0 || size_t(cons) <= i) continue;
    const NodeDesc& l = d.nodes[size_t(cons)];
    if (l.op != Op::Linear || l.act != Act::None || l.in.size() < 2 || l.out.size() != 1) continue;
    const int64_t K = e.val(l.in[1]).shape[1].n;
    const int64_t width = e.val(v).last_dim();  // rms_norm: hidden; gated_act: inter
    if (width != K || e.val(n.in[0]).last_dim() != (n.op == Op::RmsNorm ? K : 2 * K)) continue;
    if (e.pro_producer[size_t(cons)] >= 0) continue;
    e.pro_consumer[i] = cons;
    e.pro_producer[size_t(cons)] = int(i);
  }
}

bool node_fused(Engine& e, const StepPlan& p, size_t i) {
  return !e.pro_consumer.empty() && e.pro_consumer[i] >= 0 && prologue_variant(e, p, i) >= 0;
}

void forward(Engine& e, const StepPlan& p, const std::vector<uint8_t>* only) {
  const EngineDesc& d = e.desc;
  cudaStream_t s = e.stream;
  const DType dt = e.dt;
  const size_t es = elem_size(d.dtype);
  StepBuffers& b = *p.buf;

  PagedKV kv{};
  kv.base = e.kv_pool;
  kv.dtype = to_dtype(d.kv.dt);
  kv.num_layers = d.kv.num_layers;
  kv.num_blocks = int(e.kv.num_blocks());
  kv.num_kv_heads = d.kv.num_kv_heads;
  kv.head_dim = d.kv.head_dim;
  kv.tokens_per_block = e.tpb;
  kv.block_tables = b.dptr<int32_t>(b.lay.block_tables);
  kv.max_blocks_per_seq = e.max_blocks_per_seq;
  kv.kv_scale = 1.f;

  StepLayout step{};
  step.num_tokens = p.T;
  step.num_seqs = p.S;
  step.positions = b.dptr<int32_t>(b.lay.positions);
  step.token_seq = b.dptr<int32_t>(b.lay.token_seq);
  step.seq_start = b.dptr<int32_t>(b.lay.seq_start);
  step.seq_len = b.dptr<int32_t>(b.lay.seq_len);
  step.max_new_tokens = p.max_new;
  step.max_seq_len = p.max_len;

  const bool prof = e.profile && !only;
  if (prof) {
    while (e.prof_events.size() < d.nodes.size() + 1) {
      cudaEvent_t ev;
      TSLLM_CUDA(cudaEventCreate(&ev), "cudaEventCreate");
      e.prof_events.push_back(ev);
    }
    TSLLM_CUDA(cudaEventRecord(e.prof_events[0], s), "cudaEventRecord");
  }
  for (size_t i = 0; i < d.nodes.size(); i++) {
    if (prof && i > 0) TSLLM_CUDA(cudaEventRecord(e.prof_events[i], s), "cudaEventRecord");
    if (only && !(*only)[i]) continue;
    const NodeDesc& n = d.nodes[i];
    auto in = [&](size_t k) -> void* { return k < n.in.size() && n.in[k] >= 0 ? e.ptr(n.in[k], p) : nullptr; };
    auto out = [&](size_t k) -> void* { return e.ptr(n.out[k], p); };
    auto ck = [&](cudaError_t err) {
      if (err != cudaSuccess) node_fail(i, n, cudaGetErrorString(err));
    };
    if (!e.pro_consumer.empty()) {
      // Prologue fusion: a producer fused into its consumer's gemv launches nothing; the consumer runs the
      // gemv with the producer's prologue, reading the producer's input.
      if (e.pro_consumer[i] >= 0 && prologue_variant(e, p, i) >= 0) continue;
      const int src = e.pro_producer[i];
      const int v = src >= 0 ? prologue_variant(e, p, size_t(src)) : -1;
      if (v >= 0) {
        const NodeDesc& pn = d.nodes[size_t(src)];
        const ValueDesc& w = e.val(n.in[1]);
        const int N = int(w.shape[0].n), K = int(w.shape[1].n);
        const int M = int(e.numel(n.in[0], p) / K);
        GemvPrologue pro;
        pro.kind = prologue_kind(pn);
        if (pro.kind == GemvPro::RmsNorm) {
          pro.norm_w = e.ptr(pn.in[1], p);
          pro.eps = pn.eps;
        }
        ck(gemv_pro(v, pro, e.ptr(pn.in[0], p), in(1), in(2), in(3), out(0), M, N, K, dt, s));
        continue;
      }
    }
    switch (n.op) {
      case Op::Embedding: {
        const ValueDesc& tab = e.val(n.in[1]);
        int H = int(tab.shape[1].n);
        int rows = int(e.numel(n.out[0], p) / H);
        ck(embedding(static_cast<const int32_t*>(in(0)), in(1), out(0), rows, H, n.vocab_start, int(tab.shape[0].n), dt, s));
        break;
      }
      case Op::Linear: {
        const ValueDesc& w = e.val(n.in[1]);
        int N = int(w.shape[0].n), K = int(w.shape[1].n);
        int M = int(e.numel(n.in[0], p) / K);
        void* bias = in(2);
        void* res = in(3);
        void* o = out(0);
        GemmEpi epi = bias ? GemmEpi::Bias : GemmEpi::None;
        std::string err;
        if (n.act == Act::None) {
          err = e.gemm.linear(in(0), in(1), bias, res, o, M, N, K, e.cuda_dt, epi, s);
        } else if (!res && n.act == Act::GeluTanh) {
          err = e.gemm.linear(in(0), in(1), bias, nullptr, o, M, N, K, e.cuda_dt,
                              bias ? GemmEpi::GeluBias : GemmEpi::Gelu, s);
        } else {
          // act(x·wᵀ + b) (+ residual): GEMM (with the GELU epilogue when it is tanh), then the activation
          // kernel, then the residual add. If out aliases the residual, the GEMM goes to scratch first.
          void* tmp = (res && res == o) ? e.scratch : o;
          GemmEpi ep = n.act == Act::GeluTanh ? (bias ? GemmEpi::GeluBias : GemmEpi::Gelu) : epi;
          err = e.gemm.linear(in(0), in(1), bias, nullptr, tmp, M, N, K, e.cuda_dt, ep, s);
          uint64_t cnt = uint64_t(M) * uint64_t(N);
          if (err.empty() && n.act != Act::GeluTanh) ck(activation(tmp, tmp, cnt, n.act, dt, s));
          if (err.empty() && res) ck(binary(tmp, res, o, cnt, false, dt, s));
        }
        if (!err.empty()) node_fail(i, n, err);
        break;
      }
      case Op::RmsNorm:
      case Op::AddRmsNorm: {
        int H = int(e.val(n.in[0]).last_dim());
        int rows = int(e.numel(n.in[0], p) / H);
        bool add = n.op == Op::AddRmsNorm;
        ck(rms_norm(in(0), add ? in(1) : nullptr, add ? in(2) : in(1), out(0), add ? out(1) : nullptr, rows, H, n.eps, dt, s));
        break;
      }
      case Op::LayerNorm:
      case Op::AddLayerNorm: {
        int H = int(e.val(n.in[0]).last_dim());
        int rows = int(e.numel(n.in[0], p) / H);
        bool add = n.op == Op::AddLayerNorm;
        ck(layer_norm(in(0), add ? in(1) : nullptr, add ? in(2) : in(1), add ? in(3) : in(2), out(0),
                      add ? out(1) : nullptr, rows, H, n.eps, dt, s));
        break;
      }
      case Op::Add:
      case Op::Mul:
        ck(binary(in(0), in(1), out(0), uint64_t(e.numel(n.out[0], p)), n.op == Op::Mul, dt, s));
        break;
      case Op::Silu:
      case Op::Gelu: ck(activation(in(0), out(0), uint64_t(e.numel(n.out[0], p)), n.act, dt, s)); break;
      case Op::GatedAct: {
        int inter = int(e.val(n.out[0]).last_dim());
        int rows = int(e.numel(n.out[0], p) / inter);
        ck(gated_act(in(0), out(0), rows, inter, n.act, dt, s));
        break;
      }
      case Op::Split: {
        int W = int(e.val(n.in[0]).last_dim());
        int rows = int(e.numel(n.in[0], p) / W);
        int col = 0;
        for (size_t k = 0; k < n.sizes.size(); k++) {
          ck(slice_cols(in(0), out(k), rows, W, col, int(n.sizes[k]), dt, s));
          col += int(n.sizes[k]);
        }
        break;
      }
      case Op::Rope: {
        int W = int(e.val(n.in[0]).last_dim());
        int rows = int(e.numel(n.in[0], p) / W);
        ck(rope_standalone(in(0), out(0), static_cast<const int32_t*>(in(1)), static_cast<const float*>(in(2)), rows,
                           n.num_heads, n.head_dim, n.rotary_dim, n.rope_style, dt, s));
        break;
      }
      case Op::Attention:
      case Op::FusedAttention: {
        AttnParams ap{};
        ap.layer = n.layer;
        ap.num_heads = n.num_heads;
        ap.num_kv_heads = n.num_kv_heads;
        ap.head_dim = n.head_dim;
        ap.scale = n.scale;
        const void *q, *k, *v;
        int qs, ks, vs;
        if (n.op == Op::Attention) {
          q = in(0), k = in(1), v = in(2);
          qs = int(e.val(n.in[0]).last_dim()), ks = int(e.val(n.in[1]).last_dim()), vs = int(e.val(n.in[2]).last_dim());
          ap.rotary_dim = 0;
        } else {
          const char* qkv = static_cast<const char*>(in(0));
          int W = int(e.val(n.in[0]).last_dim());
          q = qkv;
          k = qkv + size_t(n.num_heads) * n.head_dim * es;
          v = qkv + size_t(n.num_heads + n.num_kv_heads) * n.head_dim * es;
          qs = ks = vs = W;
          ap.rotary_dim = n.rotary_dim;
          ap.rope_style = n.rope_style;
          ap.inv_freq = n.rotary_dim > 0 ? static_cast<const float*>(in(2)) : nullptr;
        }
        ck(paged_attention(q, qs, k, ks, v, vs, out(0), kv, step, ap, dt, e.attn_ws, s));
        break;
      }
      case Op::GatherRows: {
        int H = int(e.val(n.in[0]).last_dim());
        int rows = int(e.numel(n.out[0], p) / H);
        ck(gather_rows(in(0), static_cast<const int32_t*>(in(1)), out(0), rows, H, dt, s));
        break;
      }
      case Op::AllGather: {
        int C = int(e.val(n.in[0]).last_dim());
        int rows = int(e.numel(n.in[0], p) / C);
        size_t cnt = size_t(rows) * size_t(C);
        if (n.tp == 1) {
          ck(cudaMemcpyAsync(out(0), in(0), cnt * es, cudaMemcpyDeviceToDevice, s));
          break;
        }
#ifdef TSLLM_WITH_NCCL
        ncclDataType_t nt = dt == DType::BF16 ? ncclBfloat16 : ncclHalf;
        ncclResult_t r = ncclAllGather(in(0), e.gather_scratch, cnt, nt, static_cast<ncclComm_t>(e.nccl_comm), s);
        if (r != ncclSuccess) node_fail(i, n, std::string("ncclAllGather: ") + ncclGetErrorString(r));
        // [tp, rows, C] -> [rows, tp*C]
        for (int rk = 0; rk < n.tp; rk++)
          ck(cudaMemcpy2DAsync(static_cast<char*>(out(0)) + size_t(rk) * C * es, size_t(n.tp) * C * es,
                               static_cast<char*>(e.gather_scratch) + size_t(rk) * cnt * es, size_t(C) * es,
                               size_t(C) * es, size_t(rows), cudaMemcpyDeviceToDevice, s));
#else
        node_fail(i, n, "this build of libtsllm has no NCCL");
#endif
        break;
      }
      case Op::AllReduce: {
#ifdef TSLLM_WITH_NCCL
        size_t cnt = size_t(e.numel(n.out[0], p));
        ncclDataType_t nt = dt == DType::BF16 ? ncclBfloat16 : ncclHalf;
        ncclResult_t r = ncclAllReduce(in(0), out(0), cnt, nt, ncclSum, static_cast<ncclComm_t>(e.nccl_comm), s);
        if (r != ncclSuccess) node_fail(i, n, std::string("ncclAllReduce: ") + ncclGetErrorString(r));
#else
        node_fail(i, n, "this build of libtsllm has no NCCL");
#endif
        break;
      }
    }
  }
  if (prof) {
    TSLLM_CUDA(cudaEventRecord(e.prof_events[d.nodes.size()], s), "cudaEventRecord");
    TSLLM_CUDA(cudaEventSynchronize(e.prof_events[d.nodes.size()]), "profiling");
    const bool record = e.prof_seen[p.T]++ > 0;
    for (size_t i = 0; i < d.nodes.size() && record; i++) {
      const NodeDesc& n = d.nodes[i];
      float ms = 0;
      cudaEventElapsedTime(&ms, e.prof_events[i], e.prof_events[i + 1]);
      std::string key = std::string(op_name(n.op)) + (p.T == 1 ? " T=1" : p.max_new == 1 ? " decode" : " prefill");
      if (node_fused(e, p, i)) key += " (fused into gemv)";
      else if (!e.pro_producer.empty() && e.pro_producer[i] >= 0 && node_fused(e, p, size_t(e.pro_producer[i])))
        key += std::string(" +") + op_name(d.nodes[size_t(e.pro_producer[i])].op);
      if (n.op == Op::Linear) {
        const ValueDesc& w = e.val(n.in[1]);
        key += " M=" + std::to_string(e.numel(n.in[0], p) / w.shape[1].n) + " N=" + std::to_string(w.shape[0].n) +
               " K=" + std::to_string(w.shape[1].n);
      }
      auto& slot = e.prof[key];
      slot.first++;
      slot.second += ms;
    }
  }
}

void Engine::profile_report() {
  if (prof.empty()) return;
  std::vector<std::pair<std::string, std::pair<int64_t, double>>> rows(prof.begin(), prof.end());
  std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.second > b.second.second; });
  double total = 0;
  for (auto& r : rows) total += r.second.second;
  std::fprintf(stderr, "tsllm profile (eager, events around each node): %.3f ms in total\n", total);
  for (auto& r : rows)
    std::fprintf(stderr, "  %-44s calls %7lld  total %9.3f ms  avg %8.2f us  %5.1f%%\n", r.first.c_str(),
                 (long long)r.second.first, r.second.second, 1e3 * r.second.second / double(r.second.first),
                 100.0 * r.second.second / total);
}

#ifdef TSLLM_WITH_NCCL
void nccl_init(Engine& e, const void* unique_id) {
  if (!unique_id)
    throw LoadError(e.desc.path + ": a tp " + std::to_string(e.desc.tp) +
                    " engine needs options.nccl_unique_id (make one with tsllm_nccl_unique_id and pass it to every rank)");
  ncclUniqueId id;
  static_assert(sizeof(id) == 128, "ncclUniqueId is 128 bytes");
  memcpy(&id, unique_id, sizeof(id));
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRank(&comm, e.desc.tp, id, e.desc.rank);
  if (r != ncclSuccess)
    throw LoadError(e.desc.path + ": ncclCommInitRank(rank " + std::to_string(e.desc.rank) + " of " +
                    std::to_string(e.desc.tp) + "): " + ncclGetErrorString(r));
  e.nccl_comm = comm;
}
void nccl_destroy(Engine& e) {
  if (e.nccl_comm) ncclCommDestroy(static_cast<ncclComm_t>(e.nccl_comm));
  e.nccl_comm = nullptr;
}
#else
void nccl_init(Engine& e, const void*) {
  throw LoadError(e.desc.path + ": engine is tensor-parallel (tp " + std::to_string(e.desc.tp) +
                  ") but this libtsllm was built without NCCL; install NCCL (nccl.h, libnccl) and rebuild with "
                  "npm run build:native");
}
void nccl_destroy(Engine&) {}
#endif

}  // namespace tsllm
