// Device-to-device copy bandwidth of this GPU, measured the way the design brief states its roofline
// (bytes read + bytes written per second), so benchmarks can compare against the same run's ceiling.
#include <cuda_runtime.h>
#include <tsllm.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace {
void fail(char* err, size_t errlen, const std::string& m) {
  if (err && errlen) {
    size_t n = std::min(errlen - 1, m.size());
    std::memcpy(err, m.data(), n);
    err[n] = '\0';
  }
}
}  // namespace

extern "C" int tsllm_copy_bandwidth(int32_t device, uint64_t bytes, int32_t iters, double* out_bytes_per_s, char* err,
                                    size_t errlen) {
  auto ck = [&](cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
      fail(err, errlen, std::string("copy bandwidth: ") + what + ": " + cudaGetErrorString(e));
      return false;
    }
    return true;
  };
  if (!ck(cudaSetDevice(device), "cudaSetDevice")) return -1;
  void *a = nullptr, *b = nullptr;
  cudaEvent_t e0, e1;
  if (!ck(cudaMalloc(&a, bytes), "cudaMalloc")) return -1;
  if (!ck(cudaMalloc(&b, bytes), "cudaMalloc")) {
    cudaFree(a);
    return -1;
  }
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  bool ok = ck(cudaMemset(a, 1, bytes), "cudaMemset");
  std::vector<float> ms;
  for (int i = 0; ok && i < iters + 2; i++) {  // two warm-up copies
    ok = ck(cudaEventRecord(e0), "cudaEventRecord") && ck(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpyAsync") &&
         ck(cudaEventRecord(e1), "cudaEventRecord") && ck(cudaEventSynchronize(e1), "cudaEventSynchronize");
    float t = 0;
    if (ok && i >= 2) {
      cudaEventElapsedTime(&t, e0, e1);
      ms.push_back(t);
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  if (!ok) return -1;
  std::sort(ms.begin(), ms.end());
  *out_bytes_per_s = 2.0 * double(bytes) / (ms[ms.size() / 2] / 1e3);
  return 0;
}
