// Quantised-linear kernels (src/kernels/quant.h) against CPU references written from src/quant/*.ts and
// src/ops/quant-linear.ts (the E4M3 encoder below is a port of fp8.ts's f32BitsToE4m3, independent of CUDA's).
// Included by kernels_test.cu (its Rng / Buf / Err / report helpers); group "quant": `kernels_test quant`.
#include "../src/kernels/quant.h"

namespace qt {

// ---- host E4M3 (src/quant/fp8.ts) ----
inline uint8_t e4m3_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  const uint32_t sign = (b >> 24) & 0x80, exp = (b >> 23) & 0xff, mant = b & 0x7fffff;
  if (exp == 0xff) return uint8_t(mant ? sign | 0x7f : sign | 0x7e);
  const int e = int(exp) - 120;
  if (e >= 16) return uint8_t(sign | 0x7e);
  if (e >= 1) {
    uint32_t q = (uint32_t(e) << 3) | (mant >> 20);
    const uint32_t rem = mant & 0xfffff;
    if (rem > 0x80000 || (rem == 0x80000 && (q & 1))) q++;
    return uint8_t(sign | (q > 0x7e ? 0x7e : q));
  }
  const int shift = 21 - e;
  if (shift > 24 || exp == 0) return uint8_t(sign);
  const uint32_t full = mant | 0x800000;
  uint32_t q = full >> shift;
  const uint32_t rem = full & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) q++;
  return uint8_t(sign | q);
}
inline float e4m3_val(uint8_t v) {
  const int s = v >> 7, e = (v >> 3) & 0xf, m = v & 7;
  if (e == 0xf && m == 7) return NAN;
  const float mag = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(float(8 + m), e - 10);
  return s ? -mag : mag;
}

inline double act_host(double x, Act a) { return act_ref(x, a); }

// Per-token quantisation (quantizeRowsE4m3): scales and the quantised values as floats.
inline void quant_rows(const Buf& x, int rows, int cols, std::vector<float>& sx, std::vector<uint8_t>& q) {
  sx.assign(rows, 1.f);
  q.assign(size_t(rows) * cols, 0);
  for (int r = 0; r < rows; r++) {
    float am = 0.f;
    for (int c = 0; c < cols; c++) am = std::max(am, std::fabs(x.get(size_t(r) * cols + c)));
    const float s = am > 0 ? am / 448.f : 1.f;
    sx[r] = s;
    for (int c = 0; c < cols; c++) q[size_t(r) * cols + c] = e4m3_bits(x.get(size_t(r) * cols + c) / s);
  }
}

// Dequantised int weights as the reference computes them (fp32(q·s), then rounded to the activation dtype).
inline float deq(QuantKind k, const std::vector<uint8_t>& w, const std::vector<float>& sc, int group, int K, int n,
                 int kk, DType dt) {
  float s, q;
  if (k == QuantKind::Int4) {
    const uint8_t b = w[(size_t(n) * K + kk) / 2];
    const int nib = (kk & 1) ? (b >> 4) : (b & 15);
    q = float((nib ^ 8) - 8);
    s = sc[size_t(n) * (K / group) + kk / group];
  } else {
    q = float(int8_t(w[size_t(n) * K + kk]));
    s = sc[n];
  }
  return round_to(q * s, dt);
}

// Random quantised weights [N, K] (bytes; no NaN codes for fp8) and scales in [0.001, 0.02] (per row, or per group
// of `group` for int4), on the host and the device. tscale (int kinds): 1 rounds every scale to the activation dtype
// dt (what the compiler writes now: the tensor-core variants' HMUL2 path), 2 all but every 7th (those take the
// exact per-weight path inside the same warp), 0 leaves them as drawn (older engines: the exact path everywhere).
struct QuantWeights {
  std::vector<uint8_t> w;
  std::vector<float> sc;
  uint8_t* dw = nullptr;
  float* dsc = nullptr;
  QuantWeights(Rng& rng, QuantKind kind, int N, int K, int group, int tscale = 0, DType dt = DType::F32)
      : w(kind == QuantKind::Int4 ? size_t(N) * K / 2 : size_t(N) * K),
        sc(kind == QuantKind::Int4 ? N * (K / group) : N) {
    for (auto& b : w) {
      b = uint8_t(rng.next());
      if (kind == QuantKind::Fp8 && (b & 0x7f) == 0x7f) b ^= 1;  // no NaN codes
    }
    for (auto& s : sc) s = rng.uniform(0.001f, 0.02f);
    for (size_t i = 0; i < sc.size(); i++)
      if (tscale == 1 || (tscale == 2 && i % 7)) sc[i] = round_to(sc[i], dt);
    CK(cudaMalloc(&dw, w.size()));
    CK(cudaMalloc(&dsc, sc.size() * 4));
    CK(cudaMemcpy(dw, w.data(), w.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dsc, sc.data(), sc.size() * 4, cudaMemcpyHostToDevice));
  }
  ~QuantWeights() {
    cudaFree(dw);
    cudaFree(dsc);
  }
  QuantWeights(const QuantWeights&) = delete;
  QuantWeights& operator=(const QuantWeights&) = delete;
};

struct LinCase {
  QuantKind kind;
  int M, N, K, group;
  bool bias, res;
  Act act;
  int tscale = 0;  // QuantWeights' tscale
};

