// Steps: planning on the host (KV blocks, packed metadata in one pinned buffer, one upload), running
// the program eagerly or as a CUDA graph (pure-decode steps), sampling on the GPU, logits to fp32 when asked for.
//
// CUDA graphs: a pure-decode step (every sequence brings one token) of S sequences is padded to the
// smallest captured batch size B >= S (1, 2, 4, ..., 256, 384, ..., 1024). Padding rows are sequences of one token at
// position 0 whose block table points at block 0, a scratch block no sequence owns. The graph for
// (B, L) is keyed also by L, the max_seq_len bound given to the attention kernel: the smallest power of
// two >= 256 holding the longest sequence (capped at max_seq_len), so attention work follows the real
// context length. The first step with a key runs eagerly (warming kernels and cuBLASLt plans), the
// second captures and replays; later ones only upload metadata (fixed addresses) and replay.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <unordered_set>

#include "engine.h"

namespace tsllm {

namespace {

constexpr uint64_t kGenerateIdBit = uint64_t(1) << 63;

int len_bucket(const Engine& e, int max_len) {
  int b = 256;
  while (b < max_len) b *= 2;
  return std::min(b, e.max_seq_len);
}

void grow_general(Engine& e, int64_t rows) {
  StepBuffers& b = e.general;
  if (rows <= b.logits_rows && rows <= b.sample_rows) return;
  TSLLM_CUDA(cudaStreamSynchronize(e.stream), "step");
  int64_t vocab = e.desc.vocab_size;
  if (e.val(e.desc.logits_value).dt != ElemType::F32) {
    cudaFree(b.logits);
    b.logits = nullptr;
    TSLLM_CUDA(cudaMalloc(&b.logits, sizeof(float) * size_t(rows) * size_t(vocab)), "cudaMalloc of fp32 logits");
  }
  b.logits_rows = rows;
  cudaFree(b.sample_ws);
  b.sample_ws = nullptr;
  b.sample_ws_bytes = sampling_workspace_bytes(int(rows), int(vocab));
  if (b.sample_ws_bytes) TSLLM_CUDA(cudaMalloc(&b.sample_ws, b.sample_ws_bytes), "cudaMalloc of sampling workspace");
  b.sample_rows = rows;
}

// Validates the requests, grows the sequences' KV blocks, writes the step's metadata into a pinned
// slot and uploads it (one cudaMemcpyAsync). dev_ids: tokens already on the device (one per sequence).
void plan_and_upload(Engine& e, const SeqReq* r, int S, StepPlan& p, const int32_t* dev_ids) {
  if (S < 1) throw StepError("a step needs at least one sequence");
  if (S > e.max_bs)
    throw StepError("step has " + std::to_string(S) + " sequences, max_batch_size is " + std::to_string(e.max_bs));
  int64_t T = 0, L = 0;
  int max_new = 0, max_len = 0;
  bool decode = true;
  int64_t extra = 0;
  bool fed = false;
  std::unordered_set<uint64_t> seen;
  for (int i = 0; i < S; i++) {
    const SeqReq& q = r[i];
    std::string who = "sequence " + std::to_string(q.id);
    if (q.n < 1) throw StepError(who + ": needs at least one token");
    if (!seen.insert(q.id).second) throw StepError(who + " appears twice in one step");
    if (q.start < 0) throw StepError(who + ": negative start position");
    const Sequence* sq = e.kv.find(q.id);
    int cached = sq ? sq->len : 0;
    if (q.start > cached)
      throw StepError(who + " has " + std::to_string(cached) + " cached tokens, a step cannot start at position " +
                      std::to_string(q.start));
    if (int64_t(q.start) + q.n > e.max_seq_len)
      throw StepError(who + ": positions up to " + std::to_string(int64_t(q.start) + q.n) + " exceed max_seq_len " +
                      std::to_string(e.max_seq_len));
    if (q.tokens)
      for (int j = 0; j < q.n; j++)
        if (q.tokens[j] < 0 || (e.embed_vocab_end && q.tokens[j] >= e.embed_vocab_end))
          throw StepError(who + ": token id " + std::to_string(q.tokens[j]) + " outside the vocabulary [0, " +
                          std::to_string(e.embed_vocab_end) + ")");
    if (!q.tokens && !dev_ids) {  // pipelined: its token is the one the previous step sampled for it
      if (q.n != 1) throw StepError(who + ": a step without tokens takes exactly one (the previous step's sample)");
      if (!e.feed_out || !e.feed_rows.count(q.id))
        throw StepError(who + " gives no token and the previous step sampled none for it");
      fed = true;
    }
    T += q.n;
    L += q.all_logits ? q.n : 1;
    max_new = std::max(max_new, q.n);
    max_len = std::max(max_len, q.start + q.n);
    decode = decode && q.n == 1;
    extra += e.kv.extra_blocks(q.id, q.start + q.n);
  }
  if (T > e.max_num_tokens)
    throw StepError("step has " + std::to_string(T) + " tokens, max_num_tokens is " + std::to_string(e.max_num_tokens));
  if (L > e.max_logits_rows)
    throw StepError("step asks for " + std::to_string(L) + " logits rows, max_logits_rows is " +
                    std::to_string(e.max_logits_rows));
  if (e.desc.kv.num_layers > 0 && extra > e.kv.num_free())
    throw StepError("KV cache full: the step needs " + std::to_string(extra) + " more blocks, " +
                    std::to_string(e.kv.num_free()) + " of " + std::to_string(e.kv.num_blocks()) +
                    " are free (release finished sequences)");
  if (e.desc.kv.num_layers > 0)
    for (int i = 0; i < S; i++) e.kv.resize(r[i].id, r[i].start + r[i].n);

  p.real_S = S;
  p.real_L = int(L);
  p.graph = e.graphs_enabled && decode && S <= e.graph_sizes.back();
  if (p.graph) {
    int B = *std::lower_bound(e.graph_sizes.begin(), e.graph_sizes.end(), S);
    p.buf = &e.decode;
    p.T = p.S = p.L = B;
    p.max_new = 1;
    p.max_len = len_bucket(e, max_len);
    p.graph_key = {B, p.max_len};
  } else {
    p.buf = &e.general;
    p.T = int(T);
    p.S = S;
    p.L = int(L);
    p.max_new = max_new;
    p.max_len = max_len;
    p.single = 0;
    while (p.single < S && r[p.single].n == 1) p.single++;
    grow_general(e, L);
  }

  StepBuffers& b = *p.buf;
  int slot = b.ring;
  b.ring = (b.ring + 1) % StepBuffers::kRing;
  TSLLM_CUDA(cudaEventSynchronize(b.uploaded[slot]), "waiting for a metadata slot");
  char* h = b.host[slot];
  const MetaLayout& l = b.lay;
  const MetaArrays m = l.at(h);
  const int MB = l.max_blocks;

  p.last_row.assign(size_t(S), 0);
  int tok = 0, row = 0;
  auto put_row = [&](int t, const tsllm_sampling& sp, int position) {
    m.logits_indices[row] = t;
    m.temperature[row] = sp.temperature;
    m.top_k[row] = sp.top_k;
    m.top_p[row] = sp.top_p > 0.f ? sp.top_p : 1.f;
    m.seed[row] = sp.seed;
    m.sample_step[row] = position;
    row++;
  };
  for (int s = 0; s < S; s++) {
    const SeqReq& q = r[s];
    m.seq_start[s] = tok;
    for (int j = 0; j < q.n; j++) {
      m.input_ids[tok] = q.tokens ? q.tokens[j] : 0;
      m.positions[tok] = q.start + j;
      m.token_seq[tok] = s;
      if (q.all_logits || j == q.n - 1) put_row(tok, q.sp, q.start + j);
      tok++;
    }
    p.last_row[size_t(s)] = row - 1;
    m.feed_src[s] = !q.tokens && !dev_ids ? e.feed_rows.at(q.id) : -1;
    m.seq_len[s] = q.start + q.n;
    int32_t* rowp = m.block_tables + size_t(s) * MB;
    const Sequence* sq = e.kv.find(q.id);
    int nb = sq ? int(sq->blocks.size()) : 0;
    if (nb) std::memcpy(rowp, sq->blocks.data(), sizeof(int32_t) * size_t(nb));
    std::memset(rowp + nb, 0, sizeof(int32_t) * size_t(MB - nb));
  }
  const tsllm_sampling greedy{0.f, 1, 1.f, 0, 0};
  for (int s = S; s < p.S; s++) {  // graph padding rows
    m.seq_start[s] = tok;
    m.input_ids[tok] = 0;
    m.positions[tok] = 0;
    m.token_seq[tok] = s;
    put_row(tok, greedy, 0);
    m.seq_len[s] = 1;
    m.feed_src[s] = -1;
    std::memset(m.block_tables + size_t(s) * MB, 0, sizeof(int32_t) * size_t(MB));
    tok++;
  }
  m.seq_start[p.S] = tok;

  TSLLM_CUDA(cudaMemcpyAsync(b.dev, h, l.bytes_for(p.S), cudaMemcpyHostToDevice, e.stream), "uploading step metadata");
  TSLLM_CUDA(cudaEventRecord(b.uploaded[slot], e.stream), "cudaEventRecord");
  if (dev_ids)
    TSLLM_CUDA(cudaMemcpyAsync(b.dev + l.input_ids, dev_ids, sizeof(int32_t) * size_t(S), cudaMemcpyDeviceToDevice,
                               e.stream),
               "copying sampled tokens to the next step");
  if (fed) {
    const MetaArrays d = l.at(b.dev);
    TSLLM_CUDA(feed_tokens(d.input_ids, d.seq_start, d.feed_src, e.feed_out, p.S, e.stream),
               "feeding the previous step's tokens");
  }
}

// After a step: its sampled tokens (on the device) may feed the next step's sequences that give none.
void remember_samples(Engine& e, const StepPlan& p, const SeqReq* r, int S, bool sampled) {
  e.feed_rows.clear();
  e.feed_out = sampled ? p.buf->out_tokens : nullptr;
  if (sampled)
    for (int s = 0; s < S; s++) e.feed_rows[r[s].id] = p.last_row[size_t(s)];
}

// Sampling, after the program, from the logits as the program stored them (fp16 / bf16 read directly: no fp32
// copy of [rows, vocab] a step, 0.35 ms of an 8B bs-1024 decode step with it; kernels.h sample).
void postprocess(Engine& e, const StepPlan& p, bool do_sample) {
  if (!do_sample) return;
  StepBuffers& b = *p.buf;
  const EngineDesc& d = e.desc;
  const MetaArrays m = b.lay.at(b.dev);
  cudaError_t err = sample(e.ptr(d.logits_value, p), to_dtype(e.val(d.logits_value).dt), p.L, d.vocab_size,
                           m.temperature, m.top_k, m.top_p, m.seed, m.sample_step, b.out_tokens, b.sample_ws, e.stream);
  if (err != cudaSuccess) throw StepError(std::string("sampling: ") + cudaGetErrorString(err));
}

// The logits as fp32 for the host (tsllm_step with out->logits): converted into the step buffers' fp32 copy when
// the program stores them in 16 bits, after the step (eager; never inside a CUDA graph).
const float* logits_for_host(Engine& e, const StepPlan& p) {
  StepBuffers& b = *p.buf;
  const int v = e.desc.logits_value;
  if (!b.logits) return static_cast<const float*>(e.ptr(v, p));  // an fp32 program's own logits
  const uint64_t n = uint64_t(p.L) * uint64_t(e.desc.vocab_size);
  cudaError_t err = convert(e.ptr(v, p), to_dtype(e.val(v).dt), b.logits, DType::F32, n, e.stream);
  if (err != cudaSuccess) throw StepError(std::string("converting logits to fp32: ") + cudaGetErrorString(err));
  return b.logits;
}

// ms per replay of g: `warm` replays, then `runs` timed back to back.
float replay_ms(Engine& e, cudaGraphExec_t g, int warm, int runs) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < warm; i++) cudaGraphLaunch(g, e.stream);
  cudaEventRecord(a, e.stream);
  for (int i = 0; i < runs; i++) cudaGraphLaunch(g, e.stream);
  cudaEventRecord(b, e.stream);
  const cudaError_t err = cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  TSLLM_CUDA(err, "timing graph replays");
  return ms / float(runs);
}

