// The moe op's kernels (kernels.h "mixture of experts") against an fp64 host reference written from
// src/ops/moe.ts (softmax → top-k, lowest index on ties → renormalise → Σ w · w2(act(w1·x) ⊙ w3·x)).
// Included by kernels_test.cu (its Rng / Buf / Err / report helpers); group "moe": `kernels_test moe`.

namespace mt {

// Routing of one row of logits (as stored, in the activation dtype), in fp64: ids best first, ties to the lowest.
inline void route_ref(const float* l, int E, int K, bool normalize, int* ids, double* w) {
  double mx = -INFINITY, sum = 0;
  for (int e = 0; e < E; e++) mx = std::max(mx, (double)l[e]);
  std::vector<double> p(E);
  for (int e = 0; e < E; e++) sum += p[e] = std::exp((double)l[e] - mx);
  for (int e = 0; e < E; e++) p[e] /= sum;
  std::vector<char> taken(E, 0);
  double kept = 0;
  for (int k = 0; k < K; k++) {
    int best = -1;
    for (int e = 0; e < E; e++)
      if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
    taken[best] = 1;
    ids[k] = best;
    w[k] = p[best];
    kept += p[best];
  }
  if (normalize)
    for (int k = 0; k < K; k++) w[k] /= kept;
}

struct DevI32 {
  int32_t* d = nullptr;
  size_t n;
  explicit DevI32(size_t count) : n(count) { CK(cudaMalloc(&d, 4 * count + 16)); }
  ~DevI32() { cudaFree(d); }
  std::vector<int32_t> down() const {
    std::vector<int32_t> h(n);
    CK(cudaMemcpy(h.data(), d, 4 * n, cudaMemcpyDeviceToHost));
    return h;
  }
};

// Routing alone: ties (all equal, equal maxima within a lane and across lanes), K up to 4, E up to 256,
// renormalised or not, and the per-expert counts the grouped path's permutation reads.
inline void test_route(Rng& rng) {
  struct Case {
    const char* what;
    int E, K;
    bool normalize;
    std::vector<std::pair<int, float>> set;  // logits forced to a value (the rest random below it)
    bool all_equal;
  };
  const Case cases[] = {
      {"all equal (picks 0, 1)", 8, 2, true, {}, true},
      {"tie at the top: 1, 2, 4 equal", 8, 2, true, {{1, 3.f}, {2, 3.f}, {4, 3.f}}, false},
      {"tie for second place: 6 then 3 = 5", 8, 2, true, {{6, 4.f}, {3, 3.f}, {5, 3.f}}, false},
      {"ties across lanes: 5 = 37 = 69 (E 100, K 3)", 100, 3, true, {{69, 3.f}, {37, 3.f}, {5, 3.f}}, false},
      {"tie 200 = 255 = 7 (E 256, K 4), raw probabilities", 256, 4, false, {{255, 3.f}, {200, 3.f}, {7, 3.f}, {100, 2.5f}}, false},
      {"random (E 60, K 2)", 60, 2, true, {}, false},
      {"random (E 4, K 4), raw probabilities", 4, 4, false, {}, false},
  };
  for (DType dt : {DType::F16, DType::BF16})
    for (const Case& c : cases) {
      const int T = 37;
      Buf lg(dt, (size_t)T * c.E);
      for (int t = 0; t < T; t++)
        for (int e = 0; e < c.E; e++) {
          float v = c.all_equal ? 0.5f : rng.uniform(-2.f, 2.f);
          for (auto& s : c.set)
            if (s.first == e) v = s.second;
          lg.set((size_t)t * c.E + e, v);
        }
      lg.up();
      DevI32 ids((size_t)T * c.K), counts(c.E);
      Buf w(DType::F32, (size_t)T * c.K);
      CK(cudaMemset(ids.d, 0xFF, 4 * ids.n));
      w.poison();
      CK(cudaMemset(counts.d, 0, 4 * counts.n));
      CK(moe_route(lg.d, T, c.E, c.K, c.normalize, 0, c.E, ids.d, (float*)w.d, counts.d, dt, 0));
      sync_check();
      const std::vector<int32_t> gi = ids.down(), gc = counts.down();
      w.down();
      std::vector<int32_t> rc(c.E, 0);
      size_t wrong = 0;
      Err e;
      std::vector<float> row(c.E);
      for (int t = 0; t < T; t++) {
        for (int k = 0; k < c.E; k++) row[k] = lg.get((size_t)t * c.E + k);
        std::vector<int> ri(c.K);
        std::vector<double> rw(c.K);
        route_ref(row.data(), c.E, c.K, c.normalize, ri.data(), rw.data());
        for (int k = 0; k < c.K; k++) {
          wrong += gi[(size_t)t * c.K + k] != ri[k];
          rc[ri[k]]++;
          e.add(w.get((size_t)t * c.K + k), rw[k], 1e-6, 1e-5);
        }
      }
      const bool counts_ok = gc == rc;
      char name[160];
      std::snprintf(name, sizeof name, "moe route %s %s", dname(dt), c.what);
      report(wrong == 0 && e.ok() && counts_ok, name, e.max_abs,
             e.str() + " wrong_ids=" + std::to_string(wrong) + (counts_ok ? "" : " COUNTS DIFFER"));
    }
}

// Expert parallelism: a rank holding experts [start, start + local) gets ids relative to start, -1 for the others,
// and counts of its own experts only.
inline void test_route_ep(Rng& rng) {
  const int T = 29, E = 8, K = 2, start = 2, local = 3;
  Buf lg(DType::BF16, (size_t)T * E);
  lg.fill(rng, -2, 2);
  lg.up();
  DevI32 ids((size_t)T * K), counts(local);
  Buf w(DType::F32, (size_t)T * K);
  CK(cudaMemset(counts.d, 0, 4 * counts.n));
  CK(moe_route(lg.d, T, E, K, true, start, local, ids.d, (float*)w.d, counts.d, DType::BF16, 0));
  sync_check();
  const std::vector<int32_t> gi = ids.down(), gc = counts.down();
  std::vector<int32_t> rc(local, 0);
  size_t wrong = 0, remote = 0;
  std::vector<float> row(E);
  for (int t = 0; t < T; t++) {
    for (int e = 0; e < E; e++) row[e] = lg.get((size_t)t * E + e);
    int ri[2];
    double rw[2];
    route_ref(row.data(), E, K, true, ri, rw);
    for (int k = 0; k < K; k++) {
      const int le = ri[k] - start;
      const int want = le >= 0 && le < local ? le : -1;
      wrong += gi[(size_t)t * K + k] != want;
      if (want >= 0) rc[want]++;
      else remote++;
    }
  }
  report(wrong == 0 && gc == rc && remote > 0, "moe route bf16 expert parallel (experts 2..4 of 8 local)", (double)wrong,
         "(remote picks " + std::to_string(remote) + ")");
}

struct Shape {
  int T, E, K, H, I;
  float bias0;  // added to expert 0's logit: skews the routing (many tiles for one expert, none for others)
};

// The whole op, every path, with no epilogue / a residual add / add + rms_norm (as the runtime fuses them).
inline void test_forward(Rng& rng) {
  const Shape shapes[] = {
      {1, 4, 2, 128, 192, 0.f},   {2, 8, 2, 256, 64, 0.f},  {4, 8, 2, 64, 72, 0.f},     {9, 8, 2, 128, 96, 0.f},
      {37, 4, 2, 128, 192, 0.f},  {200, 8, 2, 256, 512, 0.f}, {300, 16, 4, 64, 136, 0.f}, {300, 8, 2, 128, 128, 4.f},
      {2100, 4, 2, 64, 64, 0.f},  // two chunks of kMoeChunkTokens
  };
  const MoePath paths[] = {MoePath::Auto, MoePath::Gemv, MoePath::Grouped};
  const char* path_names[] = {"auto", "gemv", "grouped"};
  for (DType dt : {DType::F16, DType::BF16})
    for (const Shape& sh : shapes) {
      const int T = sh.T, E = sh.E, K = sh.K, H = sh.H, I = sh.I;
      Buf x(dt, (size_t)T * H), lg(dt, (size_t)T * E), w1(dt, (size_t)E * I * H), w3(dt, (size_t)E * I * H),
          w2(dt, (size_t)E * H * I), res(dt, (size_t)T * H), nw(dt, H), out(dt, (size_t)T * H),
          sum(dt, (size_t)T * H);
      x.fill(rng, -1, 1);
      for (int t = 0; t < T; t++)
        for (int e = 0; e < E; e++) lg.set((size_t)t * E + e, rng.uniform(-2, 2) + (e == 0 ? sh.bias0 : 0.f));
      const float a1 = std::sqrt(3.f / H), a2 = std::sqrt(3.f / I);
      w1.fill(rng, -a1, a1), w3.fill(rng, -a1, a1), w2.fill(rng, -a2, a2);
      res.fill(rng, -1, 1);
      nw.fill(rng, 0.5f, 1.5f);
      x.up(), lg.up(), w1.up(), w3.up(), w2.up(), res.up(), nw.up();
      // Reference: moe (fp64 but for h, rounded to dtype as the kernels store it) and its conditioning.
      std::vector<double> ref((size_t)T * H, 0.0), cond((size_t)T * H, 0.0);
      std::vector<float> row(E);
      std::vector<double> h(I);
      for (int t = 0; t < T; t++) {
        for (int e = 0; e < E; e++) row[e] = lg.get((size_t)t * E + e);
        int ids[16];
        double wk[16];
        route_ref(row.data(), E, K, true, ids, wk);
        for (int k = 0; k < K; k++) {
          const int e = ids[k];
          for (int j = 0; j < I; j++) {
            double g = 0, u = 0;
            const size_t r = ((size_t)e * I + j) * H;
            for (int i = 0; i < H; i++) {
              const double xv = x.get((size_t)t * H + i);
              g += xv * w1.get(r + i);
              u += xv * w3.get(r + i);
            }
            h[j] = round_to((float)(act_ref(g, Act::Silu) * u), dt);
          }
          for (int n = 0; n < H; n++) {
            double acc = 0, c = 0;
            const size_t r = ((size_t)e * H + n) * I;
            for (int j = 0; j < I; j++) {
              const double v = h[j] * w2.get(r + j);
              acc += v, c += std::fabs(v);
            }
            ref[(size_t)t * H + n] += wk[k] * acc;
            cond[(size_t)t * H + n] += wk[k] * c;
          }
        }
      }
      void* ws = nullptr;
      CK(cudaMalloc(&ws, moe_workspace_bytes(T, E, K, H, I, dt)));
      for (int pi = 0; pi < 3; pi++)
        for (int epi = 0; epi < 3; epi++) {  // 0 none, 1 + residual, 2 + residual + rms_norm (w_offset 0 / 1)
          if (pi != 0 && epi != 0 && T > 40) continue;  // the epilogue is the same kernel on every path
          MoeArgs a;
          a.x = x.d, a.logits = lg.d, a.w1 = w1.d, a.w3 = w3.d, a.w2 = w2.d;
          a.T = T, a.E = E, a.K = K, a.H = H, a.I = I;
          a.out = out.d, a.workspace = ws, a.path = paths[pi];
          const float w_off = (T & 1) ? 1.f : 0.f;
          if (epi >= 1) a.residual = res.d;
          if (epi == 2) a.norm_w = nw.d, a.sum_out = sum.d, a.eps = 1e-5f, a.w_offset = w_off;
          out.poison(), sum.poison();
          CK(moe_forward(a, dt, 0));
          sync_check();
          out.down(), sum.down();
          // The moe value (or the residual sum) against the reference: each h element may round one ulp the
          // other way (fp32 vs fp64 dot products), hence 2·ulp of the conditioning, plus the final rounding(s).
          const Buf& sumv = epi == 2 ? sum : out;
          const double u = rtol_of(dt);
          Err e, en;
          for (size_t i = 0; i < ref.size(); i++) {
            const double r = ref[i] + (epi >= 1 ? res.get(i) : 0.0);
            e.add(sumv.get(i), r, 2 * u * cond[i] + 2e-5 * cond[i] + (epi >= 1 ? u * std::fabs(res.get(i)) : 0.0),
                  2 * u);
          }
          if (epi == 2) {
            // The norm of the GPU's own rounded sums (so only the norm's arithmetic is compared).
            for (int t = 0; t < T; t++) {
              double ss = 0;
              for (int n = 0; n < H; n++) ss += (double)sum.get((size_t)t * H + n) * sum.get((size_t)t * H + n);
              const double rs = 1.0 / std::sqrt(ss / H + 1e-5);
              for (int n = 0; n < H; n++) {
                const double r = sum.get((size_t)t * H + n) * rs * (nw.get(n) + w_off);
                en.add(out.get((size_t)t * H + n), r, 1e-5, 2 * u);
              }
            }
          }
          char name[200];
          std::snprintf(name, sizeof name, "moe %s %s T=%d E=%d K=%d H=%d I=%d%s%s", dname(dt), path_names[pi], T, E,
                        K, H, I, sh.bias0 ? " skewed" : "", epi == 0 ? "" : epi == 1 ? " +res" : " +res+rms_norm");
          report(e.ok() && en.ok(), name, e.max_abs, e.str() + e.firsts() + (epi == 2 ? " norm:" + en.str() : ""));
        }
      // Expert parallelism: two ranks of E/2 experts each (weights sliced by expert), their outputs summed (what
      // the all_reduce after the op does) equal the whole op.
      if (E % 2 == 0 && T <= 300)
        for (int pi = 1; pi < 3; pi++) {
          const int L = E / 2;
          Buf part(dt, (size_t)T * H);
          std::vector<double> acc((size_t)T * H, 0.0), mag((size_t)T * H, 0.0);
          for (int r = 0; r < 2; r++) {
            MoeArgs a;
            a.x = x.d, a.logits = lg.d;
            a.w1 = (char*)w1.d + (size_t)r * L * I * H * dsize(dt);
            a.w3 = (char*)w3.d + (size_t)r * L * I * H * dsize(dt);
            a.w2 = (char*)w2.d + (size_t)r * L * H * I * dsize(dt);
            a.T = T, a.E = E, a.K = K, a.H = H, a.I = I;
            a.expert_start = r * L, a.local_experts = L;
            a.out = part.d, a.workspace = ws, a.path = paths[pi];
            part.poison();
            CK(moe_forward(a, dt, 0));
            sync_check();
            part.down();
            for (size_t i = 0; i < acc.size(); i++) acc[i] += part.get(i), mag[i] += std::fabs(part.get(i));
          }
          const double u = rtol_of(dt);
          Err e;
          for (size_t i = 0; i < ref.size(); i++)
            e.add(acc[i], ref[i], 2 * u * cond[i] + 2e-5 * cond[i] + u * mag[i], 2 * u);
          char name[200];
          std::snprintf(name, sizeof name, "moe %s %s T=%d E=%d K=%d H=%d I=%d%s expert parallel 2 x %d", dname(dt),
                        path_names[pi], T, E, K, H, I, sh.bias0 ? " skewed" : "", L);
          report(e.ok(), name, e.max_abs, e.str() + e.firsts());
        }
      cudaFree(ws);
    }
  // Shapes the kernels do not take are refused, never run wrong.
  MoeArgs bad;
  bad.T = 1, bad.E = 4, bad.K = 5, bad.H = 64, bad.I = 64;
  const bool r1 = moe_forward(bad, DType::F16, 0) == cudaErrorInvalidValue;
  bad.K = 2, bad.H = 60;
  const bool r2 = moe_forward(bad, DType::F16, 0) == cudaErrorInvalidValue;
  cudaGetLastError();
  report(r1 && r2, "moe refuses top_k > experts and H % 8 != 0", 0);
}

}  // namespace mt

static void test_moe(Rng& rng) {
  mt::test_route(rng);
  mt::test_route_ep(rng);
  mt::test_forward(rng);
}