// quant_gemv_glu (the gated act in an FP8 / int8 / int4 gate_up gemv's epilogue) against the pair it replaces, same
// variant: quant_gemv into gu [M, 2N], then gated_act. int8 / int4: where N % 16 == 0 every gate and up row sits at
// the same place in its 16-row mma tile as in the plain kernel, so the sums are the same and the output must be
// bit-identical; otherwise (rows at other tile places) within a few roundings. FP8 (variants 1-2, a row's sum never
// depends on the rows beside it): bit-identical at every N.
void test_quant_gemv_glu(Rng& rng, QuantKind kind, int M, int N, int K, int group, bool with_bias, Act act, DType dt) {
  Buf x(dt, size_t(M) * K), bias(dt, 2 * N), gu(dt, size_t(M) * 2 * N), ref(dt, size_t(M) * N), out(dt, size_t(M) * N);
  x.fill(rng, -2.f, 2.f);
  bias.fill(rng, -0.5f, 0.5f);
  x.up(), bias.up();
  const QuantWeights qw(rng, kind, 2 * N, K, group, 1, dt);
  const void* b = with_bias ? bias.d : nullptr;
  const bool exact = kind == QuantKind::Fp8 || N % 16 == 0;
  Err e;
  int ran = 0, differ = 0;
  std::string failed;
  for (int v = 0; v < quant_gemv_variants(kind); v++) {
    if (!quant_gemv_glu_takes(kind, v, M, K, group)) continue;
    ref.poison(), out.poison();
    CK(quant_gemv(v, kind, x.d, qw.dw, qw.dsc, group, b, nullptr, gu.d, M, 2 * N, K, Act::None, dt, true, 0));
    CK(gated_act(gu.d, ref.d, M, N, act, dt, 0));
    CK(quant_gemv_glu(v, kind, x.d, qw.dw, qw.dsc, group, b, out.d, M, N, K, act, dt, true, 0));
    sync_check();
    ref.down(), out.down();
    ran++;
    Err ev;
    for (size_t i = 0; i < ref.n; i++) {
      ev.add(out.get(i), ref.get(i), exact ? 0.0 : 1e-3, exact ? 0.0 : 4 * rtol_of(dt));
      e.add(out.get(i), ref.get(i), exact ? 0.0 : 1e-3, exact ? 0.0 : 4 * rtol_of(dt));
    }
    if (exact && out.h != ref.h) differ++;
    if (!ev.ok() || (exact && out.h != ref.h)) failed += " v" + std::to_string(v) + ":" + ev.firsts();
  }
  char name[200];
  std::snprintf(name, sizeof name, "quant_gemv_glu %s %s %s M=%d N=%d K=%d g%d%s = gemv + gated_act%s (%d variants)",
                quant_kind_name(kind), dname(dt), act == Act::Silu ? "silu" : "gelu_tanh", M, N, K, group,
                with_bias ? " bias" : "", exact ? ", bit-identical" : "", ran);
  report(e.ok() && differ == 0 && ran > 0, name, e.max_abs, e.str() + failed);
}

void test_quant_gemv(Rng& rng, const LinCase& c, DType dt) {
  const int M = c.M, N = c.N, K = c.K;
  Buf x(dt, size_t(M) * K), bias(dt, N), res(dt, size_t(M) * N), out(dt, size_t(M) * N);
  x.fill(rng, -2.f, 2.f);
  if (M > 1)
    for (int k = 0; k < K; k++) x.set(size_t(1) * K + k, 0.f);  // a zero row: scale 1 (fp8)
  bias.fill(rng, -0.5f, 0.5f);
  res.fill(rng, -1.f, 1.f);
  const QuantWeights qw(rng, c.kind, N, K, c.group, c.tscale, dt);
  const auto& [w, sc, dw, dsc] = qw;
  x.up(), bias.up(), res.up();

  // Reference (double sums; fp8: fround(fround(acc) * fround(sx*sw)) as quant-linear.ts). refp: the same with the
  // int weights unrounded (fp32(q · s), exact), what the post-scale variants compute (quant_gemv_post_scale).
  std::vector<double> ref(size_t(M) * N), refp(size_t(M) * N), mag(size_t(M) * N);
  std::vector<float> sx;
  std::vector<uint8_t> qx;
  if (c.kind == QuantKind::Fp8) quant_rows(x, M, K, sx, qx);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double acc = 0, accp = 0, a = 0;
      for (int k = 0; k < K; k++) {
        double t;
        if (c.kind == QuantKind::Fp8) {
          t = double(e4m3_val(qx[size_t(m) * K + k])) * e4m3_val(w[size_t(n) * K + k]);
        } else {
          const double xv = x.get(size_t(m) * K + k);
          const float wu = deq(c.kind, w, sc, c.group, K, n, k, DType::F32);  // fp32(q · s), exact
          t = xv * round_to(wu, dt);
          accp += xv * wu;
        }
        acc += t, a += std::fabs(t);
      }
      double scale = c.kind == QuantKind::Fp8 ? double(sx[m] * sc[n]) : 1.0;
      auto epilogue = [&](double v) {
        if (c.bias) v += bias.get(n);
        v = act_host(v, c.act);
        return c.res ? v + res.get(size_t(m) * N + n) : v;
      };
      const double acc_q = c.kind == QuantKind::Fp8 ? double(float(float(acc) * float(sx[m] * sc[n]))) : acc;
      ref[size_t(m) * N + n] = epilogue(acc_q);
      refp[size_t(m) * N + n] = epilogue(accp);
      mag[size_t(m) * N + n] = a * scale;
    }
  for (int variant = 0; variant < quant_gemv_variants(c.kind); variant++) {
    // More rows than the variant takes, or a post-scale variant at a K / group without whole iterations of one
    // scale: refused, never run.
    if (!quant_gemv_takes(c.kind, variant, M, K, c.group)) {
      report(quant_gemv(variant, c.kind, x.d, dw, dsc, c.group, nullptr, nullptr, out.d, M, N, K, c.act, dt, true, 0) ==
                 cudaErrorInvalidValue,
             std::string("quant_gemv ") + quant_kind_name(c.kind) + " v" + std::to_string(variant) + " refuses M=" +
                 std::to_string(M) + " K=" + std::to_string(K) + " g=" + std::to_string(c.group),
             0);
      continue;
    }
    const std::vector<double>& r = quant_gemv_post_scale(c.kind, variant) ? refp : ref;
    for (int alias = 0; alias < (c.res ? 2 : 1); alias++) {
      // alias: the residual is read from out itself (the runtime's in-place residual add).
      void* o = out.d;
      if (alias) CK(cudaMemcpy(out.d, res.d, res.h.size(), cudaMemcpyDeviceToDevice));
      else out.poison();
      CK(quant_gemv(variant, c.kind, x.d, dw, dsc, c.group, c.bias ? bias.d : nullptr,
                    c.res ? (alias ? o : res.d) : nullptr, o, M, N, K, c.act, dt, true, 0));
      sync_check();
      out.down();
      Err e;
      for (size_t i = 0; i < ref.size(); i++) e.add(out.get(i), r[i], 1e-5 * mag[i] + 1e-6, rtol_of(dt) * 1.01);
      char name[160];
      std::snprintf(name, sizeof name, "quant_gemv %s %s M=%d N=%d K=%d g=%d v%d%s%s%s%s%s", quant_kind_name(c.kind),
                    dname(dt), M, N, K, c.group, variant, c.tscale == 1 ? " scales in T" : c.tscale == 2 ? " scales mixed" : "",
                    c.bias ? " bias" : "", c.res ? " res" : "",
                    alias ? "(aliased)" : "", c.act == Act::None ? "" : (std::string(" ") + act_name(c.act)).c_str());
      report(e.ok(), name, e.max_abs, e.str() + e.firsts());
    }
  }
  if (c.kind == QuantKind::Fp8 && M <= kQuantGemvMaxM) {
    // The gemv over FP8 rows (fp8_gemv_rows): x as its producer hands it over (quantize_rows_fp8's bytes, checked
    // exact by test_quantize_rows), the same reference and bound.
    uint8_t* dq;
    float* ds;
    CK(cudaMalloc(&dq, size_t(M) * K));
    CK(cudaMalloc(&ds, size_t(M) * 4));
    CK(quantize_rows_fp8(x.d, dq, ds, M, K, dt, 0));
    for (int v = kFp8RowsGemvFirst - 1; v <= kFp8RowsGemvLast; v++) {
      out.poison();
      const cudaError_t e = fp8_gemv_rows(v, dq, ds, dw, dsc, c.bias ? bias.d : nullptr, c.res ? res.d : nullptr,
                                          out.d, M, N, K, c.act, dt, true, 0);
      char name[160];
      std::snprintf(name, sizeof name, "fp8_gemv_rows %s M=%d N=%d K=%d v%d%s%s%s", dname(dt), M, N, K, v,
                    c.bias ? " bias" : "", c.res ? " res" : "",
                    c.act == Act::None ? "" : (std::string(" ") + act_name(c.act)).c_str());
      if (v < kFp8RowsGemvFirst) {  // not one of its variants: refused, nothing launched
        report(e == cudaErrorInvalidValue, std::string(name) + " refused", 0);
        continue;
      }
      CK(e);
      sync_check();
      out.down();
      Err er;
      for (size_t i = 0; i < ref.size(); i++)
        er.add(out.get(i), ref[i], 1e-5 * mag[i] + 1e-6, rtol_of(dt) * 1.01);
      report(er.ok(), name, er.max_abs, er.str() + er.firsts());
    }
    cudaFree(dq);
    cudaFree(ds);
  }
  // A variant beyond the kind's (int8 / int4 have 0-21) is refused, never run.
  if (c.kind != QuantKind::Fp8)
    report(quant_gemv(quant_gemv_variants(c.kind), c.kind, x.d, dw, dsc, c.group, nullptr, nullptr, out.d, M, N, K,
                      c.act, dt, true, 0) == cudaErrorInvalidValue,
           std::string("quant_gemv ") + quant_kind_name(c.kind) + " variant " +
               std::to_string(quant_gemv_variants(c.kind)) + " refused",
           0);
  // The context path's dequantisation, bit for bit.
  if (c.kind != QuantKind::Fp8) {
    const int n0 = N > 3 ? 3 : 0, rows = N - n0;
    Buf wd(dt, size_t(rows) * K);
    wd.poison();
    CK(dequantize_weight(c.kind, dw, dsc, c.group, wd.d, n0, rows, K, dt, 0));
    sync_check();
    wd.down();
    Err e;
    for (int n = 0; n < rows; n++)
      for (int k = 0; k < K; k++) e.add(wd.get(size_t(n) * K + k), deq(c.kind, w, sc, c.group, K, n0 + n, k, dt), 0, 0);
    char name[128];
    std::snprintf(name, sizeof name, "dequantize_weight %s %s rows %d.. of %d K=%d g=%d", quant_kind_name(c.kind),
                  dname(dt), n0, N, K, c.group);
    report(e.ok(), name, e.max_abs, e.str() + e.firsts());
  }
}