// What body launches on e.stream, captured and instantiated (the capture ended and dropped when body throws).
cudaGraphExec_t capture_graph(Engine& e, const std::function<void()>& body) {
  cudaGraph_t g = nullptr;
  TSLLM_CUDA(cudaStreamBeginCapture(e.stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  try {
    body();
  } catch (...) {
    cudaStreamEndCapture(e.stream, &g);
    if (g) cudaGraphDestroy(g);
    throw;
  }
  TSLLM_CUDA(cudaStreamEndCapture(e.stream, &g), "cudaStreamEndCapture");
  cudaGraphExec_t ge = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&ge, g, 0);
  cudaGraphDestroy(g);
  TSLLM_CUDA(err, "cudaGraphInstantiate");
  return ge;
}

// profile 2 (TSLLM_PROFILE=graph): replays graphs of subsets of one decode step (all nodes of one op type, each linear
// shape, sampling) and prints each subset's time per step: alone (the subset's kernels back to back), and in the step
// (the full step's time minus that of the step without the subset). The two differ where a kernel's start overlaps
// its predecessor's end (programmatic dependent launch): back to back, a gemv follows a gemv of the same shape, in
// the step it follows a norm or attention, so a ranking by the first need not hold in the second (session 17: the
// int4 picks gemv_bench ranked best were no faster in the step). Runs once, before a real replay whose metadata it
// shares, so the garbage its partial programs write (activations, this step's KV slots) is overwritten.
void profile_graph_breakdown(Engine& e, const StepPlan& p) {
  const EngineDesc& d = e.desc;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> groups;
  std::map<std::string, size_t> index;
  std::map<std::string, double> bytes;
  std::map<std::string, int> fused;  // prologue fusion: skipped nodes per op (no launches)
  for (size_t i = 0; i < d.nodes.size(); i++) {
    const NodeDesc& n = d.nodes[i];
    std::string key = op_name(n.op);
    if (node_fused(e, p, i) || (!e.moe_prev.empty() && e.moe_prev[i] >= 0)) {  // a gemv prologue, or a moe's combine
      fused[key]++;
      continue;
    }
    const int glu = e.glu_next.empty() ? -1 : e.glu_next[i];  // the gated_act in this gate_up's epilogue
    const char* gated = glu >= 0 && node_fused(e, p, size_t(glu)) ? " +gated_act" : "";
    if (n.op == Op::QuantLinear) {  // weight bytes as stored: quantised values + scales
      const ValueDesc& w = e.val(n.in[1]);
      const ValueDesc& sc = e.val(n.in[2]);
      key += std::string(" ") + quant_kind_name(n.quant) + " N=" + std::to_string(w.shape[0].n) +
             " K=" + std::to_string(e.val(n.in[0]).last_dim()) + gated;
      bytes[key] += double(w.max_numel() * elem_size(w.dt) + sc.max_numel() * elem_size(sc.dt));
    }
    if (n.op == Op::Linear) {
      const ValueDesc& w = e.val(n.in[1]);
      key += " N=" + std::to_string(w.shape[0].n) + " K=" + std::to_string(w.shape[1].n);
      const int src = e.pro_producer.empty() ? -1 : e.pro_producer[i];
      if (src >= 0 && node_fused(e, p, size_t(src))) key += std::string(" +") + op_name(d.nodes[size_t(src)].op);
      key += gated;
      const int nt = e.nt_next.empty() ? -1 : e.nt_next[i];
      if (nt >= 0 && node_fused(e, p, size_t(nt))) key += " +rms_norm after";
      bytes[key] += double(w.max_numel() * elem_size(w.dt));
    }
    auto it = index.find(key);
    if (it == index.end()) {
      it = index.emplace(key, groups.size()).first;
      groups.emplace_back(key, std::vector<uint8_t>(d.nodes.size(), 0));
    }
    groups[it->second].second[i] = 1;
  }
  groups.emplace_back("(sampling)", std::vector<uint8_t>(d.nodes.size(), 0));
  auto time_graph = [&](cudaGraphExec_t g) { return replay_ms(e, g, 3, 20); };
  float full = time_graph(e.graphs[p.graph_key]);
  std::fprintf(stderr, "tsllm graph profile: decode batch %d (padded), max_seq_len bound %d: full step %.3f ms\n", p.S,
               p.max_len, full);
  // The time of a graph of the program's nodes in `mask` (then sampling, when `sample`).
  auto time_subset = [&](const std::vector<uint8_t>* mask, bool sample) {
    cudaGraphExec_t ge = capture_graph(e, [&] {
      if (mask) forward(e, p, mask);
      postprocess(e, p, sample);
    });
    const float ms = time_graph(ge);
    cudaGraphExecDestroy(ge);
    return ms;
  };
  const std::vector<uint8_t> all(d.nodes.size(), 1);
  const float whole = time_subset(&all, true);  // the step captured as this profile captures its parts
  float sum = 0;
  for (size_t gi = 0; gi < groups.size(); gi++) {
    auto& g = groups[gi];
    bool sampling = gi + 1 == groups.size();
    const float ms = time_subset(sampling ? nullptr : &g.second, sampling);
    std::vector<uint8_t> rest(d.nodes.size(), 1);
    for (size_t i = 0; i < rest.size(); i++) rest[i] = !g.second[i];
    const float in_step = whole - time_subset(&rest, !sampling);
    sum += ms;
    int count = 0;
    for (auto m : g.second) count += m;
    std::string extra;
    if (bytes.count(g.first)) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "  %6.0f GB/s of weights", bytes[g.first] / (ms * 1e-3) / 1e9);
      extra = buf;
    }
    std::fprintf(stderr, "  %-36s nodes %4d  %8.3f ms/step  %5.1f%%  in the step %7.3f%s\n", g.first.c_str(), count, ms,
                 100.0 * ms / full, in_step, extra.c_str());
  }
  for (auto& f : fused)
    std::fprintf(stderr, "  %-36s nodes %4d  fused into %s (0 launches)\n", f.first.c_str(), f.second,
                 f.first == "add" || f.first == "add_rms_norm" ? "the combine of the moe before them"
                                                                : "the gemv prologue of their linear");
  std::fprintf(stderr,
               "  (sum of the parts %.3f ms; the rest is launch gaps between kernels. \"in the step\": %.3f ms, the "
               "step as captured here, minus the step without the part)\n",
               sum, whole);
}

