// Whether the current device can run programmatic dependent launch (sm_90+), cached per device. Whether to use
// it is the caller's choice (the `pdl` argument of the launchers, from tsllm_options).
#include "kernels.h"

namespace tsllm {

bool pdl_supported() {
  static int cached[64] = {0};  // per device: 0 unknown, 1 sm_90+, 2 older
  int dev = 0;
  cudaGetDevice(&dev);
  dev &= 63;
  if (!cached[dev]) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaGetLastError();
    cached[dev] = major >= 9 ? 1 : 2;
  }
  return cached[dev] == 1;
}

}  // namespace tsllm
