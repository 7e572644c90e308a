// Loading a rank file onto the GPU: checks (version, sm, limits), weight upload (upload.cc: parallel
// reads into pinned staging + cudaMemcpyAsync, content hash in the same pass, started right after the header
// so that it overlaps CUDA's start-up and the rest of the setup; random weights generated on the GPU), the
// activation arena, workspaces, step buffers and the paged KV pool sized from what is left.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "engine.h"
#include "upload.h"

namespace tsllm {

DType to_dtype(ElemType t) {
  switch (t) {
    case ElemType::F32: return DType::F32;
    case ElemType::F16: return DType::F16;
    case ElemType::BF16: return DType::BF16;
    case ElemType::FP8_E4M3: return DType::FP8_E4M3;
    case ElemType::I8: return DType::I8;
    case ElemType::U8: return DType::U8;
    default: return DType::F32;
  }
}

MetaLayout make_meta_layout(int tcap, int scap, int max_blocks) {
  MetaLayout l;
  l.tcap = tcap;
  l.scap = scap;
  l.max_blocks = max_blocks;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    size_t o = off;
    off = (off + bytes + 15) / 16 * 16;
    return o;
  };
  size_t t = size_t(tcap), s = size_t(scap);
  l.seed = take(8 * t);
  l.input_ids = take(4 * t);
  l.positions = take(4 * t);
  l.token_seq = take(4 * t);
  l.logits_indices = take(4 * t);
  l.temperature = take(4 * t);
  l.top_k = take(4 * t);
  l.top_p = take(4 * t);
  l.sample_step = take(4 * t);
  l.seq_start = take(4 * (s + 1));
  l.seq_len = take(4 * s);
  l.feed_src = take(4 * s);
  l.block_tables = take(4 * s * size_t(max_blocks));
  l.total = off;
  return l;
}

MetaArrays MetaLayout::at(char* base) const {
  auto i32 = [base](size_t off) { return reinterpret_cast<int32_t*>(base + off); };
  auto f32 = [base](size_t off) { return reinterpret_cast<float*>(base + off); };
  // In MetaArrays' field order.
  return MetaArrays{reinterpret_cast<uint64_t*>(base + seed), i32(input_ids), i32(positions), i32(token_seq),
                    i32(logits_indices), f32(temperature), i32(top_k), f32(top_p), i32(sample_step), i32(seq_start),
                    i32(seq_len), i32(feed_src), i32(block_tables)};
}

Engine::~Engine() {
  if (stream) cudaStreamSynchronize(stream);
  profile_report();
  for (auto ev : prof_events) cudaEventDestroy(ev);
  for (auto& g : graphs) cudaGraphExecDestroy(g.second);
  for (StepBuffers* b : {&general, &decode}) {
    cudaFree(b->dev);
    cudaFree(b->out_tokens);
    cudaFree(b->logits);
    cudaFree(b->sample_ws);
    for (int i = 0; i < StepBuffers::kRing; i++) {
      if (b->host[i]) cudaFreeHost(b->host[i]);
      if (b->uploaded[i]) cudaEventDestroy(b->uploaded[i]);
    }
  }
  nccl_destroy(*this);
  cudaFree(weights);
  cudaFree(arena);
  cudaFree(kv_pool);
  cudaFree(attn_ws);
  cudaFree(scratch);
  cudaFree(gather_scratch);
  cudaFree(moe_ws);
  cudaFree(glu_out);
  cudaFree(norm_counters);
  cudaFree(gen_tokens);
  if (host_tokens) cudaFreeHost(host_tokens);
  for (PendingStep& ps : pending) {
    if (ps.start) cudaEventDestroy(ps.start);
    if (ps.end) cudaEventDestroy(ps.end);
    if (ps.host_tokens) cudaFreeHost(ps.host_tokens);
  }
  if (stream) cudaStreamDestroy(stream);
}

void* Engine::ptr(int vi, const StepPlan& p) const {
  if (!redirect.empty() && redirect[size_t(vi)]) return redirect[size_t(vi)];
  const ValueDesc& v = val(vi);
  switch (v.kind) {
    case ValueKind::Weight: return weights + desc.weights[size_t(v.weight)].device_offset;
    case ValueKind::Arena: return arena + v.arena_offset;
    case ValueKind::Input:
      switch (v.input) {
        case InputSlot::InputIds: return p.buf->dev + p.buf->lay.input_ids;
        case InputSlot::Positions: return p.buf->dev + p.buf->lay.positions;
        case InputSlot::LogitsIndices: return p.buf->dev + p.buf->lay.logits_indices;
        default: break;
      }
      break;
    default: break;
  }
  return nullptr;
}