// The decode step of plan p captured and instantiated; *share: what forward() counted while capturing (the graph's
// share of the kernel counters, added at each replay).
cudaGraphExec_t capture_step(Engine& e, const StepPlan& p, std::vector<Engine::Counts>* share) {
  const std::vector<Engine::Counts> before = e.stats;
  cudaGraphExec_t ge = nullptr;
  try {
    ge = capture_graph(e, [&] {
      forward(e, p);
      postprocess(e, p, true);
    });
  } catch (...) {
    e.stats = before;
    throw;
  }
  share->assign(e.stats.size(), Engine::Counts{});
  for (size_t i = 0; i < e.stats.size(); i++)
    for (size_t k = 0; k < (*share)[i].size(); k++) (*share)[i][k] = e.stats[i][k] - before[i][k];
  e.stats = before;
  return ge;
}

// Step tuning (Tunables::step_tune, step_choice.h): each choice (a gemv shape's pick, a fusion decision) the
// captured step *ge uses gets its near candidates tried in the step itself (the graph recaptured with that pick,
// replays timed), one choice at a time, keeping a candidate only when the step gets faster by more than 0.2 %
// (session 25 run 6: the same graph timed 2.5997 and 2.6007 ms in two loads). True when a pick changed.
// Replays compute this very step (its KV slots and tokens come out the same), as the profile's do.
bool step_tune(Engine& e, const StepPlan& p, const std::vector<StepChoice>& choices, cudaGraphExec_t* ge,
               std::vector<Engine::Counts>* share) {
  constexpr float kGain = 0.002f;
  constexpr int kWarm = 3, kRuns = 10;
  float best = replay_ms(e, *ge, kWarm, kRuns);
  bool changed = false;
  for (const StepChoice& c : choices) {
    int keep = c.pick;
    const float from = best;
    for (int v : c.candidates) {
      c.set(v, false);
      std::vector<Engine::Counts> s2;
      cudaGraphExec_t g2 = nullptr;
      float ms = 0.f;
      try {
        g2 = capture_step(e, p, &s2);
        ms = replay_ms(e, g2, kWarm, kRuns);
      } catch (...) {  // (the step fails: no graph of it is kept)
        if (g2) cudaGraphExecDestroy(g2);
        c.set(keep, true);
        cudaGraphExecDestroy(*ge);
        *ge = nullptr;
        throw;
      }
      if (ms < best * (1.f - kGain)) {
        cudaGraphExecDestroy(*ge);
        *ge = g2, *share = std::move(s2), best = ms, keep = v;
      } else {
        cudaGraphExecDestroy(g2);
      }
    }
    c.set(keep, true);
    changed |= keep != c.pick;
    if (e.gemm.verbose)
      std::fprintf(stderr, "tsllm step tune: batch %d, %s: variant %d -> %d (%zu candidates; %.4f -> %.4f ms a step)\n",
                   p.S, c.name.c_str(), c.pick, keep, c.candidates.size(), from, best);
  }
  return changed;
}

