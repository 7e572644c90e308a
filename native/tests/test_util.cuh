// What kernels_test, kernels_bench, gemv_bench and overlap_bench share: the CUDA (and cuBLASLt) error checks and
// the timing of a run of calls.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

// A failed CUDA call ends the program (exit 2) naming the call.
#define CK(x)                                                                                             \
  do {                                                                                                    \
    cudaError_t e_ = (x);                                                                                 \
    if (e_ != cudaSuccess) {                                                                              \
      std::printf("FAIL cuda error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
      std::exit(2);                                                                                       \
    }                                                                                                     \
  } while (0)
// The same for a cuBLASLt call (needs <cublasLt.h> where it is used).
#define LT(x)                                                                                        \
  do {                                                                                               \
    cublasStatus_t s_ = (x);                                                                         \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                               \
      std::printf("FAIL cublasLt status %d at %s:%d: %s\n", int(s_), __FILE__, __LINE__, #x);       \
      std::exit(2);                                                                                  \
    }                                                                                                \
  } while (0)

// Median over `reps` runs of enqueue(s) of the milliseconds between events recorded around it on s.
template <typename F>
inline float median_event_ms(cudaStream_t s, int reps, F&& enqueue) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> ts;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(a, s));
    enqueue(s);
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    ts.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

// Median µs per call of fn(i) for i in [0, n) as the runtime runs them: a CUDA graph of the n calls, replayed 15
// times, after the n calls once on the stream (warm-up). A negative value when a warm-up launch fails (the
// variant is not eligible). stream_us: also the median of 5 back-to-back eager passes, per call.
inline double graph_us(int n, const std::function<cudaError_t(int, cudaStream_t)>& fn, double* stream_us = nullptr) {
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (int i = 0; i < n; ++i)
    if (fn(i, s) != cudaSuccess) {
      cudaGetLastError();
      CK(cudaStreamSynchronize(s));
      cudaStreamDestroy(s);
      return -1;
    }
  CK(cudaStreamSynchronize(s));
  auto all = [&](cudaStream_t st) {
    for (int i = 0; i < n; ++i) fn(i, st);
  };
  if (stream_us) *stream_us = median_event_ms(s, 5, all) * 1000.0 / n;
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  all(s);
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  CK(cudaGraphLaunch(ge, s));
  CK(cudaStreamSynchronize(s));
  const double us = median_event_ms(s, 15, [&](cudaStream_t st) { CK(cudaGraphLaunch(ge, st)); }) * 1000.0 / n;
  CK(cudaGetLastError());
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
  return us;
}

// Device-to-device copy rate of 1 GiB in GB/s (bytes read + written): the bandwidth reference of the benchmarks,
// taken from stream-launched copies (graph_us's stream timing), as the runtime's tsllm_copy_bandwidth and so
// tsllm-bench's rooflines take it. Not from the graph: in session 16's run 4 the graph of copies gave 2,770 GB/s
// while tsllm-bench's stream copy gave 4,160-4,210, and gemv_bench printed int8 / int4 gemvs at 103-122 % of "the
// copy" (why a graph's memcpy node is slower was not measured; it may run on the copy engines). us: one copy's µs.
inline double copy_gbs(double* us = nullptr) {
  const size_t bytes = size_t(1) << 30;
  void *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  CK(cudaMemset(a, 1, bytes));
  double t = 0;
  graph_us(4, [&](int, cudaStream_t s) { return cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s); }, &t);
  cudaFree(a);
  cudaFree(b);
  if (us) *us = t;
  return 2.0 * bytes / (t * 1e3);
}
