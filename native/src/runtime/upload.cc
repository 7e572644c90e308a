// Weight upload at the speed of the file: the read-and-hash pass of file_pass.cc on its own threads, whose
// readers each read a chunk into one of their two staging buffers, hand it to the hasher threads and queue
// cudaMemcpyAsync of the weight bytes it holds on their own stream, then read their next chunk into the other
// buffer. The pass starts before CUDA is initialised (load.cc): until the gate opens (the device is set up and
// the weights allocated), a reader keeps the chunks it read and waits only when both its buffers hold one.
#include "upload.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

namespace tsllm {

namespace {

struct Piece {
  uint64_t file_begin, file_end;  // absolute file offsets of a stored weight
  uint64_t device_offset;
};

// Opened by load.cc with the device weights once the device is set up; cancelled when the load failed first.
class Gate {
 public:
  void open(char* weights) {
    std::lock_guard<std::mutex> g(mu_);
    weights_ = weights;
    state_ = kOpen;
    cv_.notify_all();
  }
  void cancel() {
    std::lock_guard<std::mutex> g(mu_);
    if (state_ == kShut) state_ = kCancelled;
    cv_.notify_all();
  }
  bool is_open() {
    std::lock_guard<std::mutex> g(mu_);
    return state_ == kOpen;
  }
  char* wait() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return state_ != kShut; });
    if (state_ == kCancelled) throw std::runtime_error("load stopped before the device was ready");
    return weights_;
  }

 private:
  enum State { kShut, kOpen, kCancelled };
  std::mutex mu_;
  std::condition_variable cv_;
  State state_ = kShut;
  char* weights_ = nullptr;
};

// Staging buffers, a stream and events per pass thread; each thread sets up, pins and frees its own.
struct UploadSink : FilePassSink {
  struct Reader {
    uint64_t bytes = 0;
    void* buf[2] = {};
    bool pinned[2] = {};
    bool ready = false;  // stream, events and pinned buffers made (after the gate opened)
    char* weights = nullptr;
    cudaStream_t stream = nullptr;
    cudaEvent_t done[2] = {};
    bool held[2] = {};  // the buffer holds a chunk read before the gate opened, not copied yet
    uint64_t held_begin[2] = {}, held_len[2] = {};
  };
  std::vector<Piece> pieces;  // sorted by file offset, not overlapping
  Gate& gate;
  int device;
  std::atomic<bool> stopped{false};  // the load gave up: readers stop at their next buffer
  std::vector<Reader> readers = std::vector<Reader>(kMaxPassThreads);

