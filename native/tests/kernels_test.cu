// Correctness test of tsllm's CUDA kernels against straightforward CPU references (fp32/fp64).
// Inputs are random (never all-zero), outputs are poisoned (NaN bytes) before every launch, and every element
// is checked. Prints one PASS/FAIL line per check with its max error; exits non-zero on any failure.
//
// Build: nvcc -std=c++17 -O3 -gencode=arch=compute_90,code=sm_90 -o kt tests/kernels_test.cu src/kernels/*.cu
// Run: ./kt [rf|emb|norm|ew|attn|gemv|samp|quant|moe|fmha8] [attention case index]
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "../src/kernels/attention_internal.h"  // kd::decode_split, to report the split count exercised
#include "../src/kernels/kernels.h"
#include "../src/kernels/lowbias32.h"  // the hash; host_rf's formula is checked against TS-computed values
#include "test_util.cuh"

using namespace tsllm;

static int g_fail = 0, g_pass = 0;
static void report(bool ok, const std::string& name, double err, const std::string& extra = "") {
  std::printf("%s %-58s max_err=%.3e %s\n", ok ? "PASS" : "FAIL", name.c_str(), err, extra.c_str());
  if (ok)
    ++g_pass;
  else
    ++g_fail;
}

// ---------------- host helpers ----------------
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  double uni() { return (next() >> 11) * (1.0 / 9007199254740992.0); }  // [0,1)
  float uniform(float lo, float hi) {
    float v;
    do v = (float)(lo + (hi - lo) * uni());
    while (v == 0.f);
    return v;
  }
  int randint(int lo, int hi) { return lo + (int)(next() % (uint64_t)(hi - lo + 1)); }  // inclusive
  float normal() {
    double u1 = uni() + 1e-12, u2 = uni();
    return (float)(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

static size_t dsize(DType d) { return d == DType::F32 ? 4 : (d == DType::FP8_E4M3 ? 1 : 2); }
static const char* dname(DType d) {
  switch (d) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    default: return "fp8";
  }
}
static float rd(const std::vector<uint8_t>& b, size_t i, DType d) {
  if (d == DType::F32) {
    float f;
    std::memcpy(&f, &b[i * 4], 4);
    return f;
  }
  uint16_t u;
  std::memcpy(&u, &b[i * 2], 2);
  if (d == DType::F16) {
    __half_raw r;
    r.x = u;
    return __half2float(__half(r));
  }
  __nv_bfloat16_raw r;
  r.x = u;
  return __bfloat162float(__nv_bfloat16(r));
}
static float round_to(float x, DType d) {
  if (d == DType::F16) return __half2float(__float2half_rn(x));
  if (d == DType::BF16) return __bfloat162float(__float2bfloat16_rn(x));
  return x;
}
static void wr(std::vector<uint8_t>& b, size_t i, float x, DType d) {
  if (d == DType::F32) {
    std::memcpy(&b[i * 4], &x, 4);
  } else if (d == DType::F16) {
    __half_raw r = __half_raw(__float2half_rn(x));
    std::memcpy(&b[i * 2], &r.x, 2);
  } else {
    __nv_bfloat16_raw r = __nv_bfloat16_raw(__float2bfloat16_rn(x));
    std::memcpy(&b[i * 2], &r.x, 2);
  }
}
static float rtol_of(DType d) { return d == DType::F32 ? 1e-4f : (d == DType::F16 ? 1.0f / 1024 : 1.0f / 128); }

// Host tensor (bytes) + device mirror.
struct Buf {
  DType dt = DType::F32;
  size_t n = 0;
  std::vector<uint8_t> h;
  void* d = nullptr;
  Buf() = default;
  Buf(DType t, size_t count) : dt(t), n(count), h(count * dsize(t)) { CK(cudaMalloc(&d, h.size() + 16)); }
  ~Buf() {
    if (d) cudaFree(d);
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  float get(size_t i) const { return rd(h, i, dt); }
  void set(size_t i, float x) { wr(h, i, x, dt); }
  void fill(Rng& r, float lo, float hi) {
    for (size_t i = 0; i < n; ++i) set(i, r.uniform(lo, hi));
  }
  void up() { CK(cudaMemcpy(d, h.data(), h.size(), cudaMemcpyHostToDevice)); }
  void down() { CK(cudaMemcpy(h.data(), d, h.size(), cudaMemcpyDeviceToHost)); }
  void poison() { CK(cudaMemset(d, 0xFF, h.size())); }  // NaN in f16/bf16/f32
};

struct Err {
  double max_abs = 0, max_rel = 0;
  size_t bad = 0, nonfinite = 0, count = 0;
  std::vector<std::pair<size_t, std::pair<double, double>>> first;  // (index, (gpu, ref)) of the first failures
  void add(double g, double r, double atol, double rtol) {
    const size_t idx = count++;
    if (!std::isfinite(g)) {
      ++nonfinite;
      ++bad;
      max_abs = INFINITY;
      if (first.size() < 4) first.push_back({idx, {g, r}});
      return;
    }
    const double a = std::fabs(g - r);
    max_abs = std::max(max_abs, a);
    max_rel = std::max(max_rel, a / std::max(std::fabs(r), 1e-6));
    if (a > atol + rtol * std::fabs(r)) {
      ++bad;
      if (first.size() < 4) first.push_back({idx, {g, r}});
    }
  }
  std::string firsts() const {
    std::string o;
    for (auto& f : first) {
      char b[96];
      std::snprintf(b, sizeof b, " [%zu] gpu=%.5g ref=%.5g", f.first, f.second.first, f.second.second);
      o += b;
    }
    return o;
  }
  bool ok() const { return bad == 0; }
  std::string str() const {
    char b[128];
    std::snprintf(b, sizeof b, "(max_rel=%.2e bad=%zu nonfinite=%zu)", max_rel, bad, nonfinite);
    return b;
  }
};

// The reference norm of row v: layer norm (ln) subtracts *mean and scales by 1/sqrt(centred variance + eps),
// rms norm (*mean = 0) by 1/sqrt(mean of squares + eps); the return value is that scale.
static double norm_rstd(const std::vector<double>& v, bool ln, double eps, double* mean) {
  double m = 0, var = 0;
  if (ln) {
    for (double a : v) m += a;
    m /= v.size();
  }
  for (double a : v) var += (a - m) * (a - m);
  *mean = m;
  return 1.0 / std::sqrt(var / v.size() + eps);
}

static void sync_check() {
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
}

// ---------------- random_fill ----------------
static float host_rf(uint32_t seed, uint64_t i, float mean, float scale) {
  const uint32_t u = lowbias32(lowbias32(seed) ^ (uint32_t)i);
  volatile float r = (float)(u >> 8) * (1.0f / 16777216.0f);
  volatile float t = 2.0f * r;
  t = t - 1.0f;
  volatile float st = scale * t;
  volatile float v = mean + st;
  return v;
}

static void test_random_fill() {
  // Known fp32 values computed with src/weights/random.ts (node) for (seed, mean, scale) at indices 0,1,2,3,1000,65535.
  struct Known {
    uint32_t seed;
    float mean, scale;
    uint32_t bits[6];
  } known[] = {
      {0, 0.f, 1.f, {0xbf800000, 0xbe3bb380, 0x3f222642, 0xbeb0385c, 0xbeb0824c, 0xbf186a50}},
      {1234, 0.f, 0.0346f, {0xbb897fa7, 0xbbd4b30f, 0xbca32483, 0x3ced33a6, 0x3c89ab1c, 0xba83a328}},
      {42, 1.f, 0.02f, {0x3f7eb970, 0x3f80522c, 0x3f812132, 0x3f80d6ca, 0x3f8263f6, 0x3f7bcb01}},
  };
  const uint64_t idx[6] = {0, 1, 2, 3, 1000, 65535};
  {
    int bad_host = 0;
    for (auto& k : known)
      for (int j = 0; j < 6; ++j) {
        float v = host_rf(k.seed, idx[j], k.mean, k.scale);
        uint32_t b;
        std::memcpy(&b, &v, 4);
        bad_host += b != k.bits[j];
      }
    // The TS formula uses the low 32 bits of i: index 2^32 + 5 equals index 5.
    bad_host += host_rf(7, (1ull << 32) + 5, 0.f, 1.f) != host_rf(7, 5, 0.f, 1.f);
    report(bad_host == 0, "random_fill host formula == TS known values", bad_host);
  }
  const uint64_t n = 65536 + 1003;  // odd tail
  for (auto& k : known) {
    for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::FP8_E4M3}) {
      std::vector<uint8_t> h(n * dsize(dt));
      void* d;
      CK(cudaMalloc(&d, h.size()));
      CK(cudaMemset(d, 0xFF, h.size()));
      CK(random_fill(d, dt, n, k.seed, k.mean, k.scale, 0));
      sync_check();
      CK(cudaMemcpy(h.data(), d, h.size(), cudaMemcpyDeviceToHost));
      CK(cudaFree(d));
      size_t bad = 0;
      const size_t es = dsize(dt);
      std::vector<uint8_t> want(h.size());  // the host value rounded to dt (RNE; fp8 saturating), bytes compared
      for (uint64_t i = 0; i < n; ++i) {
        const float f = host_rf(k.seed, i, k.mean, k.scale);
        if (dt == DType::FP8_E4M3)
          want[i] = (uint8_t)__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
        else
          wr(want, i, f, dt);
        bad += std::memcmp(&h[i * es], &want[i * es], es) != 0;
      }
      if (dt == DType::F32)
        for (int j = 0; j < 6; ++j) {
          uint32_t a;
          std::memcpy(&a, &h[idx[j] * 4], 4);
          bad += a != k.bits[j];
        }
      char name[128];
      std::snprintf(name, sizeof name, "random_fill %s seed=%u mean=%g scale=%g (bit-exact)", dname(dt), k.seed,
                    k.mean, k.scale);
      report(bad == 0, name, (double)bad, "(mismatches)");
    }
  }
  // Integer storage (random int8 / int4 weight-only engines): the distributions src/quant/weights.ts randomInits
  // gives, rounded half to even and clamped as roundStored does; every code of the range must occur.
  struct IntCase {
    DType dt;
    float mean, scale;
    int lo, hi;
  } ints[] = {{DType::I8, 0.f, 127.f, -127, 127}, {DType::U8, 127.5f, 128.f, 0, 255}, {DType::I8, 3.f, 200.f, -128, 127}};
  for (const IntCase& c : ints) {
    std::vector<uint8_t> h(n);
    void* d;
    CK(cudaMalloc(&d, n));
    CK(cudaMemset(d, 0x5A, n));
    CK(random_fill(d, c.dt, n, 99, c.mean, c.scale, 0));
    sync_check();
    CK(cudaMemcpy(h.data(), d, n, cudaMemcpyDeviceToHost));
    CK(cudaFree(d));
    size_t bad = 0;
    int seen_lo = 1 << 20, seen_hi = -(1 << 20);
    for (uint64_t i = 0; i < n; ++i) {
      const double r = std::nearbyint((double)host_rf(99, i, c.mean, c.scale));  // default mode: ties to even
      const int want = (int)std::min<double>(c.dt == DType::I8 ? 127 : 255, std::max<double>(c.dt == DType::I8 ? -128 : 0, r));
      const int got = c.dt == DType::I8 ? (int)(int8_t)h[i] : (int)h[i];
      bad += got != want;
      seen_lo = std::min(seen_lo, got);
      seen_hi = std::max(seen_hi, got);
    }
    bad += seen_lo != c.lo || seen_hi != c.hi;
    char name[128];
    std::snprintf(name, sizeof name, "random_fill %s mean=%g scale=%g (exact, range %d..%d)", c.dt == DType::I8 ? "i8" : "u8",
                  c.mean, c.scale, seen_lo, seen_hi);
    report(bad == 0, name, (double)bad, "(mismatches)");
  }
}

