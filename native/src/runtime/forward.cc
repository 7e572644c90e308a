// The interpreter: runs the op program of one step on e.stream. Everything here is asynchronous and
// capturable into a CUDA graph (no allocation, no synchronisation, no host reads of device data).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine.h"

#ifdef TSLLM_WITH_NCCL
#include <nccl.h>
#endif

namespace tsllm {

namespace {

[[noreturn]] void node_fail(size_t i, const NodeDesc& n, const std::string& msg) {
  throw StepError("node " + std::to_string(i) + " (" + op_name(n.op) + "): " + msg);
}

// How many node inputs in the program read value v (the fusion plans' "only use" checks).
int uses_of(const EngineDesc& d, int v) {
  int uses = 0;
  for (const NodeDesc& k : d.nodes)
    for (int in : k.in) uses += in == v;
  return uses;
}

// The prologue a skippable node turns into (GemvPro::None when it cannot be fused).
GemvPro prologue_kind(const NodeDesc& n) {
  // The gemv prologue reads w as is and has no place for a norm's folded elementwise chains.
  if (n.op == Op::RmsNorm && n.w_offset == 0.f && !n.pre.n && !n.post.n) return GemvPro::RmsNorm;
  if (n.op == Op::GatedAct && n.act == Act::Silu) return GemvPro::GatedSilu;
  if (n.op == Op::GatedAct && n.act == Act::GeluTanh) return GemvPro::GatedGeluTanh;
  return GemvPro::None;
}

// A linear / quant_linear node's output width N (its weight's rows), K (x's last dimension: an int4 weight is
// [N, K / 2]) and the step's rows M.
struct LinearDims {
  int N, K, M;
};
LinearDims linear_dims(Engine& e, const StepPlan& p, const NodeDesc& l) {
  const ValueDesc& w = e.val(l.in[1]);
  const int K = int(l.op == Op::QuantLinear ? e.val(l.in[0]).last_dim() : w.shape[1].n);
  return LinearDims{int(w.shape[0].n), K, int(e.numel(l.in[0], p) / K)};
}

// The quant_linear call of node l on input x (quant_linear: x, w, scales, bias, residual).
QuantLinearCall quant_call(Engine& e, const StepPlan& p, const NodeDesc& l, const void* x, int M, int N, int K) {
  auto in = [&](size_t k) -> void* { return k < l.in.size() && l.in[k] >= 0 ? e.ptr(l.in[k], p) : nullptr; };
  return QuantLinearCall{l.quant, l.group_size, x, in(1), static_cast<const float*>(in(2)), in(3), in(4),
                         e.ptr(l.out[0], p), M, N, K, l.act};
}

// FP8 activation fusion (plan_fp8_act_fusion): whether producer node i writes its output as FP8 rows for its
// consumer's FP8 GEMM (or, at 2-4 rows, its gemv over FP8 rows) in this step, and where (*rows). Asked by the
// producer; the consumer reads the outcome from Engine::fp8_rows_from.
bool fp8_act_rows(Engine& e, const StepPlan& p, size_t i, Fp8Rows* rows) {
  if (e.fp8_consumer.empty() || e.fp8_consumer[i] < 0) return false;
  const NodeDesc& l = e.desc.nodes[size_t(e.fp8_consumer[i])];
  const LinearDims ld = linear_dims(e, p, l);
  return e.qgemm.fp8_act_rows(quant_call(e, p, l, e.ptr(l.in[0], p), ld.M, ld.N, ld.K), e.dt, rows);
}

// The gemv variant that runs producer node i fused into its consumer linear in this step, or -1 (*why: the reason).
int prologue_variant(Engine& e, const StepPlan& p, size_t i, std::string* why = nullptr) {
  const int j = e.pro_consumer[i];
  if (j < 0) return -1;
  const NodeDesc& n = e.desc.nodes[i];
  const NodeDesc& l = e.desc.nodes[size_t(j)];
  const bool quant = l.op == Op::QuantLinear;
  const auto [N, K, M] = linear_dims(e, p, l);
  if (M < 1 || M > kGemvMaxM) return -1;
  GemvPrologue pro;
  pro.kind = prologue_kind(n);
  if (pro.kind == GemvPro::RmsNorm) {
    pro.norm_w = e.ptr(n.in[1], p);
    pro.eps = n.eps;
  }
  const void* x = e.ptr(n.in[0], p);
  void* y = e.ptr(n.out[0], p);
  const size_t bi = quant ? 3 : 2;  // quant_linear: x, w, scales, bias, residual
  const void* bias = l.in.size() > bi && l.in[bi] >= 0 ? e.ptr(l.in[bi], p) : nullptr;
  const void* res = l.in.size() > bi + 1 && l.in[bi + 1] >= 0 ? e.ptr(l.in[bi + 1], p) : nullptr;
  void* out = e.ptr(l.out[0], p);
  // The fused gemv reads x while writing out: they must not overlap (the arena may reuse x's slot for out
  // once the skipped node was x's last reader).
  const size_t es = elem_size(e.desc.dtype);
  const size_t xb = size_t(M) * size_t(K) * es * (pro.kind == GemvPro::RmsNorm ? 1 : 2);
  const size_t ob = size_t(M) * size_t(N) * es;
  const char *x0 = static_cast<const char*>(x), *o0 = static_cast<const char*>(out);
  if (x0 < o0 + ob && o0 < x0 + xb) {
    if (why) *why = "its input and the linear's output share arena memory";
    return -1;
  }
  if (quant)
    return e.qgemm.prologue_variant(quant_call(e, p, l, x, M, N, K), pro, y, e.dt, e.stream, why);
  return e.gemm.prologue_variant(pro, x, y, e.ptr(l.in[1], p), bias, res, out, M, N, K, e.cuda_dt, e.stream, why);
}

// The gemv_glu (linear) or quant_gemv_glu (int8 / int4 quant_linear) variant that runs node i with the gated_act
// after it (plan_glu_fusion) in this step, or -1.
int glu_variant(Engine& e, const StepPlan& p, size_t i, std::string* why = nullptr) {
  if (e.glu_next.empty() || e.glu_next[i] < 0) return -1;
  const NodeDesc& l = e.desc.nodes[i];
  const NodeDesc& g = e.desc.nodes[size_t(e.glu_next[i])];
  const bool quant = l.op == Op::QuantLinear;
  const auto [N2, K, M] = linear_dims(e, p, l);  // N2: gate and up rows
  if (M < 1 || M > kGemvMaxM) return -1;  // (glu_out's rows)
  if (quant)
    return e.qgemm.glu_variant(quant_call(e, p, l, e.ptr(l.in[0], p), M, N2, K), gated_act_of(prologue_kind(g)), e.dt,
                               e.stream, why);
  const void* bias = l.in.size() > 2 && l.in[2] >= 0 ? e.ptr(l.in[2], p) : nullptr;
  return e.gemm.glu_variant(prologue_kind(g), e.ptr(l.in[0], p), e.ptr(l.in[1], p), bias, e.ptr(l.out[0], p),
                            e.glu_out, M, N2 / 2, K, e.cuda_dt, e.stream, why);
}

// The gemv_norm variant that runs linear node i with the rms_norm after it (plan_norm_fusion) in this step, or -1.
int norm_variant(Engine& e, const StepPlan& p, size_t i, std::string* why = nullptr) {
  if (e.nt_next.empty() || e.nt_next[i] < 0) return -1;
  const NodeDesc& l = e.desc.nodes[i];
  const NodeDesc& r = e.desc.nodes[size_t(e.nt_next[i])];
  const auto [N, K, M] = linear_dims(e, p, l);
  if (M < 1 || M > kGemvMaxM) return -1;
  auto in = [&](size_t k) -> const void* { return l.in.size() > k && l.in[k] >= 0 ? e.ptr(l.in[k], p) : nullptr; };
  return e.gemm.norm_variant(in(0), in(1), in(2), in(3), e.ptr(l.out[0], p), e.ptr(r.in[1], p), r.eps,
                             e.ptr(r.out[0], p), M, N, K, e.cuda_dt, e.stream, why);
}

// One node of one step: its engine, plan, descriptor and pointers, for the run_<Op> functions below.
struct NodeRun {
  Engine& e;
  const StepPlan& p;
  size_t i;
  const NodeDesc& n;
  const PagedKV& kv;
  const StepLayout& step;
  cudaStream_t s;
  DType dt;
  size_t es;
  LinearKernel* ran;  // linears: the kernel that ran