// The first capture of a step-tuned decode graph (Tunables::step_tune), then step tuning in two rounds: the fusion
// decisions first (they decide which gemv shapes the step runs), then the gemv picks of the step they leave.
cudaGraphExec_t capture_tuned_step(Engine& e, const StepPlan& p, std::vector<Engine::Counts>* share) {
  // The step captured while the runners note the keys it looks up (step_choice.h StepTuned::note).
  auto capture_recording = [&] {
    struct Recording {  // (off again also when the capture throws)
      Engine& e;
      void set(bool on) {
        e.gemm.record_keys(on);
        e.qgemm.record_keys(on);
      }
      ~Recording() { set(false); }
    } rec{e};
    rec.set(true);
    return capture_step(e, p, share);
  };
  cudaGraphExec_t ge = capture_recording();
  const auto t0 = std::chrono::steady_clock::now();
  size_t tried = 0;
  for (int round = 0; round < 2; round++) {
    // Candidates: the variants whose lone time was within kWithin of the pick's (TSLLM_TUNE_LOG prints them; a
    // fusion decision's fewer: step_choice.h near_candidates).
    constexpr float kWithin = 0.15f;
    constexpr float kLtWithin = 0.10f;  // Tunables::gemm_step's candidates
    constexpr int kLtMost = 3;
    std::vector<StepChoice> choices;
    if (round == 0) {
      e.gemm.fusion_choices(kWithin, &choices);
      e.qgemm.fusion_choices(kWithin, &choices);
    } else {
      e.gemm.step_choices(kWithin, &choices);
      e.qgemm.step_choices(kWithin, &choices);
      if (e.tun.gemm_step > 0 && p.S >= e.tun.gemm_step) e.gemm.lt_choices(kLtWithin, kLtMost, &choices);
    }
    tried += choices.size();
    if (!choices.empty() && step_tune(e, p, choices, &ge, share) && round == 0) {
      cudaGraphExecDestroy(ge);  // the same step, recaptured for the keys its new decisions look up
      ge = capture_recording();
    }
  }
  if (tried && e.gemm.verbose)
    std::fprintf(stderr, "tsllm step tune: batch %d: %zu choices in %.0f ms\n", p.S, tried,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  return ge;
}

void execute(Engine& e, const StepPlan& p, bool do_sample) {
  if (!p.graph) {
    forward(e, p);
    postprocess(e, p, do_sample);
    return;
  }
  auto it = e.graphs.find(p.graph_key);
  if (it == e.graphs.end()) {
    if (e.graph_seen[p.graph_key]++ == 0) {  // first time: eager
      forward(e, p);
      postprocess(e, p, true);
      return;
    }
    std::vector<Engine::Counts>& share = e.graph_stats[p.graph_key];
    // Step tuning: not for tensor-parallel ranks (each would time its own candidates, and the replays' all_reduce
    // calls must match across ranks).
    const bool tune = (p.S <= e.tun.step_tune || (e.tun.gemm_step > 0 && p.S >= e.tun.gemm_step)) && !e.nccl_comm;
    cudaGraphExec_t ge = tune ? capture_tuned_step(e, p, &share) : capture_step(e, p, &share);
    it = e.graphs.emplace(p.graph_key, ge).first;
  }
  if (e.profile_graph && ++e.graph_replays == 8) profile_graph_breakdown(e, p);
  TSLLM_CUDA(cudaGraphLaunch(it->second, e.stream), "cudaGraphLaunch");
  const std::vector<Engine::Counts>& share = e.graph_stats[p.graph_key];
  for (size_t i = 0; i < share.size(); i++)
    for (size_t k = 0; k < share[i].size(); k++) e.stats[i][k] += share[i][k];
}

}  // namespace

