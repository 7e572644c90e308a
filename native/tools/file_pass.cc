// file_pass: runs the GPU loader's read-and-hash pass (src/runtime/file_pass.cc) on a file without a GPU:
// the same threads, O_DIRECT / page-cache reads and chunk SHA-256, into plain aligned buffers instead of
// pinned ones, with no copy to a device. Prints the engine digest (as config.json's ranks[].hash.sha256) and
// the pass's figures, so the loader's hashing is tested (test/native-loader.test.ts) and its read speed
// measured against cat on any machine.
//   c++ -std=c++17 -O2 -pthread -I native/src -o file_pass native/tools/file_pass.cc
//       native/src/runtime/file_pass.cc -ldl
//   file_pass <file> [chunk_bytes]        -> "sha256 <hex>" and "pass <figures>"
// TSLLM_LOAD_THREADS=N and TSLLM_LOAD_DIRECT=0|1 as for tsllm_load (native/src/runtime/options.cc);
// FILE_PASS_HASH=0 reads without hashing ("sha256 none"), what the pass costs a --no-verify load.
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/file_pass.h"

namespace {

struct HostSink : tsllm::FilePassSink {
  std::vector<char*> bufs = std::vector<char*>(2 * tsllm::kMaxPassThreads, nullptr);
  ~HostSink() override {
    for (char* b : bufs) std::free(b);
  }
  void start(int t, uint64_t bytes) override {
    for (int s = 0; s < 2; s++) {
      void* p = nullptr;
      if (posix_memalign(&p, 4096, size_t(bytes)) != 0) throw std::runtime_error("out of host memory");
      bufs[size_t(2 * t + s)] = static_cast<char*>(p);
    }
  }
  char* buffer(int t, int slot) override { return bufs[size_t(2 * t + slot)]; }
  void wait(int, int) override {}
  void consume(int, int, uint64_t, uint64_t) override {}
  void finish(int) override {}
  bool wants(uint64_t, uint64_t) const override { return true; }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: file_pass <file> [chunk_bytes]\n");
    return 2;
  }
  try {
    struct stat sb {};
    if (::stat(argv[1], &sb) != 0) throw std::runtime_error("cannot stat");
    const uint64_t size = uint64_t(sb.st_size);
    tsllm::FilePassOptions o;
    if (argc > 2) o.chunk_bytes = std::strtoull(argv[2], nullptr, 10);
    if (const char* v = std::getenv("TSLLM_LOAD_THREADS")) o.threads = std::atoi(v);
    if (const char* v = std::getenv("TSLLM_LOAD_DIRECT")) o.direct = std::atoi(v);
    const uint64_t n = o.chunk_bytes ? (size + o.chunk_bytes - 1) / o.chunk_bytes : 0;
    std::vector<uint8_t> digests(size_t(n) * 32);
    const char* hash = std::getenv("FILE_PASS_HASH");
    const bool hashed = !hash || std::string(hash) != "0";
    if (hashed) o.digests = digests.data();
    HostSink sink;
    const tsllm::FilePassStats st = tsllm::run_file_pass(argv[1], size, o, sink);
    std::printf("sha256 %s\npass %s\n", hashed ? tsllm::combine_chunk_digests(digests.data(), n).c_str() : "none",
                tsllm::describe(st).c_str());
  } catch (const std::exception& e) {
    std::printf("error %s: %s\n", argv[1], e.what());
    return 1;
  }
  return 0;
}