// ---------------- embedding ----------------
static void test_embedding(Rng& rng) {
  for (DType dt : {DType::F16, DType::BF16, DType::F32})
    for (int hidden : {4096, 100}) {
      const int T = 37, rows = 500, vstart = 1000;
      Buf table(dt, (size_t)rows * hidden), out(dt, (size_t)T * hidden);
      std::vector<int32_t> ids(T);
      for (auto& i : ids) i = rng.randint(900, 1600);
      ids[0] = vstart;
      ids[1] = vstart + rows - 1;
      ids[2] = vstart + rows;
      ids[3] = -5;
      table.fill(rng, -1, 1);
      table.up();
      int32_t* dids;
      CK(cudaMalloc(&dids, T * 4));
      CK(cudaMemcpy(dids, ids.data(), T * 4, cudaMemcpyHostToDevice));
      out.poison();
      CK(embedding(dids, table.d, out.d, T, hidden, vstart, rows, dt, 0));
      sync_check();
      out.down();
      Err e;
      for (int t = 0; t < T; ++t) {
        const int r = ids[t] - vstart;
        for (int i = 0; i < hidden; ++i) e.add(out.get((size_t)t * hidden + i), (r >= 0 && r < rows) ? table.get((size_t)r * hidden + i) : 0.0, 0, 0);
      }
      CK(cudaFree(dids));
      report(e.ok(), std::string("embedding ") + dname(dt) + " hidden=" + std::to_string(hidden), e.max_abs, e.str());
    }
}

// ---------------- norms ----------------
static void test_norms(Rng& rng) {
  for (int ln = 0; ln < 2; ++ln)
    for (DType dt : {DType::F16, DType::BF16, DType::F32})
      for (int hidden : {4096, 8192, 1000, 64})
        for (int mode = 0; mode < 3; ++mode) {  // 0: plain, 1: residual, 2: residual with sum_out aliasing x
          if (ln && hidden == 8192 && dt != DType::F16) continue;
          const int rows = 7;
          const size_t n = (size_t)rows * hidden;
          Buf x(dt, n), res(dt, n), w(dt, hidden), b(dt, hidden), y(dt, n), sum(dt, n);
          x.fill(rng, -2, 2);
          res.fill(rng, -2, 2);
          w.fill(rng, 0.5f, 1.5f);
          b.fill(rng, -0.5f, 0.5f);
          x.up();
          res.up();
          w.up();
          b.up();
          y.poison();
          sum.poison();
          const bool use_b = ln && (hidden != 1000);
          void* sum_ptr = mode == 2 ? x.d : sum.d;
          const float eps = 1e-5f;
          // weight_offset (Gemma's 1 + w) on the vector (1000) and scalar (64, mode 1) paths, 0 elsewhere.
          const float w_off = hidden == 1000 || hidden == 64 ? 1.f : 0.f;
          if (ln)
            CK(layer_norm(x.d, mode ? res.d : nullptr, w.d, w_off, use_b ? b.d : nullptr, y.d, mode ? sum_ptr : nullptr,
                          rows, hidden, eps, dt, 0));
          else
            CK(rms_norm(x.d, mode ? res.d : nullptr, w.d, w_off, y.d, mode ? sum_ptr : nullptr, rows, hidden, eps, dt, 0));
          sync_check();
          std::vector<uint8_t> xh = x.h;  // inputs before
          y.down();
          Buf& sb = mode == 2 ? x : sum;
          if (mode) sb.down();
          Err e, es;
          for (int r = 0; r < rows; ++r) {
            std::vector<double> v(hidden);
            for (int i = 0; i < hidden; ++i) {
              const size_t k = (size_t)r * hidden + i;
              float a = rd(xh, k, dt);
              if (mode) {
                a = round_to(a + res.get(k), dt);  // sum in fp32, rounded to the dtype
                es.add(sb.get(k), a, 0, 0);
              }
              v[i] = a;
            }
            double mean;
            const double rstd = norm_rstd(v, ln, eps, &mean);
            for (int i = 0; i < hidden; ++i) {
              double ref = (v[i] - mean) * rstd * ((double)w.get(i) + w_off);
              if (use_b) ref += b.get(i);
              e.add(y.get((size_t)r * hidden + i), ref, 1e-5, 2 * rtol_of(dt));
            }
          }
          std::string name = std::string(ln ? "layer_norm " : "rms_norm ") + dname(dt) + " hidden=" +
                             std::to_string(hidden) + (mode == 0 ? "" : mode == 1 ? " +residual" : " +residual sum->x") +
                             (w_off != 0.f ? " weight_offset 1" : "");
          report(e.ok() && es.ok(), name, e.max_abs, e.str() + (mode ? " sum:" + es.str() : ""));
        }
}

// ---------------- elementwise ----------------
static double act_ref(double x, Act a) {
  switch (a) {
    case Act::Silu: return x / (1.0 + std::exp(-x));
    case Act::GeluTanh: return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    case Act::GeluErf: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    default: return x;
  }
}
static const char* act_name(Act a) {
  switch (a) {
    case Act::Silu: return "silu";
    case Act::GeluTanh: return "gelu_tanh";
    case Act::GeluErf: return "gelu_erf";
    default: return "none";
  }
}

static void test_elementwise(Rng& rng) {
  for (DType dt : {DType::F16, DType::BF16, DType::F32}) {
    // gated_act
    for (int inter : {1376, 100})
      for (Act a : {Act::Silu, Act::GeluTanh, Act::GeluErf, Act::None}) {
        const int rows = 5;
        Buf x(dt, (size_t)rows * 2 * inter), o(dt, (size_t)rows * inter);
        x.fill(rng, -3, 3);
        x.up();
        o.poison();
        CK(gated_act(x.d, o.d, rows, inter, a, dt, 0));
        sync_check();
        o.down();
        Err e;
        for (int r = 0; r < rows; ++r)
          for (int i = 0; i < inter; ++i)
            e.add(o.get((size_t)r * inter + i),
                  act_ref(x.get((size_t)r * 2 * inter + i), a) * x.get((size_t)r * 2 * inter + inter + i), 1e-6,
                  rtol_of(dt));
        report(e.ok(), std::string("gated_act ") + dname(dt) + " " + act_name(a) + " inter=" + std::to_string(inter),
               e.max_abs, e.str());
      }
    // activation (out-of-place and in place)
    for (Act a : {Act::Silu, Act::GeluTanh, Act::GeluErf})
      for (int inplace = 0; inplace < 2; ++inplace) {
        const size_t n = 10007;
        Buf x(dt, n), o(dt, n);
        x.fill(rng, -3, 3);
        x.up();
        std::vector<uint8_t> xh = x.h;
        o.poison();
        CK(activation(x.d, inplace ? x.d : o.d, n, a, dt, 0));
        sync_check();
        Buf& ob = inplace ? x : o;
        ob.down();
        Err e;
        for (size_t i = 0; i < n; ++i) e.add(ob.get(i), act_ref(rd(xh, i, dt), a), 1e-6, rtol_of(dt));
        report(e.ok(), std::string("activation ") + dname(dt) + " " + act_name(a) + (inplace ? " in-place" : ""),
               e.max_abs, e.str());
      }
    // binary
    const char* bin_names[] = {"add", "sub", "mul", "div"};
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div})
      for (int alias = 0; alias < 2; ++alias) {
        const size_t n = 10007;
        Buf a(dt, n), b(dt, n), o(dt, n);
        a.fill(rng, -3, 3);
        if (op == BinaryOp::Div)
          for (size_t i = 0; i < n; ++i) b.set(i, (i & 1 ? -1.f : 1.f) * rng.uniform(0.5f, 3.f));  // away from 0
        else
          b.fill(rng, -3, 3);
        a.up();
        b.up();
        std::vector<uint8_t> ah = a.h;
        o.poison();
        CK(binary(a.d, b.d, alias ? a.d : o.d, n, op, dt, 0));
        sync_check();
        Buf& ob = alias ? a : o;
        ob.down();
        Err e;
        for (size_t i = 0; i < n; ++i) {
          const double u = rd(ah, i, dt), v = b.get(i);
          const double want = op == BinaryOp::Add ? u + v : op == BinaryOp::Sub ? u - v : op == BinaryOp::Mul ? u * v : u / v;
          e.add(ob.get(i), want, 1e-6, rtol_of(dt));
        }
        report(e.ok(), std::string("binary ") + dname(dt) + " " + bin_names[int(op)] + (alias ? " out=a" : ""),
               e.max_abs, e.str());
      }
    // unary (tanh, sigmoid, exp, scale, softcap): fp32 math against fp64, one rounding; odd n and an offset
    // pointer exercise the element path, in place and out of place.
    const char* un_names[] = {"tanh", "sigmoid", "exp", "scale", "softcap"};
    for (UnaryOp op : {UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Exp, UnaryOp::Scale, UnaryOp::Softcap})
      for (int variant = 0; variant < 3; ++variant) {  // 0: vectors, 1: in place, 2: unaligned (element path)
        const size_t n = 10007, off = variant == 2 ? 1 : 0;
        const float param = op == UnaryOp::Scale ? 1.7f : op == UnaryOp::Softcap ? 2.5f : 0.f;
        Buf x(dt, n + 1), o(dt, n + 1);
        x.fill(rng, -3, 3);
        x.up();
        o.poison();
        const size_t es = dsize(dt);
        void* xp = static_cast<char*>(x.d) + off * es;
        void* op_ = variant == 1 ? xp : static_cast<char*>(o.d) + off * es;
        std::vector<uint8_t> xh = x.h;
        CK(unary(xp, op_, n, op, param, dt, 0));
        sync_check();
        Buf& ob = variant == 1 ? x : o;
        ob.down();
        Err e;
        for (size_t i = 0; i < n; ++i) {
          const double u = rd(xh, i + off, dt);
          const double want = op == UnaryOp::Tanh      ? std::tanh(u)
                              : op == UnaryOp::Sigmoid ? 1.0 / (1.0 + std::exp(-u))
                              : op == UnaryOp::Exp     ? std::exp(u)
                              : op == UnaryOp::Scale   ? u * (double)param
                                                       : param * std::tanh(u / param);
          e.add(ob.get(i + off), want, 1e-6, rtol_of(dt));
        }
        report(e.ok(),
               std::string("unary ") + dname(dt) + " " + un_names[int(op)] +
                   (variant == 1 ? " in-place" : variant == 2 ? " unaligned" : ""),
               e.max_abs, e.str());
      }
    {
      Buf x(dt, 8), o(dt, 8);
      report(unary(x.d, o.d, 8, UnaryOp::Softcap, 0.f, dt, 0) == cudaErrorInvalidValue,
             std::string("unary ") + dname(dt) + " softcap refuses cap 0", 0);
    }
    // slice_cols
    for (int variant = 0; variant < 2; ++variant) {
      const int rows = 9, in_cols = variant ? 97 : 96, col_start = variant ? 3 : 32, out_cols = variant ? 17 : 48;
      Buf x(dt, (size_t)rows * in_cols), o(dt, (size_t)rows * out_cols);
      x.fill(rng, -1, 1);
      x.up();
      o.poison();
      CK(slice_cols(x.d, o.d, rows, in_cols, col_start, out_cols, dt, 0));
      sync_check();
      o.down();
      Err e;
      for (int r = 0; r < rows; ++r)
        for (int j = 0; j < out_cols; ++j)
          e.add(o.get((size_t)r * out_cols + j), x.get((size_t)r * in_cols + col_start + j), 0, 0);
      report(e.ok(), std::string("slice_cols ") + dname(dt) + (variant ? " unaligned" : " vector"), e.max_abs, e.str());
    }
    // gather_rows
    for (int hidden : {4096, 36}) {
      const int rows_in = 50, S = 13;
      Buf x(dt, (size_t)rows_in * hidden), o(dt, (size_t)S * hidden);
      x.fill(rng, -1, 1);
      x.up();
      std::vector<int32_t> idx(S);
      for (auto& i : idx) i = rng.randint(0, rows_in - 1);
      int32_t* di;
      CK(cudaMalloc(&di, S * 4));
      CK(cudaMemcpy(di, idx.data(), S * 4, cudaMemcpyHostToDevice));
      o.poison();
      CK(gather_rows(x.d, di, o.d, S, hidden, dt, 0));
      sync_check();
      o.down();
      CK(cudaFree(di));
      Err e;
      for (int r = 0; r < S; ++r)
        for (int j = 0; j < hidden; ++j) e.add(o.get((size_t)r * hidden + j), x.get((size_t)idx[r] * hidden + j), 0, 0);
      report(e.ok(), std::string("gather_rows ") + dname(dt) + " hidden=" + std::to_string(hidden), e.max_abs, e.str());
    }
  }
  // convert
  const DType all[3] = {DType::F32, DType::F16, DType::BF16};
  for (DType from : all)
    for (DType to : all) {
      const size_t n = 1001;
      Buf x(from, n), o(to, n);
      x.fill(rng, -100, 100);
      x.up();
      o.poison();
      CK(convert(x.d, from, o.d, to, n, 0));
      sync_check();
      o.down();
      Err e;
      for (size_t i = 0; i < n; ++i) e.add(o.get(i), round_to(x.get(i), to), 0, 0);
      report(e.ok(), std::string("convert ") + dname(from) + "->" + dname(to), e.max_abs, e.str());
    }
}

