// Weight upload with the content hash fused into the same pass over the rank file (upload.cc).
#pragma once
#include <cstdint>
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

// Reads the rank file once with several threads (file_pass.h: O_DIRECT for what the page cache lacks),
// each reading whole chunks into its own pinned buffers, copying the stored weights they hold to
// `device_weights` + WeightDesc::device_offset with cudaMemcpyAsync on its own stream and hashing them
// (when `hash` is given) while the copy runs and until it reads the next chunk. Returns when every copy has
// finished, with the pass's figures. Throws LoadError naming the file.
// threads / direct: FilePassOptions (Tunables::load_threads / load_direct).
FilePassStats upload_stored_weights(const EngineDesc& d, char* device_weights, int device, const ContentHash* hash,
                                    int threads, int direct);

}  // namespace tsllm
