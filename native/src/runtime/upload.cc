// Weight upload at the speed of the file: one pass over the rank file by several reader threads. Each
// thread takes the next chunk, preads it into one of its two pinned buffers, hashes it (SHA-256, the
// chunk digests of src/engine/hash.ts) and queues cudaMemcpyAsync of the weight bytes it holds on its
// own stream, then reads its next chunk into the other buffer while the copy runs. Hashing needs no
// extra pass and no thread waits for another.
//
// SHA-256 comes from OpenSSL's libcrypto, found at run time: Node exports it (the addon runs inside
// node), otherwise libcrypto.so.3 is opened. Nothing links against it, so the runtime loads without it
// and only a hashed load fails, saying why.
#include "upload.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

namespace tsllm {

namespace {

using Sha256Fn = unsigned char* (*)(const unsigned char*, size_t, unsigned char*);

Sha256Fn find_sha256() {
  static Sha256Fn fn = [] {
    void* f = dlsym(RTLD_DEFAULT, "SHA256");
    for (const char* lib : {"libcrypto.so.3", "libcrypto.so"}) {
      if (f) break;
      if (void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL)) f = dlsym(h, "SHA256");
    }
    return reinterpret_cast<Sha256Fn>(f);
  }();
  return fn;
}

struct Piece {
  uint64_t file_begin, file_end;  // absolute file offsets of a stored weight
  uint64_t device_offset;
};

// One reader thread's resources. Freed (after its copies finish) by the destructor.
struct Reader {
  int device = 0;
  cudaStream_t stream = nullptr;
  void* buf[2] = {};
  cudaEvent_t done[2] = {};
  Reader() = default;
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;
  ~Reader() {
    for (int i = 0; i < 2; i++) {
      if (done[i]) cudaEventSynchronize(done[i]), cudaEventDestroy(done[i]);
      if (buf[i]) cudaFreeHost(buf[i]);
    }
    if (stream) cudaStreamSynchronize(stream), cudaStreamDestroy(stream);
  }
};

}  // namespace

void upload_stored_weights(const EngineDesc& d, char* device_weights, int device, const ContentHash* hash) {
  auto fail = [&](const std::string& m) { return LoadError(d.path + ": " + m); };
  std::vector<Piece> pieces;
  for (const WeightDesc& w : d.weights)
    if (!w.random && w.nbytes) pieces.push_back({d.data_offset + w.offset, d.data_offset + w.offset + w.nbytes, w.device_offset});
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.file_begin < b.file_begin; });

  const uint64_t chunk = hash ? hash->chunk_bytes : uint64_t(16) << 20;
  if (chunk == 0 || chunk > (uint64_t(1) << 30)) throw fail("hash chunk size must be in (0, 1 GiB]");
  const uint64_t size = d.file_size;
  const uint64_t nchunks = (size + chunk - 1) / chunk;
  Sha256Fn sha256 = nullptr;
  if (hash) {
    if (hash->num_chunks != nchunks)
      throw fail("expected " + std::to_string(nchunks) + " chunk digests for " + std::to_string(size) + " bytes, got room for " +
                 std::to_string(hash->num_chunks));
    sha256 = find_sha256();
    if (!sha256)
      throw fail("content hash check needs OpenSSL's SHA256 (libcrypto.so.3), not found in this process; load with --no-verify or install OpenSSL");
  } else if (pieces.empty()) {
    return;
  }

  int fd = ::open(d.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
  struct CloseFd {
    int fd;
    ~CloseFd() { ::close(fd); }
  } close_fd{fd};
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);

  // Readers: enough to keep the page cache / NVMe and the hashing busy; each holds 2 chunks pinned.
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  int nthreads = int(std::min<uint64_t>(std::min(hw, 8u), std::max<uint64_t>(nchunks, 1)));
  std::vector<Reader> readers(static_cast<size_t>(nthreads));
  for (Reader& r : readers) {
    r.device = device;
    auto ck = [&](cudaError_t e, const char* what) {
      if (e != cudaSuccess) throw fail(std::string(what) + ": " + cudaGetErrorString(e));
    };
    ck(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    for (int i = 0; i < 2; i++) {
      ck(cudaHostAlloc(&r.buf[i], size_t(std::min(chunk, std::max<uint64_t>(size, 1))), cudaHostAllocDefault),
         "cudaHostAlloc of a weight staging buffer");
      ck(cudaEventCreateWithFlags(&r.done[i], cudaEventDisableTiming), "cudaEventCreate");
    }
  }

  std::atomic<uint64_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex err_mu;
  std::string first_err;
  auto set_err = [&](const std::string& m) {
    std::lock_guard<std::mutex> g(err_mu);
    if (first_err.empty()) first_err = m;
    stop = true;
  };

  auto work = [&](Reader& r) {
    if (cudaSetDevice(r.device) != cudaSuccess) return set_err("cudaSetDevice in a reader thread");
    int slot = 0;
    while (!stop) {
      uint64_t k = next.fetch_add(1);
      if (k >= nchunks) break;
      const uint64_t begin = k * chunk, len = std::min(chunk, size - begin), end = begin + len;
      // First weight ending after this chunk starts (pieces are sorted and do not overlap).
      auto it = std::upper_bound(pieces.begin(), pieces.end(), begin,
                                 [](uint64_t pos, const Piece& p) { return pos < p.file_end; });
      bool holds_weights = it != pieces.end() && it->file_begin < end;
      if (!sha256 && !holds_weights) continue;
      cudaError_t e = cudaEventSynchronize(r.done[slot]);
      if (e != cudaSuccess) return set_err(std::string("waiting for a weight copy: ") + cudaGetErrorString(e));
      char* buf = static_cast<char*>(r.buf[slot]);
      for (uint64_t got = 0; got < len;) {
        ssize_t n = ::pread(fd, buf + got, size_t(len - got), off_t(begin + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
          return set_err("short read at byte " + std::to_string(begin + got) +
                         (n < 0 ? std::string(": ") + std::strerror(errno) : std::string(" (end of file)")));
        got += uint64_t(n);
      }
      if (sha256) sha256(reinterpret_cast<const unsigned char*>(buf), size_t(len), hash->digests + 32 * k);
      for (; it != pieces.end() && it->file_begin < end; ++it) {
        uint64_t a = std::max(begin, it->file_begin), b = std::min(end, it->file_end);
        e = cudaMemcpyAsync(device_weights + it->device_offset + (a - it->file_begin), buf + (a - begin), size_t(b - a),
                            cudaMemcpyHostToDevice, r.stream);
        if (e != cudaSuccess) return set_err(std::string("cudaMemcpyAsync of weights: ") + cudaGetErrorString(e));
      }
      e = cudaEventRecord(r.done[slot], r.stream);
      if (e != cudaSuccess) return set_err(std::string("cudaEventRecord: ") + cudaGetErrorString(e));
      slot ^= 1;
    }
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < nthreads; i++) threads.emplace_back(work, std::ref(readers[size_t(i)]));
  work(readers[0]);
  for (auto& t : threads) t.join();
  for (Reader& r : readers) {
    cudaError_t e = cudaStreamSynchronize(r.stream);
    if (e != cudaSuccess) set_err(std::string("uploading weights: ") + cudaGetErrorString(e));
  }
  if (!first_err.empty()) throw fail(first_err);
}

}  // namespace tsllm