// ---------------- paged attention ----------------
struct AttnCase {
  const char* name;
  DType dt;
  int nH, nKV, D, R;
  RopeStyle style;
  int tpb;
  bool packed;
  std::vector<std::pair<int, int>> seqs;  // (cached tokens, new tokens)
};

static void test_attention_case(const AttnCase& c, Rng& rng) {
  const DType dt = c.dt;
  const int nH = c.nH, nKV = c.nKV, D = c.D, R = c.R, tpb = c.tpb, G = nH / nKV;
  const int S = (int)c.seqs.size();
  const int layers = 2, layer = 1;
  // Block assignment: block 0 is a NaN-poisoned block that no sequence owns (unused table entries point at it).
  std::vector<int> nb(S);
  int total_blocks = 0, maxb = 0;
  for (int s = 0; s < S; ++s) {
    nb[s] = (c.seqs[s].first + c.seqs[s].second + tpb - 1) / tpb;
    total_blocks += nb[s];
    maxb = std::max(maxb, nb[s]);
  }
  maxb += 1;
  const int num_blocks = total_blocks + 3;
  std::vector<int> perm(num_blocks - 1);
  std::iota(perm.begin(), perm.end(), 1);
  for (int i = (int)perm.size() - 1; i > 0; --i) std::swap(perm[i], perm[rng.next() % (i + 1)]);
  std::vector<int32_t> bt((size_t)S * maxb, 0);
  {
    int k = 0;
    for (int s = 0; s < S; ++s)
      for (int b = 0; b < nb[s]; ++b) bt[(size_t)s * maxb + b] = perm[k++];
  }
  const size_t block_elems = (size_t)2 * nKV * tpb * D;
  const size_t layer_elems = (size_t)num_blocks * block_elems;
  Buf pool(dt, layers * layer_elems);
  pool.fill(rng, -2, 2);
  for (size_t i = 0; i < block_elems; ++i) {  // poison block 0 of the tested layer
    const size_t k = layer * layer_elems + i;
    pool.h[k * 2] = 0xFF;
    pool.h[k * 2 + 1] = 0xFF;
  }
  auto slot = [&](int s, int pos, int hk, bool v) -> size_t {
    const int blk = bt[(size_t)s * maxb + pos / tpb];
    return layer * layer_elems + (size_t)blk * block_elems + (v ? (size_t)nKV * tpb * D : 0) +
           ((size_t)hk * tpb + pos % tpb) * D;
  };
  // Step layout.
  std::vector<int32_t> positions, token_seq, seq_start(S + 1), seq_len(S);
  int max_new = 0, max_len = 0;
  for (int s = 0; s < S; ++s) {
    seq_start[s] = (int)positions.size();
    for (int i = 0; i < c.seqs[s].second; ++i) {
      positions.push_back(c.seqs[s].first + i);
      token_seq.push_back(s);
    }
    seq_len[s] = c.seqs[s].first + c.seqs[s].second;
    max_new = std::max(max_new, c.seqs[s].second);
    max_len = std::max(max_len, seq_len[s]);
  }
  seq_start[S] = (int)positions.size();
  const int T = (int)positions.size();
  // Inputs.
  const int qkv_cols = (nH + 2 * nKV) * D;
  const int q_stride = c.packed ? qkv_cols : nH * D + 8, k_stride = c.packed ? qkv_cols : nKV * D + 16,
            v_stride = c.packed ? qkv_cols : nKV * D;
  Buf qkv(dt, c.packed ? (size_t)T * qkv_cols : 1), qb(dt, c.packed ? 1 : (size_t)T * q_stride),
      kb(dt, c.packed ? 1 : (size_t)T * k_stride), vb(dt, c.packed ? 1 : (size_t)T * v_stride);
  auto qidx = [&](int t, int h, int d) -> float {
    return c.packed ? qkv.get((size_t)t * qkv_cols + h * D + d) : qb.get((size_t)t * q_stride + h * D + d);
  };
  auto kidx = [&](int t, int h, int d) -> float {
    return c.packed ? qkv.get((size_t)t * qkv_cols + (nH + h) * D + d) : kb.get((size_t)t * k_stride + h * D + d);
  };
  auto vidx = [&](int t, int h, int d) -> float {
    return c.packed ? qkv.get((size_t)t * qkv_cols + (nH + nKV + h) * D + d) : vb.get((size_t)t * v_stride + h * D + d);
  };
  if (c.packed) {
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < qkv_cols; ++j) qkv.set((size_t)t * qkv_cols + j, rng.uniform(j < nH * D ? -3 : -2, j < nH * D ? 3 : 2));
  } else {
    qb.fill(rng, -3, 3);
    kb.fill(rng, -2, 2);
    vb.fill(rng, -2, 2);
  }
  std::vector<float> inv_freq(std::max(R / 2, 1));
  for (int i = 0; i < R / 2; ++i) inv_freq[i] = (float)(1.0 / std::pow(10000.0, 2.0 * i / R));

  // Reference: RoPE (fp32 angle, fp64 rotation, rounded to dtype), expected cache, attention in fp64.
  auto rope = [&](auto get, int t, int h, std::vector<double>& o) {
    const int pos = positions[t];
    o.resize(D);
    for (int i = 0; i < D; ++i) {
      const double x = get(t, h, i);
      if (i >= R) {
        o[i] = x;
        continue;
      }
      const int half = R / 2;
      int p, fi;
      bool first;
      if (c.style == RopeStyle::Gptj) {
        p = i ^ 1, fi = i / 2, first = !(i & 1);
      } else {
        first = i < half, p = first ? i + half : i - half, fi = first ? i : i - half;
      }
      const float ang = (float)pos * inv_freq[fi];
      const double xp = get(t, h, p);
      const double cs = std::cos((double)ang), sn = std::sin((double)ang);
      o[i] = round_to((float)(first ? x * cs - xp * sn : x * cs + xp * sn), dt);
    }
  };
  Buf exp_pool(dt, pool.n);
  exp_pool.h = pool.h;
  std::vector<char> written(pool.n, 0);
  std::vector<double> tmp;
  for (int t = 0; t < T; ++t)
    for (int hk = 0; hk < nKV; ++hk) {
      rope(kidx, t, hk, tmp);
      const size_t ks = slot(token_seq[t], positions[t], hk, false), vs = slot(token_seq[t], positions[t], hk, true);
      for (int d = 0; d < D; ++d) {
        exp_pool.set(ks + d, (float)tmp[d]);
        exp_pool.set(vs + d, vidx(t, hk, d));
        written[ks + d] = 1;
        written[vs + d] = 2;
      }
    }
  std::vector<double> ref((size_t)T * nH * D);
  {
    std::vector<double> qr, sc;
    for (int t = 0; t < T; ++t) {
      const int s = token_seq[t], pos = positions[t];
      for (int h = 0; h < nH; ++h) {
        const int hk = h / G;
        rope(qidx, t, h, qr);
        if (R == 0)
          for (int d = 0; d < D; ++d) qr[d] = qidx(t, h, d);
        sc.assign(pos + 1, 0.0);
        double mx = -1e300;
        const double scale = 1.0 / std::sqrt((double)D);
        for (int j = 0; j <= pos; ++j) {
          const size_t ks = slot(s, j, hk, false);
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += qr[d] * exp_pool.get(ks + d);
          sc[j] = dot * (double)(float)scale;
          mx = std::max(mx, sc[j]);
        }
        double l = 0;
        for (int j = 0; j <= pos; ++j) l += (sc[j] = std::exp(sc[j] - mx));
        for (int d = 0; d < D; ++d) {
          double o = 0;
          for (int j = 0; j <= pos; ++j) o += sc[j] * exp_pool.get(slot(s, j, hk, true) + d);
          ref[((size_t)t * nH + h) * D + d] = o / l;
        }
      }
    }
  }

  // GPU runs: decode steps under every decode variant (3, the default: small-batch one-launch kernel where it
  // applies, else 4 or 2 by GQA ratio; 4: separate RoPE/cache-write kernel + tensor-core GQA decode kernel + reduce;
  // 2: the same with the CUDA-core decode kernel), other steps once: both large-batch kernels run on every decode
  // case whatever the runtime's rule picks.
  const std::vector<uint8_t> pool_init = pool.h;
  if (c.packed)
    qkv.up();
  else {
    qb.up();
    kb.up();
    vb.up();
  }
  Buf out(dt, (size_t)T * nH * D);
  int32_t *d_bt, *d_pos, *d_ts, *d_ss, *d_sl;
  float* d_inv;
  CK(cudaMalloc(&d_bt, bt.size() * 4));
  CK(cudaMalloc(&d_pos, T * 4));
  CK(cudaMalloc(&d_ts, T * 4));
  CK(cudaMalloc(&d_ss, (S + 1) * 4));
  CK(cudaMalloc(&d_sl, S * 4));
  CK(cudaMalloc(&d_inv, inv_freq.size() * 4));
  CK(cudaMemcpy(d_bt, bt.data(), bt.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_pos, positions.data(), T * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_ts, token_seq.data(), T * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_ss, seq_start.data(), (S + 1) * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_sl, seq_len.data(), S * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_inv, inv_freq.data(), inv_freq.size() * 4, cudaMemcpyHostToDevice));
  const size_t ws_bytes = attention_workspace_bytes(T, S, nH, D, max_len);
  void* ws;
  CK(cudaMalloc(&ws, ws_bytes));

  PagedKV kv{pool.d, dt, layers, num_blocks, nKV, D, tpb, d_bt, maxb};
  StepLayout st{T, S, d_pos, d_ts, d_ss, d_sl, max_new, max_len};
  AttnParams p{layer, nH, nKV, D, (float)(1.0 / std::sqrt((double)D)), R, c.style, R ? d_inv : nullptr, 3, true};
  const char* base = static_cast<const char*>(c.packed ? qkv.d : qb.d);
  const void* qp = base;
  const void* kp = c.packed ? (const void*)(base + (size_t)nH * D * dsize(dt)) : kb.d;
  const void* vp = c.packed ? (const void*)(base + (size_t)(nH + nKV) * D * dsize(dt)) : vb.d;
  // Mixed steps: also with the leading one-token sequences through the decode kernel (StepLayout::num_single,
  // what the runtime passes), under both decode kernels.
  int lead = 0;
  while (max_new > 1 && lead < S && c.seqs[lead].second == 1) ++lead;
  // Variant 4 also under each of its other kernel configurations (kd::kDecodeMmaConfigs) where the head size has
  // them; context steps under each context kernel configuration (kd::kContextConfigs), whose output must equal the
  // default's bit for bit (each row's sums run in the same order whatever warp holds the row).
  // Variant 3 also with an L2 prefetch of an unrelated 8 MB buffer (AttnParams::l2_prefetch, the runtime's o_proj
  // weights): a hint, so the output must equal the run without it bit for bit.
  struct Run {
    int variant, single, cfg, ctx = 0;
    bool pf = false;
  };
  std::vector<Run> runs;
  if (max_new == 1) runs = {{2, 0, 0}, {3, 0, 0}, {4, 0, 0}, {3, 0, 0, 0, true}};
  else runs = {{3, 0, 0}};
  if (lead > 0) runs.push_back({4, lead, 0}), runs.push_back({2, lead, 0});
  if (max_new == 1 && kd::decode_mma_sweeps(D))
    for (int cfg = 1; cfg < kd::kDecodeMmaConfigCount; ++cfg) runs.push_back({4, 0, cfg});
  if (max_new > 1)
    for (int ctx = 1; ctx < kd::kContextConfigCount; ++ctx) {
      runs.push_back({3, 0, 0, ctx});
      if (lead > 0) runs.push_back({4, lead, 0, ctx});
    }
  std::vector<uint8_t> ctx0_out;  // the first context run's output (ctx_cfg 0, nothing through the decode kernel)
  std::vector<uint8_t> v3_out;    // variant 3's output without the prefetch
  constexpr size_t kPfBytes = size_t(8) << 20;
  void* pf_buf = nullptr;
  CK(cudaMalloc(&pf_buf, kPfBytes));
  for (auto [variant, single, cfg, ctx, pf] : runs) {
    p.decode_variant = variant;
    p.l2_prefetch = pf ? pf_buf : nullptr;
    p.l2_prefetch_bytes = pf ? kPfBytes : 0;
    p.mma_cfg = cfg;
    p.ctx_cfg = ctx;
    st.num_single = single;
    pool.h = pool_init;
    pool.up();
    out.poison();
    CK(cudaMemset(ws, 0xFF, ws_bytes));
    CK(paged_attention(qp, q_stride, kp, k_stride, vp, v_stride, out.d, kv, st, p, dt, ws, 0));
    sync_check();
    out.down();
    pool.down();

    Err e, ek;
    size_t cache_bad = 0;
    for (size_t i = 0; i < pool.n; ++i) {
      if (written[i] == 1) {
        ek.add(pool.get(i), exp_pool.get(i), 1e-6, 1.01 * rtol_of(dt));
      } else if (pool.h[i * 2] != exp_pool.h[i * 2] || pool.h[i * 2 + 1] != exp_pool.h[i * 2 + 1]) {
        ++cache_bad;  // V slots and untouched memory must be bit-identical
      }
    }
    // Relative to the output and to the values it averages (V in [-2, 2]): one unit of rounding of each. The
    // context kernel rounds the softmax weights to dtype for the tensor-core P·V product, so its error follows
    // the V scale, not the (often small: ~0.07 at long contexts) output. Measured max abs errors (H100, before
    // this bound): f16 7.5e-4 (context) / 4.9e-4 (decode), bf16 5.5e-3; the bound at |ref| 0.07 is
    // 2.0e-3 (f16) / 1.6e-2 (bf16), where the old absolute 6e-3 / 3e-2 allowed 3x / 2x more.
    const double vmax = 2.0;
    for (size_t i = 0; i < ref.size(); ++i) e.add(out.get(i), ref[i], rtol_of(dt) * vmax, rtol_of(dt));
    char extra[256];
    std::string path = single ? "context + " + std::to_string(single) + " single-token seqs via decode v" +
                                    std::to_string(variant)
                              : "context";
    const kd::DecodeMmaConfig mc = kd::kDecodeMmaConfigs[cfg];
    const std::string cfg_name = cfg ? " cfg" + std::to_string(cfg) + " (" + std::to_string(mc.warps) + "w " +
                                           std::to_string(mc.stages) + "s" + (mc.prefetch ? " prefetch)" : ")")
                                     : "";
    if (max_new == 1) {
      auto sp = kd::decode_split(T, nH, nKV, D, max_len, variant);  // (the plan the kernel used)
      path = "decode v" + std::to_string(variant) + " splits=" + std::to_string(sp.splits) + (sp.cluster ? " cluster" : "") +
             (variant == 3 ? (sp.fast ? " fast warps=" + std::to_string(sp.warps)
                                      : " (fallback to v" + std::to_string(kd::decode_variant_run(p, T, max_len, false,
                                                                                                  true)) + ")")
                           : "");
    }
    // Bytes of the output that differ from ctx_cfg 0's (same single-token split), for the entries with its softmax
    // arithmetic (an exp2f entry differs in the last bits and is held to the bound alone).
    size_t ctx_diff = 0;
    const bool same_math = kd::kContextConfigs[ctx].fast_exp == kd::kContextConfigs[0].fast_exp;
    if (max_new > 1 && single == 0) {
      if (ctx == 0) ctx0_out = out.h;
      else if (same_math)
        for (size_t i = 0; i < out.h.size(); ++i) ctx_diff += out.h[i] != ctx0_out[i];
    }
    size_t pf_diff = 0;  // bytes unlike variant 3's output without the prefetch
    if (max_new == 1 && variant == 3 && cfg == 0) {
      if (!pf) v3_out = out.h;
      else
        for (size_t i = 0; i < out.h.size(); ++i) pf_diff += out.h[i] != v3_out[i];
    }
    std::snprintf(extra, sizeof extra, "%s [%s T=%d] k-cache %s, other cache mismatches=%zu%s%s", e.str().c_str(),
                  path.c_str(), T, ek.str().c_str(), cache_bad,
                  ctx && !single && same_math ? (", bytes unlike ctx_cfg 0: " + std::to_string(ctx_diff)).c_str() : "",
                  pf ? (", bytes unlike no prefetch: " + std::to_string(pf_diff)).c_str() : "");
    report(e.ok() && ek.ok() && cache_bad == 0 && ctx_diff == 0 && pf_diff == 0,
           std::string("paged_attention ") + c.name +
               (max_new == 1 ? " v" + std::to_string(variant) + cfg_name + (pf ? " l2 prefetch" : "")
                             : single ? " split v" + std::to_string(variant) : "") +
               (ctx ? " ctx_cfg " + std::to_string(ctx) : ""),
           e.max_abs,
           extra);
    if (!e.ok()) std::printf("     out failures (index = (t*nH + h)*D + d):%s\n", e.firsts().c_str());
    if (!ek.ok()) std::printf("     k-cache failures:%s\n", ek.firsts().c_str());
  }
  cudaFree(d_bt);
  cudaFree(d_pos);
  cudaFree(d_ts);
  cudaFree(d_ss);
  cudaFree(d_sl);
  cudaFree(d_inv);
  cudaFree(ws);
  cudaFree(pf_buf);
}

