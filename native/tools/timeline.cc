// libtsllm_timeline.so: a kernel timeline of any CUDA program, without nsys (which the GPU machine lacks) and
// without touching the program. The CUDA driver loads it at cuInit when CUDA_INJECTION64_PATH names it, and calls
// InitializeInjection, which turns on CUPTI's activity records for kernels (also those of graph replays, with
// their graph node ids), memcpy / memset, and the runtime API calls (cudaGraphLaunch, ...). Each buffer CUPTI
// fills is written out as JSON lines as it completes, so a run that is killed still leaves what was flushed.
//
//   CUDA_INJECTION64_PATH=$PWD/native/build/libtsllm_timeline.so TSLLM_TIMELINE=/tmp/tl.jsonl <program>
//   npx tsx scripts/timeline.ts /tmp/tl.jsonl            # per-step summary: where a step's time goes
//
// Why: the batch-1 step spends 0.4-0.6 ms (fp16) and ~1 ms (FP8) beyond its weight bytes, which per-node graph
// profiles attribute only by subtraction (kernels-notes "Known limitations": "no timeline tool on the device").
// Kernel start / end times inside the real step graph show each kernel's own time, the gap or the PDL overlap at
// each boundary, and the host's launch times. CUPTI adds some cost per kernel: compare a run with and without.
//
// One JSON object a line: kind (kernel | memcpy | memset | runtime), start / end (ns since the library started:
// CUPTI's clock counts from the epoch, past the 2^53 a JSON reader keeps exactly), corr (the
// correlation id: a graph launch's kernels share its cudaGraphLaunch's), and for kernels graph / node (graph id,
// graph node id; 0 outside graphs), stream, grid / block ([x, y, z]), regs, smem (bytes), name (demangled); for
// copies bytes; for runtime calls name (the API function).
#include <cupti.h>
#include <cxxabi.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

namespace {

constexpr size_t kBufferBytes = 8u << 20;
constexpr size_t kAlign = 8;

std::mutex g_mu;
uint64_t g_t0 = 0;  // CUPTI's clock at start-up: times are written from it, so they stay exact as JS numbers
FILE* g_out = nullptr;
size_t g_dropped = 0;

void fail(const char* what, CUptiResult r) {
  const char* s = nullptr;
  cuptiGetResultString(r, &s);
  std::fprintf(stderr, "tsllm_timeline: %s failed: %s\n", what, s ? s : "unknown CUPTI error");
}

#define CUPTI_OK(call)                  \
  do {                                  \
    const CUptiResult r_ = (call);      \
    if (r_ != CUPTI_SUCCESS) {          \
      fail(#call, r_);                  \
      return 1;                         \
    }                                   \
  } while (0)

std::string demangle(const char* name) {
  if (!name) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = (status == 0 && d) ? d : name;
  std::free(d);
  return s;
}

// A JSON string's body: quotes and backslashes escaped, control characters as \u00XX.
std::string json_escape(const std::string& s) {
  std::string q;
  q.reserve(s.size() + 8);
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      q += '\\';
      q += char(c);
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      q += b;
    } else {
      q += char(c);
    }
  }
  return q;
}

