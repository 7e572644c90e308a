// The int4-wo decode gemv (quant_gemv_int.cuh), its own translation unit so the build compiles it in parallel.
#include "quant_gemv_int.cuh"

namespace tsllm {
TSLLM_INT_GEMV(int4_gemv, true)
}  // namespace tsllm
