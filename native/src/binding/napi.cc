// Node-API addon over the C ABI (include/tsllm.h). Plain node_api.h, no node-addon-api.
// Exports: abiVersion(), deviceCount(), load(path, opts) -> handle, loadHashed(path, opts, chunkBytes, numChunks), loadStats(handle), step(handle, seqs, want), release(handle, id),
// generate(handle, tokens, lens, maxNew, sampling?), info(handle), nodeStats(handle), unload(handle).
// Calls are synchronous (one call per step / per whole generation) except the pipelined pair: stepLaunch
// enqueues a step on the main thread without waiting for the GPU, stepWait returns a Promise and waits on a
// libuv worker thread, so a server's event loop keeps running and later steps are launched meanwhile.
// Errors throw JS Errors.
#include <node_api.h>
#include <tsllm.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Handle {
  tsllm_engine* e = nullptr;
  std::atomic<int> waits{0};  // stepWait calls in flight (launches and releases may go on meanwhile)
};

struct JsError {
  std::string msg;
};

void check(napi_env env, napi_status st, const char* what) {
  if (st != napi_ok) throw JsError{std::string("tsllm_node: ") + what + " failed"};
}

napi_value undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

template <typename F>
napi_value wrap(napi_env env, F&& f) {
  try {
    return f();
  } catch (const JsError& e) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw_error(env, nullptr, e.msg.c_str());
  } catch (const std::exception& e) {
    napi_throw_error(env, nullptr, (std::string("tsllm_node: ") + e.what()).c_str());
  }
  return nullptr;
}

std::vector<napi_value> args(napi_env env, napi_callback_info info, size_t n) {
  std::vector<napi_value> a(n);
  size_t argc = n;
  check(env, napi_get_cb_info(env, info, &argc, a.data(), nullptr, nullptr), "get_cb_info");
  for (size_t i = argc; i < n; i++) a[i] = undefined(env);
  return a;
}

napi_valuetype type_of(napi_env env, napi_value v) {
  napi_valuetype t;
  check(env, napi_typeof(env, v, &t), "typeof");
  return t;
}

bool present(napi_env env, napi_value v) {
  napi_valuetype t = type_of(env, v);
  return t != napi_undefined && t != napi_null;
}

napi_value prop(napi_env env, napi_value obj, const char* name) {
  if (!present(env, obj)) return undefined(env);
  napi_value v;
  check(env, napi_get_named_property(env, obj, name, &v), name);
  return v;
}

double num(napi_env env, napi_value v, const char* what) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) throw JsError{std::string(what) + " must be a number"};
  return d;
}

double num_or(napi_env env, napi_value obj, const char* name, double dflt) {
  napi_value v = prop(env, obj, name);
  return present(env, v) ? num(env, v, name) : dflt;
}

// obj[name] as a boolean, dflt when absent.
bool bool_or(napi_env env, napi_value obj, const char* name, bool dflt) {
  napi_value v = prop(env, obj, name);
  if (!present(env, v)) return dflt;
  bool b = dflt;
  if (napi_get_value_bool(env, v, &b) != napi_ok) throw JsError{std::string(name) + " must be a boolean"};
  return b;
}

uint64_t u64(napi_env env, napi_value v, const char* what) {
  napi_valuetype t = type_of(env, v);
  if (t == napi_bigint) {
    uint64_t x;
    bool lossless;
    check(env, napi_get_value_bigint_uint64(env, v, &x, &lossless), what);
    if (!lossless) throw JsError{std::string(what) + " does not fit in u64"};
    return x;
  }
  double d = num(env, v, what);
  if (d < 0 || d != double(uint64_t(d))) throw JsError{std::string(what) + " must be a non-negative integer"};
  return uint64_t(d);
}

uint64_t u64_or(napi_env env, napi_value obj, const char* name, uint64_t dflt) {
  napi_value v = prop(env, obj, name);
  return present(env, v) ? u64(env, v, name) : dflt;
}

