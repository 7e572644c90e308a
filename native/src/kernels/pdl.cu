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

}  // namespace tsllm