  void* in(size_t k) const { return k < n.in.size() && n.in[k] >= 0 ? e.ptr(n.in[k], p) : nullptr; }
  void* out(size_t k) const { return e.ptr(n.out[k], p); }
  const ValueDesc& vin(size_t k) const { return e.val(n.in[k]); }
  const ValueDesc& vout(size_t k) const { return e.val(n.out[k]); }
  int64_t numel_in(size_t k) const { return e.numel(n.in[k], p); }
  int64_t numel_out(size_t k) const { return e.numel(n.out[k], p); }
  void ck(cudaError_t err) const {
    if (err != cudaSuccess) node_fail(i, n, cudaGetErrorString(err));
  }
  [[noreturn]] void fail(const std::string& m) const { node_fail(i, n, m); }
};

// One launcher per op of ops.def: a line there without its run_<Op> here does not build.
#define TSLLM_OP(E, name, min_in, max_in, outs) void run_##E(const NodeRun& r);
#include "ops.def"
#undef TSLLM_OP

void run_Embedding(const NodeRun& r) {
  const ValueDesc& tab = r.vin(1);
  const int H = int(tab.shape[1].n);
  const int rows = int(r.numel_out(0) / H);
  r.ck(embedding(static_cast<const int32_t*>(r.in(0)), r.in(1), r.out(0), rows, H, r.n.vocab_start,
                 int(tab.shape[0].n), r.dt, r.s));
}

// out = post(act(x·wᵀ + bias)) + res with w [N, K] in the activation dtype (a linear node, or a weight-only
// quant_linear's dequantised weight). Returns an empty string or the GEMM's message.
std::string linear_act(const NodeRun& r, const void* x, const void* w, void* bias, void* res, void* o, int M, int N,
                       int K, Act act, const EwChain& post) {
  Engine& e = r.e;
  const GemmEpi epi = bias ? GemmEpi::Bias : GemmEpi::None;
  std::string err;
  if (post.n) {
    // A folded elementwise chain. With no activation or GELU-tanh (cuBLASLt's epilogue) the GEMM runner applies it
    // (gemv registers, cuBLASLt alpha, or one kernel after the GEMM); other activations: the GEMM, then one
    // kernel for activation, chain and residual.
    if (act == Act::None || act == Act::GeluTanh) {
      const GemmEpi ep = act == Act::None ? epi : bias ? GemmEpi::GeluBias : GemmEpi::Gelu;
      return e.gemm.linear(x, w, bias, res, o, M, N, K, e.cuda_dt, ep, r.s, r.ran, &post, e.scratch);
    }
    void* tmp = (res && res == o) ? e.scratch : o;
    err = e.gemm.linear(x, w, bias, nullptr, tmp, M, N, K, e.cuda_dt, epi, r.s, r.ran);
    if (err.empty()) r.ck(linear_epilogue(tmp, res, o, uint64_t(M) * uint64_t(N), act, post, r.dt, r.s));
    return err;
  }
  if (act == Act::None) {
    err = e.gemm.linear(x, w, bias, res, o, M, N, K, e.cuda_dt, epi, r.s, r.ran);
  } else if (!res && act == Act::GeluTanh) {
    err = e.gemm.linear(x, w, bias, nullptr, o, M, N, K, e.cuda_dt, bias ? GemmEpi::GeluBias : GemmEpi::Gelu, r.s,
                        r.ran);
  } else {
    // act(x·wᵀ + b) (+ residual): GEMM (with the GELU epilogue when it is tanh), then the activation
    // kernel, then the residual add. If out aliases the residual, the GEMM goes to scratch first.
    void* tmp = (res && res == o) ? e.scratch : o;
    const GemmEpi ep = act == Act::GeluTanh ? (bias ? GemmEpi::GeluBias : GemmEpi::Gelu) : epi;
    err = e.gemm.linear(x, w, bias, nullptr, tmp, M, N, K, e.cuda_dt, ep, r.s, r.ran);
    const uint64_t cnt = uint64_t(M) * uint64_t(N);
    if (err.empty() && act != Act::GeluTanh) r.ck(activation(tmp, tmp, cnt, act, r.dt, r.s));
    if (err.empty() && res) r.ck(binary(tmp, res, o, cnt, BinaryOp::Add, r.dt, r.s));
  }
  return err;
}

void run_Linear(const NodeRun& r) {
  const ValueDesc& w = r.vin(1);
  const int N = int(w.shape[0].n), K = int(w.shape[1].n);
  const int M = int(r.numel_in(0) / K);
  const std::string err = linear_act(r, r.in(0), r.in(1), r.in(2), r.in(3), r.out(0), M, N, K, r.n.act, r.n.post);
  if (!err.empty()) r.fail(err);
}

// quant_linear (quant_gemm.h): quantised gemv for decode, FP8 cuBLASLt GEMM or dequantise + linear_act otherwise.
// A folded elementwise chain runs after it as one kernel with the residual (the quantised paths end at the
// activation): the quantised GEMM writes without the residual, to scratch when out aliases the residual.
void run_QuantLinear(const NodeRun& r) {
  const NodeDesc& n = r.n;
  const int N = int(r.vin(1).shape[0].n);
  const int K = int(r.vin(0).last_dim());
  const int M = int(r.numel_in(0) / K);
  void* res = r.in(4);
  void* dst = n.post.n && res && res == r.out(0) ? r.e.scratch : r.out(0);
  void* res_in = n.post.n ? nullptr : res;
  QuantLinearCall c = quant_call(r.e, r.p, n, r.in(0), M, N, K);
  c.residual = res_in;
  c.out = dst;
  const int src = r.e.fp8_producer.empty() ? -1 : r.e.fp8_producer[r.i];
  c.x_fp8 = src >= 0 && r.e.fp8_rows_from == src;  // its producer wrote FP8 rows, not x (forward)
  r.e.fp8_rows_from = -1;
  const std::string err = r.e.qgemm.run(c, r.dt, r.s, [&](const void* wd, void* o, void* rs) {
    return linear_act(r, c.x, wd, r.in(3), rs, o, M, N, K, n.act, EwChain{});
  });
  if (!err.empty()) r.fail(std::string(quant_kind_name(n.quant)) + ": " + err);
  if (n.post.n)
    r.ck(linear_epilogue(dst, res, r.out(0), uint64_t(M) * uint64_t(N), Act::None, n.post, r.dt, r.s));
}

// How the norms and gated_act launch (Tunables::norm_pdl), where programmatic dependent launch is on.
int norm_pdl(const NodeRun& r) { return r.e.tun.pdl ? r.e.tun.norm_pdl : 0; }

// fp8: where this node's output goes as FP8 rows instead (FP8 activation fusion), or null.
void norm(const NodeRun& r, bool add, bool layer, const Fp8Rows* fp8 = nullptr) {
  const int H = int(r.vin(0).last_dim());
  const int rows = int(r.numel_in(0) / H);
  const size_t wi = add ? 2 : 1;
  if (layer)
    r.ck(layer_norm(r.in(0), add ? r.in(1) : nullptr, r.in(wi), r.n.w_offset, r.in(wi + 1), r.out(0),
                    add ? r.out(1) : nullptr, rows, H, r.n.eps, r.dt, r.s, &r.n.pre, &r.n.post, fp8, norm_pdl(r)));
  else
    r.ck(rms_norm(r.in(0), add ? r.in(1) : nullptr, r.in(wi), r.n.w_offset, r.out(0), add ? r.out(1) : nullptr, rows,
                  H, r.n.eps, r.dt, r.s, &r.n.pre, &r.n.post, fp8, norm_pdl(r)));
}
void run_RmsNorm(const NodeRun& r) { norm(r, false, false); }
void run_AddRmsNorm(const NodeRun& r) { norm(r, true, false); }
void run_LayerNorm(const NodeRun& r) { norm(r, false, true); }
void run_AddLayerNorm(const NodeRun& r) { norm(r, true, true); }

void elementwise(const NodeRun& r, BinaryOp op) {
  r.ck(binary(r.in(0), r.in(1), r.out(0), uint64_t(r.numel_out(0)), op, r.dt, r.s));
}
void run_Add(const NodeRun& r) { elementwise(r, BinaryOp::Add); }
void run_Sub(const NodeRun& r) { elementwise(r, BinaryOp::Sub); }
void run_Mul(const NodeRun& r) { elementwise(r, BinaryOp::Mul); }
void run_Div(const NodeRun& r) { elementwise(r, BinaryOp::Div); }

void unary_node(const NodeRun& r) {
  UnaryOp op;
  if (!unary_of(r.n.op, &op)) r.fail("not a unary op");
  r.ck(unary(r.in(0), r.out(0), uint64_t(r.numel_out(0)), op, r.n.param, r.dt, r.s));
}
void run_Tanh(const NodeRun& r) { unary_node(r); }
void run_Sigmoid(const NodeRun& r) { unary_node(r); }
void run_Exp(const NodeRun& r) { unary_node(r); }
void run_Scale(const NodeRun& r) { unary_node(r); }
void run_Softcap(const NodeRun& r) { unary_node(r); }
void run_Silu(const NodeRun& r) { r.ck(activation(r.in(0), r.out(0), uint64_t(r.numel_out(0)), r.n.act, r.dt, r.s)); }
void run_Gelu(const NodeRun& r) { r.ck(activation(r.in(0), r.out(0), uint64_t(r.numel_out(0)), r.n.act, r.dt, r.s)); }

void gated(const NodeRun& r, const Fp8Rows* fp8 = nullptr) {
  const int inter = int(r.vout(0).last_dim());
  const int rows = int(r.numel_out(0) / inter);
  r.ck(gated_act(r.in(0), r.out(0), rows, inter, r.n.act, r.dt, r.s, fp8, norm_pdl(r)));
}
void run_GatedAct(const NodeRun& r) { gated(r); }

// A producer of FP8 activation fusion writing FP8 rows (plan_fp8_act_fusion's ops).
void run_fp8_producer(const NodeRun& r, const Fp8Rows& rows) {
  switch (r.n.op) {
    case Op::RmsNorm: return norm(r, false, false, &rows);
    case Op::AddRmsNorm: return norm(r, true, false, &rows);
    case Op::LayerNorm: return norm(r, false, true, &rows);
    case Op::AddLayerNorm: return norm(r, true, true, &rows);
    case Op::GatedAct: return gated(r, &rows);
    default: r.fail("not an FP8 activation producer");
  }
}

void run_Split(const NodeRun& r) {
  const int W = int(r.vin(0).last_dim());
  const int rows = int(r.numel_in(0) / W);
  int col = 0;
  for (size_t k = 0; k < r.n.sizes.size(); k++) {
    r.ck(slice_cols(r.in(0), r.out(k), rows, W, col, int(r.n.sizes[k]), r.dt, r.s));
    col += int(r.n.sizes[k]);
  }
}

void run_Rope(const NodeRun& r) {
  const int W = int(r.vin(0).last_dim());
  const int rows = int(r.numel_in(0) / W);
  r.ck(rope_standalone(r.in(0), r.out(0), static_cast<const int32_t*>(r.in(1)), static_cast<const float*>(r.in(2)),
                       rows, r.n.num_heads, r.n.head_dim, r.n.rotary_dim, r.n.rope_style, r.dt, r.s));
}

void attention(const NodeRun& r, bool fused) {
  const NodeDesc& n = r.n;
  AttnParams ap{};
  ap.layer = n.layer;
  ap.num_heads = n.num_heads;
  ap.num_kv_heads = n.num_kv_heads;
  ap.head_dim = n.head_dim;
  ap.scale = n.scale;
  ap.decode_variant = r.e.tun.decode_variant;
  ap.mma_min_gqa = r.e.tun.decode_mma_min_gqa;
  ap.mma_cfg = r.e.tun.decode_mma_cfg;
  ap.ctx_cfg = r.e.tun.context_cfg;
  ap.pdl = r.e.tun.pdl;
  ap.k_scale = n.k_scale;
  ap.v_scale = n.v_scale;
  // FP8 context FMHA, context steps only (max_new_tokens > 1: some sequence goes to the context kernel), only when
  // asked for (1). The default (0) keeps the fp16/bf16 kernel even on FP8 engines, TensorRT-LLM's condition for
  // turning it on, because ours loses there: 0.63-0.77x the fp16 kernel over the same FP8 cache (H200,
  // kernels_bench fmha8, 32 / 8 KV heads x 128, prompts of 128-4096), TTFT at ISL 2048 of Llama-2-7B FP8 + FP8 KV
  // 35.85 ms vs 32.51 ms, and tiny-llama FP8 + FP8 KV 0.2974 from the CPU reference vs 0.2007.
  const int fmha = r.e.tun.fp8_context_fmha;
  ap.fp8_context_fmha = fmha == 1;
  if (ap.fp8_context_fmha && r.step.max_new_tokens > 1) {
    const char* why =
        r.kv.dtype != DType::FP8_E4M3 ? "the KV cache is not FP8" : fp8_context_fmha_unavailable(n.head_dim);
    if (!why) *r.ran = LinearKernel::Fp8Fmha;
    else if (fmha == 1 && r.e.tun.strict)
      r.fail(std::string("FP8 context FMHA forced (fp8_context_fmha = 1, strict_kernels) but it does not run: ") + why);
  }
  const void *q, *k, *v;
  int qs, ks, vs;
  if (!fused) {
    q = r.in(0), k = r.in(1), v = r.in(2);
    qs = int(r.vin(0).last_dim()), ks = int(r.vin(1).last_dim()), vs = int(r.vin(2).last_dim());
    ap.rotary_dim = 0;
  } else {
    const char* qkv = static_cast<const char*>(r.in(0));
    const int W = int(r.vin(0).last_dim());
    q = qkv;
    k = qkv + size_t(n.num_heads) * n.head_dim * r.es;
    v = qkv + size_t(n.num_heads + n.num_kv_heads) * n.head_dim * r.es;
    qs = ks = vs = W;
    ap.rotary_dim = n.rotary_dim;
    ap.rope_style = n.rope_style;
    ap.inv_freq = n.rotary_dim > 0 ? static_cast<const float*>(r.in(2)) : nullptr;
  }
  if (!r.e.attn_next.empty() && r.e.attn_next[r.i] >= 0 && r.step.max_new_tokens == 1 &&
      r.step.num_tokens <= r.e.tun.attn_prefetch_rows) {
    const NodeDesc& l = r.e.desc.nodes[size_t(r.e.attn_next[r.i])];
    const ValueDesc& w = r.e.val(l.in[1]);
    ap.l2_prefetch = r.e.ptr(l.in[1], r.p);
    ap.l2_prefetch_bytes = std::min(size_t(w.max_numel()) * elem_size(w.dt), size_t(r.e.tun.attn_prefetch_mb) << 20);
  }
  r.ck(paged_attention(q, qs, k, ks, v, vs, r.out(0), r.kv, r.step, ap, r.dt, r.e.attn_ws, r.s));
}
void run_Attention(const NodeRun& r) { attention(r, false); }
void run_FusedAttention(const NodeRun& r) { attention(r, true); }

void run_GatherRows(const NodeRun& r) {
  const int H = int(r.vin(0).last_dim());
  const int rows = int(r.numel_out(0) / H);
  r.ck(gather_rows(r.in(0), static_cast<const int32_t*>(r.in(1)), r.out(0), rows, H, r.dt, r.s));
}

void run_AllGather(const NodeRun& r) {
  const int C = int(r.vin(0).last_dim());
  const int rows = int(r.numel_in(0) / C);
  const size_t cnt = size_t(rows) * size_t(C);
  if (r.n.tp == 1) {
    r.ck(cudaMemcpyAsync(r.out(0), r.in(0), cnt * r.es, cudaMemcpyDeviceToDevice, r.s));
    return;
  }
#ifdef TSLLM_WITH_NCCL
  const size_t es = r.es;
  ncclDataType_t nt = r.dt == DType::BF16 ? ncclBfloat16 : ncclHalf;
  ncclResult_t res = ncclAllGather(r.in(0), r.e.gather_scratch, cnt, nt, static_cast<ncclComm_t>(r.e.nccl_comm), r.s);
  if (res != ncclSuccess) r.fail(std::string("ncclAllGather: ") + ncclGetErrorString(res));
  // [tp, rows, C] -> [rows, tp*C]
  for (int rk = 0; rk < r.n.tp; rk++)
    r.ck(cudaMemcpy2DAsync(static_cast<char*>(r.out(0)) + size_t(rk) * C * es, size_t(r.n.tp) * C * es,
                           static_cast<char*>(r.e.gather_scratch) + size_t(rk) * cnt * es, size_t(C) * es,
                           size_t(C) * es, size_t(rows), cudaMemcpyDeviceToDevice, r.s));
#else
  r.fail("this build of libtsllm has no NCCL");
#endif
}

void run_AllReduce(const NodeRun& r) {
#ifdef TSLLM_WITH_NCCL
  const size_t cnt = size_t(r.numel_out(0));
  ncclDataType_t nt = r.dt == DType::BF16 ? ncclBfloat16 : ncclHalf;
  ncclResult_t res = ncclAllReduce(r.in(0), r.out(0), cnt, nt, ncclSum, static_cast<ncclComm_t>(r.e.nccl_comm), r.s);
  if (res != ncclSuccess) r.fail(std::string("ncclAllReduce: ") + ncclGetErrorString(res));
#else
  r.fail("this build of libtsllm has no NCCL");
#endif
}

// moe (kernels.h): routing, the experts (gemv path for a few tokens, grouped GEMMs beyond), the weighted combine;
// with the node after it fused (plan_moe_fusion), the combine also does that add / add_rms_norm.
void run_Moe(const NodeRun& r) {
  const NodeDesc& n = r.n;
  MoeArgs a;
  a.x = r.in(0), a.logits = r.in(1), a.w1 = r.in(2), a.w3 = r.in(3), a.w2 = r.in(4);
  a.T = int(r.numel_in(0) / n.moe_hidden);
  a.E = n.num_experts, a.K = n.top_k, a.H = n.moe_hidden, a.I = n.moe_inter;
  a.expert_start = n.expert_start, a.local_experts = n.local_experts;
  a.normalize = n.normalize;
  a.act = n.act;
  a.out = r.out(0);
  a.workspace = r.e.moe_ws;
  a.path = MoePath(r.e.tun.moe_path);
  const int j = r.e.moe_next.empty() ? -1 : r.e.moe_next[r.i];
  if (j >= 0) {
    const NodeDesc& nj = r.e.desc.nodes[size_t(j)];
    const int res = nj.in[0] == n.out[0] ? nj.in[1] : nj.in[0];
    a.residual = r.e.ptr(res, r.p);
    if (nj.op == Op::AddRmsNorm) {
      a.norm_w = r.e.ptr(nj.in[2], r.p);
      a.eps = nj.eps, a.w_offset = nj.w_offset;
      a.out = r.e.ptr(nj.out[0], r.p);
      a.sum_out = r.e.ptr(nj.out[1], r.p);
    } else {
      a.out = r.e.ptr(nj.out[0], r.p);
    }
  }
  r.ck(moe_forward(a, r.dt, r.s));
}

using RunFn = void (*)(const NodeRun&);
const RunFn kRun[] = {
#define TSLLM_OP(E, name, min_in, max_in, outs) run_##E,
#include "ops.def"
#undef TSLLM_OP
};

}  // namespace

void plan_prologue_fusion(Engine& e) {
  e.pro_consumer.clear();
  e.pro_producer.clear();
  // On by default (H100, Llama-2-7B bs 1: 4.93 vs 4.99 ms/step); tsllm_options.gemv_prologue = -1 turns it off.
  if (!e.tun.gemv_prologue) return;
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
    // A linear with a folded elementwise chain runs the plain gemv with it (the prologue variants have no chain).
    // Quantised linears take an rms_norm prologue (quant_gemv; their epilogue applies the activation).
    const bool quant = l.op == Op::QuantLinear && n.op == Op::RmsNorm;
    if (quant && !e.tun.quant_gemv_prologue) continue;
    if (!quant && (l.op != Op::Linear || l.act != Act::None)) continue;
    if (l.post.n || l.in.size() < 2 || l.out.size() != 1) continue;
    const int64_t K = quant ? e.val(v).last_dim() : e.val(l.in[1]).shape[1].n;
    const int64_t width = e.val(v).last_dim();  // rms_norm: hidden; gated_act: inter
    if (width != K || e.val(n.in[0]).last_dim() != (n.op == Op::RmsNorm ? K : 2 * K)) continue;
    if (e.pro_producer[size_t(cons)] >= 0) continue;
    // The fused gemv reads the producer's input while writing the linear's output: never plan a pair whose
    // arena slots overlap at M = kGemvMaxM (the arena may give the output the input's slot once the producer
    // was its last reader), so a planned pair always fuses when the tuner picks it.
    const ValueDesc& xv = e.val(n.in[0]);
    const ValueDesc& ov = e.val(l.out[0]);
    if (xv.kind == ValueKind::Arena && ov.kind == ValueKind::Arena) {
      const uint64_t es = elem_size(d.dtype);
      const uint64_t xb = uint64_t(kGemvMaxM) * uint64_t(xv.last_dim()) * es;
      const uint64_t ob = uint64_t(kGemvMaxM) * uint64_t(ov.last_dim()) * es;
      if (xv.arena_offset < ov.arena_offset + ob && ov.arena_offset < xv.arena_offset + xb) continue;
    }
    e.pro_consumer[i] = cons;
    e.pro_producer[size_t(cons)] = int(i);
  }
}