std::string str(napi_env env, napi_value v, const char* what) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, nullptr, 0, &len) != napi_ok) throw JsError{std::string(what) + " must be a string"};
  std::string s(len, '\0');
  napi_get_value_string_utf8(env, v, &s[0], len + 1, &len);
  return s;
}

// obj[name], one of the strings of `names` (listed in the error), as the value at the same index of `values`;
// *field unchanged when absent.
template <size_t N>
void choice(napi_env env, napi_value obj, const char* name, const char* const (&names)[N], const int32_t (&values)[N],
            int32_t* field) {
  napi_value v = prop(env, obj, name);
  if (!present(env, v)) return;
  const std::string m = str(env, v, name);
  std::string list;
  for (size_t i = 0; i < N; i++) {
    if (m == names[i]) {
      *field = values[i];
      return;
    }
    list += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + "\"" + names[i] + "\"";
  }
  throw JsError{std::string(name) + " must be " + list + ", got \"" + m + "\""};
}

// Int32Array contents (copied).
std::vector<int32_t> i32array(napi_env env, napi_value v, const char* what) {
  bool is_ta = false;
  napi_is_typedarray(env, v, &is_ta);
  if (!is_ta) throw JsError{std::string(what) + " must be an Int32Array"};
  napi_typedarray_type t;
  size_t len;
  void* data;
  check(env, napi_get_typedarray_info(env, v, &t, &len, &data, nullptr, nullptr), what);
  if (t != napi_int32_array) throw JsError{std::string(what) + " must be an Int32Array"};
  std::vector<int32_t> out(len);
  if (len) std::memcpy(out.data(), data, len * 4);
  return out;
}

template <napi_typedarray_type T, typename E>
napi_value new_typed(napi_env env, size_t n, E** data) {
  napi_value ab, ta;
  void* raw;
  check(env, napi_create_arraybuffer(env, n * sizeof(E), &raw, &ab), "create_arraybuffer");
  check(env, napi_create_typedarray(env, T, n, ab, 0, &ta), "create_typedarray");
  *data = static_cast<E*>(raw);
  return ta;
}

void set(napi_env env, napi_value obj, const char* name, napi_value v) {
  check(env, napi_set_named_property(env, obj, name, v), name);
}
void set_num(napi_env env, napi_value obj, const char* name, double d) {
  napi_value v;
  check(env, napi_create_double(env, d, &v), name);
  set(env, obj, name, v);
}
void set_str(napi_env env, napi_value obj, const char* name, const char* s) {
  napi_value v;
  check(env, napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v), name);
  set(env, obj, name, v);
}

napi_value new_object(napi_env env) {
  napi_value o;
  check(env, napi_create_object(env, &o), "create_object");
  return o;
}

void finalize(napi_env, void* data, void*) {
  Handle* h = static_cast<Handle*>(data);
  if (h->e) tsllm_unload(h->e);
  delete h;
}

Handle* handle(napi_env env, napi_value v) {
  void* data = nullptr;
  if (type_of(env, v) != napi_external || napi_get_value_external(env, v, &data) != napi_ok)
    throw JsError{"tsllm_node: expected an engine handle"};
  Handle* h = static_cast<Handle*>(data);
  if (!h->e) throw JsError{"tsllm_node: engine already unloaded"};
  return h;
}

// An engine's tsllm_get_info / tsllm_get_load_stats; the C ABI's message as a JsError on failure.
template <typename S>
S engine_get(tsllm_engine* e, int (*get)(tsllm_engine*, S*, char*, size_t)) {
  S s;
  char err[1024] = {0};
  if (get(e, &s, err, sizeof(err))) throw JsError{err};
  return s;
}

tsllm_sampling sampling_of(napi_env env, napi_value o) {
  tsllm_sampling s{};
  s.temperature = float(num_or(env, o, "temperature", 0.0));
  s.top_k = int32_t(num_or(env, o, "topK", 0));
  s.top_p = float(num_or(env, o, "topP", 1.0));
  s.seed = u64_or(env, o, "seed", 0);
  return s;
}

