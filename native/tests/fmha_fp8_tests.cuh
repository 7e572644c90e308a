// FP8 context FMHA (src/kernels/attention_context_fp8.cu) through paged_attention over an E4M3 cache, against an
// fp64 reference of the numerics its header defines: Q quantised per (token, head) row (s_q = amax / 448, fp32 as the
// kernel), K / V the cache's bytes (this step's own rows as rope_cache stores them: e4m3(x / scale), checked byte
// for byte), exact products, exact softmax. Included by kernels_test.cu after quant_tests.cuh (its host E4M3 port);
// group "fmha8": `kernels_test fmha8` (sm_89+; skipped with a note on older GPUs).
//
// Bound per output element (fp64, from the reference's own P = exp(s - max), l = Σ P and values v = v8 · v_scale):
//   (2^-4 + 2 ln2 e) · Σ P|v| / l  +  n · 2^-10/448 · max|v|  +  rtol(dtype) · |ref|
// 2^-4: the relative rounding error of p8 = e4m3(P · 448) for E4M3 normals (3 mantissa bits, round to nearest);
// n · 2^-10/448 · max|v|: below E4M3's normals (P < 2^-6/448) the error is absolute, at most half the subnormal step
// 2^-9/448, over the row's n keys; rtol: the output's rounding to fp16/bf16. e: the score error of the fp32
// accumulation in the tensor cores, allowed as 2^-12 of the row's largest Σ_d |q8 k8| (times the score scale, log2
// domain; an assumption, not measured: NVIDIA does not document the FP8 MMA's accumulation precision); each key's
// P and the row max move by at most ln2 · e relative. Every other step (the online softmax's rescaling, exp2f) is
// far below these terms. The bound is loose for spread-out rows but not for peaked ones: each case also checks
// that a kernel with V in plain key order (no v_slot_key permutation) would exceed it somewhere, computed here on
// the host (FAIL if it would not: the case could not catch that bug).
// Rotary_dim is 0 (q, k as given): RoPE is rope_cache's (checked by test_attention); the context kernel sees q
// rows of T either way. Every sequence goes through the context kernel (num_single 0): the runtime's leading
// one-token sequences take the decode kernel, which attends to the step's own K/V unrounded.