void plan_glu_fusion(Engine& e) {
  e.glu_next.clear();
  e.glu_prev.clear();
  if (!e.tun.gemv_prologue || !e.tun.glu_fuse) return;  // gemv_prologue: the decode gemv fusions' one switch
  const EngineDesc& d = e.desc;
  e.glu_next.assign(d.nodes.size(), -1);
  e.glu_prev.assign(d.nodes.size(), -1);
  for (size_t i = 0; i < d.nodes.size(); i++) {
    const NodeDesc& l = d.nodes[i];
    // A plain 16-bit linear, or (unless TSLLM_QGLU=0) a quant_linear: no activation, chain or residual (a bias is
    // fine).
    const bool quant = l.op == Op::QuantLinear && e.tun.quant_glu;
    if ((l.op != Op::Linear && !quant) || l.act != Act::None || l.post.n || l.in.size() < 2 || l.out.size() != 1)
      continue;
    const size_t ri = quant ? 4 : 3;  // the residual input (linear: x, w, bias, residual; quant_linear: + scales)
    if (l.in.size() > ri && l.in[ri] >= 0) continue;
    const int v = l.out[0];
    if (v == d.logits_value || e.val(v).kind != ValueKind::Arena || uses_of(d, v) != 1) continue;
    int j = -1;
    for (size_t k = i + 1; k < d.nodes.size() && j < 0; k++)
      for (int in : d.nodes[k].in)
        if (in == v) j = int(k);
    if (j < 0) continue;
    const NodeDesc& g = d.nodes[size_t(j)];
    const GemvPro act = prologue_kind(g);
    if (g.op != Op::GatedAct || g.in[0] != v || g.out.size() != 1 || act == GemvPro::None) continue;
    const int64_t N2 = e.val(l.in[1]).shape[0].n;  // (quant_linear weights are [N, K] or int4's [N, K / 2] too)
    if (N2 % 2 || e.val(g.out[0]).last_dim() != N2 / 2 || e.val(v).last_dim() != N2) continue;
    if (g.out[0] == d.logits_value || e.val(g.out[0]).kind != ValueKind::Arena) continue;
    e.glu_next[i] = j;
    e.glu_prev[size_t(j)] = int(i);
    // One gemv kernel has a prologue or this epilogue, not both: the gated_act is this linear's now, not a prologue
    // of the down projection, and the norm before this linear stays its own kernel (the tuner keeps that pair
    // unfused at batch 1 on the H200 anyway, where this fusion was measured: native/kernels-notes.md).
    for (int k : {j, e.pro_producer.empty() ? -1 : e.pro_producer[i]})
      if (k >= 0 && e.pro_consumer[size_t(k)] >= 0) {
        e.pro_producer[size_t(e.pro_consumer[size_t(k)])] = -1;
        e.pro_consumer[size_t(k)] = -1;
      }
  }
}

