// Weight upload at the speed of the file: the read-and-hash pass of file_pass.cc, whose threads each
// read a chunk into one of their two pinned staging buffers and queue cudaMemcpyAsync of the weight bytes
// it holds on their own stream; the chunk is hashed while that copy runs, and the thread reads its next
// chunk into the other buffer. Hashing needs no extra pass and no thread waits for another.
#include "upload.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include <cuda_runtime.h>

#include "file_pass.h"

namespace tsllm {

namespace {

struct Piece {
  uint64_t file_begin, file_end;  // absolute file offsets of a stored weight
  uint64_t device_offset;
};

// Pinned staging and a stream per pass thread; each thread sets up (pins in parallel) and frees its own.
struct UploadSink : FilePassSink {
  struct Reader {
    cudaStream_t stream = nullptr;
    void* buf[2] = {};
    cudaEvent_t done[2] = {};
  };
  std::vector<Piece> pieces;  // sorted by file offset, not overlapping
  char* device_weights;
  int device;
  std::vector<Reader> readers = std::vector<Reader>(kMaxPassThreads);

  UploadSink(std::vector<Piece> p, char* dw, int dev) : pieces(std::move(p)), device_weights(dw), device(dev) {}
  ~UploadSink() override {
    for (size_t t = 0; t < readers.size(); t++) release(readers[t]);
  }
  static void ck(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
  }
  static void release(Reader& r) {
    if (r.stream) cudaStreamSynchronize(r.stream);
    for (int i = 0; i < 2; i++) {
      if (r.done[i]) cudaEventDestroy(r.done[i]);
      if (r.buf[i]) cudaFreeHost(r.buf[i]);
      r.done[i] = nullptr;
      r.buf[i] = nullptr;
    }
    if (r.stream) cudaStreamDestroy(r.stream);
    r.stream = nullptr;
  }
  // First stored weight ending after file offset `begin`.
  std::vector<Piece>::const_iterator first_after(uint64_t begin) const {
    return std::upper_bound(pieces.begin(), pieces.end(), begin,
                            [](uint64_t pos, const Piece& p) { return pos < p.file_end; });
  }

  void start(int t, uint64_t bytes) override {
    ck(cudaSetDevice(device), "cudaSetDevice in a reader thread");
    Reader& r = readers[size_t(t)];
    ck(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    for (int i = 0; i < 2; i++) {
      // cudaHostAlloc is page-aligned, as O_DIRECT reads need.
      ck(cudaHostAlloc(&r.buf[i], size_t(bytes), cudaHostAllocDefault), "cudaHostAlloc of a weight staging buffer");
      ck(cudaEventCreateWithFlags(&r.done[i], cudaEventDisableTiming), "cudaEventCreate");
    }
  }
  char* buffer(int t, int slot) override { return static_cast<char*>(readers[size_t(t)].buf[slot]); }
  void wait(int t, int slot) override {
    ck(cudaEventSynchronize(readers[size_t(t)].done[slot]), "waiting for a weight copy");
  }
  void consume(int t, int slot, uint64_t begin, uint64_t len) override {
    Reader& r = readers[size_t(t)];
    const uint64_t end = begin + len;
    const char* buf = static_cast<const char*>(r.buf[slot]);
    for (auto it = first_after(begin); it != pieces.end() && it->file_begin < end; ++it) {
      const uint64_t a = std::max(begin, it->file_begin), b = std::min(end, it->file_end);
      ck(cudaMemcpyAsync(device_weights + it->device_offset + (a - it->file_begin), buf + (a - begin), size_t(b - a),
                         cudaMemcpyHostToDevice, r.stream),
         "cudaMemcpyAsync of weights");
    }
    ck(cudaEventRecord(r.done[slot], r.stream), "cudaEventRecord");
  }
  void finish(int t) override {
    Reader& r = readers[size_t(t)];
    cudaError_t e = r.stream ? cudaStreamSynchronize(r.stream) : cudaSuccess;
    release(r);  // unpinned in this thread, in parallel with the others
    ck(e, "uploading weights");
  }
  bool wants(uint64_t begin, uint64_t end) const override {
    auto it = first_after(begin);
    return it != pieces.end() && it->file_begin < end;
  }
};

}  // namespace

FilePassStats upload_stored_weights(const EngineDesc& d, char* device_weights, int device, const ContentHash* hash,
                                    int threads, int direct) {
  std::vector<Piece> pieces;
  for (const WeightDesc& w : d.weights)
    if (!w.random && w.nbytes) pieces.push_back({d.data_offset + w.offset, d.data_offset + w.offset + w.nbytes, w.device_offset});
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.file_begin < b.file_begin; });
  FilePassOptions o;
  o.threads = threads;
  o.direct = direct;
  if (hash) {
    o.chunk_bytes = hash->chunk_bytes;
    o.digests = hash->digests;
    const uint64_t n = hash->chunk_bytes ? (d.file_size + hash->chunk_bytes - 1) / hash->chunk_bytes : 0;
    if (hash->num_chunks != n)
      throw LoadError(d.path + ": expected " + std::to_string(n) + " chunk digests for " + std::to_string(d.file_size) +
                      " bytes, got room for " + std::to_string(hash->num_chunks));
  } else if (pieces.empty()) {
    return {};
  }
  UploadSink sink(std::move(pieces), device_weights, device);
  try {
    return run_file_pass(d.path, d.file_size, o, sink);
  } catch (const std::exception& e) {
    throw LoadError(d.path + ": " + e.what());
  }
}

}  // namespace tsllm
