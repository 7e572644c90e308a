// Batch-1 decode of whole Llama layers (fp16, head_dim 128) in one persistent launch: a prototype measured by
// tests/layers_bench.cu, not used by the runtime yet.
//
// Why: after 28 sessions of per-kernel work, the batch-1 step still spends 0.4-0.6 ms beyond its weight bytes
// (fp16 3.62 ms against a 3.16 ms roofline, kernels-notes "Known limitations"), about 2.4 µs at every kernel
// boundary: the memory pipe drains at each one (the last blocks' tail, the dependency, the next kernel's first
// loads), and PDL hides only what the next kernel can request from registers before it waits. Here the weights
// never wait for anything: they are static, so each SM's producer warp streams its share of every linear of
// every layer into a ring of shared memory by bulk copies (kilobytes per instruction, no registers), running as
// far ahead as the ring allows, across the grid-wide barriers the data dependencies need. The ring (120-165 KB an
// SM, 16-22 MB in all, 4-5 µs of HBM time) is what hides a barrier or the attention phase.
//
// Work per layer (grid: one block an SM; 15 consumer warps + 1 producer warp):
//   1. qkv: every block normalises h itself (8 KB from L2) and computes its contiguous share of the qkv rows;
//   2. attention: block h < nH takes query head h (RoPE, the cache write at pos, softmax over pos + 1 keys); its
//      first keys are loaded before the barrier that ends phase 1, as the cache rows below pos are not written;
//   3. o_proj rows, residual added in place;   4. gate and up rows of the block's share of I, the gated act;
//   5. down rows, residual added. A grid-wide barrier after each phase.
// The ring: a block's rows of a linear, each row one piece or cut into even pieces of at most a slot (one bulk copy
// a piece). Piece q goes to consumer warp q % 15, which owns its slots (an mbarrier's parity then always names the
// right fill), copies the piece into registers, hands the slot back at once, and takes the dot product with the
// phase's vector (in shared memory) into its own fp32 row accumulators; the epilogue sums the 15 warps'.
// What the layout is made of (layers_bench, session 29; H200, Llama-2-7B, % of the copy rate): pieces of 4 KB
// stream at ~60 % even with the ring alone (no compute), 8-11 KB pieces at 93-110 %: a fixed cost per piece at the
// SM sets the rate. Every warp a share of every piece: 40-55 % (16 KB pieces added by shared-memory atomics:
// 51-52 %). Warps owning pieces that cross rows (a division and a branch a 512-byte group): 52-62 %, consumers
// busy 54-66 % of their clocks. Row pieces computed in the slot (51a8ba0): 61-64 %; consumers wait for pieces
// 34-46 % of their clocks and the producer for free slots 26-42 %: a slot is out of the ring while its warp
// computes. Hence this version's copy into registers before the computation (not yet run on a GPU).
// Rounding points as Hugging Face's fp16 modules: the normalised x, q / k after RoPE, each linear's output, the
// residual sums, silu(gate) and the act are fp16; accumulation in fp32.
#include <math.h>

#include "common.cuh"
#include "decode_layers.h"
#include "gemv_stream.cuh"

