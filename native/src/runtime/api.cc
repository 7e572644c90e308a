// The C ABI (include/tsllm.h): argument checks, exception-to-message translation. Nothing escapes.
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "engine.h"
#include "upload.h"

#ifdef TSLLM_WITH_NCCL
#include <nccl.h>
#endif

struct tsllm_engine {
  std::unique_ptr<tsllm::Engine> e;
};

namespace {

void set_err(char* err, size_t errlen, const std::string& msg) {
  if (!err || errlen == 0) return;
  std::string one = msg;
  for (auto& c : one)
    if (c == '\n' || c == '\r') c = ' ';
  size_t n = std::min(errlen - 1, one.size());
  std::memcpy(err, one.data(), n);
  err[n] = '\0';
}

template <typename F>
int guarded(char* err, size_t errlen, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::bad_alloc&) {
    set_err(err, errlen, "out of host memory");
  } catch (const std::exception& ex) {
    set_err(err, errlen, ex.what());
  } catch (...) {
    set_err(err, errlen, "unknown error");
  }
  return -1;
}

// Makes the engine's device current (the caller may have switched devices in between).
void use_device(tsllm_engine* h) {
  int cur = -1;
  if (cudaGetDevice(&cur) != cudaSuccess || cur != h->e->device) {
    cudaError_t e = cudaSetDevice(h->e->device);
    if (e != cudaSuccess) throw tsllm::StepError(std::string("cudaSetDevice: ") + cudaGetErrorString(e));
  }
}

}  // namespace

extern "C" {

int32_t tsllm_abi_version(void) { return TSLLM_ABI_VERSION; }

int32_t tsllm_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // (the error is not sticky; clear it for the next call)
    return 0;
  }
  return n;
}

tsllm_engine* tsllm_load(const char* rank_file, const tsllm_options* options, char* err, size_t errlen) {
  tsllm_engine* out = nullptr;
  guarded(err, errlen, [&] {
    if (!rank_file) throw std::runtime_error("tsllm_load: rank_file is NULL");
    tsllm_options o{};
    if (options) o = *options;
    auto e = tsllm::load_engine(rank_file, o);
    out = new tsllm_engine{std::move(e)};
  });
  return out;
}

tsllm_engine* tsllm_load_hashed(const char* rank_file, const tsllm_options* options, uint64_t chunk_bytes,
                                uint8_t* chunk_digests, uint64_t num_chunks, char* err, size_t errlen) {
  tsllm_engine* out = nullptr;
  guarded(err, errlen, [&] {
    if (!rank_file) throw std::runtime_error("tsllm_load_hashed: rank_file is NULL");
    if (!chunk_digests || !chunk_bytes) throw std::runtime_error("tsllm_load_hashed: no room for chunk digests");
    tsllm_options o{};
    if (options) o = *options;
    tsllm::ContentHash h{chunk_bytes, chunk_digests, num_chunks};
    auto e = tsllm::load_engine(rank_file, o, &h);
    out = new tsllm_engine{std::move(e)};
  });
  return out;
}

int tsllm_step(tsllm_engine* h, const tsllm_seq_input* seqs, int32_t num_seqs, tsllm_step_output* out, char* err,
               size_t errlen) {
  return guarded(err, errlen, [&] {
    if (!h) throw std::runtime_error("tsllm_step: engine is NULL");
    if (!seqs || num_seqs < 1) throw std::runtime_error("tsllm_step: no sequences");
    use_device(h);
    std::vector<tsllm::SeqReq> reqs(static_cast<size_t>(num_seqs));
    for (int i = 0; i < num_seqs; i++) {
      const tsllm_seq_input& s = seqs[i];
      if (!s.tokens) throw std::runtime_error("tsllm_step: sequence " + std::to_string(s.id) + " has no tokens");
      reqs[size_t(i)] = tsllm::SeqReq{s.id, s.tokens, s.num_tokens, s.start_pos, s.all_logits != 0, s.sampling};
    }
    tsllm::run_step(*h->e, reqs.data(), num_seqs, out);
  });
}

int tsllm_step_launch(tsllm_engine* h, const tsllm_seq_input* seqs, int32_t num_seqs, int64_t* ticket, char* err,
                      size_t errlen) {
  return guarded(err, errlen, [&] {
    if (!h || !ticket) throw std::runtime_error("tsllm_step_launch: NULL argument");
    if (!seqs || num_seqs < 1) throw std::runtime_error("tsllm_step_launch: no sequences");
    use_device(h);
    std::vector<tsllm::SeqReq> reqs(static_cast<size_t>(num_seqs));
    for (int i = 0; i < num_seqs; i++) {
      const tsllm_seq_input& s = seqs[i];
      reqs[size_t(i)] = tsllm::SeqReq{s.id, s.tokens, s.num_tokens, s.start_pos, s.all_logits != 0, s.sampling};
    }
    *ticket = tsllm::launch_step(*h->e, reqs.data(), num_seqs);
  });
}

int tsllm_step_wait(tsllm_engine* h, int64_t ticket, int32_t* tokens, int32_t capacity, tsllm_step_times* times,
                    char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (!h || !tokens) throw std::runtime_error("tsllm_step_wait: NULL argument");
    use_device(h);
    tsllm::wait_step(*h->e, ticket, tokens, capacity, times);
  });
}

