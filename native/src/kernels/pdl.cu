// Whether the current device can run programmatic dependent launch (sm_90+), cached per device. Whether to use
// it is the caller's choice (the `pdl` argument of the launchers, from tsllm_options).
#include "common.cuh"

namespace tsllm {

bool pdl_supported() {
  static int cache[64] = {0};
  return kd::per_device(cache, [](int dev) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaGetLastError();
    return major >= 9;
  });
}

namespace {
// Filled during static initialisation (one setter per unit including gemv_stream.cuh), read-only afterwards.
cudaError_t (*g_setters[32])(uint32_t);
int g_nsetters = 0;
}  // namespace

void register_gemv_l2_prefetch_setter(cudaError_t (*setter)(uint32_t)) {
  if (g_nsetters < 32) g_setters[g_nsetters++] = setter;
}

cudaError_t set_gemv_l2_prefetch(uint32_t bytes) {
  for (int i = 0; i < g_nsetters; i++) {
    const cudaError_t e = g_setters[i](bytes);
    if (e != cudaSuccess) return e;
  }
  return g_nsetters < 32 ? cudaSuccess : cudaErrorNotSupported;  // more units than slots: some would be left unset
}

}  // namespace tsllm
