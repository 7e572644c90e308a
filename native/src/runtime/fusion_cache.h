// The decode fusions' decisions (GemmRunner's prologue / epilogue / norm-tail fusions, QuantGemm's prologue and
// epilogue fusions) are made once per key, eagerly, by timing the fused kernels against the pair they replace.
#pragma once
#include <cuda_runtime.h>

#include <string>

namespace tsllm {

constexpr int kFusionUndecided = -2;

// A decision already in picks for key (the fused variant, or -1 with *why), -1 for a new key while the stream
// captures (it is timed eagerly: forward's first step of a shape runs eagerly before its capture), or
// kFusionUndecided: decide it now.
template <class Map>
int fusion_cached(const Map& picks, const typename Map::key_type& key, cudaStream_t s, std::string* why) {
  auto hit = picks.find(key);
  if (hit != picks.end()) {
    if (hit->second < 0 && why) *why = "the tuner kept the unfused pair";
    return hit->second;
  }
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaStreamIsCapturing(s, &cap);
  if (cap == cudaStreamCaptureStatusNone) return kFusionUndecided;
  if (why) *why = "shape first seen while a CUDA graph was being captured";
  return -1;
}

}  // namespace tsllm