void run_step(Engine& e, const SeqReq* reqs, int num_seqs, tsllm_step_output* out) {
  for (int i = 0; i < num_seqs; i++)
    if (reqs[i].id & kGenerateIdBit)
      throw StepError("sequence ids with the top bit set are reserved for tsllm_generate");
  StepPlan p;
  plan_and_upload(e, reqs, num_seqs, p, nullptr);
  bool want_tokens = out && out->tokens;
  bool want_logits = out && out->logits;
  size_t vocab = size_t(e.desc.vocab_size);
  if (want_logits && out->logits_capacity < size_t(p.real_L) * vocab)
    throw StepError("logits buffer holds " + std::to_string(out->logits_capacity) + " floats, the step has " +
                    std::to_string(p.real_L) + " rows of " + std::to_string(vocab));
  execute(e, p, want_tokens);
  remember_samples(e, p, reqs, num_seqs, want_tokens || p.graph);
  if (want_tokens)
    TSLLM_CUDA(cudaMemcpyAsync(e.host_tokens, p.buf->out_tokens, sizeof(int32_t) * size_t(p.L), cudaMemcpyDeviceToHost,
                               e.stream),
               "copying sampled tokens");
  if (want_logits)
    TSLLM_CUDA(cudaMemcpyAsync(out->logits, logits_for_host(e, p), sizeof(float) * size_t(p.real_L) * vocab,
                               cudaMemcpyDeviceToHost, e.stream),
               "copying logits");
  TSLLM_CUDA(cudaStreamSynchronize(e.stream), "step");
  if (out) {
    out->num_logit_rows = p.real_L;
    out->vocab_size = int32_t(vocab);
    if (want_tokens)
      for (int s = 0; s < num_seqs; s++) out->tokens[s] = e.host_tokens[p.last_row[size_t(s)]];
  }
}