// A decode batch of n sequences with cached lengths (i * mul + add) % mod: large batches whose grid needs no split
// (one block per KV head and sequence, decode variants 2 and 4) and lengths that are not multiples of any tile.
static std::vector<std::pair<int, int>> decode_batch(int n, int mul, int add, int mod) {
  std::vector<std::pair<int, int>> v;
  for (int i = 0; i < n; ++i) v.push_back({(i * mul + add) % mod, 1});
  return v;
}

// The runtime's decode kernel choice (kd::decode_variant_run) at batch 256 (outside variant 3's range): variant 4
// from GQA ratio mma_min_gqa on, 2 below it, forced variants as asked; FP8 caches by the same rule when 16 divides
// the head size, else 2, and never variant 3 (batch 1).
static void test_decode_rule() {
  struct Case {
    int nKV, variant, min_gqa;
    bool fp8;
    int want;
    int D = 128, batch = 256;
  };
  const Case cases[] = {{8, 3, kDecodeMmaMinGqa, false, 4},  {16, 3, kDecodeMmaMinGqa, false, 2},
                        {32, 3, kDecodeMmaMinGqa, false, 2}, {4, 0, kDecodeMmaMinGqa, false, 4},
                        {16, 3, 2, false, 4},                {32, 3, 1, false, 4},
                        {8, 3, 5, false, 2},                 {8, 2, kDecodeMmaMinGqa, false, 2},
                        {32, 4, kDecodeMmaMinGqa, false, 4}, {8, 3, kDecodeMmaMinGqa, true, 4},
                        {8, 4, kDecodeMmaMinGqa, true, 4},   {32, 3, kDecodeMmaMinGqa, true, 2},
                        {32, 4, kDecodeMmaMinGqa, true, 4},  {8, 2, kDecodeMmaMinGqa, true, 2},
                        {8, 4, kDecodeMmaMinGqa, true, 2, 40}, {8, 3, kDecodeMmaMinGqa, true, 2, 40},
                        {8, 4, kDecodeMmaMinGqa, false, 4, 40}, {8, 3, kDecodeMmaMinGqa, true, 4, 128, 1}};
  std::string bad;
  for (const Case& c : cases) {
    AttnParams p{};
    p.num_heads = 32, p.num_kv_heads = c.nKV, p.head_dim = c.D;
    p.decode_variant = c.variant;
    p.mma_min_gqa = c.min_gqa;
    const int got = kd::decode_variant_run(p, c.batch, 145, c.fp8, true);
    if (got != c.want)
      bad += " (32/" + std::to_string(c.nKV) + " D" + std::to_string(c.D) + " bs" + std::to_string(c.batch) + " v" +
             std::to_string(c.variant) + " min " + std::to_string(c.min_gqa) + (c.fp8 ? " fp8" : "") + ": " +
             std::to_string(got) + ")";
  }
  report(bad.empty(), "decode kernel rule by GQA ratio (mma_min_gqa)", 0, bad);
}