namespace tsllm {
namespace {

using kd::num_sms;
using kd::warp_sum;

constexpr int kConsumerWarps = 15;  // + the producer: 16 warps, 4 a scheduler, 128 registers each
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kThreads = kConsumers + 32;  // + the producer warp
constexpr unsigned kPieceDefault = 8192;
constexpr int kRmsChunks = 4;  // 16-byte chunks of h a consumer thread holds: H at most 4 x 480 x 8 = 15,360
constexpr int kChunksPerLane = 22;  // a piece's 16-byte chunks a lane holds: pieces of at most 22 x 512 = 11,264 B
constexpr int kD = 128;      // head_dim
constexpr int kKeysPerRound = kConsumerWarps * 2 * 4;  // 2 keys a warp (16 lanes each), 4 in flight a lane

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_expect(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
#else  // the launcher refuses devices below sm_90
__device__ __forceinline__ void mbar_init(uint64_t*, unsigned) {}
__device__ __forceinline__ void mbar_init_fence() {}
__device__ __forceinline__ void mbar_expect(uint64_t*, unsigned) {}
__device__ __forceinline__ void mbar_arrive(uint64_t*) {}
__device__ __forceinline__ void bulk_copy(void*, const void*, unsigned, uint64_t*) { __trap(); }
__device__ __forceinline__ void mbar_wait(uint64_t*, unsigned) {}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) { return *(volatile const unsigned*)p; }
#endif

// The consumer warps only (the producer never joins a block-wide barrier after the set-up).
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory"); }

// Rows [r0, r1) of N for block b of G: contiguous, so a block's share of a linear is one byte range.
__device__ __forceinline__ void block_rows(int N, int b, int G, int& r0, int& r1) {
  r0 = int((long long)b * N / G);
  r1 = int((long long)(b + 1) * N / G);
}

// The weight rows a block streams per layer, in order: its qkv rows, o rows, gate rows, up rows, down rows.
struct Range {
  const half* src;  // the first row
  int rows;
  int K;        // the row length (elements)
  int acc_off;  // where its rows' accumulators start
};
constexpr int kRanges = 5;

__device__ __forceinline__ Range layer_range(const DecodeLayersArgs& a, const DecodeLayerWeights& w, int r, int acc_rows) {
  const int G = gridDim.x, b = blockIdx.x;
  const int nqkv = (a.nH + 2 * a.nKV) * kD;
  int r0, r1;
  switch (r) {
    case 0:
      block_rows(nqkv, b, G, r0, r1);
      return {w.wqkv + (size_t)r0 * a.H, r1 - r0, a.H, 0};
    case 1:
      block_rows(a.H, b, G, r0, r1);
      return {w.wo + (size_t)r0 * a.nH * kD, r1 - r0, a.nH * kD, 0};
    case 2:
      block_rows(a.I, b, G, r0, r1);
      return {w.wgu + (size_t)r0 * a.H, r1 - r0, a.H, 0};
    case 3:
      block_rows(a.I, b, G, r0, r1);
      return {w.wgu + (size_t)(a.I + r0) * a.H, r1 - r0, a.H, acc_rows};
    default:
      block_rows(a.H, b, G, r0, r1);
      return {w.wd + (size_t)r0 * a.I, r1 - r0, a.I, 0};
  }
}

// A range's pieces: each row cut into `seg` pieces of whole 16-byte chunks (as even as they come), each at most a
// slot; piece p is row p / seg, chunks [c0, c1).
struct Piece {
  int row, c0, c1;
};
__device__ __forceinline__ int segs_of(int K, unsigned slot_bytes) {
  return int((unsigned(K) * 2 + slot_bytes - 1) / slot_bytes);
}
__device__ __forceinline__ Piece piece_at(const Range& R, int seg, unsigned p) {
  const int row = int(p / unsigned(seg)), sg = int(p % unsigned(seg)), nc = R.K / 8;
  return {row, sg * nc / seg, (sg + 1) * nc / seg};
}

__host__ __device__ constexpr int imax(int x, int y) { return x > y ? x : y; }

// Rows per block of the longest share (the accumulators of one range; gate and up take two such arrays).
__host__ __device__ inline int acc_rows_of(const DecodeLayersArgs& a, int G) {
  const int nqkv = (a.nH + 2 * a.nKV) * kD;
  const int n = imax(imax(nqkv, a.I), a.H);
  return (n + G - 1) / G + 1;
}
__host__ __device__ inline int xs_bytes_of(const DecodeLayersArgs& a) {
  const int k = imax(imax(a.H, a.I), a.nH * kD) * 2;
  const int merge = (kConsumerWarps * kD + 2 * kConsumerWarps) * 4;  // the attention's cross-warp merge
  return (imax(k, merge) + 127) / 128 * 128;
}

struct Smem {
  uint64_t* full;
  uint64_t* empty;
  uint8_t* ring;
  half* xs;    // the phase's input vector (fp16), or the attention merge's floats
  float* acc;  // per consumer warp: 2 * acc_rows (gate and up take both halves)
  float* red;  // kConsumerWarps
  half* hown;  // this block's rows of h (block_rows of H): only this block writes them, so it keeps them here
};
// Piece qq's slot and which fill of that slot it is: warp qq % 15 owns slots [w * spw, (w + 1) * spw) and takes
// their fills in order, so a warp never waits on a fill whose predecessor it has not consumed (an mbarrier's parity
// names a phase only while it is at most one phase ahead).
__device__ __forceinline__ int slot_of(unsigned qq, int spw) {
  return int(qq % kConsumerWarps) * spw + int((qq / kConsumerWarps) % unsigned(spw));
}
__device__ __forceinline__ unsigned fill_of(unsigned qq, int spw) { return (qq / kConsumerWarps) / unsigned(spw); }
__host__ __device__ inline unsigned piece_of(const DecodeLayersArgs& a) {
  return a.piece_bytes > 0 ? unsigned(a.piece_bytes) : kPieceDefault;
}
__host__ __device__ inline int slots_of(int spw) { return kConsumerWarps * spw; }

__device__ inline Smem carve(uint8_t* base, const DecodeLayersArgs& a, int spw) {
  const int slots = slots_of(spw);
  Smem s;
  s.full = reinterpret_cast<uint64_t*>(base);
  s.empty = s.full + slots;
  uint8_t* p = base + (2 * slots * 8 + 127) / 128 * 128;
  s.ring = p;
  p += (size_t)slots * piece_of(a);
  s.xs = reinterpret_cast<half*>(p);
  p += xs_bytes_of(a);
  s.acc = reinterpret_cast<float*>(p);
  p += (size_t)kConsumerWarps * 2 * acc_rows_of(a, gridDim.x) * 4;
  s.red = reinterpret_cast<float*>(p);
  p += kConsumerWarps * 4;
  s.hown = reinterpret_cast<half*>(p);
  return s;
}

// 8 fp16 weights against 8 fp16 values of x, in fp32: the decode gemvs' own (gemv_stream.cuh).
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x) {
  return kd::WHalf<half>::dot8<half>(w, 0, 0.f, x, 0.f);
}

__device__ __forceinline__ uint4 ldcg16(const half* p) { return __ldcg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ float h2f(half x) { return kd::to_f<half>(x); }
__device__ __forceinline__ float rnd(float x) { return __half2float(__float2half_rn(x)); }

// Grid-wide barrier over a monotonic counter (zeroed before the launch); `target` is thread 0's count of arrivals
// expected so far. The fences order the block's global writes before its arrival and others' writes before its reads.
__device__ __forceinline__ void grid_sync(unsigned* ctr, unsigned& target, bool skip) {
  consumers_sync();
  if (!skip && threadIdx.x == 0) {
    target += gridDim.x;
    __threadfence();
    atomicAdd(ctr, 1u);
    while (ld_acquire(ctr) < target) {
    }
    __threadfence();
  }
  consumers_sync();
}

// xs = fp16(g * fp16(h * rsqrt(mean(h^2) + eps))), h read from L2 (other blocks wrote it).
__device__ void rms_to_xs(const DecodeLayersArgs& a, const half* g, const Smem& s) {
  // One read of h from L2 (a round trip after the grid barrier is time the ring must cover), held in registers.
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  uint4 hr[kRmsChunks];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kRmsChunks; ++k) {
    const int c = tid + k * kConsumers;
    hr[k] = c < a.H / 8 ? ldcg16(a.h + c * 8) : make_uint4(0, 0, 0, 0);
    const half* hv = reinterpret_cast<const half*>(&hr[k]);
#pragma unroll
    for (int j = 0; j < 8; ++j) ss = fmaf(h2f(hv[j]), h2f(hv[j]), ss);
  }
  ss = warp_sum(ss);
  if (lane == 0) s.red[warp] = ss;
  consumers_sync();
  float tot = 0.f;
#pragma unroll
  for (int w = 0; w < kConsumerWarps; ++w) tot += s.red[w];
  const float r = rsqrtf(tot / a.H + a.eps);
#pragma unroll
  for (int k = 0; k < kRmsChunks; ++k) {
    const int c = tid + k * kConsumers;
    if (c >= a.H / 8) break;
    const uint4 gu = __ldg(reinterpret_cast<const uint4*>(g + c * 8));
    const half* hv = reinterpret_cast<const half*>(&hr[k]);
    const half* gv = reinterpret_cast<const half*>(&gu);
    uint4 o;
    half* ov = reinterpret_cast<half*>(&o);
#pragma unroll
    for (int j = 0; j < 8; ++j) ov[j] = __float2half_rn(h2f(gv[j]) * rnd(h2f(hv[j]) * r));
    *reinterpret_cast<uint4*>(s.xs + c * 8) = o;
  }
  consumers_sync();  // xs complete; s.red free again
}

// xs = src[0, n), written by other blocks.
__device__ void copy_to_xs(const half* src, int n, const Smem& s) {
  for (int c = threadIdx.x; c < n / 8; c += kConsumers)
    *reinterpret_cast<uint4*>(s.xs + c * 8) = ldcg16(src + c * 8);
  consumers_sync();
}

// The consumer side of one range: piece q belongs to warp q % 15, which takes its dot products with xs into its own
// accumulators (no atomics; the epilogue sums the warps') and hands the slot back to the producer. A piece lies in
// one row, so after its copy into registers the loop is a shared load of x and 8 FMAs a 16-byte chunk, and one
// warp reduction at its end. q counts pieces across the launch.
__device__ __forceinline__ void consume(const Range& R, const Smem& s, unsigned piece, int spw, int acc_rows,
                                        unsigned& q, long long (&prof)[2], bool compute = true) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seg = segs_of(R.K, piece);
  const unsigned pieces = unsigned(R.rows) * unsigned(seg);
  float* acc = s.acc + (size_t)warp * 2 * acc_rows + R.acc_off;
  for (unsigned p = (unsigned(warp) + kConsumerWarps - q % kConsumerWarps) % kConsumerWarps; p < pieces;
       p += kConsumerWarps) {
    const unsigned qq = q + p;
    const int slot = slot_of(qq, spw);
    const long long t0 = clock64();
    mbar_wait(&s.full[slot], fill_of(qq, spw) & 1u);
    const long long t1 = clock64();
    prof[0] += t1 - t0;
    if (compute) {
      // The piece into registers first and the slot handed back at once, so the next fill is in flight while
      // this warp computes (with one slot a warp, the ring would otherwise idle for the computation).
      const Piece pc = piece_at(R, seg, p);
      const uint4* wbuf = reinterpret_cast<const uint4*>(s.ring + (size_t)slot * piece);
      const uint4* xv = reinterpret_cast<const uint4*>(s.xs) + pc.c0;
      const int n = pc.c1 - pc.c0;
      uint4 wr[kChunksPerLane];
#pragma unroll
      for (int j = 0; j < kChunksPerLane; ++j) wr[j] = lane + 32 * j < n ? wbuf[lane + 32 * j] : make_uint4(0, 0, 0, 0);
      __syncwarp();
      if (lane == 0) mbar_arrive(&s.empty[slot]);  // release: the loads above are ordered before it
      float v = 0.f;
#pragma unroll
      for (int j = 0; j < kChunksPerLane; ++j)
        if (lane + 32 * j < n) v += dot8(wr[j], xv[lane + 32 * j]);
      v = warp_sum(v);
      if (lane == 0) acc[pc.row] += v;
    } else {
      __syncwarp();
      if (lane == 0) mbar_arrive(&s.empty[slot]);
    }
    prof[1] += clock64() - t1;
  }
  q += pieces;
}