namespace fmha8 {

struct Case {
  const char* name;
  DType dt;
  int nH, nKV, D, tpb;
  float k_scale, v_scale;
  std::vector<std::pair<int, int>> seqs;  // (cached tokens, new tokens)
};

// Which key a kernel with V in plain key order would weigh with P[k] (key k's P lands on V position k's slot):
// the inverse of v_slot_key, written here from the fragment layouts (attention_context_fp8.cu).
inline int slot_of_key(int k) { return (k & 16) | ((k >> 1) & 3) << 2 | ((k >> 3) & 1) << 1 | (k & 1); }

inline void run_case(const Case& c, Rng& rng) {
  using qt::e4m3_bits;
  using qt::e4m3_val;
  const DType dt = c.dt;
  const int nH = c.nH, nKV = c.nKV, D = c.D, G = nH / nKV;
  const qt::PagedStep ps(c.seqs, nKV, D, c.tpb);
  const int S = ps.S, T = ps.T;
  const size_t v_off = ps.v_off;
  const std::vector<int32_t>&positions = ps.positions, &token_seq = ps.token_seq, &seq_start = ps.seq_start;
  auto slot = [&](int s, int pos, int hk) { return ps.slot(s, pos, hk); };
  // History: e4m3 of values in [-2, 2] / scale (the range of the step's own rows); block 0 (no sequence's) and the
  // slots past each sequence are 0x7f (NaN): a kernel reading them shows.
  std::vector<uint8_t> codes(ps.pool_elems(), 0x7f);
  for (int s = 0; s < S; s++)
    for (int pos = 0; pos < c.seqs[s].first; pos++)
      for (int hk = 0; hk < nKV; hk++)
        for (int d = 0; d < D; d++) {
          codes[slot(s, pos, hk) + d] = e4m3_bits(rng.uniform(-2.f, 2.f) / c.k_scale);
          codes[slot(s, pos, hk) + v_off + d] = e4m3_bits(rng.uniform(-2.f, 2.f) / c.v_scale);
        }
  const int q_stride = nH * D + 8;  // a row stride that is not the packed one
  Buf q(dt, size_t(T) * q_stride), k(dt, size_t(T) * nKV * D), v(dt, size_t(T) * nKV * D);
  q.fill(rng, -3.f, 3.f), k.fill(rng, -2.f, 2.f), v.fill(rng, -2.f, 2.f);
  q.up(), k.up(), v.up();
  // Expected cache: this step's rows stored as e4m3(x / scale).
  std::vector<uint8_t> want = codes;
  for (int t = 0; t < T; t++)
    for (int hk = 0; hk < nKV; hk++)
      for (int d = 0; d < D; d++) {
        const size_t i = size_t(t) * nKV * D + size_t(hk) * D + d;
        want[slot(token_seq[t], positions[t], hk) + d] = e4m3_bits(k.get(i) / c.k_scale);
        want[slot(token_seq[t], positions[t], hk) + v_off + d] = e4m3_bits(v.get(i) / c.v_scale);
      }

  // Reference, bound, and the plain-key-order V mutant.
  const double scale = double(float(1.0 / std::sqrt(double(D))));
  const size_t n_out = size_t(T) * nH * D;
  std::vector<double> ref(n_out), bound(n_out), mutant(n_out);
  {
    std::vector<double> q8(D), sc, p;
    for (int t = 0; t < T; t++) {
      const int s = token_seq[t], pos = positions[t];
      const int i_new = t - seq_start[s];  // the tile's keys end at its last row's position (kernel zero-fills past)
      const int tile_last = std::min((i_new / 64 + 1) * 64, c.seqs[s].second) - 1;
      const int kv_end = c.seqs[s].first + tile_last + 1;
      for (int h = 0; h < nH; h++) {
        const int hk = h / G;
        float am = 0.f;
        for (int d = 0; d < D; d++) am = std::max(am, std::fabs(q.get(size_t(t) * q_stride + h * D + d)));
        const float sq = am > 0.f ? am / 448.f : 1.f;
        for (int d = 0; d < D; d++) q8[d] = e4m3_val(e4m3_bits(q.get(size_t(t) * q_stride + h * D + d) / sq));
        const double f = double(sq) * c.k_scale * scale;
        sc.assign(pos + 1, 0.0);
        double mx = -1e300, e = 0;
        for (int j = 0; j <= pos; j++) {
          double dot = 0, mag = 0;
          for (int d = 0; d < D; d++) {
            const double kk = e4m3_val(want[slot(s, j, hk) + d]);
            dot += q8[d] * kk;
            mag += std::fabs(q8[d] * kk);
          }
          sc[j] = dot * f;
          mx = std::max(mx, sc[j]);
          e = std::max(e, std::ldexp(mag * f * 1.4426950408889634, -12));
        }
        p.assign(pos + 1, 0.0);
        double l = 0;
        for (int j = 0; j <= pos; j++) l += (p[j] = std::exp(sc[j] - mx));
        auto vval = [&](int j, int d) { return e4m3_val(want[slot(s, j, hk) + v_off + d]) * double(c.v_scale); };
        for (int d = 0; d < D; d++) {
          double o = 0, a = 0, vmax = 0, bad = 0;
          for (int j = 0; j <= pos; j++) {
            const double vj = vval(j, d);
            o += p[j] * vj;
            a += p[j] * std::fabs(vj);
            vmax = std::max(vmax, std::fabs(vj));
            const int jm = (j & ~31) | slot_of_key(j & 31);
            bad += jm < kv_end ? p[j] * vval(jm, d) : 0.0;
          }
          const size_t oi = (size_t(t) * nH + h) * D + d;
          ref[oi] = o / l;
          mutant[oi] = bad / l;
          bound[oi] = (0.0625 + 2 * 0.6931471805599453 * e) * a / l + (pos + 1) * std::ldexp(1.0, -10) / 448 * vmax +
                      rtol_of(dt) * std::fabs(o / l);
        }
      }
    }
  }

  void* pool = qt::to_dev(codes.data(), codes.size());
  const size_t wsb = attention_workspace_bytes(T, S, nH, D, ps.max_len, nKV);
  void* ws;
  CK(cudaMalloc(&ws, wsb));
  const StepLayout st = ps.layout();
  AttnParams ap{};
  ap.layer = 0, ap.num_heads = nH, ap.num_kv_heads = nKV, ap.head_dim = D;
  ap.scale = float(scale);
  ap.rotary_dim = 0;
  ap.k_scale = c.k_scale, ap.v_scale = c.v_scale;
  const PagedKV kv = ps.kv(pool, DType::FP8_E4M3);
  Buf o8(dt, n_out), o16(dt, n_out);
  std::vector<uint8_t> got(codes.size());
  for (bool fp8 : {false, true}) {
    Buf& o = fp8 ? o8 : o16;
    ap.fp8_context_fmha = fp8;
    CK(cudaMemcpy(pool, codes.data(), codes.size(), cudaMemcpyHostToDevice));
    o.poison();
    CK(cudaMemset(ws, 0xFF, wsb));
    CK(paged_attention(q.d, q_stride, k.d, nKV * D, v.d, nKV * D, o.d, kv, st, ap, dt, ws, 0));
    sync_check();
    o.down();
  }
  CK(cudaMemcpy(got.data(), pool, got.size(), cudaMemcpyDeviceToHost));
  size_t cache_bad = 0;
  for (size_t i = 0; i < got.size(); i++) cache_bad += got[i] != want[i];
  Err e, e16;
  size_t mutant_caught = 0;
  double d16 = 0;
  for (size_t i = 0; i < n_out; i++) {
    e.add(o8.get(i), ref[i], bound[i], 0);
    e16.add(o16.get(i), ref[i], bound[i], 0);
    mutant_caught += std::fabs(mutant[i] - ref[i]) > bound[i];
    d16 = std::max(d16, std::fabs(double(o8.get(i)) - o16.get(i)));
  }
  char extra[320];
  std::snprintf(extra, sizeof extra,
                "%s%s cache byte mismatches=%zu; plain-order V would fail %zu/%zu; |fp8 - fp16/bf16 kernel| max %.3e "
                "(that kernel vs this reference: max %.3e, over the bound %zu)",
                e.str().c_str(), e.firsts().c_str(), cache_bad, mutant_caught, n_out, d16, e16.max_abs, e16.bad);
  report(e.ok() && cache_bad == 0 && mutant_caught > 0, std::string("fp8 context fmha ") + c.name, e.max_abs, extra);
  cudaFree(pool);
  cudaFree(ws);
}

// The rule for where it runs: head dims that are multiples of 16 up to 128 (on an sm_89+ GPU running sm_89+ code).
inline void rule() {
  std::string bad;
  for (int D : {16, 32, 48, 64, 96, 128, 40, 72, 136, 192, 256}) {
    const bool want = D % 16 == 0 && D <= 128;
    if ((fp8_context_fmha_unavailable(D) == nullptr) != want) bad += " D=" + std::to_string(D);
  }
  report(bad.empty(), "fp8 context fmha head-dim rule (multiples of 16 up to 128)", 0, bad);
}

}  // namespace fmha8