void alloc_step_buffers(Engine& e, StepBuffers& b, int tcap, int scap, int64_t logits_rows) {
  b.lay = make_meta_layout(tcap, scap, e.max_blocks_per_seq);
  TSLLM_CUDA(cudaMalloc(&b.dev, b.lay.total), "cudaMalloc of step metadata");
  TSLLM_CUDA(cudaMemset(b.dev, 0, b.lay.total), "cudaMemset of step metadata");
  for (int i = 0; i < StepBuffers::kRing; i++) {
    TSLLM_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&b.host[i]), b.lay.total, cudaHostAllocDefault),
               "cudaHostAlloc of step metadata");
    std::memset(b.host[i], 0, b.lay.total);
    TSLLM_CUDA(cudaEventCreateWithFlags(&b.uploaded[i], cudaEventDisableTiming), "cudaEventCreate");
  }
  TSLLM_CUDA(cudaMalloc(&b.out_tokens, sizeof(int32_t) * size_t(tcap)), "cudaMalloc of sampled tokens");
  int64_t vocab = e.desc.vocab_size;
  if (e.val(e.desc.logits_value).dt != ElemType::F32) {
    TSLLM_CUDA(cudaMalloc(&b.logits, sizeof(float) * size_t(logits_rows) * size_t(vocab)), "cudaMalloc of fp32 logits");
  }
  b.logits_rows = logits_rows;
  b.sample_ws_bytes = sampling_workspace_bytes(int(logits_rows), int(vocab));
  if (b.sample_ws_bytes) TSLLM_CUDA(cudaMalloc(&b.sample_ws, b.sample_ws_bytes), "cudaMalloc of sampling workspace");
  b.sample_rows = logits_rows;
}