// The rms_norm prologue (quant_gemv with GemvPro::RmsNorm): the reference takes the vector the unfused pair would
// feed the gemv — norms.cu's rms_norm output, downloaded — then quantises (fp8) or dequantises (int) on the host
// with fp64 sums. Bound: as test_quant_gemv, plus up to 8 vector elements rounded the other way (the fused kernel
// sums x² in another order, so inv_rms may differ in its last bit): each moves one term by one rounding of T
// (int) or, through the E4M3 code of that element, by one E4M3 step (1/8 of the term, fp8).
void test_quant_gemv_rms(Rng& rng, QuantKind kind, int M, int N, int K, int group, DType dt) {
  const float eps = 1e-5f;
  Buf x(dt, size_t(M) * K), nw(dt, K), y(dt, size_t(M) * K), res(dt, size_t(M) * N), out(dt, size_t(M) * N);
  x.fill(rng, -2.f, 2.f);
  nw.fill(rng, 0.5f, 1.5f);
  res.fill(rng, -1.f, 1.f);
  const QuantWeights qw(rng, kind, N, K, group);
  const auto& [w, sc, dw, dsc] = qw;
  x.up(), nw.up(), res.up();
  CK(rms_norm(x.d, nullptr, nw.d, 0.f, y.d, nullptr, M, K, eps, dt, 0));
  sync_check();
  y.down();
  std::vector<float> sx;
  std::vector<uint8_t> qx;
  if (kind == QuantKind::Fp8) quant_rows(y, M, K, sx, qx);
  std::vector<double> ref(size_t(M) * N), mag(size_t(M) * N), flip(size_t(M) * N);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double acc = 0, a = 0, mx = 0;
      for (int k = 0; k < K; k++) {
        const double t = kind == QuantKind::Fp8
                             ? double(e4m3_val(qx[size_t(m) * K + k])) * e4m3_val(w[size_t(n) * K + k])
                             : double(y.get(size_t(m) * K + k)) * deq(kind, w, sc, group, K, n, k, dt);
        acc += t, a += std::fabs(t), mx = std::max(mx, std::fabs(t));
      }
      const double scale = kind == QuantKind::Fp8 ? double(sx[m] * sc[n]) : 1.0;
      double v = kind == QuantKind::Fp8 ? double(float(float(acc) * float(sx[m] * sc[n]))) : acc;
      ref[size_t(m) * N + n] = v + res.get(size_t(m) * N + n);
      mag[size_t(m) * N + n] = a * scale;
      flip[size_t(m) * N + n] = 8.0 * mx * scale * (kind == QuantKind::Fp8 ? 0.125 : rtol_of(dt));
    }
  GemvPrologue pro;
  pro.kind = GemvPro::RmsNorm, pro.norm_w = nw.d, pro.eps = eps;
  Err e;
  std::string vs;
  for (int variant = 0; variant < quant_gemv_variants(kind); variant++) {
    if (!quant_gemv_has_prologue(kind, variant)) continue;
    out.poison();
    CK(quant_gemv(variant, kind, x.d, dw, dsc, group, nullptr, res.d, out.d, M, N, K, Act::None, dt, true, 0, pro));
    sync_check();
    out.down();
    for (size_t i = 0; i < ref.size(); i++) e.add(out.get(i), ref[i], 1e-5 * mag[i] + flip[i] + 1e-6, rtol_of(dt) * 1.01);
    vs += " v" + std::to_string(variant);
  }
  char name[160];
  std::snprintf(name, sizeof name, "quant_gemv %s %s M=%d N=%d K=%d g=%d +rms_norm res (%s)", quant_kind_name(kind),
                dname(dt), M, N, K, group, vs.c_str() + 1);
  report(e.ok(), name, e.max_abs, e.str() + e.firsts());
}