// Row i's sum over the warps' accumulators of range offset `off`, which it zeroes (consumer threads, after a
// consumers_sync).
__device__ __forceinline__ float take_acc(const Smem& s, int acc_rows, int off, int i) {
  float t = 0.f;
#pragma unroll
  for (int w = 0; w < kConsumerWarps; ++w) {
    float& x = s.acc[(size_t)w * 2 * acc_rows + off + i];
    t += x;
    x = 0.f;
  }
  return t;
}

// RoPE (rotate-half pairs d, d + 64) of a lane's 8 dims [sub * 8, +8) of a head held by 16 lanes; the partner
// dims live in lane sub ^ 8. Result rounded to fp16.
__device__ __forceinline__ void rope8(const uint4& raw, int sub, int pos, float theta, float (&f)[8]) {
  float x[8], y[8];
  const half* hv = reinterpret_cast<const half*>(&raw);
#pragma unroll
  for (int j = 0; j < 8; ++j) x[j] = h2f(hv[j]);
#pragma unroll
  for (int j = 0; j < 8; ++j) y[j] = __shfl_xor_sync(0xffffffffu, x[j], 8);
  const bool lo = sub < 8;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int i = (sub & 7) * 8 + j;  // the pair's frequency index
    const float inv = powf(theta, -2.f * i / kD);
    float sn, cs;
    sincosf(pos * inv, &sn, &cs);
    f[j] = rnd(lo ? x[j] * cs - y[j] * sn : x[j] * cs + y[j] * sn);
  }
}