// A kernel's name as written: demangled and escaped once per mangled name (a step's few dozen kernels repeat in
// every launch, hundreds of thousands of records). Called under g_mu. The cache is never destroyed: a function-
// local static map is built at the first kernel record, after InitializeInjection registered at_exit, so its
// destructor ran first at exit and at_exit's final flush then wrote through a destroyed map (a segfault at the
// exit of an H200 bs-256 run, session 31, whose last buffer still held kernel records).
const std::string& kernel_name(const char* mangled) {
  static auto* names = new std::unordered_map<std::string, std::string>();
  const std::string key = mangled ? mangled : "";
  auto it = names->find(key);
  if (it == names->end()) it = names->emplace(key, json_escape(demangle(mangled))).first;
  return it->second;
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  void* p = nullptr;
  if (posix_memalign(&p, kAlign, kBufferBytes) != 0) p = nullptr;
  *buffer = static_cast<uint8_t*>(p);
  *size = p ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

long long rel(uint64_t t) { return (long long)(t - g_t0); }

void write_record(const CUpti_Activity* rec) {
  switch (rec->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
      // This header's layout: enable_activities refuses a CUPTI of another API version.
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
      std::fprintf(g_out,
                   "{\"kind\":\"kernel\",\"start\":%lld,\"end\":%lld,\"corr\":%u,\"graph\":%u,\"node\":%llu,"
                   "\"stream\":%u,\"grid\":[%d,%d,%d],\"block\":[%d,%d,%d],\"regs\":%u,\"smem\":%d,\"name\":\"%s\"}\n",
                   rel(k->start), rel(k->end), k->correlationId, k->graphId,
                   (unsigned long long)k->graphNodeId, k->streamId, k->gridX, k->gridY, k->gridZ, k->blockX,
                   k->blockY, k->blockZ, unsigned(k->registersPerThread),
                   k->staticSharedMemory + k->dynamicSharedMemory, kernel_name(k->name).c_str());
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
      std::fprintf(g_out,
                   "{\"kind\":\"memcpy\",\"start\":%lld,\"end\":%lld,\"corr\":%u,\"graph\":%u,\"node\":%llu,"
                   "\"stream\":%u,\"bytes\":%llu,\"copy_kind\":%u}\n",
                   rel(m->start), rel(m->end), m->correlationId, m->graphId, (unsigned long long)m->graphNodeId,
                   m->streamId, (unsigned long long)m->bytes, unsigned(m->copyKind));
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(rec);
      std::fprintf(g_out,
                   "{\"kind\":\"memset\",\"start\":%lld,\"end\":%lld,\"corr\":%u,\"graph\":%u,\"node\":%llu,"
                   "\"stream\":%u,\"bytes\":%llu}\n",
                   rel(m->start), rel(m->end), m->correlationId, m->graphId, (unsigned long long)m->graphNodeId,
                   m->streamId, (unsigned long long)m->bytes);
      break;
    }
    case CUPTI_ACTIVITY_KIND_RUNTIME: {
      const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(rec);
      const char* name = nullptr;
      if (cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name) != CUPTI_SUCCESS || !name) name = "?";
      std::fprintf(g_out, "{\"kind\":\"runtime\",\"start\":%lld,\"end\":%lld,\"corr\":%u,\"name\":\"%s\"}\n",
                   rel(a->start), rel(a->end), a->correlationId,
                   json_escape(name).c_str());
      break;
    }
    default:
      break;
  }
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    CUpti_Activity* rec = nullptr;
    while (g_out && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) write_record(rec);
    if (g_out) std::fflush(g_out);
  }
  std::free(buffer);
}

void at_exit() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::lock_guard<std::mutex> lock(g_mu);
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS) g_dropped += dropped;
  if (g_out) {
    std::fclose(g_out);
    g_out = nullptr;
  }
  if (g_dropped > 0) std::fprintf(stderr, "tsllm_timeline: %zu records dropped (buffers full)\n", g_dropped);
}

int enable_activities() {
  // The records are read through this header's structs: a CUPTI of another API version may lay them out otherwise,
  // so tracing is refused rather than read wrong.
  uint32_t version = 0;
  CUPTI_OK(cuptiGetVersion(&version));
  if (version != CUPTI_API_VERSION) {
    std::fprintf(stderr, "tsllm_timeline: CUPTI API version %u here, built against %u: rebuild the library here\n",
                 version, unsigned(CUPTI_API_VERSION));
    return 1;
  }
  CUPTI_OK(cuptiGetTimestamp(&g_t0));
  CUPTI_OK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
  CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
  CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
  CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET));
  CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME));
  return 0;
}

}  // namespace

// The driver's entry point for CUDA_INJECTION64_PATH libraries. Nonzero says it succeeded (NVIDIA's injection
// samples return 1); it returns 1 also when no timeline can be written, so that tracing never stops the program:
// the message on stderr says there is no timeline.
extern "C" __attribute__((visibility("default"))) int InitializeInjection(void) {
  const char* path = std::getenv("TSLLM_TIMELINE");
  if (!path || !*path) {
    std::fprintf(stderr, "tsllm_timeline: TSLLM_TIMELINE (the JSON-lines file to write) is not set: no timeline\n");
    return 1;
  }
  // Never replace a file the user did not name for this: an existing path is refused.
  g_out = std::fopen(path, "wx");
  if (!g_out) {
    std::fprintf(stderr, "tsllm_timeline: cannot create %s (%s): no timeline\n", path, std::strerror(errno));
    return 1;
  }
  if (enable_activities() != 0) {
    std::fclose(g_out);  // the file is this run's own (created above): no half-written timeline is left
    g_out = nullptr;
    std::remove(path);
    std::fprintf(stderr, "tsllm_timeline: no timeline\n");
    return 1;
  }
  std::atexit(at_exit);
  return 1;
}