void plan_attn_prefetch(Engine& e) {
  e.attn_next.clear();
  if (e.tun.attn_prefetch_mb <= 0) return;
  const EngineDesc& d = e.desc;
  e.attn_next.assign(d.nodes.size(), -1);
  for (size_t i = 0; i < d.nodes.size(); i++) {
    const NodeDesc& a = d.nodes[i];
    if ((a.op != Op::Attention && a.op != Op::FusedAttention) || a.out.empty()) continue;
    for (size_t k = i + 1; k < d.nodes.size(); k++) {
      const NodeDesc& l = d.nodes[k];
      if (l.in.empty() || l.in[0] != a.out[0]) continue;
      if ((l.op == Op::Linear || l.op == Op::QuantLinear) && l.in.size() >= 2 && l.in[1] >= 0 &&
          e.val(l.in[1]).kind == ValueKind::Weight)
        e.attn_next[i] = int(k);
      break;
    }
  }
}

void plan_norm_fusion(Engine& e) {
  e.nt_next.clear();
  e.nt_prev.clear();
  if (!e.tun.gemv_prologue || !e.tun.norm_tail) return;  // gemv_prologue: the decode gemv fusions' one switch
  const EngineDesc& d = e.desc;
  std::vector<int> next(d.nodes.size(), -1), prev(d.nodes.size(), -1);
  bool any = false;
  for (size_t i = 0; i < d.nodes.size(); i++) {
    const NodeDesc& l = d.nodes[i];
    // A plain 16-bit linear (bias and residual fine) that is neither a prologue's consumer nor a gemv_glu.
    if (l.op != Op::Linear || l.act != Act::None || l.post.n || l.in.size() < 2 || l.out.size() != 1) continue;
    if ((!e.pro_producer.empty() && e.pro_producer[i] >= 0) || (!e.glu_next.empty() && e.glu_next[i] >= 0)) continue;
    const int v = l.out[0];
    if (v == d.logits_value || e.val(v).kind != ValueKind::Arena) continue;
    // The first rms_norm reading v as its x (other readers, e.g. the next residual add, read v as before).
    int j = -1;
    for (size_t k = i + 1; k < d.nodes.size() && j < 0; k++)
      if (d.nodes[k].op == Op::RmsNorm && !d.nodes[k].in.empty() && d.nodes[k].in[0] == v) j = int(k);
    if (j < 0) continue;
    const NodeDesc& r = d.nodes[size_t(j)];
    if (prologue_kind(r) != GemvPro::RmsNorm || r.in.size() < 2 || r.in[1] < 0 || r.out.size() != 1) continue;
    const int y = r.out[0];
    if (y == d.logits_value || e.val(y).kind != ValueKind::Arena || e.val(y).last_dim() != e.val(v).last_dim()) continue;
    // The norm's output is written while v is read back: the same slot (in place) or apart, never partly over it.
    const uint64_t rows = uint64_t(kGemvMaxM) * uint64_t(e.val(v).last_dim()) * elem_size(d.dtype);
    const uint64_t a = e.val(v).arena_offset, b = e.val(y).arena_offset;
    if (a != b && a < b + rows && b < a + rows) continue;
    next[i] = j;
    prev[size_t(j)] = int(i);
    any = true;
    if (!e.pro_consumer.empty() && e.pro_consumer[size_t(j)] >= 0) {  // the norm is the linear's, not a prologue
      e.pro_producer[size_t(e.pro_consumer[size_t(j)])] = -1;
      e.pro_consumer[size_t(j)] = -1;
    }
  }
  if (any) e.nt_next = std::move(next), e.nt_prev = std::move(prev);
}