static void test_attention(Rng& rng, int only) {
  const auto F16 = DType::F16, BF16 = DType::BF16;
  const auto NX = RopeStyle::Neox, GJ = RopeStyle::Gptj;
  std::vector<AttnCase> cases = {
      {"ctx f16 D32 gqa2 neox tpb16", F16, 4, 2, 32, 32, NX, 16, true, {{0, 1}, {0, 37}, {0, 100}, {5, 70}}},
      {"dec f16 D32 gqa2 neox tpb16", F16, 4, 2, 32, 32, NX, 16, true, {{0, 1}, {37, 1}, {100, 1}, {75, 1}}},
      {"dec f16 D128 gqa4 gptj R64", F16, 8, 2, 128, 64, GJ, 32, true, {{0, 1}, {16, 1}, {299, 1}, {2047, 1}, {63, 1}}},
      {"mixed bf16 D64 g3 no-rope separate qkv tpb8", BF16, 6, 2, 64, 0, NX, 8, false, {{50, 30}, {200, 1}, {0, 70}, {1, 1}}},
      // Mixed steps as the batch manager packs them: decode tokens first, then context chunks (and a 1-token one).
      {"mixed bf16 D128 llama3 decode-first", BF16, 32, 8, 128, 128, NX, 32, true,
       {{130, 1}, {0, 1}, {77, 1}, {300, 1}, {0, 128}, {64, 64}, {5, 1}, {0, 3}}},
      {"mixed f16 D128 mha decode-first gptj", F16, 8, 8, 128, 64, GJ, 16, false, {{1000, 1}, {33, 1}, {0, 40}}},
      {"dec bf16 D64 g3 no-rope separate qkv tpb8", BF16, 6, 2, 64, 0, NX, 8, false, {{50, 1}, {200, 1}, {0, 1}}},
      {"ctx f16 D40 neox R40 tpb24", F16, 2, 1, 40, 40, NX, 24, true, {{0, 33}, {10, 1}, {3, 5}}},
      {"dec f16 D40 neox R40 tpb24", F16, 2, 1, 40, 40, NX, 24, true, {{100, 1}, {43, 1}, {0, 1}}},
      {"ctx bf16 D256 neox R128", BF16, 4, 4, 256, 128, NX, 16, true, {{0, 65}, {300, 1}}},
      {"dec bf16 D256 neox R128", BF16, 4, 4, 256, 128, NX, 16, true, {{300, 1}, {1000, 1}}},
      {"dec f16 D64 mqa g12", F16, 12, 1, 64, 64, NX, 16, true, {{500, 1}, {3, 1}}},
      {"ctx f16 D64 mqa g12", F16, 12, 1, 64, 64, NX, 16, true, {{0, 20}, {40, 50}}},
      {"ctx f16 D96 gptj", F16, 4, 2, 96, 96, GJ, 32, true, {{0, 130}, {7, 9}}},
      {"dec f16 D96 gptj", F16, 4, 2, 96, 96, GJ, 32, true, {{130, 1}, {9, 1}}},
      {"ctx bf16 D192 neox", BF16, 2, 1, 192, 192, NX, 16, true, {{0, 40}, {20, 1}}},
      {"ctx f16 D128 gqa4 chunked prefill", F16, 8, 2, 128, 128, NX, 32, true, {{0, 300}, {100, 200}, {1000, 1}}},
      {"ctx bf16 D128 mha", BF16, 4, 4, 128, 128, NX, 16, true, {{0, 129}, {64, 64}}},
      {"dec f16 D128 llama3-like g4 bs8 long", F16, 32, 8, 128, 128, NX, 32, true,
       {{2999, 1}, {1, 1}, {777, 1}, {2048, 1}, {31, 1}, {32, 1}, {1500, 1}, {0, 1}}},
      {"dec bf16 D128 mha bs3", BF16, 32, 32, 128, 128, NX, 16, true, {{4095, 1}, {255, 1}, {1024, 1}}},
      {"dec f16 D64 mqa g12 short", F16, 12, 1, 64, 64, NX, 16, true, {{200, 1}, {3, 1}}},
      {"dec bf16 D256 neox R128 short", BF16, 4, 4, 256, 128, NX, 16, true, {{100, 1}, {37, 1}}},
      {"dec f16 D128 gqa4 gptj R64 short", F16, 8, 2, 128, 64, GJ, 32, true, {{0, 1}, {16, 1}, {150, 1}}},
      {"dec f16 D128 llama2 bs1 ctx200", F16, 32, 32, 128, 128, NX, 32, true, {{199, 1}}},
      // decode variant 3 ranges: 8 warps and a 2-step loop per split, the 1024 bound, one split (pos 0), bs 4 GQA.
      {"dec f16 D128 llama2 bs1 ctx1000", F16, 32, 32, 128, 128, NX, 32, true, {{999, 1}}},
      {"dec bf16 D128 gqa4 bs1 ctx1024 tpb16", BF16, 8, 2, 128, 128, NX, 16, true, {{1023, 1}}},
      {"dec f16 D128 llama2 bs1 pos0", F16, 32, 32, 128, 128, NX, 32, true, {{0, 1}}},
      {"dec f16 D128 gqa4 bs4 mixed", F16, 16, 4, 128, 128, NX, 32, true, {{700, 1}, {5, 1}, {255, 1}, {31, 1}}},
      // Large decode batches (variant 4's range; GQA 4 = Llama-3, 8, 1 = Llama-2), unsplit grids and split ones.
      {"dec bf16 D128 llama3 g4 bs80", BF16, 32, 8, 128, 128, NX, 32, true, decode_batch(80, 37, 3, 400)},
      {"dec f16 D128 llama3 g4 bs80", F16, 32, 8, 128, 128, NX, 32, true, decode_batch(80, 41, 144, 300)},
      {"dec f16 D128 g8 bs72 tpb16", F16, 64, 8, 128, 128, NX, 16, true, decode_batch(72, 53, 0, 333)},
      {"dec bf16 D128 g8 bs9 split", BF16, 32, 4, 128, 128, NX, 64, true, decode_batch(9, 211, 17, 1500)},
      {"dec bf16 D128 mha g1 bs20", BF16, 16, 16, 128, 128, NX, 32, true, decode_batch(20, 29, 1, 260)},
      {"dec f16 D128 mha g1 bs6 split", F16, 8, 8, 128, 128, GJ, 16, false, decode_batch(6, 97, 600, 2100)},
      {"dec bf16 D64 g32 two head groups", BF16, 32, 1, 64, 64, NX, 16, true, {{300, 1}, {17, 1}, {0, 1}, {2500, 1}}},
      {"dec f16 D32 g4 bs40 tpb8", F16, 16, 4, 32, 32, NX, 8, true, decode_batch(40, 13, 5, 90)},
      {"dec bf16 D256 g2 bs24", BF16, 4, 2, 256, 128, NX, 16, true, decode_batch(24, 31, 2, 200)},
      // Variant 4's prefetch configurations: blocks of 48 tokens (16 | tpb, not a power of two) and of 24 (the
      // per-row fallback).
      {"dec f16 D128 g4 bs17 tpb48", F16, 8, 2, 128, 128, NX, 48, true, decode_batch(17, 89, 30, 1400)},
      {"dec bf16 D128 g4 bs33 tpb24", BF16, 16, 4, 128, 128, NX, 24, true, decode_batch(33, 47, 9, 700)},
  };
  if (only == -2) {
    std::printf("%zu\n", cases.size());
    return;
  }
  if (only < 0) test_decode_rule();
  for (int i = 0; i < (int)cases.size(); ++i)
    if (only < 0 || only == i) test_attention_case(cases[i], rng);
}

// ---------------- gemv_glu: gate_up linear + gated_act in one launch ----------------
// Against the pair it replaces, same variant: gemv into gu [M, 2N], then gated_act. A row's fp32 sum runs in the same
// order in both kernels (the GLU group streams its up rows beside its gate rows, each row summed alone), and both
// roundings are the pair's, so every output must be bit-identical (0xFF-poisoned output: a missed store fails).
// The pair itself is checked against fp64 by test_gemv (plain, and the gated prologue's vector).
static void test_gemv_glu(Rng& rng) {
  struct Shape {
    int M, N, K;
    bool bias;
  };
  const Shape shapes[] = {{1, 259, 4096, false}, {2, 96, 512, true}, {3, 131, 1032, false}, {4, 64, 2048, true},
                          {1, 8, 8, true}};
  for (DType dt : {DType::F16, DType::BF16})
    for (GemvPro act : {GemvPro::GatedSilu, GemvPro::GatedGeluTanh})
      for (const Shape& sh : shapes) {
        const int M = sh.M, N = sh.N, K = sh.K;
        Buf x(dt, (size_t)M * K), w(dt, (size_t)2 * N * K), bias(dt, 2 * N), gu(dt, (size_t)M * 2 * N),
            ref(dt, (size_t)M * N), out(dt, (size_t)M * N);
        x.fill(rng, -2, 2);
        w.fill(rng, -1, 1);
        bias.fill(rng, -1, 1);
        x.up(), w.up(), bias.up();
        int ran = 0, differ = 0;
        std::string failed;
        for (int variant = 0; variant < kGemvVariants; ++variant) {
          if (!gemv_glu_takes(variant)) continue;
          ref.poison(), out.poison();
          const void* b = sh.bias ? bias.d : nullptr;
          CK(gemv(variant, x.d, w.d, b, nullptr, gu.d, M, 2 * N, K, dt, true, 0));
          CK(gated_act(gu.d, ref.d, M, N, act == GemvPro::GatedSilu ? Act::Silu : Act::GeluTanh, dt, 0));
          CK(gemv_glu(variant, act, x.d, w.d, b, out.d, M, N, K, dt, true, 0));
          sync_check();
          ref.down(), out.down();
          int bad = 0;
          for (size_t i = 0; i < ref.h.size(); ++i) bad += ref.h[i] != out.h[i];
          ran++;
          if (bad) differ++, failed += " v" + std::to_string(variant) + ": " + std::to_string(bad) + " bytes differ";
        }
        char name[160];
        std::snprintf(name, sizeof name, "gemv_glu %s %s M=%d N=%d K=%d%s = gemv + gated_act (%d variants)", dname(dt),
                      act == GemvPro::GatedSilu ? "silu" : "gelu_tanh", M, N, K, sh.bias ? " bias" : "", ran);
        report(differ == 0 && ran == kGemvVariants - 2, name, 0, failed);
      }
  Buf x(DType::F16, 64), w(DType::F16, 2 * 8 * 64), o(DType::F16, 8);
  const bool refused = !gemv_glu_takes(2) && !gemv_glu_takes(7) &&
                       gemv_glu(2, GemvPro::GatedSilu, x.d, w.d, nullptr, o.d, 1, 8, 64, DType::F16, true, 0) ==
                           cudaErrorInvalidValue &&
                       gemv_glu(0, GemvPro::RmsNorm, x.d, w.d, nullptr, o.d, 1, 8, 64, DType::F16, true, 0) ==
                           cudaErrorInvalidValue;
  cudaGetLastError();
  report(refused, "gemv_glu refuses variants 2 and 7 and a non-gated activation", 0);
}