namespace {

std::string mib(uint64_t b) { return std::to_string((b + (1 << 19)) >> 20) + " MiB"; }

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Device memory for the weights and the random ones generated on the GPU; then the upload may start copying.
void alloc_weights(Engine& e, WeightUpload& upload) {
  const EngineDesc& d = e.desc;
  auto ck = [&](cudaError_t err, const std::string& what) {
    if (err != cudaSuccess) throw LoadError(d.path + ": " + what + ": " + cudaGetErrorString(err));
  };
  if (d.weight_device_bytes) ck(cudaMalloc(&e.weights, d.weight_device_bytes), "cudaMalloc of weights");
  upload.open(e.weights);
  for (const WeightDesc& w : d.weights) {
    if (!w.random) continue;
    const ValueDesc& v = d.values[size_t(w.value)];
    ck(random_fill(e.weights + w.device_offset, to_dtype(v.dt), v.max_numel(), w.seed, w.mean, w.scale, e.stream),
       "random_fill of " + v.name);
  }
}

void record_pass(Engine& e, const FilePassStats& p) {
  tsllm_load_stats& s = e.load_stats;
  s.pass_s = p.wall_s;
  s.read_thread_s = p.read_s;
  s.hash_thread_s = p.hash_s;
  s.wait_thread_s = p.wait_s;
  s.direct_bytes = p.direct_bytes;
  s.cached_bytes = p.cached_bytes;
  s.threads = p.threads;
  s.direct = p.direct ? 1 : 0;
}

// The engine's arena plan is for its build limits. At load the symbolic dims take the runtime maxima (tokens,
// logits rows, sequences); when any differs, the arena is planned again as passes/memory-plan.ts does: a
// buffer lives from the node writing it to the last node reading it (the logits to the end of the step), and,
// largest first, each goes into the smallest free 256-byte-aligned gap among the buffers live at the same time.
// So the runtime limits may exceed the build's, and a batch manager's logits take max_batch_size rows instead of
// max_num_tokens (for a 128k vocabulary, 64 MiB instead of 2 GiB).
void replan_arena(EngineDesc& d, int64_t tokens, int64_t logits, int64_t seqs) {
  auto bound = [&](const Dim& dim) {
    return dim.sym == Sym::NumTokens ? tokens : dim.sym == Sym::NumLogits ? logits : dim.sym == Sym::NumSeqs ? seqs : dim.n;
  };
  // Re-plan when a runtime bound exceeds the engine's (needed) or the logits shrink (memory); smaller token or
  // sequence bounds alone keep the engine's plan, which still fits.
  bool need = false, want = false;
  for (const ValueDesc& v : d.values)
    for (const Dim& dim : v.shape) {
      need = need || bound(dim) > dim.n;
      want = want || (dim.sym == Sym::NumLogits && bound(dim) < dim.n);
    }
  if (!need && !want) return;
  // Only the logits shrink: the re-plan is kept when smaller. It can come out larger than the build's plan (its
  // gemv-prologue lifetimes below keep a norm's input alive until its linear, which the build's plan need not:
  // tiny-llama, vocab 512: 671,744 B vs 606,208 B), and the build's plan, whose logits hold max_num_tokens rows,
  // also fits fewer rows.
  const std::vector<ValueDesc> built_values = need ? std::vector<ValueDesc>{} : d.values;
  const uint64_t built_bytes = d.arena_bytes;
  for (ValueDesc& v : d.values)
    for (Dim& dim : v.shape) dim.n = bound(dim);
  struct Buf {
    int v;
    size_t start, end;
    uint64_t bytes, off;
  };
  std::vector<Buf> bufs;
  std::vector<int> at(d.values.size(), -1);
  for (size_t i = 0; i < d.nodes.size(); i++) {
    for (int in : d.nodes[i].in)
      if (in >= 0 && at[size_t(in)] >= 0) bufs[size_t(at[size_t(in)])].end = i;
    for (int o : d.nodes[i].out)
      if (o >= 0 && d.values[size_t(o)].kind == ValueKind::Arena && at[size_t(o)] < 0) {
        at[size_t(o)] = int(bufs.size());
        const ValueDesc& v = d.values[size_t(o)];
        bufs.push_back({o, i, i, (v.max_numel() * elem_size(v.dt) + 255) / 256 * 256, 0});
      }
  }
  if (d.logits_value >= 0 && at[size_t(d.logits_value)] >= 0) bufs[size_t(at[size_t(d.logits_value)])].end = d.nodes.size();
  // Gemv prologue fusion (forward.cc) may skip an rms_norm / gated_act whose output feeds only the x of a later
  // linear; that linear then reads the skipped node's input, so the input must live until the linear.
  std::vector<int> uses(d.values.size(), 0);
  for (const NodeDesc& n : d.nodes)
    for (int in : n.in)
      if (in >= 0) uses[size_t(in)]++;
  for (size_t i = 0; i < d.nodes.size(); i++) {
    const NodeDesc& n = d.nodes[i];
    if ((n.op != Op::RmsNorm && n.op != Op::GatedAct) || n.out.size() != 1 || n.in.empty() || n.in[0] < 0) continue;
    if (uses[size_t(n.out[0])] != 1 || at[size_t(n.in[0])] < 0) continue;
    for (size_t c = i + 1; c < d.nodes.size(); c++)
      if ((d.nodes[c].op == Op::Linear || d.nodes[c].op == Op::QuantLinear) && !d.nodes[c].in.empty() &&
          d.nodes[c].in[0] == n.out[0]) {
        Buf& b = bufs[size_t(at[size_t(n.in[0])])];
        b.end = std::max(b.end, c);
        break;
      }
  }
  std::vector<size_t> order(bufs.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (bufs[a].bytes != bufs[b].bytes) return bufs[a].bytes > bufs[b].bytes;
    if (bufs[a].start != bufs[b].start) return bufs[a].start < bufs[b].start;
    return bufs[a].v < bufs[b].v;
  });
  std::vector<size_t> placed;
  uint64_t total = 0;
  for (size_t bi : order) {
    Buf& b = bufs[bi];
    std::vector<size_t> live;
    for (size_t pi : placed)
      if (bufs[pi].start <= b.end && b.start <= bufs[pi].end) live.push_back(pi);
    std::sort(live.begin(), live.end(), [&](size_t x, size_t y) { return bufs[x].off < bufs[y].off; });
    uint64_t cursor = 0, best = UINT64_MAX, best_gap = UINT64_MAX;
    for (size_t pi : live) {
      const uint64_t gap = bufs[pi].off > cursor ? bufs[pi].off - cursor : 0;
      if (gap >= b.bytes && gap < best_gap) {
        best = cursor;
        best_gap = gap;
      }
      cursor = std::max(cursor, bufs[pi].off + bufs[pi].bytes);
    }
    b.off = best != UINT64_MAX ? best : cursor;
    total = std::max(total, b.off + b.bytes);
    placed.push_back(bi);
  }
  if (!need && total >= built_bytes) {
    d.values = built_values;
    return;
  }
  for (const Buf& b : bufs) d.values[size_t(b.v)].arena_offset = b.off;
  d.arena_bytes = total;
}

}  // namespace