void plan_fp8_act_fusion(Engine& e) {
  e.fp8_consumer.clear();
  e.fp8_producer.clear();
  if (!e.tun.fp8_act_fusion) return;
  const EngineDesc& d = e.desc;
  e.fp8_consumer.assign(d.nodes.size(), -1);
  e.fp8_producer.assign(d.nodes.size(), -1);
  for (size_t i = 0; i + 1 < d.nodes.size(); i++) {
    const NodeDesc& n = d.nodes[i];
    const bool norm =
        n.op == Op::RmsNorm || n.op == Op::AddRmsNorm || n.op == Op::LayerNorm || n.op == Op::AddLayerNorm;
    if (!norm && n.op != Op::GatedAct) continue;
    // The very next node, so nothing runs between the producer's write and the GEMM's read of the one workspace.
    const NodeDesc& l = d.nodes[i + 1];
    const int v = n.out[0];
    if (l.op != Op::QuantLinear || l.quant != QuantKind::Fp8 || l.in.empty() || l.in[0] != v) continue;
    if (v == d.logits_value || !fp8_rows_supported(int(e.val(v).last_dim()), e.dt)) continue;
    // Only where cuBLASLt's FP8 GEMM takes the shape (K and N multiples of 16): its fallback for other shapes, the
    // gemv over 4-row slices, quantises x itself and cannot read FP8 rows.
    if (e.val(v).last_dim() % 16 != 0 || e.val(l.in[1]).shape[0].n % 16 != 0) continue;
    if (uses_of(d, v) != 1) continue;  // nothing else reads the output the producer no longer writes
    e.fp8_consumer[i] = int(i + 1);
    e.fp8_producer[i + 1] = int(i);
  }
}

