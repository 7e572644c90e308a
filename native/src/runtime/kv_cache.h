// Host side of the paged KV cache: a free list of fixed-size blocks and, per sequence (caller-chosen
// u64 id), its block table and cached length. The device pool itself is one allocation laid out as
// kernels.h's PagedKV describes; block 0 is reserved as the scratch block of CUDA-graph padding rows.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace tsllm {

struct Sequence {
  std::vector<int32_t> blocks;
  int32_t len = 0;  // tokens cached (positions 0..len-1)
};

class KvBlockManager {
 public:
  void init(int64_t num_blocks, int tokens_per_block, int reserved_blocks);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_free() const { return int64_t(free_.size()); }
  int tokens_per_block() const { return tpb_; }
  int64_t blocks_for(int64_t tokens) const { return (tokens + tpb_ - 1) / tpb_; }

  Sequence* find(uint64_t id);
  // Extra blocks sequence `id` needs to hold `new_len` tokens (0 if it already does).
  int64_t extra_blocks(uint64_t id, int64_t new_len);
  // Makes `id` exist and hold exactly ceil(new_len / tpb) blocks, allocating or (when rewinding) freeing
  // blocks; sets len = new_len. Returns false if the pool runs dry (nothing changes then).
  bool resize(uint64_t id, int32_t new_len);
  void release(uint64_t id);
  size_t num_sequences() const { return seqs_.size(); }

 private:
  int64_t num_blocks_ = 0;
  int tpb_ = 32;
  std::vector<int32_t> free_;
  std::unordered_map<uint64_t, Sequence> seqs_;
};

}  // namespace tsllm