int tsllm_release(tsllm_engine* h, uint64_t seq_id, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (!h) throw std::runtime_error("tsllm_release: engine is NULL");
    h->e->kv.release(seq_id);
  });
}

int tsllm_generate(tsllm_engine* h, int32_t num_prompts, const int32_t* tokens, const int32_t* prompt_lens,
                   int32_t max_new_tokens, const tsllm_sampling* sampling, int32_t* out_tokens, tsllm_timings* timings,
                   char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (!h) throw std::runtime_error("tsllm_generate: engine is NULL");
    if (!tokens || !prompt_lens || !out_tokens) throw std::runtime_error("tsllm_generate: NULL argument");
    use_device(h);
    tsllm::generate(*h->e, num_prompts, tokens, prompt_lens, max_new_tokens, sampling, out_tokens, timings);
  });
}

int tsllm_get_load_stats(tsllm_engine* h, tsllm_load_stats* o, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (!h || !o) throw std::runtime_error("tsllm_get_load_stats: NULL argument");
    *o = h->e->load_stats;
  });
}

int tsllm_get_info(tsllm_engine* h, tsllm_info* o, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (!h || !o) throw std::runtime_error("tsllm_get_info: NULL argument");
    const tsllm::Engine& e = *h->e;
    std::memset(o, 0, sizeof(*o));
    std::snprintf(o->gpu_name, sizeof(o->gpu_name), "%s", e.gpu_name.c_str());
    o->gpu_sm = e.gpu_sm;
    o->engine_sm = e.desc.sm;
    o->tp = e.desc.tp;
    o->rank = e.desc.rank;
    o->vocab_size = e.desc.vocab_size;
    o->max_batch_size = e.max_bs;
    o->max_seq_len = e.max_seq_len;
    o->max_num_tokens = e.max_num_tokens;
    o->tokens_per_block = e.tpb;
    o->num_layers = e.desc.kv.num_layers;
    o->num_nodes = int32_t(e.desc.nodes.size());
    o->num_cuda_graphs = int32_t(e.graphs.size());
#ifdef TSLLM_WITH_NCCL
    o->has_nccl = 1;
#endif
    o->kv_blocks_total = e.kv.num_blocks();
    o->kv_blocks_free = e.kv.num_free();
    o->num_sequences = int64_t(e.kv.num_sequences());
    o->weight_bytes = e.desc.weight_device_bytes;
    o->arena_bytes = e.desc.arena_bytes;
    o->kv_bytes = e.kv_bytes;
    o->workspace_bytes = e.workspace_bytes;
    std::snprintf(o->dtype, sizeof(o->dtype), "%s", tsllm::elem_name(e.desc.dtype));
    std::snprintf(o->kv_dtype, sizeof(o->kv_dtype), "%s", tsllm::elem_name(e.desc.kv.dt));
  });
}

int tsllm_get_node_stats(tsllm_engine* h, tsllm_node_stats* out, int32_t capacity, int32_t* num_nodes, char* err,
                         size_t errlen) {
  return guarded(err, errlen, [&] {
    if (!h || !num_nodes || (capacity > 0 && !out)) throw std::runtime_error("tsllm_get_node_stats: NULL argument");
    const tsllm::Engine& e = *h->e;
    const auto& nodes = e.desc.nodes;
    *num_nodes = int32_t(nodes.size());
    for (size_t i = 0; i < nodes.size() && int64_t(i) < int64_t(capacity); i++) {
      const tsllm::NodeDesc& n = nodes[i];
      tsllm_node_stats& o = out[i];
      std::memset(&o, 0, sizeof(o));
      std::snprintf(o.op, sizeof(o.op), "%s", tsllm::op_name(n.op));
      const int named =
          n.op == tsllm::Op::Linear || n.op == tsllm::Op::QuantLinear ? n.in[1] : (n.out.empty() ? -1 : n.out[0]);
      if (named >= 0) std::snprintf(o.name, sizeof(o.name), "%s", e.val(named).name.c_str());
      o.folded_into = e.pro_consumer.empty() ? -1 : e.pro_consumer[i];
      if (!e.moe_prev.empty() && e.moe_prev[i] >= 0) o.folded_into = e.moe_prev[i];
      if (!e.glu_prev.empty() && e.glu_prev[i] >= 0) o.folded_into = e.glu_prev[i];
      if (!e.nt_prev.empty() && e.nt_prev[i] >= 0) o.folded_into = e.nt_prev[i];
      for (int k = 0; k < TSLLM_KERNEL_KINDS; k++) o.launches[k] = e.stats[i][size_t(k)];
    }
  });
}

void tsllm_unload(tsllm_engine* h) {
  if (!h) return;
  if (h->e) cudaSetDevice(h->e->device);
  delete h;
}

int tsllm_nccl_unique_id(void* out128, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    if (!out128) throw std::runtime_error("tsllm_nccl_unique_id: NULL argument");
#ifdef TSLLM_WITH_NCCL
    ncclUniqueId id;
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) throw std::runtime_error(std::string("ncclGetUniqueId: ") + ncclGetErrorString(r));
    std::memcpy(out128, &id, sizeof(id));
#else
    throw std::runtime_error("this libtsllm was built without NCCL");
#endif
  });
}

}  // extern "C"
