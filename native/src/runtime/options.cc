// tsllm_options -> Tunables. The TSLLM_* environment variables are read here and nowhere else: each overrides
// its option (for benchmarking and A/B runs without code changes; native/README.md documents them).
#include "options.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../kernels/kernels.h"
#include "../kernels/quant.h"
#include "engine_file.h"
#include "file_pass.h"

namespace tsllm {

namespace {

// The value of TSLLM_<name> when set and non-empty, else nullptr.
const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

bool env_int(const char* name, const std::string& path, long lo, long hi, long* out) {
  const char* v = env(name);
  if (!v) return false;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end || x < lo || x > hi)
    throw LoadError(path + ": environment " + name + "=" + v + " is not an integer in [" + std::to_string(lo) + ", " +
                    std::to_string(hi) + "]");
  *out = x;
  return true;
}

// TSLLM_QGEMV_PICKS: "NxK:variant" items, comma-separated (e.g. 12288x4096:8,4096x11008:11).
std::vector<Tunables::ShapePick> env_picks(const char* name, const std::string& path) {
  std::vector<Tunables::ShapePick> picks;
  const char* v = env(name);
  if (!v) return picks;
  const std::string all(v);
  size_t at = 0;
  while (at <= all.size()) {
    const size_t end = std::min(all.find(',', at), all.size());
    const std::string item = all.substr(at, end - at);
    int N = 0, K = 0, var = 0, used = 0;
    if (std::sscanf(item.c_str(), "%dx%d:%d%n", &N, &K, &var, &used) != 3 || used != int(item.size()) || N < 1 ||
        K < 1 || var < 0 || var >= kQuantGemvVariants)
      throw LoadError(path + ": environment " + name + ": \"" + item + "\" is not NxK:variant (variant 0-" +
                      std::to_string(kQuantGemvVariants - 1) + ")");
    picks.push_back({N, K, var});
    at = end + 1;
  }
  return picks;
}

}  // namespace