void plan_moe_fusion(Engine& e) {
  const EngineDesc& d = e.desc;
  e.moe_next.assign(d.nodes.size(), -1);
  e.moe_prev.assign(d.nodes.size(), -1);
  if (!e.tun.moe_fuse) return;
  for (size_t i = 0; i + 1 < d.nodes.size(); i++) {
    const NodeDesc& n = d.nodes[i];
    const NodeDesc& nj = d.nodes[i + 1];
    if (n.op != Op::Moe || (nj.op != Op::Add && nj.op != Op::AddRmsNorm)) continue;
    const int v = n.out[0];
    // The very next node (so no other node runs between: its outputs' arena slots are free when the combine
    // writes them), taking the moe output once as one of its two summands, and nothing else reading it.
    if (v == d.logits_value || (nj.in[0] == v) == (nj.in[1] == v)) continue;
    if (uses_of(d, v) != 1) continue;
    e.moe_next[i] = int(i + 1);
    e.moe_prev[i + 1] = int(i);
  }
}

bool node_fused(Engine& e, const StepPlan& p, size_t i) {
  if (!e.nt_prev.empty() && e.nt_prev[i] >= 0 && norm_variant(e, p, size_t(e.nt_prev[i])) >= 0) return true;
  if (!e.glu_prev.empty() && e.glu_prev[i] >= 0 && glu_variant(e, p, size_t(e.glu_prev[i])) >= 0) return true;
  return !e.pro_consumer.empty() && e.pro_consumer[i] >= 0 && prologue_variant(e, p, i) >= 0;
}

