// lowbias32 (a 32-bit integer hash), the hash behind random_fill and src/weights/random.ts: one definition for
// the kernel (random_fill.cu) and kernels_test's host reference.
#pragma once
#include <stdint.h>

namespace tsllm {

__host__ __device__ __forceinline__ uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

}  // namespace tsllm