std::unique_ptr<Engine> load_engine(const std::string& path, const tsllm_options& opts, const ContentHash* hash) {
  const double t_start = now_s();
  auto e = std::make_unique<Engine>();
  e->desc = read_engine_header(path);
  const double t_header = now_s();
  e->opts = opts;
  e->tun = resolve_tunables(opts, path);
  EngineDesc& d = e->desc;
  // The weight pass starts now, on its own threads: it reads and hashes the file while CUDA starts and the
  // rest is set up below, and copies to the GPU from when alloc_weights opens it. Declared after `e`, so a
  // failed load stops it (and waits for its copies) before the engine frees the device weights.
  WeightUpload upload(d, opts.device, hash, e->tun.load_threads, e->tun.load_direct);
  auto fail = [&](const std::string& m) { return LoadError(path + ": " + m); };
  auto ck = [&](cudaError_t err, const std::string& what) {
    if (err != cudaSuccess) throw fail(what + ": " + cudaGetErrorString(err));
  };

  // ---- device and SM ----
  e->device = opts.device;
  int ndev = 0;
  ck(cudaGetDeviceCount(&ndev), "no usable CUDA device");
  if (e->device < 0 || e->device >= ndev)
    throw fail("CUDA device " + std::to_string(e->device) + " requested, " + std::to_string(ndev) + " present");
  ck(cudaSetDevice(e->device), "cudaSetDevice");
  cudaDeviceProp prop{};
  ck(cudaGetDeviceProperties(&prop, e->device), "cudaGetDeviceProperties");
  e->gpu_sm = prop.major * 10 + prop.minor;
  e->gpu_name = prop.name;
  const double t_cuda = now_s();
  // FP8 (weights or KV cache) needs the FP8 conversions / tensor cores of Ada and Hopper: said before the
  // general sm check, which would only name the build's sm.
  for (size_t i = 0; i < d.nodes.size() && e->gpu_sm < 89; i++)
    if (d.nodes[i].op == Op::QuantLinear && d.nodes[i].quant == QuantKind::Fp8)
      throw fail("node " + std::to_string(i) + " (quant_linear fp8): FP8 engines need an sm 89+ GPU (Ada, Hopper: FP8 "
                 "tensor cores), GPU " + std::to_string(e->device) + " (" + e->gpu_name + ") is sm " +
                 std::to_string(e->gpu_sm) + "; rebuild with --quant int8-wo or int4-wo");
  if (d.kv.num_layers > 0 && d.kv.dt == ElemType::FP8_E4M3 && e->gpu_sm < 89)
    throw fail("the FP8 KV cache needs an sm 89+ GPU (Ada, Hopper: FP8 conversions), GPU " + std::to_string(e->device) +
               " (" + e->gpu_name + ") is sm " + std::to_string(e->gpu_sm) + "; rebuild with --kv-cache-dtype " +
               elem_name(d.dtype));
  if (d.sm > e->gpu_sm)
    throw fail("engine built for sm " + std::to_string(d.sm) + ", but GPU " + std::to_string(e->device) + " (" +
               e->gpu_name + ") is sm " + std::to_string(e->gpu_sm) + "; rebuild it with --sm " +
               std::to_string(e->gpu_sm));
  if (e->gpu_sm < 80)
    throw fail("GPU " + e->gpu_name + " is sm " + std::to_string(e->gpu_sm) + "; the tsllm CUDA runtime needs sm 80 or newer");

  // ---- limits ----
  auto limit = [&](int32_t asked, int64_t built, const char* name) -> int {
    if (asked < 0) throw fail(std::string(name) + " must be positive");
    return asked == 0 ? int(built) : asked;
  };
  e->max_bs = limit(opts.max_batch_size, d.max_batch_size, "max_batch_size");
  e->max_seq_len = limit(opts.max_seq_len, d.max_seq_len, "max_seq_len");
  e->max_num_tokens = limit(opts.max_num_tokens, d.max_num_tokens, "max_num_tokens");
  // Decode graphs at the graph sizes (options.h is_graph_size) up to the first one >= max_bs, so every decode batch
  // up to max_bs pads to a captured size; padding rows must fit max_num_tokens. Larger decode batches run eagerly.
  for (int b = 1; b <= kGraphMaxBatch && b <= e->max_num_tokens; b = next_graph_size(b)) {
    e->graph_sizes.push_back(b);
    if (b >= e->max_bs) break;
  }
  if (opts.max_logits_rows < 0) throw fail("max_logits_rows must be positive");
  e->max_logits_rows = opts.max_logits_rows == 0 ? e->max_num_tokens : std::min(opts.max_logits_rows, e->max_num_tokens);
  if (!e->graph_sizes.empty()) e->max_logits_rows = std::max(e->max_logits_rows, e->graph_sizes.back());
  // Graph padding may run more sequences (and logits rows) than max_bs: the bounds cover the largest graph.
  replan_arena(e->desc, e->max_num_tokens, e->max_logits_rows,
               std::max(e->max_bs, e->graph_sizes.empty() ? 0 : e->graph_sizes.back()));
  e->tpb = opts.tokens_per_block > 0 ? opts.tokens_per_block : d.kv.tokens_per_block;
  if (e->tpb <= 0) throw fail("tokens_per_block must be positive");
  e->max_blocks_per_seq = (e->max_seq_len + e->tpb - 1) / e->tpb;
  e->dt = to_dtype(d.dtype);
  e->cuda_dt = d.dtype == ElemType::BF16 ? CUDA_R_16BF : CUDA_R_16F;
  if (d.kv.num_layers > 0 && d.kv.dt != d.dtype && d.kv.dt != ElemType::FP8_E4M3)
    throw fail(std::string("kv_cache dtype ") + elem_name(d.kv.dt) + " with activations in " + elem_name(d.dtype) +
               ": this runtime's caches hold the activation dtype or fp8");
  for (const NodeDesc& n : d.nodes) {
    if (n.op == Op::Embedding && d.tp == 1) {
      int end = n.vocab_start + int(e->val(n.in[1]).shape[0].n);
      e->embed_vocab_end = e->embed_vocab_end ? std::min(e->embed_vocab_end, end) : end;
    }
  }

  ck(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking), "cudaStreamCreate");

  // ---- weights (the pass copies them from now on), arena ----
  alloc_weights(*e, upload);
  if (d.arena_bytes) ck(cudaMalloc(&e->arena, d.arena_bytes), "cudaMalloc of the " + mib(d.arena_bytes) + " activation arena");

  // ---- workspaces ----
  try {
    e->gemm.init(e->tun);
  } catch (const std::exception& ex) {
    throw fail(ex.what());
  }
  // gemm_extra 2: prefill steps at the token budget are tuned too (they run cuBLASLt's first heuristic pick otherwise;
  // a batch-manager warm-up of max_num_tokens / 8 requests meets this M before any timed step).
  if (e->tun.gemm_extra == 2) e->gemm.tune_full_m = e->max_num_tokens;
  plan_prologue_fusion(*e);
  plan_glu_fusion(*e);
  for (size_t i = 0; i < e->glu_next.size(); i++) {
    if (e->glu_next[i] < 0) continue;
    const size_t inter = size_t(e->val(d.nodes[i].in[1]).shape[0].n / 2);
    e->glu_out_bytes = std::max(e->glu_out_bytes, size_t(kGemvMaxM) * inter * elem_size(d.dtype));
  }
  if (e->glu_out_bytes) {
    ck(cudaMalloc(&e->glu_out, e->glu_out_bytes), "cudaMalloc of the gemv epilogue's output");
    e->redirect.assign(d.values.size(), nullptr);
  }
  plan_norm_fusion(*e);
  plan_attn_prefetch(*e);
  if (!e->nt_next.empty()) {
    const size_t bytes = sizeof(unsigned) * d.nodes.size();
    ck(cudaMalloc(&e->norm_counters, bytes), "cudaMalloc of the gemv norm counters");
    ck(cudaMemset(e->norm_counters, 0, bytes), "cudaMemset of the gemv norm counters");
  }
  {
    QuantWorkspace need;
    for (const NodeDesc& n : d.nodes) {
      if (n.op != Op::QuantLinear) continue;
      const int N = int(e->val(n.in[1]).shape[0].n), K = int(e->val(n.in[0]).last_dim());
      const QuantWorkspace w = QuantGemm::need_for(n.quant, e->max_num_tokens, N, K, elem_size(d.dtype));
      need.xq_bytes = std::max(need.xq_bytes, w.xq_bytes);
      need.acc_bytes = std::max(need.acc_bytes, w.acc_bytes);
      need.deq_bytes = std::max(need.deq_bytes, w.deq_bytes);
    }
    try {
      e->qgemm.init(need, e->tun);
    } catch (const std::exception& ex) {
      throw fail(ex.what());
    }
    e->workspace_bytes += need.xq_bytes + need.acc_bytes + need.deq_bytes;
  }
  e->stats.assign(d.nodes.size(), Engine::Counts{});
  int max_heads = 0, max_hd = 0;
  for (const NodeDesc& n : d.nodes) {
    if (n.op == Op::Attention || n.op == Op::FusedAttention) {
      max_heads = std::max(max_heads, n.num_heads);
      max_hd = std::max(max_hd, n.head_dim);
    }
    // The weight-only quant_linear's context path runs as a linear on the dequantised weight (its residual is in[4]).
    // Scratch: a linear whose out aliases its residual and whose activation or elementwise chain runs after the GEMM.
    const size_t res_in = n.op == Op::QuantLinear ? 4 : 3;
    if ((n.op == Op::Linear || n.op == Op::QuantLinear) && n.in.size() > res_in && n.in[res_in] >= 0 &&
        (n.act != Act::None || n.post.n))
      e->scratch_bytes = std::max<size_t>(e->scratch_bytes, e->val(n.out[0]).max_numel() * elem_size(d.dtype));
    if (n.op == Op::AllGather && n.tp > 1)
      e->gather_scratch_bytes = std::max<size_t>(e->gather_scratch_bytes, e->val(n.out[0]).max_numel() * elem_size(d.dtype));
  }
  if (e->gather_scratch_bytes) ck(cudaMalloc(&e->gather_scratch, e->gather_scratch_bytes), "cudaMalloc of all_gather scratch");
  if (max_heads) {
    e->attn_ws_bytes = attention_workspace_bytes(e->max_num_tokens, e->max_bs, max_heads, max_hd, e->max_seq_len,
                                                 d.kv.dt == ElemType::FP8_E4M3 ? d.kv.num_kv_heads : 0);
    if (e->attn_ws_bytes) ck(cudaMalloc(&e->attn_ws, e->attn_ws_bytes), "cudaMalloc of the attention workspace");
  }
  if (e->scratch_bytes) ck(cudaMalloc(&e->scratch, e->scratch_bytes), "cudaMalloc of GEMM scratch");
  for (const NodeDesc& n : d.nodes)
    if (n.op == Op::Moe)
      e->moe_ws_bytes = std::max(e->moe_ws_bytes, moe_workspace_bytes(e->max_num_tokens, n.num_experts, n.top_k,
                                                                      n.moe_hidden, n.moe_inter, e->dt));
  if (e->moe_ws_bytes) ck(cudaMalloc(&e->moe_ws, e->moe_ws_bytes), "cudaMalloc of the " + mib(e->moe_ws_bytes) + " moe workspace");
  plan_moe_fusion(*e);
  plan_fp8_act_fusion(*e);

  e->profile_graph = e->tun.profile == 2;
  e->profile = e->tun.profile == 1;
  e->graphs_enabled = !opts.disable_cuda_graphs && !e->profile;
  if (e->graph_sizes.empty()) e->graphs_enabled = false;

  try {
    alloc_step_buffers(*e, e->general, e->max_num_tokens, e->max_bs,
                       std::min({e->max_bs, e->max_num_tokens, e->max_logits_rows}));
    if (e->graphs_enabled) {
      int gmax = e->graph_sizes.back();
      alloc_step_buffers(*e, e->decode, gmax, gmax, gmax);
    }
    TSLLM_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&e->host_tokens), sizeof(int32_t) * size_t(e->max_num_tokens),
                             cudaHostAllocDefault),
               "cudaHostAlloc");
    const int rows = std::max(e->max_num_tokens, e->graphs_enabled ? e->graph_sizes.back() : 0);
    for (PendingStep& ps : e->pending) {
      TSLLM_CUDA(cudaEventCreate(&ps.start), "cudaEventCreate");
      TSLLM_CUDA(cudaEventCreate(&ps.end), "cudaEventCreate");
      TSLLM_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&ps.host_tokens), sizeof(int32_t) * size_t(rows),
                               cudaHostAllocDefault),
                 "cudaHostAlloc");
    }
  } catch (const StepError& ex) {
    throw fail(ex.what());
  }
  for (StepBuffers* b : {&e->general, &e->decode})
    e->workspace_bytes += b->lay.total + b->logits_rows * size_t(d.vocab_size) * (b->logits ? 4 : 0) +
                          b->sample_ws_bytes + size_t(b->lay.tcap) * 4;
  e->workspace_bytes += GemmRunner::kWorkspaceBytes + e->attn_ws_bytes + e->scratch_bytes + e->gather_scratch_bytes +
                       e->moe_ws_bytes + e->glu_out_bytes;

  // ---- the weight pass's end ----
  const double t_wait = now_s();
  record_pass(*e, upload.finish());
  const double t_uploaded = now_s();

  // ---- tensor parallelism ----
  if (d.tp > 1) nccl_init(*e, opts.nccl_unique_id);

  ck(cudaStreamSynchronize(e->stream), "uploading weights");

  // ---- paged KV cache from what is left ----
  if (d.kv.num_layers > 0) {
    size_t free_b = 0, total_b = 0;
    ck(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    float frac = opts.kv_cache_free_gpu_mem_fraction > 0 ? opts.kv_cache_free_gpu_mem_fraction : 0.9f;
    if (frac > 1.f) throw fail("kv_cache_free_gpu_mem_fraction must be in (0, 1]");
    uint64_t block_bytes = uint64_t(d.kv.num_layers) * 2 * uint64_t(d.kv.num_kv_heads) * uint64_t(e->tpb) *
                           uint64_t(d.kv.head_dim) * elem_size(d.kv.dt);
    uint64_t budget = uint64_t(double(free_b) * double(frac));
    int64_t blocks = int64_t(budget / block_bytes);
    int64_t useful = int64_t(e->max_bs) * e->max_blocks_per_seq + 1;  // +1: padding rows' scratch block
    if (opts.kv_cache_max_blocks > 0) useful = std::min<int64_t>(useful, opts.kv_cache_max_blocks);
    blocks = std::min(blocks, useful);
    int64_t need = e->max_blocks_per_seq + 1;
    if (blocks < need)
      throw fail("KV cache too small: " + mib(free_b) + " free after weights (" + mib(d.weight_device_bytes) +
                 "), arena (" + mib(d.arena_bytes) + ") and workspaces (" + mib(e->workspace_bytes) + "); " +
                 std::to_string(frac) + " of it gives " + std::to_string(blocks) + " blocks of " +
                 std::to_string(block_bytes >> 10) + " KiB, but one sequence of max_seq_len " +
                 std::to_string(e->max_seq_len) + " needs " + std::to_string(need) +
                 " (with the reserved block); lower max_seq_len or raise kv_cache_free_gpu_mem_fraction");
    e->kv_bytes = size_t(blocks) * block_bytes;
    ck(cudaMalloc(&e->kv_pool, e->kv_bytes), "cudaMalloc of the " + mib(e->kv_bytes) + " KV cache");
    ck(cudaMemset(e->kv_pool, 0, e->kv_bytes), "cudaMemset of the KV cache");
    e->kv.init(blocks, e->tpb, 1);
  } else {
    e->kv.init(0, e->tpb, 0);
  }
  ck(cudaStreamSynchronize(e->stream), "initialising the KV cache");
  ck(cudaDeviceSynchronize(), "loading");
  tsllm_load_stats& s = e->load_stats;
  const double t_end = now_s();
  s.total_s = t_end - t_start;
  s.header_s = t_header - t_start;
  s.cuda_init_s = t_cuda - t_header;
  s.weights_s = t_uploaded - t_wait;
  s.rest_s = (t_wait - t_cuda) + (t_end - t_uploaded);
  return e;
}

}  // namespace tsllm
