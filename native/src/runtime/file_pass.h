// One pass over a file by several threads, at the speed of the disk or the page cache: each reader thread
// takes the next chunk, reads it into one of its two buffers, hands it to a sink (upload.cc queues its
// host-to-device copy) and to the hasher threads (the chunk digests of src/engine/hash.ts), and reads its
// next chunk into the other buffer at once: hashing never holds up a read. Host-only (no CUDA):
// native/tools/file_pass.cc runs it on the CPU, so the read and hash path is tested and measured without a GPU.
//
// Reads: chunks already in the page cache (mincore) are read with pread; chunks that are not are read with
// O_DIRECT straight into the (4 KiB-aligned) buffers: the disk's DMA fills them, no page-cache copy, many
// 16 MiB requests in flight. FilePassOptions (the runtime's TSLLM_LOAD_DIRECT / TSLLM_LOAD_THREADS, options.cc)
// can force either way of reading and the thread count.
#pragma once
#include <cstdint>
#include <string>

namespace tsllm {

// Threads a pass may use (sinks size their per-thread state by it).
constexpr int kMaxPassThreads = 64;

struct FilePassStats {
  int threads = 0;
  bool direct = false;            // O_DIRECT was available for chunks not in the page cache
  uint64_t direct_bytes = 0;      // read with O_DIRECT
  uint64_t cached_bytes = 0;      // read through the page cache
  double wall_s = 0;
  // Summed over threads: readers' reads, hashers' hashing, readers waiting for a buffer (its previous copy or
  // hash) or for the sink to take a chunk.
  double read_s = 0, hash_s = 0, wait_s = 0;
};

// What the pass does with each chunk it read. Methods are called from the pass's threads; thread t only ever
// touches its own buffers. Errors: throw std::runtime_error (one line; the pass adds nothing).
struct FilePassSink {
  virtual ~FilePassSink() = default;
  // Called first in thread t: make its two buffers of `bytes` (4 KiB-aligned, for O_DIRECT).
  virtual void start(int t, uint64_t bytes) = 0;
  virtual char* buffer(int t, int slot) = 0;
  // Blocks until what consume() started on this buffer last time is finished (before it is overwritten).
  virtual void wait(int t, int slot) = 0;
  // File bytes [begin, begin + len) are in buffer(t, slot): start using them (asynchronously is fine).
  virtual void consume(int t, int slot, uint64_t begin, uint64_t len) = 0;
  // Blocks until everything consume() started in thread t is finished.
  virtual void finish(int t) = 0;
  // Whether bytes [begin, end) are needed at all (a pass without hashing skips chunks nobody wants).
  virtual bool wants(uint64_t begin, uint64_t end) const = 0;
};

struct FilePassOptions {
  uint64_t chunk_bytes = uint64_t(16) << 20;
  uint8_t* digests = nullptr;  // 32 bytes per chunk (SHA-256 of each chunk), or null: no hashing
  int threads = 0;             // 0: the hardware threads, at most 16
  int direct = -1;             // -1: O_DIRECT for chunks the page cache lacks, 0 never, 1 every chunk
};

// Runs the pass over the first `size` bytes of `path`. Throws std::runtime_error (without the path).
FilePassStats run_file_pass(const std::string& path, uint64_t size, const FilePassOptions& o, FilePassSink& sink);

// The engine digest from its chunk digests (src/engine/hash.ts combineChunkDigests), as hex. Throws when
// OpenSSL's SHA256 is not in this process.
std::string combine_chunk_digests(const uint8_t* digests, uint64_t num_chunks);

// "12.50 GiB in 1.23 s (10.9 GB/s), 16 threads, 9.1 GiB direct / 3.4 GiB cached; thread-seconds: read 5.1,
// hash 9.8, copy wait 0.2" (tsllm-run --verbose, tsllm-bench, the file_pass tool).
std::string describe(const FilePassStats& s);

}  // namespace tsllm