// The gemv tests' random inputs, uploaded: x in [-2, 2], w, bias and res in [-1, 1], the norm weight in [0.5, 1.5].
static void fill_gemv_inputs(Rng& rng, Buf& x, Buf& w, Buf& bias, Buf& res, Buf& nw) {
  x.fill(rng, -2, 2);
  w.fill(rng, -1, 1);
  bias.fill(rng, -1, 1);
  res.fill(rng, -1, 1);
  nw.fill(rng, 0.5f, 1.5f);
  x.up(), w.up(), bias.up(), res.up(), nw.up();
}

// ---------------- gemv_norm: a linear + the rms_norm of its output in one launch ----------------
// Against the pair, same variant: gemv, then rms_norm of its output. out must be bit-identical (the same gemv code);
// the norm within one unit of rounding (its fp32 sum of squares in another order: 128 threads, not rms_norm's).
// Every call is made twice: the block counter must come back to zero, or the second launch's tail never runs (its
// poisoned output fails). One case writes the norm over out itself (in place).
static void test_gemv_norm(Rng& rng) {
  struct Shape {
    int M, N, K;
    bool bias, res, in_place;
  };
  const Shape shapes[] = {{1, 4096, 4096, false, true, false}, {2, 96, 512, true, false, false},
                          {3, 136, 1032, false, true, false},  {4, 64, 2048, true, true, false},
                          {1, 8, 8, true, true, false},         {1, 512, 1024, false, true, true}};
  const float eps = 1e-5f;
  unsigned* counter = nullptr;
  CK(cudaMalloc(&counter, sizeof(unsigned)));
  CK(cudaMemset(counter, 0, sizeof(unsigned)));
  for (DType dt : {DType::F16, DType::BF16})
    for (const Shape& sh : shapes) {
      const int M = sh.M, N = sh.N, K = sh.K;
      Buf x(dt, (size_t)M * K), w(dt, (size_t)N * K), bias(dt, N), res(dt, (size_t)M * N), nw(dt, N),
          ref(dt, (size_t)M * N), yref(dt, (size_t)M * N), out(dt, (size_t)M * N), y(dt, (size_t)M * N);
      fill_gemv_inputs(rng, x, w, bias, res, nw);
      Err e;
      int differ = 0;
      std::string failed;
      for (int variant = 0; variant < kGemvVariants; ++variant) {
        const void* b = sh.bias ? bias.d : nullptr;
        const void* r = sh.res ? res.d : nullptr;
        ref.poison(), yref.poison();
        CK(gemv(variant, x.d, w.d, b, r, ref.d, M, N, K, dt, true, 0));
        CK(rms_norm(ref.d, nullptr, nw.d, 0.f, yref.d, nullptr, M, N, eps, dt, 0));
        sync_check();
        ref.down(), yref.down();
        for (int rep = 0; rep < 2; ++rep) {
          out.poison(), y.poison();
          void* yo = sh.in_place ? out.d : y.d;
          CK(gemv_norm(variant, x.d, w.d, b, r, out.d, M, N, K, nw.d, eps, yo, counter, dt, true, 0));
          sync_check();
          Buf& got = sh.in_place ? out : y;
          got.down();
          Err ev;
          for (size_t i = 0; i < yref.n; ++i) {
            ev.add(got.get(i), yref.get(i), 0, rtol_of(dt));
            e.add(got.get(i), yref.get(i), 0, rtol_of(dt));
          }
          if (!ev.ok()) failed += " v" + std::to_string(variant) + " rep " + std::to_string(rep) + ":" + ev.firsts();
          if (!sh.in_place) {
            out.down();
            if (out.h != ref.h) differ++, failed += " v" + std::to_string(variant) + ": out differs from gemv's";
          }
        }
      }
      char name[160];
      std::snprintf(name, sizeof name, "gemv_norm %s M=%d N=%d K=%d%s%s%s = gemv + rms_norm (%d variants, twice)",
                    dname(dt), M, N, K, sh.bias ? " bias" : "", sh.res ? " res" : "", sh.in_place ? " in place" : "",
                    kGemvVariants);
      report(e.ok() && differ == 0, name, e.max_abs, e.str() + failed);
    }
  Buf x(DType::F16, 64), w(DType::F16, 12 * 64), o(DType::F16, 12), nw(DType::F16, 12);
  const bool refused = gemv_norm(0, x.d, w.d, nullptr, nullptr, o.d, 1, 12, 64, nw.d, eps, o.d, counter, DType::F16,
                                 true, 0) == cudaErrorInvalidValue &&
                       gemv_norm(0, x.d, w.d, nullptr, nullptr, o.d, 1, 8, 64, nw.d, eps, o.d, nullptr, DType::F16,
                                 true, 0) == cudaErrorInvalidValue;
  cudaGetLastError();
  report(refused, "gemv_norm refuses N % 8 != 0 and a null counter", 0);
  CK(cudaFree(counter));
}

// ---------------- gemv (small-M linear) and its prologue variants ----------------
// out[m, n] = v[m, :] · w[n, :] + bias[n] + residual[m, n] against an fp64 host reference, for every variant,
// with the vector v: x (plain), to_dtype(x * inv_rms * norm_w) (rms_norm prologue, inv_rms in fp64 here) or
// to_dtype(act(gate) * up) (gated prologues). Bound per output: one unit of rounding of the output, the fp32
// accumulation (2e-5 of sum |v w|, ~5x the random-walk error over K = 4096 terms), and for the prologues up to
// 8 vector elements rounded the other way (the kernel's fp32 inv_rms / activation vs fp64 here; each flip moves
// the sum by at most one unit of rounding of that v_k·w_k).
static void test_gemv(Rng& rng) {
  struct Shape {
    int M, N, K;
    bool bias, res;
  };
  const Shape shapes[] = {{1, 259, 4096, false, false}, {2, 96, 512, true, false}, {3, 131, 1032, false, true},
                          {4, 64, 2048, true, true}, {1, 8, 8, true, true}};
  const GemvPro pros[] = {GemvPro::None, GemvPro::RmsNorm, GemvPro::GatedSilu, GemvPro::GatedGeluTanh};
  const char* pro_names[] = {"plain", "rms_norm", "gated silu", "gated gelu_tanh"};
  const float eps = 1e-5f;
  for (DType dt : {DType::F16, DType::BF16})
    for (GemvPro pro : pros)
      for (const Shape& sh : shapes) {
        const int M = sh.M, N = sh.N, K = sh.K;
        const bool gated = pro == GemvPro::GatedSilu || pro == GemvPro::GatedGeluTanh;
        const int xw = gated ? 2 * K : K;
        Buf x(dt, (size_t)M * xw), w(dt, (size_t)N * K), bias(dt, N), res(dt, (size_t)M * N), nw(dt, K),
            out(dt, (size_t)M * N);
        fill_gemv_inputs(rng, x, w, bias, res, nw);
        // The vector, as the kernel's prologue rounds it.
        std::vector<double> v((size_t)M * K);
        for (int m = 0; m < M; ++m) {
          double inv = 1;
          if (pro == GemvPro::RmsNorm) {
            double ss = 0;
            for (int k = 0; k < K; ++k) ss += (double)x.get((size_t)m * K + k) * x.get((size_t)m * K + k);
            inv = 1.0 / std::sqrt(ss / K + eps);
          }
          for (int k = 0; k < K; ++k) {
            double vk;
            if (pro == GemvPro::None) vk = x.get((size_t)m * K + k);
            else if (pro == GemvPro::RmsNorm) vk = round_to((float)(x.get((size_t)m * K + k) * inv * nw.get(k)), dt);
            else
              vk = round_to((float)(act_ref(x.get((size_t)m * xw + k), pro == GemvPro::GatedSilu ? Act::Silu : Act::GeluTanh) *
                                    x.get((size_t)m * xw + K + k)),
                            dt);
            v[(size_t)m * K + k] = vk;
          }
        }
        std::vector<double> ref((size_t)M * N), cond((size_t)M * N), maxvw((size_t)M * N);
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < N; ++n) {
            double acc = 0, c = 0, mx = 0;
            for (int k = 0; k < K; ++k) {
              const double t = v[(size_t)m * K + k] * w.get((size_t)n * K + k);
              acc += t, c += std::fabs(t), mx = std::max(mx, std::fabs(t));
            }
            if (sh.bias) acc += bias.get(n);
            if (sh.res) acc += res.get((size_t)m * N + n);
            ref[(size_t)m * N + n] = acc, cond[(size_t)m * N + n] = c, maxvw[(size_t)m * N + n] = mx;
          }
        GemvPrologue pp;
        pp.kind = pro;
        pp.norm_w = nw.d;
        pp.eps = eps;
        Err e;
        std::string failed;
        for (int variant = 0; variant < kGemvVariants; ++variant) {
          out.poison();
          Err ev;
          CK(gemv_pro(variant, pp, x.d, w.d, sh.bias ? bias.d : nullptr, sh.res ? res.d : nullptr, out.d, M, N, K, dt,
                      true, 0));
          sync_check();
          out.down();
          for (size_t i = 0; i < ref.size(); ++i) {
            const double atol = 2e-5 * cond[i] + (pro == GemvPro::None ? 0.0 : 8.0 * rtol_of(dt) * maxvw[i]);
            ev.add(out.get(i), ref[i], atol, rtol_of(dt));
            e.add(out.get(i), ref[i], atol, rtol_of(dt));
          }
          if (!ev.ok()) failed += " v" + std::to_string(variant) + ":" + ev.firsts();
        }
        char name[160];
        std::snprintf(name, sizeof name, "gemv %s %s M=%d N=%d K=%d%s%s (%d variants)", dname(dt),
                      pro_names[int(pro)], M, N, K, sh.bias ? " bias" : "", sh.res ? " res" : "", kGemvVariants);
        report(e.ok(), name, e.max_abs, e.str() + failed);
      }
  // Not eligible (K % 8 != 0): refused, never a wrong answer.
  Buf x(DType::F16, 12), w(DType::F16, 12), o(DType::F16, 1);
  const bool refused = !gemv_eligible(x.d, w.d, 1, 12, DType::F16) &&
                       gemv(0, x.d, w.d, nullptr, nullptr, o.d, 1, 1, 12, DType::F16, true, 0) == cudaErrorInvalidValue;
  cudaGetLastError();
  report(refused, "gemv refuses K % 8 != 0", 0);
}

// ---------------- elementwise chains folded into linears and norms ----------------
// (src/ops/ew-chain.ts; kernels.h gemv / linear_epilogue / rms_norm / layer_norm post and pre) against fp64.
static EwChain make_chain(std::initializer_list<std::pair<UnaryOp, float>> steps) {
  EwChain c;
  for (auto& s : steps) c.op[c.n] = s.first, c.arg[c.n] = s.second, c.n++;
  return c;
}
static double chain_ref(double x, const EwChain& c) {
  for (int i = 0; i < c.n; i++) {
    const double p = c.arg[i];
    switch (c.op[i]) {
      case UnaryOp::Tanh: x = std::tanh(x); break;
      case UnaryOp::Sigmoid: x = 1.0 / (1.0 + std::exp(-x)); break;
      case UnaryOp::Exp: x = std::exp(x); break;
      case UnaryOp::Scale: x = x * p; break;
      case UnaryOp::Softcap: x = p * std::tanh(x / p); break;
    }
  }
  return x;
}