// The sequences of a step, copied out of JS values (so a worker thread may use them).
struct StepInput {
  std::vector<std::vector<int32_t>> toks;
  std::vector<tsllm_seq_input> in;
  size_t rows = 0;
};

StepInput step_input(napi_env env, napi_value seqs) {
  bool is_arr = false;
  napi_is_array(env, seqs, &is_arr);
  if (!is_arr) throw JsError{"step: seqs must be an array"};
  uint32_t n = 0;
  napi_get_array_length(env, seqs, &n);
  StepInput si;
  si.toks.resize(n);
  si.in.resize(n);
  for (uint32_t i = 0; i < n; i++) {
    napi_value s;
    check(env, napi_get_element(env, seqs, i, &s), "seqs[i]");
    napi_value tv = prop(env, s, "tokens");
    const bool feed = !present(env, tv);  // null: the token the previous launched step sampled for it
    if (!feed) si.toks[i] = i32array(env, tv, "seqs[i].tokens");
    tsllm_seq_input& q = si.in[i];
    std::memset(&q, 0, sizeof(q));
    q.id = u64(env, prop(env, s, "id"), "seqs[i].id");
    q.tokens = feed ? nullptr : si.toks[i].data();
    q.num_tokens = feed ? 1 : int32_t(si.toks[i].size());
    q.start_pos = int32_t(num_or(env, s, "startPos", 0));
    const bool all = bool_or(env, s, "allLogits", false);
    q.all_logits = all ? 1 : 0;
    q.sampling = sampling_of(env, s);
    si.rows += all ? size_t(q.num_tokens) : 1;
  }
  return si;
}

tsllm_options options_of(napi_env env, napi_value opt) {
  tsllm_options o{};
  o.device = int32_t(num_or(env, opt, "device", 0));
  o.max_batch_size = int32_t(num_or(env, opt, "maxBatchSize", 0));
  o.max_seq_len = int32_t(num_or(env, opt, "maxSeqLen", 0));
  o.max_num_tokens = int32_t(num_or(env, opt, "maxNumTokens", 0));
  o.tokens_per_block = int32_t(num_or(env, opt, "tokensPerBlock", 0));
  o.kv_cache_free_gpu_mem_fraction = float(num_or(env, opt, "kvCacheFreeGpuMemFraction", 0));
  o.kv_cache_max_blocks = int64_t(num_or(env, opt, "kvCacheMaxBlocks", 0));
  o.max_logits_rows = int32_t(num_or(env, opt, "maxLogitsRows", 0));
  auto flag = [&](const char* name, int32_t on, int32_t off, int32_t* field) {
    if (present(env, prop(env, opt, name))) *field = bool_or(env, opt, name, true) ? on : off;
  };
  flag("cudaGraphs", 0, 1, &o.disable_cuda_graphs);
  flag("gemmTune", 0, -1, &o.gemm_tune);
  flag("gemvPrologue", 0, -1, &o.gemv_prologue);
  flag("pdl", 0, -1, &o.pdl);
  flag("strictKernels", 1, 0, &o.strict_kernels);
  choice(env, opt, "fp8ContextFmha", {"auto", "on", "off"}, {0, 1, -1}, &o.fp8_context_fmha);
  choice(env, opt, "gemv", {"auto", "always", "never"}, {0, 1, -1}, &o.gemv);
  napi_value var = prop(env, opt, "gemvVariant");
  if (present(env, var)) o.gemv_variant = int32_t(num(env, var, "gemvVariant")) + 1;
  o.decode_variant = int32_t(num_or(env, opt, "decodeVariant", 0));
  o.decode_mma_min_gqa = int32_t(num_or(env, opt, "decodeMmaMinGqa", 0));
  choice(env, opt, "profile", {"off", "nodes", "graph"}, {0, 1, 2}, &o.profile);
  return o;
}

napi_value handle_of(napi_env env, tsllm_engine* e) {
  Handle* h = new Handle{e};
  napi_value ext;
  check(env, napi_create_external(env, h, finalize, nullptr, &ext), "create_external");
  return ext;
}

