// The int8-wo decode gemv (quant_gemv_int.cuh), its own translation unit so the build compiles it in parallel.
#include "quant_gemv_int.cuh"

namespace tsllm {
TSLLM_INT_GEMV(int8_gemv, false)
}  // namespace tsllm