static void test_chains(Rng& rng) {
  // Gemma 2's logit cap then a scale; a single scale (Granite's multipliers); all four steps of the capacity.
  const EwChain chains[] = {make_chain({{UnaryOp::Softcap, 3.f}, {UnaryOp::Scale, 2.f}}),
                            make_chain({{UnaryOp::Scale, 0.7f}}),
                            make_chain({{UnaryOp::Sigmoid, 0.f}, {UnaryOp::Exp, 0.f}, {UnaryOp::Tanh, 0.f},
                                        {UnaryOp::Softcap, 1.5f}})};
  const char* chain_names[] = {"softcap 3 -> scale 2", "scale 0.7", "sigmoid -> exp -> tanh -> softcap 1.5"};
  // Bounds on |d chain / dx| (softcap, tanh <= 1; scale p; sigmoid <= 1/4, exp of (0,1) < e): error amplification.
  const double slope[] = {2.0, 0.7, 0.25 * 2.72};
  struct Shape {
    int M, N, K;
    bool bias, res;
  };
  const Shape shapes[] = {{1, 259, 4096, false, false}, {2, 96, 512, true, false}, {3, 131, 1032, false, true},
                          {4, 64, 2048, true, true}};
  for (DType dt : {DType::F16, DType::BF16})
    for (int ci = 0; ci < 3; ++ci) {
      const EwChain& ch = chains[ci];
      // gemv (plain; every variant): out = post(x·wᵀ + bias) + residual, the chain in registers, one rounding.
      for (const Shape& sh : shapes) {
        const int M = sh.M, N = sh.N, K = sh.K;
        Buf x(dt, (size_t)M * K), w(dt, (size_t)N * K), bias(dt, N), res(dt, (size_t)M * N), out(dt, (size_t)M * N);
        x.fill(rng, -1, 1), w.fill(rng, -0.1f, 0.1f), bias.fill(rng, -1, 1), res.fill(rng, -1, 1);
        x.up(), w.up(), bias.up(), res.up();
        std::vector<double> ref((size_t)M * N), cond((size_t)M * N);
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < N; ++n) {
            double acc = 0, c = 0;
            for (int k = 0; k < K; ++k) {
              const double t = (double)x.get((size_t)m * K + k) * w.get((size_t)n * K + k);
              acc += t, c += std::fabs(t);
            }
            if (sh.bias) acc += bias.get(n);
            acc = chain_ref(acc, ch);
            if (sh.res) acc += res.get((size_t)m * N + n);
            ref[(size_t)m * N + n] = acc, cond[(size_t)m * N + n] = c;
          }
        Err e;
        std::string failed;
        for (int variant = 0; variant < kGemvVariants; ++variant) {
          out.poison();
          Err ev;
          CK(gemv(variant, x.d, w.d, sh.bias ? bias.d : nullptr, sh.res ? res.d : nullptr, out.d, M, N, K, dt, true, 0,
                  &ch));
          sync_check();
          out.down();
          for (size_t i = 0; i < ref.size(); ++i) {
            const double atol = 2e-5 * cond[i] * slope[ci] + 1e-6;
            ev.add(out.get(i), ref[i], atol, rtol_of(dt));
            e.add(out.get(i), ref[i], atol, rtol_of(dt));
          }
          if (!ev.ok()) failed += " v" + std::to_string(variant) + ":" + ev.firsts();
        }
        char name[200];
        std::snprintf(name, sizeof name, "gemv %s post [%s] M=%d N=%d K=%d%s%s (%d variants)", dname(dt),
                      chain_names[ci], M, N, K, sh.bias ? " bias" : "", sh.res ? " res" : "", kGemvVariants);
        report(e.ok(), name, e.max_abs, e.str() + failed);
      }
      // linear_epilogue (after cuBLASLt): out = post(act(x)) + residual, out aliasing x or the residual.
      for (Act act : {Act::None, Act::Silu, Act::GeluTanh, Act::GeluErf})
        for (int variant = 0; variant < 4; ++variant) {  // 0: no residual, 1: residual, 2: out = x, 3: out = residual
          const size_t n = 10007;
          Buf x(dt, n), res(dt, n), o(dt, n);
          x.fill(rng, -3, 3), res.fill(rng, -1, 1);
          x.up(), res.up();
          o.poison();
          const std::vector<uint8_t> xh = x.h, rh = res.h;
          void* out = variant == 2 ? x.d : variant == 3 ? res.d : o.d;
          CK(linear_epilogue(x.d, variant ? res.d : nullptr, out, n, act, ch, dt, 0));
          sync_check();
          Buf& ob = variant == 2 ? x : variant == 3 ? res : o;
          ob.down();
          Err e;
          for (size_t i = 0; i < n; ++i) {
            const double want = chain_ref(act_ref(rd(xh, i, dt), act), ch) + (variant ? rd(rh, i, dt) : 0.0);
            e.add(ob.get(i), want, 1e-6, rtol_of(dt));
          }
          report(e.ok(),
                 std::string("linear_epilogue ") + dname(dt) + " " + act_name(act) + " [" + chain_names[ci] + "]" +
                     (variant == 0 ? "" : variant == 1 ? " +res" : variant == 2 ? " +res out=x" : " +res out=res"),
                 e.max_abs, e.str());
        }
    }
  // Norms with a pre chain on x and a post chain on y: vector (4096) and element (1001) paths, with and without the
  // residual add (sum = pre(x) + residual, rounded, is what is normalised and what sum_out holds).
  const EwChain pre = make_chain({{UnaryOp::Tanh, 0.f}, {UnaryOp::Scale, 1.5f}});
  const EwChain post = make_chain({{UnaryOp::Softcap, 2.f}});
  for (int ln = 0; ln < 2; ++ln)
    for (DType dt : {DType::F16, DType::BF16, DType::F32})
      for (int hidden : {4096, 1001})
        for (int mode = 0; mode < 2; ++mode)
          for (int which = 1; which < 4; ++which) {  // 1: pre, 2: post, 3: both
            const int rows = 5;
            const size_t n = (size_t)rows * hidden;
            Buf x(dt, n), res(dt, n), w(dt, hidden), y(dt, n), sum(dt, n);
            x.fill(rng, -2, 2), res.fill(rng, -2, 2), w.fill(rng, 0.5f, 1.5f);
            x.up(), res.up(), w.up();
            y.poison(), sum.poison();
            const float eps = 1e-5f;
            const EwChain* pp = which & 1 ? &pre : nullptr;
            const EwChain* qp = which & 2 ? &post : nullptr;
            if (ln)
              CK(layer_norm(x.d, mode ? res.d : nullptr, w.d, 0.f, nullptr, y.d, mode ? sum.d : nullptr, rows, hidden,
                            eps, dt, 0, pp, qp));
            else
              CK(rms_norm(x.d, mode ? res.d : nullptr, w.d, 0.f, y.d, mode ? sum.d : nullptr, rows, hidden, eps, dt, 0,
                          pp, qp));
            sync_check();
            y.down();
            if (mode) sum.down();
            Err e, es;
            for (int r = 0; r < rows; ++r) {
              std::vector<double> v(hidden);
              for (int i = 0; i < hidden; ++i) {
                const size_t k = (size_t)r * hidden + i;
                double a = pp ? chain_ref(x.get(k), pre) : x.get(k);
                if (mode) {
                  a = round_to((float)(a + res.get(k)), dt);
                  es.add(sum.get(k), a, 1e-6, rtol_of(dt));  // pre in fp32 vs fp64: the rounding may flip by 1 ulp
                  // y is normalised from the sum the kernel stored (checked just above), so the reference is too:
                  // a 1-ulp flip of a sum element moved y by ~rstd ulp, past 3 rtol where y is near 0 (session 9).
                  a = sum.get(k);
                }
                v[i] = a;
              }
              double mean;
              const double rstd = norm_rstd(v, ln, eps, &mean);
              for (int i = 0; i < hidden; ++i) {
                double ref = (v[i] - mean) * rstd * (double)w.get(i);
                if (qp) ref = chain_ref(ref, post);
                e.add(y.get((size_t)r * hidden + i), ref, 1e-5, 3 * rtol_of(dt));
              }
            }
            std::string name = std::string(ln ? "layer_norm " : "rms_norm ") + dname(dt) + " hidden=" +
                               std::to_string(hidden) + (mode ? " +residual" : "") +
                               (which & 1 ? " pre [tanh -> scale 1.5]" : "") + (which & 2 ? " post [softcap 2]" : "");
            report(e.ok() && es.ok(), name, e.max_abs, e.str() + (mode ? " sum:" + es.str() : ""));
          }
  // A prologue variant with a chain is not instantiated: refused, never a wrong answer.
  {
    Buf x(DType::F16, 64), w(DType::F16, 64 * 8), nw(DType::F16, 64), o(DType::F16, 8);
    GemvPrologue pp;
    pp.kind = GemvPro::RmsNorm, pp.norm_w = nw.d, pp.eps = 1e-5f;
    const EwChain& c = chains[0];
    report(gemv_pro(0, pp, x.d, w.d, nullptr, nullptr, o.d, 1, 8, 64, DType::F16, true, 0, &c) == cudaErrorInvalidValue,
           "gemv_pro refuses a chain with a prologue", 0);
    cudaGetLastError();
  }
}

// ---------------- sampling ----------------
struct SampleRun {
  std::vector<int32_t> out;
};
// ldt: the dtype the logits are handed to sample() in (their values rounded to it on the host first).
static std::vector<int32_t> run_sample(const std::vector<float>& logits, int rows, int vocab, const std::vector<float>& temp,
                                       const std::vector<int32_t>& topk, const std::vector<float>& topp,
                                       const std::vector<uint64_t>& seed, const std::vector<int32_t>& step,
                                       DType ldt = DType::F32) {
  float *dt, *dp;
  void* dl;
  int32_t *dk, *ds, *dout;
  uint64_t* dseed;
  std::vector<uint8_t> lh(logits.size() * dsize(ldt));
  for (size_t i = 0; i < logits.size(); i++) wr(lh, i, logits[i], ldt);
  CK(cudaMalloc(&dl, lh.size()));
  CK(cudaMalloc(&dt, rows * 4));
  CK(cudaMalloc(&dp, rows * 4));
  CK(cudaMalloc(&dk, rows * 4));
  CK(cudaMalloc(&ds, rows * 4));
  CK(cudaMalloc(&dout, rows * 4));
  CK(cudaMalloc(&dseed, rows * 8));
  CK(cudaMemcpy(dl, lh.data(), lh.size(), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dt, temp.data(), rows * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dp, topp.data(), rows * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dk, topk.data(), rows * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(ds, step.data(), rows * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dseed, seed.data(), rows * 8, cudaMemcpyHostToDevice));
  CK(cudaMemset(dout, 0xFF, rows * 4));
  void* ws = nullptr;
  const size_t wsb = sampling_workspace_bytes(rows, vocab);
  if (wsb) CK(cudaMalloc(&ws, wsb));
  CK(sample(dl, ldt, rows, vocab, dt, dk, dp, dseed, ds, dout, ws, 0));
  sync_check();
  std::vector<int32_t> out(rows);
  CK(cudaMemcpy(out.data(), dout, rows * 4, cudaMemcpyDeviceToHost));
  cudaFree(dl), cudaFree(dt), cudaFree(dp), cudaFree(dk), cudaFree(ds), cudaFree(dout), cudaFree(dseed);
  if (ws) cudaFree(ws);
  return out;
}

// Allowed set (by value threshold) and renormalised probabilities of one row under (T, top_k, top_p).
static std::vector<double> ref_probs(const float* x, int vocab, float temp, int k, float p) {
  std::vector<int> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return x[a] > x[b]; });
  float thr = -INFINITY;
  if (k > 0 && k < vocab) thr = x[order[k - 1]];
  const double mx = x[order[0]];
  std::vector<double> w(vocab, 0.0);
  double tot = 0;
  for (int i = 0; i < vocab; ++i)
    if (x[i] >= thr) tot += (w[i] = std::exp((x[i] - mx) / temp));
  if (p < 1.f) {
    double cum = 0;
    float pthr = x[order[0]];
    for (int j = 0; j < vocab; ++j) {
      const int i = order[j];
      if (x[i] < thr) break;
      pthr = x[i];
      cum += w[i] / tot;
      if (cum >= p) break;
    }
    for (int i = 0; i < vocab; ++i)
      if (x[i] < pthr) w[i] = 0;
    tot = 0;
    for (double v : w) tot += v;
  }
  for (double& v : w) v /= tot;
  return w;
}