  UploadSink(std::vector<Piece> p, Gate& g, int dev) : pieces(std::move(p)), gate(g), device(dev) {}
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
      if (r.pinned[i]) cudaHostUnregister(r.buf[i]);
      std::free(r.buf[i]);
      r.done[i] = nullptr;
      r.buf[i] = nullptr;
      r.pinned[i] = false;
      r.held[i] = false;
    }
    if (r.stream) cudaStreamDestroy(r.stream);
    r.stream = nullptr;
    r.ready = false;
  }
  // First stored weight ending after file offset `begin`.
  std::vector<Piece>::const_iterator first_after(uint64_t begin) const {
    return std::upper_bound(pieces.begin(), pieces.end(), begin,
                            [](uint64_t pos, const Piece& p) { return pos < p.file_end; });
  }
  void check_stopped() const {
    if (stopped) throw std::runtime_error("load stopped");
  }

  // Waits for the gate; then this reader's stream, events and pinned buffers, and the copies of the chunks it held.
  void prepare(Reader& r) {
    if (!r.ready) {
      r.weights = gate.wait();
      ck(cudaSetDevice(device), "cudaSetDevice in a reader thread");
      // Each step once, also when a failed prepare is retried (finish after an error).
      if (!r.stream) ck(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking), "cudaStreamCreate");
      for (int i = 0; i < 2; i++) {
        // Pinned, so that cudaMemcpyAsync copies straight from it by DMA, asynchronously.
        if (!r.pinned[i])
          ck(cudaHostRegister(r.buf[i], size_t(r.bytes), cudaHostRegisterDefault),
             "cudaHostRegister of a weight staging buffer");
        r.pinned[i] = true;
        if (!r.done[i]) ck(cudaEventCreateWithFlags(&r.done[i], cudaEventDisableTiming), "cudaEventCreate");
      }
      r.ready = true;
    }
    for (int i = 0; i < 2; i++)
      if (r.held[i]) {
        r.held[i] = false;
        copy(r, i, r.held_begin[i], r.held_len[i]);
      }
  }
  void copy(Reader& r, int slot, uint64_t begin, uint64_t len) {
    const uint64_t end = begin + len;
    const char* buf = static_cast<const char*>(r.buf[slot]);
    for (auto it = first_after(begin); it != pieces.end() && it->file_begin < end; ++it) {
      const uint64_t a = std::max(begin, it->file_begin), b = std::min(end, it->file_end);
      ck(cudaMemcpyAsync(r.weights + it->device_offset + (a - it->file_begin), buf + (a - begin), size_t(b - a),
                         cudaMemcpyHostToDevice, r.stream),
         "cudaMemcpyAsync of weights");
    }
    ck(cudaEventRecord(r.done[slot], r.stream), "cudaEventRecord");
  }

  void start(int t, uint64_t bytes) override {
    Reader& r = readers[size_t(t)];
    r.bytes = bytes;
    for (int i = 0; i < 2; i++) {
      // Page-aligned, as O_DIRECT reads need; pinned once the device is ready (prepare).
      void* p = nullptr;
      if (posix_memalign(&p, 4096, size_t(bytes)) != 0)
        throw std::runtime_error("out of host memory for a weight staging buffer");
      r.buf[i] = p;
    }
  }
  char* buffer(int t, int slot) override { return static_cast<char*>(readers[size_t(t)].buf[slot]); }
  void wait(int t, int slot) override {
    check_stopped();
    Reader& r = readers[size_t(t)];
    if (r.held[slot]) prepare(r);  // the chunk it holds is copied before the buffer is read into again
    if (r.ready) ck(cudaEventSynchronize(r.done[slot]), "waiting for a weight copy");
  }
  void consume(int t, int slot, uint64_t begin, uint64_t len) override {
    check_stopped();
    Reader& r = readers[size_t(t)];
    if (!r.ready && !gate.is_open()) {
      r.held[slot] = true;
      r.held_begin[slot] = begin;
      r.held_len[slot] = len;
      return;
    }
    prepare(r);
    copy(r, slot, begin, len);
  }
  void finish(int t) override {
    Reader& r = readers[size_t(t)];
    if ((r.held[0] || r.held[1]) && !stopped) prepare(r);
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

struct WeightUpload::Impl {
  std::string path;
  uint64_t size;
  FilePassOptions o;
  Gate gate;
  UploadSink sink;
  std::thread pass;
  FilePassStats stats;
  std::string error;  // the pass's, when it failed

  Impl(const EngineDesc& d, const FilePassOptions& opts, std::vector<Piece> pieces, int device)
      : path(d.path), size(d.file_size), o(opts), sink(std::move(pieces), gate, device) {}
};

WeightUpload::WeightUpload(const EngineDesc& d, int device, const ContentHash* hash, int threads, int direct) {
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
  }
  const bool nothing = !hash && pieces.empty();
  impl_ = std::make_unique<Impl>(d, o, std::move(pieces), device);
  if (nothing) return;
  Impl* p = impl_.get();
  p->pass = std::thread([p] {
    try {
      p->stats = run_file_pass(p->path, p->size, p->o, p->sink);
    } catch (const std::exception& e) {
      p->error = e.what();
      if (p->error.empty()) p->error = "weight pass failed";
    }
  });
}

WeightUpload::~WeightUpload() {
  // A load that failed: readers stop at their next buffer (those waiting for the gate at once); copies already
  // queued finish before their reader frees its buffers, and before the caller frees the device weights.
  impl_->sink.stopped = true;
  impl_->gate.cancel();
  if (impl_->pass.joinable()) impl_->pass.join();
}

void WeightUpload::open(char* device_weights) { impl_->gate.open(device_weights); }

FilePassStats WeightUpload::finish() {
  if (impl_->pass.joinable()) impl_->pass.join();
  if (!impl_->error.empty()) throw LoadError(impl_->path + ": " + impl_->error);
  return impl_->stats;
}

}  // namespace tsllm
