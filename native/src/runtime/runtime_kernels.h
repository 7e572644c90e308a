// Kernels the runtime needs that are not in kernels/kernels.h (one small family each).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "../kernels/kernels.h"

namespace tsllm {

// Standalone `rope` op: out[t, h*D + d] = rotate(x[t, h*D + d]) at positions[t] with angle
// pos * inv_freq[i] (fp32); dims >= rotary_dim pass through. out may not alias x.
cudaError_t rope_standalone(const void* x, void* out, const int32_t* positions, const float* inv_freq, int rows,
                            int num_heads, int head_dim, int rotary_dim, RopeStyle style, DType dt, cudaStream_t s);

}  // namespace tsllm