__global__ void __launch_bounds__(kThreads, 1) decode_layers_kernel(const DecodeLayersArgs a, int spw) {
  extern __shared__ __align__(128) uint8_t smem[];
  const Smem s = carve(smem, a, spw);
  const int slots = slots_of(spw);
  const unsigned piece = piece_of(a);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int acc_rows = acc_rows_of(a, gridDim.x);
  if (tid == 0) {
    for (int i = 0; i < slots; ++i) {
      mbar_init(&s.full[i], 1);
      mbar_init(&s.empty[i], 1);  // the warp that consumes the piece
    }
    mbar_init_fence();
  }
  for (int i = tid; i < kConsumerWarps * 2 * acc_rows; i += kThreads) s.acc[i] = 0.f;
  __syncthreads();

  if (warp == kConsumerWarps) {
    // Producer: every range of every layer, piece by piece, as far ahead as the ring allows.
    if (lane != 0) return;
    const long long p0 = clock64();
    long long pw = 0;
    unsigned q = 0;
    for (int l = 0; l < a.L; ++l) {
      const DecodeLayerWeights w = a.layers[l];
      for (int r = 0; r < kRanges; ++r) {
        const Range R = layer_range(a, w, r, acc_rows);
        const int seg = segs_of(R.K, piece);
        const unsigned pieces = unsigned(R.rows) * unsigned(seg);
        for (unsigned p = 0; p < pieces; ++p, ++q) {
          const int slot = slot_of(q, spw);
          const unsigned n = fill_of(q, spw);
          if (n > 0) {
            const long long t = clock64();
            mbar_wait(&s.empty[slot], (n - 1) & 1u);
            pw += clock64() - t;
          }
          const Piece pc = piece_at(R, seg, p);
          const unsigned bytes = unsigned(pc.c1 - pc.c0) * 16;
          mbar_expect(&s.full[slot], bytes);
          bulk_copy(s.ring + (size_t)slot * piece, R.src + (size_t)pc.row * R.K + pc.c0 * 8, bytes, &s.full[slot]);
        }
      }
    }
    if (a.prof) {
      atomicAdd(a.prof + 3, (unsigned long long)pw);
      atomicAdd(a.prof + 4, (unsigned long long)(clock64() - p0));
    }
    return;
  }

  // Consumers.
  const bool skip = a.mode != 0;
  unsigned q = 0, target = 0;
  long long prof[2] = {0, 0};  // clocks waiting for pieces, clocks on them (a.prof)
  const long long c0 = clock64();
  // Thread 0's clocks by part of a phase (a.prof): the vector's prologue, the stream (its consume and the wait
  // for the block's other warps), the epilogue, the grid barriers, the attention.
  // (In shared memory: as registers live through the whole kernel they made ptxas spill.)
  __shared__ long long ph[6];  // the parts, then the last mark
  if (tid == 0)
    for (int i = 0; i < 6; ++i) ph[i] = i == 5 ? c0 : 0;
  auto mark = [&](int part) {
    if (a.prof && tid == 0) {
      const long long t = clock64();
      ph[part] += t - ph[5];
      ph[5] = t;
    }
  };
  auto report = [&] {
    if (a.prof && lane == 0) {
      atomicAdd(a.prof + 0, (unsigned long long)prof[0]);
      atomicAdd(a.prof + 1, (unsigned long long)prof[1]);
      atomicAdd(a.prof + 2, (unsigned long long)(clock64() - c0));
    }
    if (a.prof && tid == 0) {
      for (int i = 0; i < 5; ++i) atomicAdd(a.prof + 5 + i, (unsigned long long)ph[i]);
      atomicAdd(a.prof + 10, (unsigned long long)(clock64() - c0));
    }
  };
  if (a.mode == 2) {  // the ring alone: pieces taken and handed back
    for (int l = 0; l < a.L; ++l) {
      const DecodeLayerWeights w = a.layers[l];
      for (int r = 0; r < kRanges; ++r) consume(layer_range(a, w, r, acc_rows), s, piece, spw, acc_rows, q, prof, false);
    }
    report();
    return;
  }
  const int G = gridDim.x, b = blockIdx.x;
  const int nqkv = (a.nH + 2 * a.nKV) * kD;
  const int gq = a.nH / a.nKV;
  const int ctx = a.pos + 1;
  const size_t kv_row = (size_t)a.nKV * kD;  // elements between a layer's consecutive cache rows
  const int slot2 = lane >> 4, sub = lane & 15;
  const bool attn_block = b < a.nH;
  const int head = b, kvh = b / gq;
  {
    int r0, r1;
    block_rows(a.H, b, G, r0, r1);
    for (int i = tid; i < r1 - r0; i += kConsumers) s.hown[i] = a.h[r0 + i];
    // (the first phase's consumers_sync orders these before any epilogue reads them)
  }
  for (int l = 0; l < a.L; ++l) {
    const DecodeLayerWeights w = a.layers[l];
    int r0, r1;
    // o_proj and down: x = src[0, n) (other blocks wrote it), the block's rows of range r, h += them in place.
    auto linear_residual = [&](const half* src, int n, int r) {
      copy_to_xs(src, n, s);
      mark(0);
      consume(layer_range(a, w, r, acc_rows), s, piece, spw, acc_rows, q, prof);
      consumers_sync();
      mark(1);
      block_rows(a.H, b, G, r0, r1);
      for (int i = tid; i < r1 - r0; i += kConsumers) {
        const half hn = __float2half_rn(h2f(s.hown[i]) + rnd(take_acc(s, acc_rows, 0, i)));
        s.hown[i] = hn;
        a.h[r0 + i] = hn;
      }
      mark(2);
      grid_sync(a.sync, target, skip);
      mark(3);
    };
    // 1. qkv.
    rms_to_xs(a, w.g_attn, s);
    mark(0);
    consume(layer_range(a, w, 0, acc_rows), s, piece, spw, acc_rows, q, prof);
    consumers_sync();
    mark(1);
    block_rows(nqkv, b, G, r0, r1);
    for (int i = tid; i < r1 - r0; i += kConsumers) a.qkv[r0 + i] = __float2half_rn(take_acc(s, acc_rows, 0, i));
    // The attention block's first keys (cache rows below pos: not written in this launch).
    const half* kbase = a.kv + (size_t)(2 * l) * a.max_ctx * kv_row + (size_t)kvh * kD;
    const half* vbase = kbase + (size_t)a.max_ctx * kv_row;
    uint4 kr[4], vr[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int key = (u * kConsumerWarps + warp) * 2 + slot2;
      const bool ok = attn_block && key < a.pos;
      kr[u] = ok ? __ldg(reinterpret_cast<const uint4*>(kbase + key * kv_row + sub * 8)) : make_uint4(0, 0, 0, 0);
      vr[u] = ok ? __ldg(reinterpret_cast<const uint4*>(vbase + key * kv_row + sub * 8)) : make_uint4(0, 0, 0, 0);
    }
    mark(2);
    grid_sync(a.sync, target, skip);
    mark(3);

    // 2. attention, query head `head`.
    if (attn_block) {
      float qf[8], kn[8];
      rope8(ldcg16(a.qkv + head * kD + sub * 8), sub, a.pos, a.rope_theta, qf);
      rope8(ldcg16(a.qkv + (a.nH + kvh) * kD + sub * 8), sub, a.pos, a.rope_theta, kn);
      uint4 knew;
      {
        half* kh = reinterpret_cast<half*>(&knew);
#pragma unroll
        for (int j = 0; j < 8; ++j) kh[j] = __float2half_rn(kn[j]);
      }
      const uint4 vnew = ldcg16(a.qkv + (a.nH + a.nKV + kvh) * kD + sub * 8);
      if (head % gq == 0 && warp == 0 && slot2 == 0) {
        half* kc = const_cast<half*>(kbase) + (size_t)a.pos * kv_row + sub * 8;
        half* vc = const_cast<half*>(vbase) + (size_t)a.pos * kv_row + sub * 8;
        *reinterpret_cast<uint4*>(kc) = knew;
        *reinterpret_cast<uint4*>(vc) = vnew;
      }
      const float scale = rsqrtf(float(kD));
      float m = -1e30f, lsum = 0.f, acc[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] = 0.f;
      for (int base = 0; base < ctx; base += kKeysPerRound) {
        uint4 kn2[4], vn2[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int key = base + kKeysPerRound + (u * kConsumerWarps + warp) * 2 + slot2;
          const bool ok = key < a.pos;
          kn2[u] = ok ? __ldg(reinterpret_cast<const uint4*>(kbase + key * kv_row + sub * 8)) : make_uint4(0, 0, 0, 0);
          vn2[u] = ok ? __ldg(reinterpret_cast<const uint4*>(vbase + key * kv_row + sub * 8)) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int key = base + (u * kConsumerWarps + warp) * 2 + slot2;
          const uint4 kk = key == a.pos ? knew : kr[u];
          const uint4 vv = key == a.pos ? vnew : vr[u];
          const half* kh = reinterpret_cast<const half*>(&kk);
          float sc = 0.f;
#pragma unroll
          for (int j = 0; j < 8; ++j) sc = fmaf(qf[j], h2f(kh[j]), sc);
#pragma unroll
          for (int o = 8; o > 0; o >>= 1) sc += __shfl_xor_sync(0xffffffffu, sc, o);
          if (key < ctx) {
            sc *= scale;
            const float mn = fmaxf(m, sc);
            const float c = __expf(m - mn), p = __expf(sc - mn);
            const half* vh = reinterpret_cast<const half*>(&vv);
            lsum = lsum * c + p;
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[j] = acc[j] * c + p * h2f(vh[j]);
            m = mn;
          }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) kr[u] = kn2[u], vr[u] = vn2[u];
      }
      // The warp's two key slots, then the consumer warps through shared memory (xs as floats).
      {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, 16), l2 = __shfl_xor_sync(0xffffffffu, lsum, 16);
        const float mn = fmaxf(m, m2), c1 = __expf(m - mn), c2 = __expf(m2 - mn);
        lsum = lsum * c1 + l2 * c2;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = acc[j] * c1 + __shfl_xor_sync(0xffffffffu, acc[j], 16) * c2;
        m = mn;
      }
      float* mo = reinterpret_cast<float*>(s.xs);
      float* mm = mo + kConsumerWarps * kD;
      float* ml = mm + kConsumerWarps;
      if (slot2 == 0) {
#pragma unroll
        for (int j = 0; j < 8; ++j) mo[warp * kD + sub * 8 + j] = acc[j];
        if (sub == 0) mm[warp] = m, ml[warp] = lsum;
      }
      consumers_sync();
      if (tid < kD) {
        float M = -1e30f;
        for (int x = 0; x < kConsumerWarps; ++x) M = fmaxf(M, mm[x]);
        float L = 0.f, O = 0.f;
        for (int x = 0; x < kConsumerWarps; ++x) {
          const float c = __expf(mm[x] - M);
          L += ml[x] * c;
          O += mo[x * kD + tid] * c;
        }
        a.attn[head * kD + tid] = __float2half_rn(O / L);
      }
    }
    mark(4);
    grid_sync(a.sync, target, skip);
    mark(3);

    // 3. o_proj, residual.
    linear_residual(a.attn, a.nH * kD, 1);

    // 4. gate / up, the gated act.
    rms_to_xs(a, w.g_mlp, s);
    mark(0);
    consume(layer_range(a, w, 2, acc_rows), s, piece, spw, acc_rows, q, prof);
    consume(layer_range(a, w, 3, acc_rows), s, piece, spw, acc_rows, q, prof);
    consumers_sync();
    mark(1);
    block_rows(a.I, b, G, r0, r1);
    for (int i = tid; i < r1 - r0; i += kConsumers) {
      const float g = rnd(take_acc(s, acc_rows, 0, i)), u = rnd(take_acc(s, acc_rows, acc_rows, i));
      a.act[r0 + i] = __float2half_rn(rnd(g / (1.f + __expf(-g))) * u);
    }
    mark(2);
    grid_sync(a.sync, target, skip);
    mark(3);

    // 5. down, residual.
    linear_residual(a.act, a.I, 4);
  }
  report();
}

}  // namespace