int64_t launch_step(Engine& e, const SeqReq* reqs, int num_seqs) {
  for (int i = 0; i < num_seqs; i++)
    if (reqs[i].id & kGenerateIdBit)
      throw StepError("sequence ids with the top bit set are reserved for tsllm_generate");
  const int64_t ticket = e.next_ticket + 1;
  PendingStep& rec = e.pending[ticket % TSLLM_MAX_PENDING];
  if (rec.state.load(std::memory_order_acquire) != 0)
    throw StepError("too many pending steps: at most " + std::to_string(TSLLM_MAX_PENDING) +
                    " may be launched and not yet waited for");
  TSLLM_CUDA(cudaEventRecord(rec.start, e.stream), "cudaEventRecord");
  StepPlan p;
  plan_and_upload(e, reqs, num_seqs, p, nullptr);
  execute(e, p, true);
  TSLLM_CUDA(cudaMemcpyAsync(rec.host_tokens, p.buf->out_tokens, sizeof(int32_t) * size_t(p.L), cudaMemcpyDeviceToHost,
                             e.stream),
             "copying sampled tokens");
  TSLLM_CUDA(cudaEventRecord(rec.end, e.stream), "cudaEventRecord");
  remember_samples(e, p, reqs, num_seqs, true);
  rec.prev_end = e.last_end;
  e.last_end = rec.end;
  rec.last_row = p.last_row;
  rec.S = num_seqs;
  rec.ticket = ticket;
  e.next_ticket = ticket;
  rec.state.store(1, std::memory_order_release);
  return ticket;
}