static void test_fmha8(Rng& rng) {
  int dev = 0, major = 0, minor = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  CK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (major * 10 + minor < 89) {
    const char* why = fp8_context_fmha_unavailable(64);
    report(why != nullptr, "fp8 context fmha refused below sm_89", 0, why ? why : "(available)");
    return;
  }
  fmha8::rule();
  const auto F16 = DType::F16, BF16 = DType::BF16;
  const fmha8::Case cases[] = {
      // Prefill past one tile (300 = 4 tiles + 44), chunked prefill over an FP8 history, one-token rows, GQA 4.
      {"D128 gqa4 f16 mixed", F16, 8, 2, 128, 32, 1.f / 64, 1.f / 32, {{0, 300}, {100, 200}, {1000, 1}, {64, 64}, {0, 2}}},
      {"D128 mha bf16 chunked", BF16, 4, 4, 128, 16, 0.02f, 0.05f, {{0, 65}, {300, 100}}},
      {"D64 mha bf16", BF16, 4, 4, 64, 16, 0.02f, 0.05f, {{0, 129}, {37, 70}, {5, 3}}},
      {"D64 gqa4 f16 tpb8", F16, 8, 2, 64, 8, 1.f / 64, 1.f / 64, {{200, 33}, {0, 64}, {1, 2}}},
      {"D96 gqa2 f16 (padded to 128)", F16, 4, 2, 96, 16, 0.03f, 0.03f, {{0, 40}, {10, 20}}},
      // The GPU tests' fixtures: tiny-llama (4 heads, 2 KV heads, D 32), tiny-gptj (4 heads, MHA, D 32).
      {"D32 gqa2 f16 tiny-llama", F16, 4, 2, 32, 16, 1.f / 32, 1.f / 16, {{0, 37}, {17, 20}, {3, 1}, {0, 100}}},
      {"D32 mha f16 tiny-gptj", F16, 4, 4, 32, 16, 1.f / 32, 1.f / 16, {{0, 50}, {60, 7}, {129, 64}}},
  };
  for (const auto& c : cases) fmha8::run_case(c, rng);
}