static void test_sampling(Rng& rng) {
  // Greedy, with ties (lowest index wins), both the vector path and an odd vocab.
  for (int vocab : {128256, 32001}) {
    const int rows = 6;
    std::vector<float> lg((size_t)rows * vocab);
    for (auto& v : lg) v = rng.normal() * 3.f;
    std::vector<int> expect(rows);
    for (int r = 0; r < rows; ++r) {
      float* x = &lg[(size_t)r * vocab];
      const int a = rng.randint(0, vocab - 1), b = rng.randint(0, vocab - 1);
      x[a] = x[b] = 40.f;  // a tie at the max
      expect[r] = std::min(a, b);
    }
    std::vector<float> temp(rows, 0.f), topp(rows, 1.f);
    std::vector<int32_t> topk(rows, 0), step(rows, 3);
    std::vector<uint64_t> seed(rows, 11);
    topk[1] = 1, temp[1] = 0.7f;  // top_k == 1 is greedy too
    temp[2] = -1.f;
    auto out = run_sample(lg, rows, vocab, temp, topk, topp, seed, step);
    int bad = 0;
    for (int r = 0; r < rows; ++r) bad += out[r] != expect[r];
    report(bad == 0, "sample greedy (ties -> lowest index) vocab=" + std::to_string(vocab), bad, "(wrong rows)");
  }
  // A +Infinity logit outweighs every finite one: greedy even at temperature > 0 (sampling weighed it exp(inf - inf),
  // NaN, and drew the lowest-index finite token); a row with no finite logit gives token 0; a NaN is never drawn.
  // The reference executor does the same (src/executor/sampling.ts).
  {
    const int rows = 4, vocab = 4099;
    std::vector<float> lg((size_t)rows * vocab);
    for (auto& v : lg) v = rng.normal();
    std::vector<int> expect = {17, 33, 0, -1};
    lg[17] = INFINITY;
    lg[(size_t)vocab + 900] = lg[(size_t)vocab + 33] = INFINITY;
    for (int i = 0; i < vocab; ++i) lg[(size_t)2 * vocab + i] = -INFINITY;
    for (int i = 0; i < vocab; i += 2) lg[(size_t)3 * vocab + i] = NAN;  // row 3: any odd token
    std::vector<float> temp(rows, 1.f), topp(rows, 1.f);
    std::vector<int32_t> topk(rows, 0), step(rows, 7);
    std::vector<uint64_t> seed(rows, 5);
    temp[1] = 0.5f, topp[1] = 0.9f, topk[0] = 50;
    auto out = run_sample(lg, rows, vocab, temp, topk, topp, seed, step);
    int bad = 0;
    for (int r = 0; r < 3; ++r) bad += out[r] != expect[r];
    bad += out[3] < 0 || out[3] >= vocab || out[3] % 2 == 0;
    report(bad == 0, "sample: +inf is greedy at T > 0, no finite logit -> 0, NaN never drawn", bad, "(wrong rows)");
  }
  // Distributions on a small vocab: empirical frequencies against the renormalised softmax.
  struct Dist {
    float t;
    int k;
    float p;
  } dists[] = {{1.0f, 0, 1.f}, {0.7f, 5, 1.f}, {1.3f, 0, 0.7f}, {1.0f, 8, 0.6f}};
  for (auto& dd : dists)
    for (int vocab : {16, 13}) {
      const int rows = 32768;
      std::vector<float> base(vocab);
      for (auto& v : base) v = rng.normal();
      std::vector<float> lg((size_t)rows * vocab);
      for (int r = 0; r < rows; ++r) std::copy(base.begin(), base.end(), lg.begin() + (size_t)r * vocab);
      std::vector<float> temp(rows, dd.t), topp(rows, dd.p);
      std::vector<int32_t> topk(rows, dd.k), step(rows, 5);
      std::vector<uint64_t> seed(rows);
      for (int r = 0; r < rows; ++r) seed[r] = 0x1234567890ull + (uint64_t)r * 7919;
      auto out = run_sample(lg, rows, vocab, temp, topk, topp, seed, step);
      auto pr = ref_probs(base.data(), vocab, dd.t, dd.k, dd.p);
      std::vector<double> f(vocab, 0);
      int invalid = 0;
      for (int r = 0; r < rows; ++r) {
        if (out[r] < 0 || out[r] >= vocab)
          ++invalid;
        else
          f[out[r]] += 1.0 / rows;
      }
      double worst = 0;
      bool ok = invalid == 0;
      for (int i = 0; i < vocab; ++i) {
        const double d = std::fabs(f[i] - pr[i]);
        const double lim = 5 * std::sqrt(pr[i] * (1 - pr[i]) / rows) + 1e-3;
        worst = std::max(worst, d);
        if (d > lim || (pr[i] == 0 && f[i] > 0)) ok = false;
      }
      char name[128];
      std::snprintf(name, sizeof name, "sample distribution T=%.1f top_k=%d top_p=%.1f vocab=%d (32768 draws)", dd.t,
                    dd.k, dd.p, vocab);
      report(ok, name, worst, "(|freq-p|)");
    }
  // Large vocab: samples stay inside the top-k / top-p set, repeat exactly for the same (seed, step), move with step.
  for (int vocab : {128256, 32001}) {
    const int rows = 64;
    std::vector<float> lg((size_t)rows * vocab);
    for (auto& v : lg) v = rng.normal() * 2.f;
    std::vector<float> temp(rows), topp(rows);
    std::vector<int32_t> topk(rows), step(rows);
    std::vector<uint64_t> seed(rows);
    for (int r = 0; r < rows; ++r) {
      temp[r] = 0.5f + 0.1f * (r % 10);
      static const int ks[4] = {0, 50, 1000, 0};
      static const float ps[4] = {0.9f, 1.f, 0.5f, 0.95f};
      topk[r] = ks[r % 4];
      topp[r] = ps[(r / 4) % 4];
      if (r % 16 == 3) topk[r] = 0, topp[r] = 1.f;
      seed[r] = 1000003ull * r + 17;
      step[r] = r;
    }
    auto a = run_sample(lg, rows, vocab, temp, topk, topp, seed, step);
    auto b = run_sample(lg, rows, vocab, temp, topk, topp, seed, step);
    for (auto& s : step) s += 1;
    auto c = run_sample(lg, rows, vocab, temp, topk, topp, seed, step);
    int outside = 0, differ = 0, moved = 0;
    for (int r = 0; r < rows; ++r) {
      differ += a[r] != b[r];
      moved += a[r] != c[r];
      if (a[r] < 0 || a[r] >= vocab) {
        ++outside;
        continue;
      }
      auto pr = ref_probs(&lg[(size_t)r * vocab], vocab, temp[r], topk[r], topp[r]);
      // Borderline tolerance for top-p: also accept the first token past the nucleus if the cumulative mass
      // before it is within 1e-4 of top_p (the kernel sums fixed-point probabilities).
      if (pr[a[r]] == 0) {
        auto pr2 = ref_probs(&lg[(size_t)r * vocab], vocab, temp[r], topk[r], std::min(1.f, topp[r] + 1e-4f));
        if (pr2[a[r]] == 0) ++outside;
      }
    }
    report(outside == 0 && differ == 0 && moved > 0,
           "sample top-k/top-p membership + determinism vocab=" + std::to_string(vocab), outside,
           "(outside=" + std::to_string(outside) + " nondeterministic=" + std::to_string(differ) +
               " changed_with_step=" + std::to_string(moved) + "/" + std::to_string(rows) + ")");
    // 16-bit logits read as stored: the tokens of the same values handed over in fp32 (greedy, temperature,
    // top-k, top-p rows alike; 32001 leaves rows unaligned for the vector loads, so the scalar paths run too).
    for (DType ldt : {DType::BF16, DType::F16}) {
      std::vector<float> rounded(lg.size());
      for (size_t i = 0; i < lg.size(); i++) rounded[i] = round_to(lg[i], ldt);
      std::vector<float> t2 = temp;
      for (int r = 0; r < rows; r += 8) t2[r] = 0.f;  // some greedy rows
      auto f32 = run_sample(rounded, rows, vocab, t2, topk, topp, seed, step);
      auto h16 = run_sample(rounded, rows, vocab, t2, topk, topp, seed, step, ldt);
      int diff16 = 0;
      for (int r = 0; r < rows; ++r) diff16 += f32[r] != h16[r];
      report(diff16 == 0, std::string("sample from ") + dname(ldt) + " logits = from their fp32 values, vocab=" +
                              std::to_string(vocab), diff16, "(rows that differ)");
    }
  }
}

#include "quant_tests.cuh"  // test_quant: quantised-linear kernels
#include "moe_tests.cuh"    // test_moe: mixture-of-experts routing, gemv and grouped paths, combine
#include "fmha_fp8_tests.cuh"  // test_fmha8: the FP8 context FMHA (after quant_tests.cuh: its host E4M3 port)

// Usage: kernels_test [group [attention-case-index]]; groups: rf emb norm ew attn samp quant moe fmha8 (default: all).
// `kernels_test attn count` prints the number of attention cases.
int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string only = argc > 1 ? argv[1] : "all";
  const int case_idx = argc > 2 ? (std::string(argv[2]) == "count" ? -2 : std::atoi(argv[2])) : -1;
  auto want = [&](const char* g) { return only == "all" || only == g; };
  int dev = 0;
  CK(cudaSetDevice(dev));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  if (case_idx != -2)
    std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  Rng rng(20251113);
  if (want("rf")) test_random_fill();
  if (want("emb")) test_embedding(rng);
  if (want("norm")) test_norms(rng);
  if (want("ew")) test_elementwise(rng);
  if (want("attn")) test_attention(rng, case_idx);
  if (want("gemv")) test_gemv(rng);
  if (want("gemv")) test_gemv_glu(rng);
  if (want("gemv")) test_gemv_norm(rng);
  if (want("chain")) test_chains(rng);
  if (want("samp")) test_sampling(rng);
  if (want("quant")) test_quant(rng);
  if (want("moe")) test_moe(rng);
  if (want("fmha8")) test_fmha8(rng);
  if (case_idx != -2) std::printf("SUMMARY: %d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