napi_value Load(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 2);
    std::string path = str(env, a[0], "path");
    tsllm_options o = options_of(env, a[1]);
    char err[2048] = {0};
    tsllm_engine* e = tsllm_load(path.c_str(), &o, err, sizeof(err));
    if (!e) throw JsError{err};
    return handle_of(env, e);
  });
}

// loadHashed(path, opts, chunkBytes, numChunks) -> {handle, digests: Buffer (32 bytes per chunk)}
napi_value LoadHashed(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 4);
    std::string path = str(env, a[0], "path");
    tsllm_options o = options_of(env, a[1]);
    uint64_t chunk = u64(env, a[2], "chunkBytes"), n = u64(env, a[3], "numChunks");
    napi_value buf;
    void* data = nullptr;
    check(env, napi_create_buffer(env, size_t(n) * 32, &data, &buf), "create_buffer");
    char err[2048] = {0};
    tsllm_engine* e = tsllm_load_hashed(path.c_str(), &o, chunk, static_cast<uint8_t*>(data), n, err, sizeof(err));
    if (!e) throw JsError{err};
    napi_value res = new_object(env);
    set(env, res, "handle", handle_of(env, e));
    set(env, res, "digests", buf);
    return res;
  });
}

napi_value Unload(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 1);
    void* data = nullptr;
    if (type_of(env, a[0]) == napi_external && napi_get_value_external(env, a[0], &data) == napi_ok) {
      Handle* h = static_cast<Handle*>(data);
      if (h->waits.load())
        throw JsError{"tsllm_node: unload while a step is in flight (await it first)"};
      if (h->e) tsllm_unload(h->e);
      h->e = nullptr;
    }
    return undefined(env);
  });
}

// step(handle, seqs: [{id, tokens: Int32Array, startPos, allLogits?, temperature?, topK?, topP?, seed?}],
//      want: {logits?: boolean, tokens?: boolean}) -> {rows, vocab, logits?: Float32Array, tokens?: Int32Array}
napi_value Step(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 3);
    Handle* h = handle(env, a[0]);
    StepInput si = step_input(env, a[1]);
    uint32_t n = uint32_t(si.in.size());
    size_t rows = si.rows;
    std::vector<tsllm_seq_input>& in = si.in;
    const bool want_logits = bool_or(env, a[2], "logits", false), want_tokens = bool_or(env, a[2], "tokens", false);
    const tsllm_info inf = engine_get(h->e, tsllm_get_info);
    napi_value res = new_object(env);
    tsllm_step_output out{};
    if (want_logits) {
      float* p;
      napi_value ta = new_typed<napi_float32_array, float>(env, rows * size_t(inf.vocab_size), &p);
      out.logits = p;
      out.logits_capacity = rows * size_t(inf.vocab_size);
      set(env, res, "logits", ta);
    }
    if (want_tokens) {
      int32_t* p;
      napi_value ta = new_typed<napi_int32_array, int32_t>(env, n, &p);
      out.tokens = p;
      set(env, res, "tokens", ta);
    }
    char err[2048] = {0};
    if (tsllm_step(h->e, in.data(), int32_t(n), &out, err, sizeof(err))) throw JsError{err};
    set_num(env, res, "rows", out.num_logit_rows);
    set_num(env, res, "vocab", out.vocab_size);
    return res;
  });
}

// stepLaunch(handle, seqs) -> ticket: enqueues a step (tsllm_step_launch) and returns without waiting for the GPU.
// A sequence with tokens null takes the token sampled for it by the previously launched step.
napi_value StepLaunch(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 2);
    Handle* h = handle(env, a[0]);
    StepInput si = step_input(env, a[1]);
    int64_t ticket = 0;
    char err[2048] = {0};
    if (tsllm_step_launch(h->e, si.in.data(), int32_t(si.in.size()), &ticket, err, sizeof(err))) throw JsError{err};
    napi_value v;
    check(env, napi_create_double(env, double(ticket), &v), "create_double");
    return v;
  });
}

