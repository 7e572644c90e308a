// tsllm_bench: loads an engine and times tsllm_generate (prefill + decode entirely in C++).
//   tsllm_bench ENGINE/rank0.engine [--batch 1] [--isl 128] [--osl 128] [--iters 3] [--no-graphs]
//               [--max-batch N] [--max-seq-len N] [--max-num-tokens N]
// Prints the engine info, then per iteration TTFT and decode throughput, then the median.
#include <tsllm.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s RANK_FILE [--batch N] [--isl N] [--osl N] [--iters N] [--no-graphs]\n", argv[0]);
    return 2;
  }
  const char* path = argv[1];
  int batch = 1, isl = 128, osl = 128, iters = 3;
  tsllm_options o{};
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> int {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoi(argv[++i]);
    };
    if (a == "--batch") batch = next();
    else if (a == "--isl") isl = next();
    else if (a == "--osl") osl = next();
    else if (a == "--iters") iters = next();
    else if (a == "--no-graphs") o.disable_cuda_graphs = 1;
    else if (a == "--max-batch") o.max_batch_size = next();
    else if (a == "--max-seq-len") o.max_seq_len = next();
    else if (a == "--max-num-tokens") o.max_num_tokens = next();
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  char err[1024];
  tsllm_engine* e = tsllm_load(path, &o, err, sizeof(err));
  if (!e) {
    std::fprintf(stderr, "load failed: %s\n", err);
    return 1;
  }
  tsllm_info info;
  if (tsllm_get_info(e, &info, err, sizeof(err))) {
    std::fprintf(stderr, "info failed: %s\n", err);
    return 1;
  }
  std::printf("gpu %s sm %d | engine sm %d dtype %s | weights %.2f GB arena %.1f MB kv %.2f GB (%lld blocks x %d tokens)\n",
              info.gpu_name, info.gpu_sm, info.engine_sm, info.dtype, info.weight_bytes / 1e9, info.arena_bytes / 1e6,
              info.kv_bytes / 1e9, (long long)info.kv_blocks_total, info.tokens_per_block);
  std::vector<int32_t> prompts(size_t(batch) * size_t(isl)), lens(size_t(batch), isl);
  uint32_t x = 12345;
  for (auto& t : prompts) {
    x = x * 1664525u + 1013904223u;
    t = int32_t((x >> 8) % uint32_t(info.vocab_size));
  }
  std::vector<int32_t> out(size_t(batch) * size_t(osl));
  std::vector<double> steps(size_t(std::max(osl - 1, 1)));
  std::vector<double> tps, ttfts, meds;
  for (int it = 0; it <= iters; it++) {  // iteration 0 warms up (captures the CUDA graphs)
    tsllm_timings t{};
    t.step_ms = steps.data();
    if (tsllm_generate(e, batch, prompts.data(), lens.data(), osl, nullptr, out.data(), &t, err, sizeof(err))) {
      std::fprintf(stderr, "generate failed: %s\n", err);
      return 1;
    }
    std::vector<double> s(steps.begin(), steps.begin() + std::max(osl - 1, 0));
    std::sort(s.begin(), s.end());
    double med = s.empty() ? 0 : s[s.size() / 2];
    double tok_s = osl > 1 ? batch * (osl - 1) / (t.decode_ms / 1e3) : 0;
    std::printf("%s %d: ttft %.2f ms | decode %.2f ms for %d steps = %.1f tok/s (median step %.3f ms = %.1f tok/s/seq) | "
                "e2e %.1f tok/s | wall %.1f ms\n",
                it == 0 ? "warmup" : "iter", it, t.ttft_ms, t.decode_ms, osl - 1, tok_s, med, med > 0 ? 1e3 / med : 0,
                batch * osl / (t.total_ms / 1e3), t.wall_ms);
    if (it > 0) tps.push_back(tok_s), ttfts.push_back(t.ttft_ms), meds.push_back(med);
  }
  std::sort(tps.begin(), tps.end());
  std::sort(ttfts.begin(), ttfts.end());
  std::sort(meds.begin(), meds.end());
  if (!tps.empty())
    std::printf("RESULT batch %d isl %d osl %d: decode %.1f tok/s, median step %.3f ms, ttft %.2f ms (median of %d)\n", batch,
                isl, osl, tps[tps.size() / 2], meds[meds.size() / 2], ttfts[ttfts.size() / 2], iters);
  std::printf("first tokens of prompt 0:");
  for (int j = 0; j < std::min(osl, 12); j++) std::printf(" %d", out[size_t(j)]);
  std::printf("\n");
  tsllm_get_info(e, &info, err, sizeof(err));
  std::printf("cuda graphs captured: %d, sequences alive: %lld\n", info.num_cuda_graphs, (long long)info.num_sequences);
  // Which kernels ran (tsllm_get_node_stats): linears by kernel, and the runtime's prologue fusion.
  int32_t nn = 0;
  if (tsllm_get_node_stats(e, nullptr, 0, &nn, err, sizeof(err)) == 0) {
    std::vector<tsllm_node_stats> st(static_cast<size_t>(nn));
    tsllm_get_node_stats(e, st.data(), nn, &nn, err, sizeof(err));
    unsigned long long k[TSLLM_KERNEL_KINDS] = {};
    int planned = 0;
    for (const auto& n : st) {
      for (int i = 0; i < TSLLM_KERNEL_KINDS; i++) k[i] += n.launches[i];
      planned += n.folded_into >= 0;
    }
    std::printf("kernels: linears cuBLASLt %llu, gemv %llu, gemv+rms_norm %llu, gemv+gated_act %llu; prologue fusion: "
                "%d nodes planned, %llu launches folded; FP8 context FMHA %llu; FP8 rows from norm / gated_act %llu\n",
                k[TSLLM_KERNEL_CUBLASLT], k[TSLLM_KERNEL_GEMV], k[TSLLM_KERNEL_GEMV_RMS], k[TSLLM_KERNEL_GEMV_GATED], planned,
                k[TSLLM_KERNEL_FOLDED], k[TSLLM_KERNEL_FP8_FMHA], k[TSLLM_KERNEL_FP8_ACT]);
  }
  tsllm_unload(e);
  return 0;
}