// May run on another thread than launches: reads only this step's record (and its events).
void wait_step(Engine& e, int64_t ticket, int32_t* tokens, int capacity, tsllm_step_times* times) {
  PendingStep& rec = e.pending[(ticket > 0 ? ticket : 0) % TSLLM_MAX_PENDING];
  if (ticket <= 0 || rec.state.load(std::memory_order_acquire) != 1 || rec.ticket != ticket)
    throw StepError("no pending step with ticket " + std::to_string(ticket));
  struct Free {
    PendingStep& r;
    ~Free() { r.state.store(0, std::memory_order_release); }
  } free_rec{rec};
  TSLLM_CUDA(cudaEventSynchronize(rec.end), "step");
  if (capacity < rec.S)
    throw StepError("token buffer holds " + std::to_string(capacity) + ", the step has " + std::to_string(rec.S) +
                    " sequences");
  for (int s = 0; s < rec.S; s++) tokens[s] = rec.host_tokens[rec.last_row[size_t(s)]];
  if (times) {
    float ms = 0;
    TSLLM_CUDA(cudaEventElapsedTime(&ms, rec.start, rec.end), "cudaEventElapsedTime");
    times->gpu_ms = ms;
    times->gap_ms = 0;
    if (rec.prev_end && cudaEventElapsedTime(&ms, rec.prev_end, rec.start) == cudaSuccess) times->gap_ms = std::max(0.f, ms);
  }
}