// stepWait(handle, ticket, numSeqs) -> Promise<{tokens: Int32Array, gpuMs, gapMs}>: waits on a worker thread.
struct WaitWork {
  napi_async_work work = nullptr;
  napi_deferred deferred = nullptr;
  napi_ref handle_ref = nullptr;
  Handle* h = nullptr;
  int64_t ticket = 0;
  std::vector<int32_t> tokens;
  tsllm_step_times times{};
  int rc = 0;
  char err[2048] = {0};
};

void wait_execute(napi_env, void* data) {
  auto* w = static_cast<WaitWork*>(data);
  w->rc = tsllm_step_wait(w->h->e, w->ticket, w->tokens.data(), int32_t(w->tokens.size()), &w->times, w->err,
                          sizeof(w->err));
}

void wait_complete(napi_env env, napi_status status, void* data) {
  auto* w = static_cast<WaitWork*>(data);
  w->h->waits.fetch_sub(1);
  if (status == napi_ok && w->rc == 0) {
    napi_value result, ab, ta, v;
    void* raw;
    napi_create_object(env, &result);
    napi_create_arraybuffer(env, w->tokens.size() * 4, &raw, &ab);
    if (!w->tokens.empty()) std::memcpy(raw, w->tokens.data(), w->tokens.size() * 4);
    napi_create_typedarray(env, napi_int32_array, w->tokens.size(), ab, 0, &ta);
    napi_set_named_property(env, result, "tokens", ta);
    napi_create_double(env, w->times.gpu_ms, &v);
    napi_set_named_property(env, result, "gpuMs", v);
    napi_create_double(env, w->times.gap_ms, &v);
    napi_set_named_property(env, result, "gapMs", v);
    napi_resolve_deferred(env, w->deferred, result);
  } else {
    napi_value msg, e;
    std::string m = status != napi_ok ? std::string("tsllm_node: step wait cancelled") : std::string(w->err);
    napi_create_string_utf8(env, m.c_str(), NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, nullptr, msg, &e);
    napi_reject_deferred(env, w->deferred, e);
  }
  napi_delete_reference(env, w->handle_ref);
  napi_delete_async_work(env, w->work);
  delete w;
}

napi_value StepWait(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 3);
    Handle* h = handle(env, a[0]);
    auto* w = new WaitWork();
    w->h = h;
    w->ticket = int64_t(num(env, a[1], "ticket"));
    double n = num(env, a[2], "numSeqs");
    if (n < 1 || n > (1 << 24)) {
      delete w;
      throw JsError{"stepWait: numSeqs out of range"};
    }
    w->tokens.assign(size_t(n), -1);
    napi_value promise, name;
    check(env, napi_create_promise(env, &w->deferred, &promise), "create_promise");
    check(env, napi_create_reference(env, a[0], 1, &w->handle_ref), "create_reference");
    napi_create_string_utf8(env, "tsllm_step_wait", NAPI_AUTO_LENGTH, &name);
    check(env, napi_create_async_work(env, nullptr, name, wait_execute, wait_complete, w, &w->work), "create_async_work");
    h->waits.fetch_add(1);
    check(env, napi_queue_async_work(env, w->work), "queue_async_work");
    return promise;
  });
}

napi_value Release(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 2);
    Handle* h = handle(env, a[0]);
    char err[1024] = {0};
    if (tsllm_release(h->e, u64(env, a[1], "id"), err, sizeof(err))) throw JsError{err};
    return undefined(env);
  });
}

