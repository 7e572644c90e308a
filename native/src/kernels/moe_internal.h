// Internals of the moe op's kernels (kernels.h "mixture of experts"): the workspace layout and the launchers
// moe.cu's moe_forward sequences. Pairs p = t·K + k index (token, slot) in routing order.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

namespace tsllm {

// Workspace of one chunk of C tokens (256-byte aligned pieces).
struct MoeWs {
  int32_t* ids;      // [C·K] expert of each pair
  float* wts;        // [C·K] its routing weight
  int32_t* counts;   // [2·E] pairs per expert, then the permutation's per-expert cursors
  int32_t* slot_of;  // [C·K] row of each pair in the expert-sorted order (grouped path)
  void* xperm;       // [C·K, H] x rows in expert order (grouped path)
  void* h;           // [C·K, I] act(gate) ⊙ up, per pair (gemv) or per sorted row (grouped)
  float* y;          // [C·K, H] each expert's down projection, fp32
  size_t bytes;
};
MoeWs moe_ws_layout(void* base, int C, int E, int K, int H, int I, size_t es);

// gemv path: h[p] = dtype(act(x[p/K]·w1_e) ⊙ (x[p/K]·w3_e)), y[p] = h[p]·w2_eᵀ (fp32), e = ids[p] (pairs with
// e = -1, another rank's expert, are skipped).
cudaError_t moe_gemv_gate_up(const void* x, const void* w1, const void* w3, const int32_t* ids, void* h, int pairs,
                             int K, int H, int I, Act act, DType dt, cudaStream_t s);
cudaError_t moe_gemv_down(const void* h, const void* w2, const int32_t* ids, float* y, int pairs, int H, int I,
                          DType dt, cudaStream_t s);
// grouped path: xperm[slot_of[p]] = x[p/K], rows of expert e at [offset_e, offset_e + counts[e]) (offsets
// scanned from counts in every block; counts[E..2E) are the cursors, zero on entry); E is the local expert count,
// slot_of[p] = -1 for a pair of another rank's expert.
cudaError_t moe_permute(const void* x, const int32_t* ids, int32_t* counts, void* xperm, int32_t* slot_of, int pairs,
                        int K, int E, int H, DType dt, cudaStream_t s);
// Grouped GEMMs over the expert-sorted rows (max_rows = pairs bounds the grid; tiles past an expert's count exit).
// gate_up: h[r] = dtype(act(a[r]·w1_eᵀ) ⊙ a[r]·w3_eᵀ) with a = xperm [rows, H]; down: y[r] = h[r]·w2_eᵀ (fp32).
cudaError_t moe_grouped_gate_up(const void* xperm, const void* w1, const void* w3, const int32_t* counts, void* h,
                                int max_rows, int E, int H, int I, Act act, DType dt, cudaStream_t s);
cudaError_t moe_grouped_down(const void* h, const void* w2, const int32_t* counts, float* y, int max_rows, int E,
                             int H, int I, DType dt, cudaStream_t s);

}  // namespace tsllm