size_t decode_layers_smem(const DecodeLayersArgs& a, int spw) {
  const int G = num_sms(), slots = slots_of(spw);
  return (2 * slots * 8 + 127) / 128 * 128 + (size_t)slots * piece_of(a) + xs_bytes_of(a) +
         (size_t)kConsumerWarps * 2 * acc_rows_of(a, G) * 4 + kConsumerWarps * 4 + acc_rows_of(a, G) * 2;
}

const char* decode_layers_unsupported(const DecodeLayersArgs& a, int spw) {
  int dev = 0, major = 0, optin = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (major < 9) return "needs sm_90 (bulk copies, mbarriers)";
  if (a.D != kD) return "head_dim must be 128";
  if (a.H % 256 || a.I % 256 || (a.nH * kD) % 256) return "H, I and nH * 128 must be multiples of 256";
  if (a.H > kRmsChunks * kConsumers * 8) return "H at most 15,360";
  if (a.nKV <= 0 || a.nH % a.nKV) return "nH must be a multiple of nKV";
  if (a.nH > num_sms()) return "more query heads than SMs";
  if (a.pos < 0 || a.pos >= a.max_ctx) return "pos outside the cache";
  if (spw < 1) return "at least one slot a consumer warp";
  if (piece_of(a) % 16 || piece_of(a) < 512 || piece_of(a) > kChunksPerLane * 512u)
    return "slots: a multiple of 16 bytes, 512 B to 11,264 B";
  cudaFuncAttributes fa;
  if (cudaFuncGetAttributes(&fa, decode_layers_kernel) != cudaSuccess) return "no sm_90 code of the kernel";
  if (decode_layers_smem(a, spw) + fa.sharedSizeBytes > (size_t)optin) return "shared memory: fewer or smaller slots";
  return nullptr;
}

cudaError_t decode_layers(const DecodeLayersArgs& a, int spw, cudaStream_t s) {
  if (decode_layers_unsupported(a, spw)) return cudaErrorInvalidValue;
  const size_t smem = decode_layers_smem(a, spw);
  cudaError_t e = cudaFuncSetAttribute(decode_layers_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return e;
  if ((e = cudaMemsetAsync(a.sync, 0, sizeof(unsigned), s)) != cudaSuccess) return e;
  DecodeLayersArgs args = a;
  void* params[] = {&args, &spw};
  // Cooperative: every block resident at once, which the grid-wide barriers need.
  return cudaLaunchCooperativeKernel((const void*)decode_layers_kernel, dim3(num_sms()), dim3(kThreads), params, smem, s);
}

}  // namespace tsllm