Tunables resolve_tunables(const tsllm_options& o, const std::string& path) {
  auto range = [&](const char* field, long v, long lo, long hi) {
    if (v < lo || v > hi)
      throw LoadError(path + ": tsllm_options." + field + " " + std::to_string(v) + " is outside [" +
                      std::to_string(lo) + ", " + std::to_string(hi) + "]");
  };
  range("gemm_tune", o.gemm_tune, -1, 1);
  range("gemv", o.gemv, -1, 1);
  range("gemv_variant", o.gemv_variant, 0, kGemvVariants);
  range("gemv_prologue", o.gemv_prologue, -1, 1);
  if (o.decode_variant != 0 && (o.decode_variant < 2 || o.decode_variant > 4))
    throw LoadError(path + ": tsllm_options.decode_variant " + std::to_string(o.decode_variant) +
                    " is not 0 (default), 2, 3 or 4");
  range("decode_mma_min_gqa", o.decode_mma_min_gqa, 0, 1024);
  range("pdl", o.pdl, -1, 1);
  range("strict_kernels", o.strict_kernels, 0, 1);
  range("fp8_context_fmha", o.fp8_context_fmha, -1, 1);
  range("profile", o.profile, 0, 2);

  Tunables t;
  t.gemm_tune = o.gemm_tune >= 0;
  t.gemv = o.gemv;
  t.gemv_variant = o.gemv_variant - 1;
  t.gemv_prologue = o.gemv_prologue >= 0;
  t.decode_variant = o.decode_variant == 0 ? 3 : o.decode_variant;
  if (o.decode_mma_min_gqa != 0) t.decode_mma_min_gqa = o.decode_mma_min_gqa;
  t.pdl = o.pdl >= 0;
  t.strict = o.strict_kernels == 1;
  t.fp8_context_fmha = o.fp8_context_fmha;
  t.profile = o.profile;

  // Environment overrides (benchmarking): TSLLM_GEMM_TUNE=0|1|2, TSLLM_GEMV=0|1, TSLLM_GEMV_VARIANT=k,
  // TSLLM_GEMV_PROLOGUE=0|1|2 (2: every pair fused), TSLLM_NORM_PDL=0|1|2, TSLLM_GLU_FUSE=0|1, TSLLM_NORM_TAIL=0|1|2,
  // TSLLM_DECODE_VARIANT=2|3|4, TSLLM_DECODE_MMA_MIN_GQA=r, TSLLM_DECODE_MMA_CFG=c, TSLLM_CONTEXT_CFG=c,
  // TSLLM_PDL=0|1, TSLLM_STRICT_KERNELS=0|1, TSLLM_FP8_CONTEXT_FMHA=0|1 (off, on), TSLLM_PROFILE=1|graph,
  // TSLLM_TUNE_LOG=1, TSLLM_STEP_TUNE=n, TSLLM_ATTN_PREFETCH_MB=n, TSLLM_ATTN_PREFETCH_ROWS=n, TSLLM_GEMM_EXTRA=0|1|2,
  // TSLLM_GEMM_STEP=n.
  long x = 0;
  if (env_int("TSLLM_GEMM_TUNE", path, 0, 2, &x)) t.gemm_tune = x >= 1, t.gemm_tune_every_m = x == 2;
  if (env_int("TSLLM_GEMV", path, 0, 1, &x)) t.gemv = x == 1 ? 1 : -1;
  if (env_int("TSLLM_GEMV_VARIANT", path, 0, kGemvVariants - 1, &x)) t.gemv_variant = int(x);
  if (env_int("TSLLM_GEMV_PROLOGUE", path, 0, 2, &x)) t.gemv_prologue = x >= 1, t.prologue_force |= x == 2;
  if (env_int("TSLLM_NORM_PDL", path, 0, 2, &x)) t.norm_pdl = int(x);
  if (env_int("TSLLM_GLU_FUSE", path, 0, 1, &x)) t.glu_fuse = x == 1;
  if (env_int("TSLLM_QGLU", path, 0, 1, &x)) t.quant_glu = x == 1;
  if (env_int("TSLLM_NORM_TAIL", path, 0, 2, &x)) t.norm_tail = int(x);
  if (env_int("TSLLM_DECODE_VARIANT", path, 2, 4, &x)) t.decode_variant = int(x);
  if (env_int("TSLLM_DECODE_MMA_MIN_GQA", path, 1, 1024, &x)) t.decode_mma_min_gqa = int(x);
  if (env_int("TSLLM_DECODE_MMA_CFG", path, 0, decode_mma_config_count() - 1, &x)) t.decode_mma_cfg = int(x);
  if (env_int("TSLLM_CONTEXT_CFG", path, 0, context_config_count() - 1, &x)) t.context_cfg = int(x);
  if (env_int("TSLLM_PDL", path, 0, 1, &x)) t.pdl = x == 1;
  if (env_int("TSLLM_STRICT_KERNELS", path, 0, 1, &x)) t.strict = x == 1;
  if (env_int("TSLLM_FP8_CONTEXT_FMHA", path, 0, 1, &x)) t.fp8_context_fmha = x == 1 ? 1 : -1;
  if (env_int("TSLLM_TUNE_LOG", path, 0, 1, &x)) t.tune_log = x == 1;
  if (env_int("TSLLM_STEP_TUNE", path, 0, 16, &x)) t.step_tune = int(x);
  if (env_int("TSLLM_ATTN_PREFETCH_MB", path, 0, 1024, &x)) t.attn_prefetch_mb = int(x);
  if (env_int("TSLLM_ATTN_PREFETCH_ROWS", path, 1, 65535, &x)) t.attn_prefetch_rows = int(x);
  if (env_int("TSLLM_GEMM_EXTRA", path, 0, 2, &x)) t.gemm_extra = int(x);
  if (env_int("TSLLM_GEMM_STEP", path, 0, 1 << 20, &x)) t.gemm_step = int(x);
  // quant_linear: TSLLM_QGEMV=0 (decode through the large-M path), TSLLM_QGEMV_VARIANT=k, TSLLM_QGEMV_TUNE_BELOW=k
  // (the tuner tries variants 0..k-1 only), TSLLM_QGEMV_PICKS=NxK:v,... (variant v for that shape),
  // TSLLM_FP8_OUTER_VEC=0, TSLLM_FP8_FAST_ACCUM=0, TSLLM_QGEMV_PROLOGUE=1|2 (rms_norm folded into the quantised
  // gemv; 2: always), TSLLM_FP8_ACT_FUSION=0 (FP8 GEMMs quantise their activations themselves), TSLLM_QGLU=0 (not the
  // gated_act in the FP8 / int8 / int4 gate_up gemv's epilogue).
  if (env_int("TSLLM_QGEMV", path, 0, 1, &x)) t.quant_gemv = x == 1;
  if (env_int("TSLLM_QGEMV_VARIANT", path, 0, kQuantGemvVariants - 1, &x)) t.quant_gemv_variant = int(x);
  if (env_int("TSLLM_QGEMV_TUNE_BELOW", path, 1, kQuantGemvVariants, &x)) t.quant_gemv_tune_below = int(x);
  t.quant_gemv_picks = env_picks("TSLLM_QGEMV_PICKS", path);
  if (env_int("TSLLM_FP8_OUTER_VEC", path, 0, 1, &x)) t.fp8_outer_vec = x == 1;
  if (env_int("TSLLM_FP8_FAST_ACCUM", path, 0, 1, &x)) t.fp8_fast_accum = x == 1;
  if (env_int("TSLLM_QGEMV_PROLOGUE", path, 0, 2, &x)) t.quant_gemv_prologue = x >= 1, t.prologue_force |= x == 2;
  if (env_int("TSLLM_FP8_ACT_FUSION", path, 0, 1, &x)) t.fp8_act_fusion = x == 1;
  // Weight pass: TSLLM_LOAD_THREADS=N, TSLLM_LOAD_DIRECT=0|1.
  if (env_int("TSLLM_LOAD_THREADS", path, 1, kMaxPassThreads, &x)) t.load_threads = int(x);
  if (env_int("TSLLM_LOAD_DIRECT", path, 0, 1, &x)) t.load_direct = int(x);
  // moe: TSLLM_MOE_PATH=0|1|2 (auto, gemv, grouped), TSLLM_MOE_FUSE=0 (the next add / add_rms_norm runs alone).
  if (env_int("TSLLM_MOE_PATH", path, 0, 2, &x)) t.moe_path = int(x);
  if (env_int("TSLLM_MOE_FUSE", path, 0, 1, &x)) t.moe_fuse = x == 1;
  if (const char* p = env("TSLLM_PROFILE")) {
    if (std::strcmp(p, "graph") == 0) t.profile = 2;
    else if (std::strcmp(p, "1") == 0) t.profile = 1;
    else if (std::strcmp(p, "0") == 0) t.profile = 0;
    else throw LoadError(path + ": environment TSLLM_PROFILE=" + p + " is not 0, 1 or graph");
  }
  return t;
}

}  // namespace tsllm
