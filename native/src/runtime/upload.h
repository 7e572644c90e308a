// Weight upload with the content hash fused into the same pass over the rank file (upload.cc).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "engine_file.h"
#include "file_pass.h"

namespace tsllm {

// Where the chunk digests of the rank file go (src/engine/hash.ts): SHA-256 of each chunk_bytes chunk,
// 32 bytes each, num_chunks = ceil(file_size / chunk_bytes) of them. The caller combines and compares.
struct ContentHash {
  uint64_t chunk_bytes = 0;
  uint8_t* digests = nullptr;
  uint64_t num_chunks = 0;
};

// The stored weights' upload, running on its own threads from construction: the rank file is read once by
// several threads (file_pass.h: O_DIRECT for what the page cache lacks), each reading whole chunks into its
// own two staging buffers and hashing them (when `hash` is given) on hasher threads. It starts before CUDA
// is initialised, so reading and hashing overlap CUDA's start-up and the rest of the load: until open()
// gives it the device weights, each reader keeps (at most) the two chunks it read and waits; then its
// buffers are pinned and each chunk's stored weights are copied to device_weights + WeightDesc::device_offset
// with cudaMemcpyAsync on the reader's own stream.
// threads / direct: FilePassOptions (Tunables::load_threads / load_direct).
class WeightUpload {
 public:
  // Copies what it needs from `d` (the caller may change d afterwards). Throws LoadError for a digest
  // buffer of the wrong size.
  WeightUpload(const EngineDesc& d, int device, const ContentHash* hash, int threads, int direct);
  // Stops the pass if open() was never called (a load that failed before the device was ready) and waits for it.
  ~WeightUpload();
  WeightUpload(const WeightUpload&) = delete;
  WeightUpload& operator=(const WeightUpload&) = delete;
  // The device is current in the calling thread's process and `device_weights` allocated: copies may start.
  void open(char* device_weights);
  // Waits until every read, hash and copy has finished; the pass's figures. Throws LoadError naming the file.
  FilePassStats finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tsllm