void generate(Engine& e, int n, const int32_t* tokens, const int32_t* lens, int max_new, const tsllm_sampling* sp,
              int32_t* out_tokens, tsllm_timings* t) {
  auto wall0 = std::chrono::steady_clock::now();
  e.feed_out = nullptr;  // generate's steps reuse the buffers: nothing is left to feed from
  e.feed_rows.clear();
  if (n < 1) throw StepError("generate needs at least one prompt");
  if (n > e.max_bs) throw StepError(std::to_string(n) + " prompts exceed max_batch_size " + std::to_string(e.max_bs));
  if (max_new < 1) throw StepError("max_new_tokens must be >= 1");
  std::vector<const int32_t*> prompt(static_cast<size_t>(n));
  int64_t need_blocks = 0;
  {
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
      if (lens[i] < 1) throw StepError("prompt " + std::to_string(i) + " is empty");
      if (int64_t(lens[i]) + max_new - 1 > e.max_seq_len)
        throw StepError("prompt " + std::to_string(i) + " of " + std::to_string(lens[i]) + " tokens + " +
                        std::to_string(max_new) + " new tokens exceed max_seq_len " + std::to_string(e.max_seq_len));
      prompt[size_t(i)] = tokens + off;
      off += lens[i];
      need_blocks += e.kv.blocks_for(int64_t(lens[i]) + max_new - 1);
    }
  }
  if (e.desc.kv.num_layers > 0 && need_blocks > e.kv.num_free())
    throw StepError("KV cache too small for this batch: it needs " + std::to_string(need_blocks) + " blocks, " +
                    std::to_string(e.kv.num_free()) + " are free");
  const tsllm_sampling greedy{0.f, 1, 1.f, 0, 0};
  std::vector<uint64_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = kGenerateIdBit | (e.gen_counter++);
  struct Release {
    Engine& e;
    std::vector<uint64_t>& ids;
    ~Release() {
      for (auto id : ids) e.kv.release(id);
    }
  } release{e, ids};

  size_t hist_n = size_t(n) * size_t(max_new);
  if (hist_n > e.gen_tokens_cap) {
    TSLLM_CUDA(cudaStreamSynchronize(e.stream), "generate");
    cudaFree(e.gen_tokens);
    e.gen_tokens = nullptr;
    TSLLM_CUDA(cudaMalloc(&e.gen_tokens, hist_n * sizeof(int32_t)), "cudaMalloc of the token history");
    e.gen_tokens_cap = hist_n;
  }
  int32_t* hist = e.gen_tokens;

  std::vector<cudaEvent_t> ev(size_t(max_new) + 1, nullptr);
  struct Events {
    std::vector<cudaEvent_t>& v;
    ~Events() {
      for (auto x : v)
        if (x) cudaEventDestroy(x);
    }
  } evguard{ev};
  for (auto& x : ev) TSLLM_CUDA(cudaEventCreate(&x), "cudaEventCreate");

  TSLLM_CUDA(cudaEventRecord(ev[0], e.stream), "cudaEventRecord");
  // ---- prefill, chunked to max_num_tokens per step ----
  std::vector<int> done(static_cast<size_t>(n), 0);
  int finished = 0;
  std::vector<SeqReq> reqs;
  std::vector<int> who;
  while (finished < n) {
    reqs.clear();
    who.clear();
    int budget = e.max_num_tokens;
    for (int i = 0; i < n && budget > 0 && int(reqs.size()) < e.max_bs; i++) {
      int left = lens[i] - done[size_t(i)];
      if (left <= 0) continue;
      int take = std::min(left, budget);
      reqs.push_back(SeqReq{ids[size_t(i)], prompt[size_t(i)] + done[size_t(i)], take, done[size_t(i)], false,
                            sp ? sp[i] : greedy});
      who.push_back(i);
      budget -= take;
    }
    StepPlan p;
    plan_and_upload(e, reqs.data(), int(reqs.size()), p, nullptr);
    execute(e, p, true);
    for (size_t k = 0; k < reqs.size(); k++) {
      int i = who[k];
      done[size_t(i)] += reqs[k].n;
      if (done[size_t(i)] == lens[i]) {
        TSLLM_CUDA(cudaMemcpyAsync(hist + i, p.buf->out_tokens + p.last_row[k], sizeof(int32_t),
                                   cudaMemcpyDeviceToDevice, e.stream),
                   "copying the first token");
        finished++;
      }
    }
  }
  TSLLM_CUDA(cudaEventRecord(ev[1], e.stream), "cudaEventRecord");

  // ---- decode: no host synchronisation; sampled tokens feed the next step on the device ----
  reqs.resize(size_t(n));
  for (int j = 1; j < max_new; j++) {
    for (int i = 0; i < n; i++)
      reqs[size_t(i)] = SeqReq{ids[size_t(i)], nullptr, 1, lens[i] + j - 1, false, sp ? sp[i] : greedy};
    StepPlan p;
    plan_and_upload(e, reqs.data(), n, p, hist + size_t(j - 1) * size_t(n));
    execute(e, p, true);
    TSLLM_CUDA(cudaMemcpyAsync(hist + size_t(j) * size_t(n), p.buf->out_tokens, sizeof(int32_t) * size_t(n),
                               cudaMemcpyDeviceToDevice, e.stream),
               "recording sampled tokens");
    TSLLM_CUDA(cudaEventRecord(ev[size_t(j) + 1], e.stream), "cudaEventRecord");
  }
  std::vector<int32_t> h(hist_n);
  TSLLM_CUDA(cudaMemcpyAsync(h.data(), hist, hist_n * sizeof(int32_t), cudaMemcpyDeviceToHost, e.stream),
             "copying generated tokens");
  TSLLM_CUDA(cudaStreamSynchronize(e.stream), "generate");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < max_new; j++) out_tokens[size_t(i) * size_t(max_new) + size_t(j)] = h[size_t(j) * size_t(n) + size_t(i)];
  if (t) {
    float ms = 0;
    cudaEventElapsedTime(&ms, ev[0], ev[1]);
    t->ttft_ms = ms;
    cudaEventElapsedTime(&ms, ev[1], ev[size_t(max_new)]);
    t->decode_ms = ms;
    cudaEventElapsedTime(&ms, ev[0], ev[size_t(max_new)]);
    t->total_ms = ms;
    if (t->step_ms)
      for (int j = 1; j < max_new; j++) {
        cudaEventElapsedTime(&ms, ev[size_t(j)], ev[size_t(j) + 1]);
        t->step_ms[j - 1] = ms;
      }
    t->wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - wall0).count();
  }
}

}  // namespace tsllm
