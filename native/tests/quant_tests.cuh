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

struct LinCase {
  QuantKind kind;
  int M, N, K, group;
  bool bias, res;
  Act act;
};

void test_quant_gemv(Rng& rng, const LinCase& c, DType dt) {
  const int M = c.M, N = c.N, K = c.K;
  const size_t wbytes = c.kind == QuantKind::Int4 ? size_t(N) * K / 2 : size_t(N) * K;
  const int nsc = c.kind == QuantKind::Int4 ? N * (K / c.group) : N;
  Buf x(dt, size_t(M) * K), bias(dt, N), res(dt, size_t(M) * N), out(dt, size_t(M) * N);
  x.fill(rng, -2.f, 2.f);
  if (M > 1)
    for (int k = 0; k < K; k++) x.set(size_t(1) * K + k, 0.f);  // a zero row: scale 1 (fp8)
  bias.fill(rng, -0.5f, 0.5f);
  res.fill(rng, -1.f, 1.f);
  std::vector<uint8_t> w(wbytes);
  for (auto& b : w) {
    b = uint8_t(rng.next());
    if (c.kind == QuantKind::Fp8 && (b & 0x7f) == 0x7f) b ^= 1;  // no NaN codes
  }
  std::vector<float> sc(nsc);
  for (auto& s : sc) s = rng.uniform(0.001f, 0.02f);
  uint8_t* dw;
  float* dsc;
  CK(cudaMalloc(&dw, wbytes));
  CK(cudaMalloc(&dsc, nsc * 4));
  CK(cudaMemcpy(dw, w.data(), wbytes, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dsc, sc.data(), nsc * 4, cudaMemcpyHostToDevice));
  x.up(), bias.up(), res.up();

  // Reference (double sums; fp8: fround(fround(acc) * fround(sx*sw)) as quant-linear.ts).
  std::vector<double> ref(size_t(M) * N), mag(size_t(M) * N);
  std::vector<float> sx;
  std::vector<uint8_t> qx;
  if (c.kind == QuantKind::Fp8) quant_rows(x, M, K, sx, qx);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double acc = 0, a = 0;
      for (int k = 0; k < K; k++) {
        double t;
        if (c.kind == QuantKind::Fp8)
          t = double(e4m3_val(qx[size_t(m) * K + k])) * e4m3_val(w[size_t(n) * K + k]);
        else
          t = double(x.get(size_t(m) * K + k)) * deq(c.kind, w, sc, c.group, K, n, k, dt);
        acc += t, a += std::fabs(t);
      }
      double v = c.kind == QuantKind::Fp8 ? double(float(float(acc) * float(sx[m] * sc[n]))) : acc;
      double scale = c.kind == QuantKind::Fp8 ? double(sx[m] * sc[n]) : 1.0;
      if (c.bias) v += bias.get(n);
      v = act_host(v, c.act);
      if (c.res) v += res.get(size_t(m) * N + n);
      ref[size_t(m) * N + n] = v;
      mag[size_t(m) * N + n] = a * scale;
    }
  for (int variant = 0; variant < kQuantGemvVariants; variant++) {
    for (int alias = 0; alias < (c.res ? 2 : 1); alias++) {
      // alias: the residual is read from out itself (the runtime's in-place residual add).
      void* o = out.d;
      if (alias) CK(cudaMemcpy(out.d, res.d, res.h.size(), cudaMemcpyDeviceToDevice));
      else out.poison();
      CK(quant_gemv(variant, c.kind, x.d, dw, dsc, c.group, c.bias ? bias.d : nullptr,
                    c.res ? (alias ? o : res.d) : nullptr, o, M, N, K, c.act, dt, 0));
      sync_check();
      out.down();
      Err e;
      for (size_t i = 0; i < ref.size(); i++)
        e.add(out.get(i), ref[i], 1e-5 * mag[i] + 1e-6, rtol_of(dt) * 1.01);
      char name[160];
      std::snprintf(name, sizeof name, "quant_gemv %s %s M=%d N=%d K=%d g=%d v%d%s%s%s%s", quant_kind_name(c.kind),
                    dname(dt), M, N, K, c.group, variant, c.bias ? " bias" : "", c.res ? " res" : "",
                    alias ? "(aliased)" : "", c.act == Act::None ? "" : (std::string(" ") + act_name(c.act)).c_str());
      report(e.ok(), name, e.max_abs, e.str() + e.firsts());
    }
  }
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
  cudaFree(dw);
  cudaFree(dsc);
}

void test_quantize_rows(Rng& rng, DType dt, int rows, int cols) {
  Buf x(dt, size_t(rows) * cols);
  x.fill(rng, -3.f, 3.f);
  for (int c = 0; c < cols; c++) x.set(c, 0.f);  // row 0 all zero: scale 1
  if (rows > 2) x.set(size_t(2) * cols + 1, 1e4f);  // an outlier
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
  const int N = 40;
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

}  // namespace qt

static void test_quant(Rng& rng) {
  // The E4M3 port against known codes: 448 max, 2^-9 smallest subnormal, ties to even, saturation.
  const bool enc = qt::e4m3_bits(448.f) == 0x7e && qt::e4m3_bits(1e9f) == 0x7e && qt::e4m3_bits(-1e9f) == 0xfe &&
                   qt::e4m3_bits(std::ldexp(1.f, -9)) == 0x01 && qt::e4m3_bits(std::ldexp(1.f, -10)) == 0x00 &&
                   qt::e4m3_bits(1.0625f) == 0x38 && qt::e4m3_bits(1.1875f) == 0x3a && qt::e4m3_val(0x7e) == 448.f &&
                   qt::e4m3_val(0x38) == 1.f;
  report(enc, "host e4m3 encoder (known codes)", enc ? 0 : 1);
  for (DType dt : {DType::F16, DType::BF16}) {
    qt::test_quantize_rows(rng, dt, 5, 352);
    qt::test_quantize_rows(rng, dt, 3, 4104);  // cols % 8 == 0, not a power of two
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
  };
  for (DType dt : {DType::F16, DType::BF16})
    for (const auto& c : cases) qt::test_quant_gemv(rng, c, dt);
}