// generate(handle, tokens: Int32Array (prompts concatenated), lens: Int32Array, maxNew, sampling?: [{...}] | {...})
//   -> {tokens: Int32Array [n*maxNew], ttftMs, decodeMs, totalMs, wallMs, stepMs: Float64Array}
napi_value Generate(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 5);
    Handle* h = handle(env, a[0]);
    std::vector<int32_t> toks = i32array(env, a[1], "tokens");
    std::vector<int32_t> lens = i32array(env, a[2], "lens");
    int32_t max_new = int32_t(num(env, a[3], "maxNew"));
    size_t n = lens.size();
    size_t total = 0;
    for (auto l : lens) total += size_t(l > 0 ? l : 0);
    if (total != toks.size()) throw JsError{"generate: lens do not add up to tokens.length"};
    std::vector<tsllm_sampling> sp;
    if (present(env, a[4])) {
      bool is_arr = false;
      napi_is_array(env, a[4], &is_arr);
      sp.resize(n);
      for (uint32_t i = 0; i < n; i++) {
        napi_value s = a[4];
        if (is_arr) check(env, napi_get_element(env, a[4], i, &s), "sampling[i]");
        sp[i] = sampling_of(env, s);
      }
    }
    napi_value res = new_object(env);
    int32_t* out;
    napi_value tokens_ta = new_typed<napi_int32_array, int32_t>(env, n * size_t(max_new > 0 ? max_new : 0), &out);
    double* steps;
    napi_value steps_ta = new_typed<napi_float64_array, double>(env, size_t(max_new > 1 ? max_new - 1 : 0), &steps);
    tsllm_timings t{};
    t.step_ms = steps;
    char err[2048] = {0};
    if (tsllm_generate(h->e, int32_t(n), toks.data(), lens.data(), max_new, sp.empty() ? nullptr : sp.data(), out, &t,
                       err, sizeof(err)))
      throw JsError{err};
    set(env, res, "tokens", tokens_ta);
    set(env, res, "stepMs", steps_ta);
    set_num(env, res, "ttftMs", t.ttft_ms);
    set_num(env, res, "decodeMs", t.decode_ms);
    set_num(env, res, "totalMs", t.total_ms);
    set_num(env, res, "wallMs", t.wall_ms);
    return res;
  });
}

napi_value Info(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    const tsllm_info i = engine_get(handle(env, args(env, info, 1)[0])->e, tsllm_get_info);
    napi_value o = new_object(env);
    set_str(env, o, "gpuName", i.gpu_name);
    set_num(env, o, "gpuSm", i.gpu_sm);
    set_num(env, o, "engineSm", i.engine_sm);
    set_num(env, o, "tp", i.tp);
    set_num(env, o, "rank", i.rank);
    set_num(env, o, "vocabSize", i.vocab_size);
    set_num(env, o, "maxBatchSize", i.max_batch_size);
    set_num(env, o, "maxSeqLen", i.max_seq_len);
    set_num(env, o, "maxNumTokens", i.max_num_tokens);
    set_num(env, o, "tokensPerBlock", i.tokens_per_block);
    set_num(env, o, "numLayers", i.num_layers);
    set_num(env, o, "numNodes", i.num_nodes);
    set_num(env, o, "numCudaGraphs", i.num_cuda_graphs);
    set_num(env, o, "kvBlocksTotal", double(i.kv_blocks_total));
    set_num(env, o, "kvBlocksFree", double(i.kv_blocks_free));
    set_num(env, o, "numSequences", double(i.num_sequences));
    set_num(env, o, "weightBytes", double(i.weight_bytes));
    set_num(env, o, "arenaBytes", double(i.arena_bytes));
    set_num(env, o, "kvBytes", double(i.kv_bytes));
    set_num(env, o, "workspaceBytes", double(i.workspace_bytes));
    set_str(env, o, "dtype", i.dtype);
    set_str(env, o, "kvDtype", i.kv_dtype);
    napi_value b;
    napi_get_boolean(env, i.has_nccl != 0, &b);
    set(env, o, "hasNccl", b);
    return o;
  });
}

