#include "kv_cache.h"

namespace tsllm {

void KvBlockManager::init(int64_t num_blocks, int tokens_per_block, int reserved_blocks) {
  num_blocks_ = num_blocks;
  tpb_ = tokens_per_block;
  free_.clear();
  seqs_.clear();
  // Pop from the back: hand out low block numbers first (nicer to read in dumps).
  for (int64_t b = num_blocks - 1; b >= reserved_blocks; b--) free_.push_back(int32_t(b));
}

Sequence* KvBlockManager::find(uint64_t id) {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second;
}

int64_t KvBlockManager::extra_blocks(uint64_t id, int64_t new_len) {
  const Sequence* s = find(id);
  int64_t have = s ? int64_t(s->blocks.size()) : 0;
  int64_t need = blocks_for(new_len);
  return need > have ? need - have : 0;
}

bool KvBlockManager::resize(uint64_t id, int32_t new_len) {
  int64_t extra = extra_blocks(id, new_len);
  if (extra > num_free()) return false;
  Sequence& s = seqs_[id];
  size_t need = size_t(blocks_for(new_len));
  while (s.blocks.size() < need) {
    s.blocks.push_back(free_.back());
    free_.pop_back();
  }
  while (s.blocks.size() > need) {
    free_.push_back(s.blocks.back());
    s.blocks.pop_back();
  }
  s.len = new_len;
  return true;
}

void KvBlockManager::release(uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  for (auto b : it->second.blocks) free_.push_back(b);
  seqs_.erase(it);
}

}  // namespace tsllm