void forward(Engine& e, const StepPlan& p, const std::vector<uint8_t>* only) {
  const EngineDesc& d = e.desc;
  cudaStream_t s = e.stream;
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

  StepLayout step{};
  step.num_tokens = p.T;
  step.num_seqs = p.S;
  step.positions = b.dptr<int32_t>(b.lay.positions);
  step.token_seq = b.dptr<int32_t>(b.lay.token_seq);
  step.seq_start = b.dptr<int32_t>(b.lay.seq_start);
  step.seq_len = b.dptr<int32_t>(b.lay.seq_len);
  step.max_new_tokens = p.max_new;
  step.max_seq_len = p.max_len;
  step.num_single = p.max_new > 1 ? p.single : 0;

  // gated_act outputs are in the arena unless this step's gate_up gemv writes them to glu_out (set below).
  for (size_t i = 0; i < e.glu_next.size(); i++)
    if (e.glu_next[i] >= 0) e.redirect[size_t(d.nodes[size_t(e.glu_next[i])].out[0])] = nullptr;

  // Kernel counters: only full programs count (profiling's partial graphs do not).
  const bool count = !only;
  const bool strict_fusion = e.tun.strict && e.tun.gemv == 1;
  const bool prof = e.profile && !only;
  e.fp8_rows_from = -1;
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
    LinearKernel ran = LinearKernel::None;
    NodeRun r{e, p, i, n, kv, step, s, e.dt, elem_size(d.dtype), &ran};
    auto& counter = e.stats[i];
    if (!e.moe_prev.empty() && e.moe_prev[i] >= 0) {  // done by the moe node before it (plan_moe_fusion)
      if (count) counter[TSLLM_KERNEL_FOLDED]++;
      continue;
    }
    if (!e.nt_prev.empty() && e.nt_prev[i] >= 0 && norm_variant(e, p, size_t(e.nt_prev[i])) >= 0) {
      if (count) counter[TSLLM_KERNEL_FOLDED]++;  // done by the last block of the gemv before it (plan_norm_fusion)
      continue;
    }
    if (!e.nt_next.empty() && e.nt_next[i] >= 0) {
      const int v = norm_variant(e, p, i);
      if (v >= 0) {
        const NodeDesc& rn = d.nodes[size_t(e.nt_next[i])];
        const auto [N, K, M] = linear_dims(e, p, n);
        r.ck(gemv_norm(v, r.in(0), r.in(1), r.in(2), r.in(3), r.out(0), M, N, K, e.ptr(rn.in[1], p), rn.eps,
                       e.ptr(rn.out[0], p), e.norm_counters + i, e.dt, e.tun.pdl, s));
        if (count) counter[TSLLM_KERNEL_GEMV_RMS]++;
        continue;
      }
    }
    if (!e.glu_prev.empty() && e.glu_prev[i] >= 0 && glu_variant(e, p, size_t(e.glu_prev[i])) >= 0) {
      if (count) counter[TSLLM_KERNEL_FOLDED]++;  // done by the gate_up gemv before it (plan_glu_fusion)
      continue;
    }
    if (!e.glu_next.empty() && e.glu_next[i] >= 0) {
      const int v = glu_variant(e, p, i);
      if (v >= 0) {
        const NodeDesc& g = d.nodes[size_t(e.glu_next[i])];
        const auto [N2, K, M] = linear_dims(e, p, n);  // N2: gate and up rows
        if (n.op == Op::QuantLinear)
          r.ck(quant_gemv_glu(v, n.quant, r.in(0), r.in(1), static_cast<const float*>(r.in(2)), n.group_size, r.in(3),
                              e.glu_out, M, N2 / 2, K, gated_act_of(prologue_kind(g)), e.dt, e.tun.pdl, s));
        else
          r.ck(gemv_glu(v, prologue_kind(g), r.in(0), r.in(1), r.in(2), e.glu_out, M, N2 / 2, K, e.dt, e.tun.pdl, s));
        e.redirect[size_t(g.out[0])] = e.glu_out;  // the down projection (every reader) reads it there
        if (count) counter[TSLLM_KERNEL_GEMV_GATED]++;
        continue;
      }
    }
    if (!e.pro_consumer.empty()) {
      // Prologue fusion: a producer fused into its consumer's gemv launches nothing; the consumer runs the
      // gemv with the producer's prologue, reading the producer's input.
      if (e.pro_consumer[i] >= 0) {
        std::string why;
        if (prologue_variant(e, p, i, &why) >= 0) {
          if (count) counter[TSLLM_KERNEL_FOLDED]++;
          continue;
        }
        const int64_t K = e.val(d.nodes[size_t(e.pro_consumer[i])].in[0]).last_dim();
        const int64_t M = e.numel(d.nodes[size_t(e.pro_consumer[i])].in[0], p) / K;
        if (strict_fusion && M >= 1 && M <= kGemvMaxM)
          node_fail(i, n, "prologue fusion into node " + std::to_string(e.pro_consumer[i]) +
                              " forced (gemv = 1, strict_kernels) but it does not run: " + why);
      }
      const int src = e.pro_producer[i];
      const int v = src >= 0 ? prologue_variant(e, p, size_t(src)) : -1;
      if (v >= 0) {
        const NodeDesc& pn = d.nodes[size_t(src)];
        const auto [N, K, M] = linear_dims(e, p, n);
        GemvPrologue pro;
        pro.kind = prologue_kind(pn);
        if (pro.kind == GemvPro::RmsNorm) {
          pro.norm_w = e.ptr(pn.in[1], p);
          pro.eps = pn.eps;
        }
        if (n.op == Op::QuantLinear) {
          const std::string err = e.qgemm.run_fused(quant_call(e, p, n, e.ptr(pn.in[0], p), M, N, K), pro, v, e.dt, s);
          if (!err.empty()) node_fail(i, n, std::string(quant_kind_name(n.quant)) + ": " + err);
          if (count) counter[TSLLM_KERNEL_GEMV_RMS]++;
          continue;
        }
        r.ck(gemv_pro(v, pro, e.ptr(pn.in[0], p), r.in(1), r.in(2), r.in(3), r.out(0), M, N, K, e.dt, e.tun.pdl, s));
        if (count) counter[pro.kind == GemvPro::RmsNorm ? TSLLM_KERNEL_GEMV_RMS : TSLLM_KERNEL_GEMV_GATED]++;
        continue;
      }
    }
    Fp8Rows rows;
    if (fp8_act_rows(e, p, i, &rows)) {
      run_fp8_producer(r, rows);
      e.fp8_rows_from = int(i);
      if (count) counter[TSLLM_KERNEL_FP8_ACT]++;
      continue;
    }
    kRun[size_t(n.op)](r);
    if (count) counter[ran == LinearKernel::None ? TSLLM_KERNEL_OWN : int(ran)]++;
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
      if (n.op == Op::Linear || n.op == Op::QuantLinear) {
        const int64_t K = e.val(n.in[0]).last_dim();
        key += " M=" + std::to_string(e.numel(n.in[0], p) / K) + " N=" + std::to_string(e.val(n.in[1]).shape[0].n) +
               " K=" + std::to_string(K);
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