// loadStats(handle) -> {totalS, cudaInitS, headerS, weightsS, restS, passS, readThreadS, hashThreadS, waitThreadS,
//                        directBytes, cachedBytes, threads, direct} (tsllm_load_stats)
napi_value LoadStats(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    const tsllm_load_stats s = engine_get(handle(env, args(env, info, 1)[0])->e, tsllm_get_load_stats);
    napi_value o = new_object(env);
    set_num(env, o, "totalS", s.total_s);
    set_num(env, o, "cudaInitS", s.cuda_init_s);
    set_num(env, o, "headerS", s.header_s);
    set_num(env, o, "weightsS", s.weights_s);
    set_num(env, o, "restS", s.rest_s);
    set_num(env, o, "passS", s.pass_s);
    set_num(env, o, "readThreadS", s.read_thread_s);
    set_num(env, o, "hashThreadS", s.hash_thread_s);
    set_num(env, o, "waitThreadS", s.wait_thread_s);
    set_num(env, o, "directBytes", double(s.direct_bytes));
    set_num(env, o, "cachedBytes", double(s.cached_bytes));
    set_num(env, o, "threads", s.threads);
    set_num(env, o, "direct", s.direct);
    return o;
  });
}

// nodeStats(handle) -> [{op, name, foldedInto, own, folded, cublaslt, gemv, gemvRms, gemvGated, fp8Fmha, fp8Act}]
// per node.
napi_value NodeStats(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 1);
    Handle* h = handle(env, a[0]);
    char err[1024] = {0};
    int32_t n = 0;
    if (tsllm_get_node_stats(h->e, nullptr, 0, &n, err, sizeof(err))) throw JsError{err};
    std::vector<tsllm_node_stats> st(size_t(n > 0 ? n : 0));
    if (tsllm_get_node_stats(h->e, st.data(), n, &n, err, sizeof(err))) throw JsError{err};
    napi_value arr;
    check(env, napi_create_array_with_length(env, st.size(), &arr), "create_array");
    static const char* kKinds[TSLLM_KERNEL_KINDS] = {"own",     "folded",    "cublaslt", "gemv",
                                                     "gemvRms", "gemvGated", "fp8Fmha",  "fp8Act"};
    for (size_t i = 0; i < st.size(); i++) {
      napi_value o = new_object(env);
      set_str(env, o, "op", st[i].op);
      set_str(env, o, "name", st[i].name);
      set_num(env, o, "foldedInto", st[i].folded_into);
      for (int k = 0; k < TSLLM_KERNEL_KINDS; k++) set_num(env, o, kKinds[k], double(st[i].launches[k]));
      check(env, napi_set_element(env, arr, uint32_t(i), o), "set_element");
    }
    return arr;
  });
}

// copyBandwidth(bytes): device-to-device copy bandwidth of device 0 in bytes/s (read + written).
napi_value CopyBandwidth(napi_env env, napi_callback_info info) {
  return wrap(env, [&] {
    auto a = args(env, info, 1);
    char err[512] = {0};
    double bps = 0;
    if (tsllm_copy_bandwidth(0, u64(env, a[0], "bytes"), 20, &bps, err, sizeof(err))) throw JsError{err};
    napi_value v;
    napi_create_double(env, bps, &v);
    return v;
  });
}

napi_value AbiVersion(napi_env env, napi_callback_info) {
  napi_value v;
  napi_create_int32(env, tsllm_abi_version(), &v);
  return v;
}

// deviceCount(): the CUDA devices this process sees (tsllm_device_count: 0 without a driver or device).
napi_value DeviceCount(napi_env env, napi_callback_info) {
  napi_value v;
  napi_create_int32(env, tsllm_device_count(), &v);
  return v;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"abiVersion", nullptr, AbiVersion, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"deviceCount", nullptr, DeviceCount, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"load", nullptr, Load, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"loadHashed", nullptr, LoadHashed, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"loadStats", nullptr, LoadStats, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"unload", nullptr, Unload, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"step", nullptr, Step, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"stepLaunch", nullptr, StepLaunch, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"stepWait", nullptr, StepWait, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"release", nullptr, Release, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"generate", nullptr, Generate, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"info", nullptr, Info, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"nodeStats", nullptr, NodeStats, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"copyBandwidth", nullptr, CopyBandwidth, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