void test_quantize_rows(Rng& rng, DType dt, int rows, int cols) {
  Buf x(dt, size_t(rows) * cols);
  x.fill(rng, -3.f, 3.f);
  for (int c = 0; c < cols; c++) x.set(c, 0.f);  // row 0 all zero: scale 1
  if (rows > 2) x.set(size_t(2) * cols + 1, 1e4f);  // an outlier
  if (rows > 4) {
    // Row 4: amax 448 · 2^-3 (scale exactly 2^-3) and every E4M3 rounding midpoint (·2^-3, both signs): quotients
    // that are exact ties, which the division-free path must send to __fdiv_rn's ties-to-even.
    x.set(size_t(4) * cols, 56.f);
    for (int c = 1; c < cols; c++) {
      const int code = (c - 1) % 0x7e;  // midpoint between codes `code` and `code + 1` (0..0x7d)
      const float mid = 0.5f * (e4m3_val(uint8_t(code)) + e4m3_val(uint8_t(code + 1)));
      x.set(size_t(4) * cols + c, (c & 1 ? 1.f : -1.f) * mid * 0.125f);
    }
  }
  x.up();
  uint8_t* dq;
  float* ds;
  CK(cudaMalloc(&dq, size_t(rows) * cols + 16));
  CK(cudaMalloc(&ds, rows * 4));
  CK(cudaMemset(dq, 0x7f, size_t(rows) * cols));
  CK(quantize_rows_fp8(x.d, dq, ds, rows, cols, dt, 0));
  sync_check();
  std::vector<uint8_t> q(size_t(rows) * cols);
  std::vector<float> s(rows);
  CK(cudaMemcpy(q.data(), dq, q.size(), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(s.data(), ds, rows * 4, cudaMemcpyDeviceToHost));
  std::vector<float> rs;
  std::vector<uint8_t> rq;
  quant_rows(x, rows, cols, rs, rq);
  size_t bad = 0;
  for (int r = 0; r < rows; r++) bad += s[r] != rs[r];
  for (size_t i = 0; i < q.size(); i++) bad += q[i] != rq[i];
  char name[96];
  std::snprintf(name, sizeof name, "quantize_rows_fp8 %s %dx%d (scales + bytes exact)", dname(dt), rows, cols);
  report(bad == 0, name, double(bad), "mismatches=" + std::to_string(bad));
  // The FP8 GEMM epilogue on these scales: out = act(acc * fp32(sx*sw) + bias) + res.
  const int N = rows % 2 ? 37 : 40;  // 40: the 8-wide vector path; 37: the scalar one
  std::vector<float> acc(size_t(rows) * N), sw(N);
  for (auto& a : acc) a = rng.uniform(-5000.f, 5000.f);
  for (auto& w : sw) w = rng.uniform(1e-3f, 3e-3f);
  Buf bias(dt, N), res(dt, size_t(rows) * N), out(dt, size_t(rows) * N);
  bias.fill(rng, -1.f, 1.f);
  res.fill(rng, -1.f, 1.f);
  bias.up(), res.up();
  float *dacc, *dsw;
  CK(cudaMalloc(&dacc, acc.size() * 4));
  CK(cudaMalloc(&dsw, N * 4));
  CK(cudaMemcpy(dacc, acc.data(), acc.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dsw, sw.data(), N * 4, cudaMemcpyHostToDevice));
  out.poison();
  CK(fp8_scale_epilogue(dacc, ds, dsw, bias.d, res.d, out.d, rows, N, Act::Silu, dt, 0));
  sync_check();
  out.down();
  Err e;
  for (int r = 0; r < rows; r++)
    for (int n = 0; n < N; n++) {
      double v = double(float(acc[size_t(r) * N + n] * float(rs[r] * sw[n]))) + bias.get(n);
      v = act_host(v, Act::Silu) + res.get(size_t(r) * N + n);
      e.add(out.get(size_t(r) * N + n), v, 1e-5, rtol_of(dt) * 1.01);
    }
  std::snprintf(name, sizeof name, "fp8_scale_epilogue %s %dx%d silu bias res", dname(dt), rows, N);
  report(e.ok(), name, e.max_abs, e.str() + e.firsts());
  cudaFree(dq), cudaFree(ds), cudaFree(dacc), cudaFree(dsw);
}


// A host array's bytes on the device (the caller frees them).
inline void* to_dev(const void* h, size_t bytes) {
  void* d;
  CK(cudaMalloc(&d, bytes));
  CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
  return d;
}

// One step of sequences (cached tokens, new tokens) over a paged cache of nKV heads of D dims and tpb-token blocks,
// block b of sequence s at block 1 + b·S + s (interleaved; block 0 belongs to none): the StepLayout's arrays and
// the block tables on the host and on the device (freed with it).
struct PagedStep {
  int S, T = 0, maxb = 0, max_new = 0, max_len = 0, num_blocks;
  size_t block_elems, v_off;  // elements of a block (K then V) and V's offset in it
  int nKV, D, tpb;
  std::vector<int32_t> bt, positions, token_seq, seq_start, seq_len;
  int32_t *d_bt, *d_pos, *d_ts, *d_ss, *d_sl;

  PagedStep(const std::vector<std::pair<int, int>>& seqs, int nKV_, int D_, int tpb_)
      : S(int(seqs.size())), nKV(nKV_), D(D_), tpb(tpb_), seq_start(seqs.size() + 1), seq_len(seqs.size()) {
    for (auto& q : seqs) {
      maxb = std::max(maxb, (q.first + q.second + tpb - 1) / tpb);
      T += q.second;
      max_new = std::max(max_new, q.second);
      max_len = std::max(max_len, q.first + q.second);
    }
    num_blocks = S * maxb + 1;
    block_elems = size_t(2) * nKV * tpb * D;
    v_off = size_t(nKV) * tpb * D;
    bt.resize(size_t(S) * maxb);
    for (int s = 0; s < S; s++)
      for (int b = 0; b < maxb; b++) bt[size_t(s) * maxb + b] = 1 + b * S + s;
    for (int s = 0; s < S; s++) {
      seq_start[s] = int(positions.size());
      for (int i = 0; i < seqs[s].second; i++) positions.push_back(seqs[s].first + i), token_seq.push_back(s);
      seq_len[s] = seqs[s].first + seqs[s].second;
    }
    seq_start[S] = T;
    d_bt = static_cast<int32_t*>(to_dev(bt.data(), bt.size() * 4));
    d_pos = static_cast<int32_t*>(to_dev(positions.data(), positions.size() * 4));
    d_ts = static_cast<int32_t*>(to_dev(token_seq.data(), token_seq.size() * 4));
    d_ss = static_cast<int32_t*>(to_dev(seq_start.data(), seq_start.size() * 4));
    d_sl = static_cast<int32_t*>(to_dev(seq_len.data(), seq_len.size() * 4));
  }
  ~PagedStep() {
    for (int32_t* p : {d_bt, d_pos, d_ts, d_ss, d_sl}) cudaFree(p);
  }
  PagedStep(const PagedStep&) = delete;
  PagedStep& operator=(const PagedStep&) = delete;
  size_t pool_elems() const { return size_t(num_blocks) * block_elems; }
  StepLayout layout() const { return {T, S, d_pos, d_ts, d_ss, d_sl, max_new, max_len}; }
  // A one-layer cache of this layout at `base` (dtype dt).
  PagedKV kv(void* base, DType dt) const { return {base, dt, 1, num_blocks, nKV, D, tpb, d_bt, maxb}; }
  // Element offset of K[sequence s, position pos, KV head hk, 0] (V at + v_off).
  size_t slot(int s, int pos, int hk) const {
    return size_t(bt[size_t(s) * maxb + pos / tpb]) * block_elems + (size_t(hk) * tpb + pos % tpb) * D;
  }
};

// FP8 KV cache: paged_attention over an E4M3 cache against paged_attention over a cache of the activation dtype dt
// (fp16 or bf16) that holds the same values (history rows = e4m3 codes · scale, exact in both; scales powers of
// two). This step's own K/V enter both unrounded, so the outputs agree up to summation order; the new rows the fp8
// run writes must be exactly e4m3(16-bit row / scale) of the rows the 16-bit run writes (that path is checked
// against fp64 in test_attention). Both runs take AttnParams::decode_variant `variant` and mma_cfg `cfg` (variant
// 4: the same tensor-core kernel, which rounds the softmax weights for P·V: to dt over a 16-bit cache, to fp16 over
// an FP8 one, so with fp16 they agree on that too but for the own key's tile at head_dim 128, and with bf16 the
// 16-bit run's weights are the coarser: see atol).
void test_fp8_kv(Rng& rng, int D, std::vector<std::pair<int, int>> seqs, float k_scale, float v_scale, int nH = 4,
                 int nKV = 2, int variant = 0, int cfg = 0, DType dt = DType::F16) {
  const int tpb = 16;
  const PagedStep ps(seqs, nKV, D, tpb);
  const int S = ps.S, T = ps.T, max_new = ps.max_new;
  const size_t block_elems = ps.block_elems, pool_elems = ps.pool_elems();
  std::vector<uint8_t> codes(pool_elems);
  Buf pool16(dt, pool_elems);
  for (size_t i = 0; i < pool_elems; i++) {
    uint8_t c = uint8_t(rng.next());
    if ((c & 0x7f) == 0x7f) c ^= 1;
    const bool is_v = (i % block_elems) >= size_t(nKV) * tpb * D;
    codes[i] = c;
    pool16.set(i, e4m3_val(c) * (is_v ? v_scale : k_scale));
  }
  std::vector<float> inv_freq(D / 2);
  for (int i = 0; i < D / 2; i++) inv_freq[i] = float(std::pow(10000.0, -2.0 * i / D));
  Buf q(dt, size_t(T) * nH * D), k(dt, size_t(T) * nKV * D), v(dt, size_t(T) * nKV * D);
  q.fill(rng, -1.f, 1.f), k.fill(rng, -2.f, 2.f), v.fill(rng, -2.f, 2.f);
  q.up(), k.up(), v.up();
  pool16.up();
  void* pool8 = to_dev(codes.data(), codes.size());
  auto* d_if = static_cast<float*>(to_dev(inv_freq.data(), inv_freq.size() * 4));
  const size_t wsb = attention_workspace_bytes(T, S, nH, D, ps.max_len, nKV);
  void* ws;
  CK(cudaMalloc(&ws, wsb));
  const StepLayout st = ps.layout();
  AttnParams ap{};
  ap.layer = 0, ap.num_heads = nH, ap.num_kv_heads = nKV, ap.head_dim = D;
  ap.scale = 1.f / std::sqrt(float(D));
  ap.rotary_dim = D, ap.rope_style = RopeStyle::Neox, ap.inv_freq = d_if;
  ap.decode_variant = variant, ap.mma_cfg = cfg;
  PagedKV kv = ps.kv(pool16.d, dt);
  Buf o16(dt, size_t(T) * nH * D), o8(dt, size_t(T) * nH * D);
  o16.poison();
  CK(paged_attention(q.d, nH * D, k.d, nKV * D, v.d, nKV * D, o16.d, kv, st, ap, dt, ws, 0));
  sync_check();
  kv.base = pool8, kv.dtype = DType::FP8_E4M3;
  ap.k_scale = k_scale, ap.v_scale = v_scale;
  o8.poison();
  CK(paged_attention(q.d, nH * D, k.d, nKV * D, v.d, nKV * D, o8.d, kv, st, ap, dt, ws, 0));
  sync_check();
  o16.down(), o8.down(), pool16.down();
  std::vector<uint8_t> got(codes.size());
  CK(cudaMemcpy(got.data(), pool8, got.size(), cudaMemcpyDeviceToHost));
  Err e;
  const double tol = std::max(2e-3, (double)rtol_of(dt));  // bf16: an output rounded the other way is 1/256-1/128
  // bf16 through variant 4: each softmax weight of the 16-bit run is rounded to bf16 (off by up to 2^-8 of itself)
  // and the FP8 run's to fp16 (2^-11), so the outputs differ by up to (2^-8 + 2^-11) of the largest |V| averaged
  // (test_attention's bound on V's scale; E4M3's largest value is 448), plus each output's own rounding (tol
  // relative). Session 10 run 3 measured max_err 1.0 and 4.0 at v_scale 2 (this atol: 3.9; passed with 3.5); session
  // 11 run 2, keys as the mma's rows, the same 1.0 and 4.0, passed.
  const int runs = kd::decode_variant_run(ap, T, ps.max_len, true, true);
  const double weight_err = std::ldexp(1.0, -8) + std::ldexp(1.0, -11);
  // fp16 through variant 4 at head_dim 128 with DIRECT fragments (every configuration but fp8_tile): the FP8 run
  // adds the step's own key after its tiles, while the 16-bit run takes it in its last tile, so that tile's weights
  // are rounded to fp16 against another running maximum. A weight is then off by up to 2^-11 of itself in either
  // run, the output by up to 2^-10 of the largest |V| averaged. Session 14 run 3 (mma_cfg 9's data in `kernels_test
  // quant`): 0.26636 against 0.27197, which the bound tol (2e-3 relative) failed.
  const bool direct = dt == DType::F16 && max_new == 1 && runs == 4 && D == kd::kDecodeMmaSweepDp &&
                      !kd::kDecodeMmaConfigs[cfg].fp8_tile;
  const double atol = dt == DType::BF16 && max_new == 1 && runs == 4 ? weight_err * 448.0 * v_scale
                      : direct                                        ? std::ldexp(1.0, -10) * 448.0 * v_scale
                                                                      : tol;
  for (size_t i = 0; i < o16.n; i++) e.add(o8.get(i), o16.get(i), atol, tol);
  // Cache bytes: new slots = e4m3(16-bit row / scale); everything else untouched.
  size_t bad = 0;
  std::vector<uint8_t> is_new(pool_elems, 0);
  for (int s = 0; s < S; s++)
    for (int pos = seqs[s].first; pos < ps.seq_len[s]; pos++)
      for (int hk = 0; hk < nKV; hk++)
        for (int half = 0; half < 2; half++) {
          const size_t base = ps.slot(s, pos, hk) + (half ? ps.v_off : 0);
          for (int d = 0; d < D; d++) {
            is_new[base + d] = 1;
            bad += got[base + d] != e4m3_bits(pool16.get(base + d) / (half ? v_scale : k_scale));
          }
        }
  for (size_t i = 0; i < pool_elems; i++) bad += !is_new[i] && got[i] != codes[i];
  char name[200];
  std::snprintf(name, sizeof name,
                "paged_attention fp8 KV %s D=%d %d/%d heads %s (max_new %d, %d seqs) k_scale %g v_scale %g decode_variant %d"
                " (runs v%d) mma_cfg %d vs 16-bit cache",
                dname(dt), D, nH, nKV, max_new == 1 ? "decode" : "context", max_new, S, k_scale, v_scale, variant,
                runs, cfg);
  report(e.ok() && bad == 0, name, e.max_abs, e.str() + e.firsts() + " cache byte mismatches=" + std::to_string(bad));
  for (void* p : {pool8, static_cast<void*>(d_if), ws}) cudaFree(p);
}

// FP8 rows from a producer (kernels.h Fp8Rows: the FP8 GEMM's activation quantisation fused into rms_norm /
// add_rms_norm / layer_norm / gated_act): codes and scales byte for byte those of the producer's own output
// quantised by quantize_rows_fp8 (what the GEMM would have read), the residual sum unchanged, y not written.
// kind 0 rms_norm, 1 add_rms_norm, 2 layer_norm (bias), 3 gated_act silu.
void test_fp8_rows(Rng& rng, DType dt, int kind, int rows, int cols, int max_threads = 0, int variant = 0) {
  static const char* kNames[] = {"rms_norm", "add_rms_norm", "layer_norm", "gated_act silu"};
  const bool gated = kind == 3, add = kind == 1;
  const size_t in_cols = gated ? size_t(2) * cols : size_t(cols);
  Buf x(dt, rows * in_cols), res(dt, size_t(rows) * cols), w(dt, cols), b(dt, cols);
  const size_t n = size_t(rows) * cols;
  Buf y(dt, n), sum(dt, n), y2(dt, n), sum2(dt, n);
  x.fill(rng, -3.f, 3.f), res.fill(rng, -2.f, 2.f), w.fill(rng, 0.5f, 1.5f), b.fill(rng, -0.2f, 0.2f);
  if (rows > 1) x.set(in_cols + 3, 60.f);  // an outlier row
  x.up(), res.up(), w.up(), b.up();
  y.poison(), y2.poison(), sum.poison(), sum2.poison();
  auto run = [&](void* yo, void* so, const Fp8Rows* f) {
    switch (kind) {
      case 0: return rms_norm(x.d, nullptr, w.d, 0.f, yo, nullptr, rows, cols, 1e-5f, dt, 0, nullptr, nullptr, f);
      case 1: return rms_norm(x.d, res.d, w.d, 0.f, yo, so, rows, cols, 1e-5f, dt, 0, nullptr, nullptr, f);
      case 2:
        return layer_norm(x.d, nullptr, w.d, 0.f, b.d, yo, nullptr, rows, cols, 1e-5f, dt, 0, nullptr, nullptr, f);
      default: return gated_act(x.d, yo, rows, cols, Act::Silu, dt, 0, f);
    }
  };
  uint8_t *dq, *dq2;
  float *ds, *ds2;
  CK(cudaMalloc(&dq, size_t(rows) * cols + 16));
  CK(cudaMalloc(&dq2, size_t(rows) * cols + 16));
  CK(cudaMalloc(&ds, rows * 4));
  CK(cudaMalloc(&ds2, rows * 4));
  CK(cudaMemset(dq, 0x7f, size_t(rows) * cols));
  CK(cudaMemset(dq2, 0x55, size_t(rows) * cols));
  CK(run(y.d, sum.d, nullptr));
  CK(quantize_rows_fp8(y.d, dq, ds, rows, cols, dt, 0));
  const Fp8Rows f{dq2, ds2, max_threads, variant};
  CK(run(y2.d, sum2.d, &f));
  sync_check();
  std::vector<uint8_t> q(size_t(rows) * cols), q2(q.size());
  std::vector<float> sc(rows), sc2(rows);
  CK(cudaMemcpy(q.data(), dq, q.size(), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(q2.data(), dq2, q.size(), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(sc.data(), ds, rows * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(sc2.data(), ds2, rows * 4, cudaMemcpyDeviceToHost));
  y2.down(), sum.down(), sum2.down();
  size_t bad = 0, ywritten = 0;
  for (int r = 0; r < rows; r++) bad += sc[r] != sc2[r];
  for (size_t i = 0; i < q.size(); i++) bad += q[i] != q2[i];
  if (add) bad += sum.h != sum2.h;
  for (size_t i = 0; i < y2.h.size(); i++) ywritten += y2.h[i] != 0xFF;
  char name[128];
  const char* how = variant == 1             ? "staged"
                    : max_threads == 128 ? "128 threads"
                    : max_threads == 256 ? "256 threads"
                                         : "512 threads";
  std::snprintf(name, sizeof name, "fp8 rows from %s %s %dx%d, %s (= quantize_rows_fp8 of its output, bytes)",
                kNames[kind], dname(dt), rows, cols, how);
  report(bad == 0 && ywritten == 0, name, double(bad),
         "mismatches=" + std::to_string(bad) + " y bytes written=" + std::to_string(ywritten));
  cudaFree(dq), cudaFree(dq2), cudaFree(ds), cudaFree(ds2);
}

}  // namespace qt

static void test_quant(Rng& rng) {
  // The E4M3 port against known codes: 448 max, 2^-9 smallest subnormal, ties to even, saturation.
  const bool enc = qt::e4m3_bits(448.f) == 0x7e && qt::e4m3_bits(1e9f) == 0x7e && qt::e4m3_bits(-1e9f) == 0xfe &&
                   qt::e4m3_bits(std::ldexp(1.f, -9)) == 0x01 && qt::e4m3_bits(std::ldexp(1.f, -10)) == 0x00 &&
                   qt::e4m3_bits(1.0625f) == 0x38 && qt::e4m3_bits(1.1875f) == 0x3a && qt::e4m3_val(0x7e) == 448.f &&
                   qt::e4m3_val(0x38) == 1.f;
  report(enc, "host e4m3 encoder (known codes)", enc ? 0 : 1);
  {
    // Which variant takes which call, stated here apart from quant_gemv.cu's rule (quant_gemv_takes): the cases below
    // choose which variants to expect refused with that same function, so a wrong rule would skip a variant there
    // instead of failing. (kind, variant, M, K, group, takes)
    struct Take {
      QuantKind k;
      int v, M, K, group;
      bool takes;
    };
    const QuantKind F8 = QuantKind::Fp8, I8 = QuantKind::Int8, I4 = QuantKind::Int4;
    const Take table[] = {
        {F8, 8, 4, 4096, 0, true},      {F8, 8, 5, 4096, 0, false},     {F8, 11, 1, 4096, 0, false},
        {I8, 2, 4, 4096, 0, true},      {I8, 2, 5, 4096, 0, false},     {I8, 3, 16, 4096, 0, true},
        {I8, 3, 17, 4096, 0, false},    {I8, 7, 8, 4096, 0, true},      {I8, 7, 9, 4096, 0, false},
        {I8, 13, 8, 4096, 0, true},     {I8, 13, 8, 352, 0, false},     {I8, 13, 8, 448, 0, true},
        {I8, 19, 256, 448, 0, true},    {I8, 19, 257, 448, 0, false},   {I8, 19, 1, 352, 0, false},
        {I8, 22, 1, 4096, 0, false},    {I4, 0, 1, 4096, 96, true},     {I4, 3, 1, 4096, 96, false},
        {I4, 7, 1, 4096, 32, true},     {I4, 13, 1, 4096, 64, false},   {I4, 13, 1, 4096, 128, true},
        {I4, 13, 1, 384, 128, true},    {I4, 13, 1, 352, 32, false},    {I4, 19, 64, 384, 64, true},
        {I4, 19, 64, 352, 32, false},   {I4, 19, 64, 4096, 96, false},  {I4, 21, 256, 11008, 128, true},
        {I4, 20, 257, 4096, 128, false}, {I4, 16, 9, 4096, 128, false},
    };
    std::string bad;
    for (const Take& e : table)
      if (quant_gemv_takes(e.k, e.v, e.M, e.K, e.group) != e.takes)
        bad += std::string(" ") + quant_kind_name(e.k) + " v" + std::to_string(e.v) + " M=" + std::to_string(e.M) +
               " K=" + std::to_string(e.K) + " g=" + std::to_string(e.group);
    report(bad.empty(), "quant_gemv_takes: a table of calls taken and refused", bad.empty() ? 0 : 1, bad);
  }
  for (DType dt : {DType::F16, DType::BF16}) {
    qt::test_quantize_rows(rng, dt, 5, 352);
    qt::test_quantize_rows(rng, dt, 3, 4104);  // cols % 8 == 0, not a power of two
    qt::test_quantize_rows(rng, dt, 512, 4096);  // 2M elements: the division-free path's near-midpoint fallbacks
    // Producers writing FP8 rows: widths of 1, 2, 4 and 8 vectors per thread (8B hidden / intermediate, 32768),
    // a width that leaves threads idle (72), the tiny fixtures' 128 / 352.
    for (int kind = 0; kind < 4; kind++)
      for (const auto& rc : {std::pair<int, int>{3, 128}, {5, 352}, {2, 72}, {7, 4096}, {4, 14336}, {2, 32768}})
        for (int mt : {0, 128, 256}) qt::test_fp8_rows(rng, dt, kind, rc.first, rc.second, mt, 0);
    // gated_act's staged variant (the row in shared memory; 32768 needs the 64 KB opt-in).
    for (const auto& rc : {std::pair<int, int>{3, 128}, {5, 352}, {2, 72}, {7, 4096}, {4, 14336}, {2, 32768}})
      qt::test_fp8_rows(rng, dt, 3, rc.first, rc.second, 0, 1);
  }
  {  // Refused, nothing launched: a width that is not a multiple of 8, fp32 activations.
    Buf x(DType::F16, 2 * 36), w(DType::F16, 36);
    uint8_t* dq;
    float* ds;
    CK(cudaMalloc(&dq, 128));
    CK(cudaMalloc(&ds, 16));
    const Fp8Rows f{dq, ds};
    const bool ok = rms_norm(x.d, nullptr, w.d, 0.f, nullptr, nullptr, 2, 36, 1e-5f, DType::F16, 0, nullptr, nullptr,
                             &f) == cudaErrorNotSupported &&
                    gated_act(x.d, nullptr, 1, 36, Act::Silu, DType::F16, 0, &f) == cudaErrorNotSupported &&
                    gated_act(x.d, nullptr, 1, 8, Act::Silu, DType::F32, 0, &f) == cudaErrorNotSupported;
    cudaGetLastError();
    report(ok, "fp8 rows refused (width % 8 != 0, fp32 activations)", ok ? 0 : 1);
    cudaFree(dq), cudaFree(ds);
  }
  const qt::LinCase cases[] = {
      {QuantKind::Fp8, 1, 300, 4096, 0, false, false, Act::None},
      {QuantKind::Fp8, 4, 77, 352, 0, true, true, Act::Silu},
      {QuantKind::Fp8, 3, 129, 11008, 0, false, true, Act::None},  // 3 x 11008 bytes of shared memory
      {QuantKind::Int8, 1, 300, 4096, 0, false, false, Act::None},
      {QuantKind::Int8, 4, 77, 352, 0, true, true, Act::GeluTanh},
      {QuantKind::Int4, 1, 300, 4096, 128, false, false, Act::None},
      {QuantKind::Int4, 2, 77, 352, 32, true, true, Act::Silu},
      {QuantKind::Int4, 4, 65, 512, 128, false, true, Act::None},
      // Scales representable in T (the tensor-core variants' fast path), and mixed with ones that are not.
      {QuantKind::Int8, 1, 300, 4096, 0, false, false, Act::None, 1},
      {QuantKind::Int8, 3, 77, 352, 0, true, true, Act::Silu, 2},
      {QuantKind::Int8, 2, 129, 11008, 0, false, true, Act::None, 1},
      {QuantKind::Int4, 1, 300, 4096, 128, false, false, Act::None, 1},
      {QuantKind::Int4, 1, 4096, 11008, 128, false, true, Act::None, 1},  // Llama-2-7B's down_proj
      {QuantKind::Int4, 2, 77, 352, 32, true, true, Act::GeluTanh, 2},
      {QuantKind::Int4, 4, 65, 512, 64, false, true, Act::None, 1},
      // Groups of 256 (8 chunks: the post-scale variants' scale index of an iteration shifts by 3).
      {QuantKind::Int4, 2, 129, 4096, 256, true, true, Act::None, 1},
      // The tiny fixtures' shapes (hidden 128, Llama intermediate 352, GPT-J 512) at 3 rows, the packed golden
      // check's decode steps.
      {QuantKind::Int4, 3, 256, 128, 32, false, false, Act::None, 1},
      {QuantKind::Int4, 3, 128, 352, 32, false, true, Act::None, 1},
      {QuantKind::Int4, 3, 512, 128, 32, true, false, Act::GeluTanh, 1},
      {QuantKind::Int4, 3, 128, 512, 128, true, true, Act::None, 1},
      {QuantKind::Int8, 3, 704, 128, 0, false, false, Act::None, 1},
      // 1-4 rows with x staged in shared memory past 48 KB with the ring (the opt-in), and rows x K past
      // kIntMmaStageBytes (64 KB: x read from global memory as for 5-16 rows).
      {QuantKind::Int4, 2, 300, 11008, 128, false, true, Act::None, 1},
      {QuantKind::Int4, 4, 65, 11008, 128, true, false, Act::None, 1},
      {QuantKind::Int8, 3, 77, 11008, 0, false, true, Act::None, 1},
      // 5-16 token rows: the tensor-core variants only (rows g and g + 8 of the mma's A); 0-2 refuse them.
      {QuantKind::Int8, 5, 77, 352, 0, true, true, Act::Silu, 2},
      {QuantKind::Int8, 16, 300, 4096, 0, false, true, Act::None, 1},
      {QuantKind::Int4, 8, 129, 4096, 128, false, false, Act::None, 1},
      {QuantKind::Int4, 13, 65, 512, 32, true, true, Act::GeluTanh, 2},
      {QuantKind::Int4, 16, 300, 11008, 128, false, true, Act::None, 1},
      // 17-256 rows: the weight-only GEMM only (variants 19-21; token tiles of 16 / 32, several tiles past 32, odd
      // counts of K iterations, the exact path at mixed scales); 257 refused.
      {QuantKind::Int4, 24, 300, 4096, 128, false, true, Act::None, 1},
      {QuantKind::Int4, 64, 129, 512, 32, true, true, Act::GeluTanh, 2},
      {QuantKind::Int4, 65, 77, 384, 64, false, true, Act::None, 1},
      {QuantKind::Int4, 130, 200, 11008, 128, true, false, Act::Silu, 1},
      {QuantKind::Int8, 40, 300, 4096, 0, false, true, Act::None, 1},
      {QuantKind::Int8, 256, 65, 448, 0, true, true, Act::Silu, 2},
      {QuantKind::Int8, 9, 77, 4096, 0, false, false, Act::None, 0},
      {QuantKind::Int4, 257, 16, 128, 32, false, false, Act::None, 1},
  };
  for (DType dt : {DType::F16, DType::BF16})
    for (const auto& c : cases) qt::test_quant_gemv(rng, c, dt);
  for (DType dt : {DType::F16, DType::BF16}) {
    qt::test_quant_gemv_glu(rng, QuantKind::Int4, 1, 256, 1024, 128, false, Act::Silu, dt);  // 7, 10, 12, 13, 16, 18
    qt::test_quant_gemv_glu(rng, QuantKind::Int4, 3, 96, 512, 32, true, Act::GeluTanh, dt);  // 7, 10, 12 (g32)
    qt::test_quant_gemv_glu(rng, QuantKind::Int8, 4, 64, 448, 0, true, Act::Silu, dt);
    qt::test_quant_gemv_glu(rng, QuantKind::Int8, 2, 40, 256, 0, false, Act::Silu, dt);      // N % 16 != 0
    qt::test_quant_gemv_glu(rng, QuantKind::Fp8, 1, 1376, 1024, 0, false, Act::Silu, dt);    // many row groups
    qt::test_quant_gemv_glu(rng, QuantKind::Fp8, 3, 37, 352, 0, true, Act::GeluTanh, dt);    // N not whole groups
    qt::test_quant_gemv_glu(rng, QuantKind::Fp8, 4, 64, 448, 0, true, Act::Silu, dt);
    qt::test_quant_gemv_rms(rng, QuantKind::Fp8, 1, 300, 4096, 0, dt);
    qt::test_quant_gemv_rms(rng, QuantKind::Fp8, 4, 77, 352, 0, dt);
    qt::test_quant_gemv_rms(rng, QuantKind::Int8, 2, 130, 4096, 0, dt);
    qt::test_quant_gemv_rms(rng, QuantKind::Int4, 3, 65, 512, 128, dt);
  }
  for (int D : {64, 128}) {
    qt::test_fp8_kv(rng, D, {{20, 1}, {37, 1}, {5, 1}}, 1.f, 1.f);     // decode
    qt::test_fp8_kv(rng, D, {{20, 1}, {37, 1}}, 0.5f, 2.f);            // decode, scaled
    qt::test_fp8_kv(rng, D, {{0, 9}, {21, 5}, {40, 1}}, 0.5f, 2.f);    // prefill, chunked prefill, a decode row
  }
  // Decode variant 4 on an FP8 cache (the tensor-core kernel, E4M3 tiles converted in shared memory): GQA 4, 2 and
  // MHA, contexts of 1 to 63 blocks (split and unsplit), pos 0, head dims 32 to 256; the default rule's pick
  // (variant 4 at GQA 4); every kernel configuration at head_dim 128.
  const std::vector<std::pair<int, int>> many = {{300, 1}, {45, 1}, {0, 1}, {1000, 1}, {16, 1}, {129, 1}};
  qt::test_fp8_kv(rng, 128, many, 0.5f, 2.f, 16, 4, 4);
  qt::test_fp8_kv(rng, 128, many, 0.5f, 2.f, 16, 4, 4, 0, DType::BF16);
  qt::test_fp8_kv(rng, 128, many, 1.f, 0.25f, 8, 8, 4);
  qt::test_fp8_kv(rng, 64, many, 2.f, 0.5f, 8, 4, 4);
  qt::test_fp8_kv(rng, 32, {{70, 1}, {3, 1}}, 0.5f, 0.5f, 4, 1, 4);
  qt::test_fp8_kv(rng, 256, {{200, 1}, {31, 1}}, 0.5f, 2.f, 4, 2, 4);
  qt::test_fp8_kv(rng, 128, decode_batch(80, 37, 5, 260), 0.5f, 2.f, 32, 8, 0, 0, DType::BF16);  // the rule: v4
  for (int cfg = 1; cfg < kd::kDecodeMmaConfigCount; ++cfg)
    qt::test_fp8_kv(rng, 128, many, 0.5f, 2.f, 16, 4, 4, cfg);
}
