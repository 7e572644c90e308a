// The enums shared by the kernels' launchers (kernels.h) and the engine-file reader, without CUDA headers so
// the reader builds on a machine without CUDA (tools/engine_check.cc, test/native-loader.test.ts).
#pragma once

namespace tsllm {

// I8 / U8: stored values of int8 / int4 (two per byte) weight-only weights; only random_fill writes them.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, FP8_E4M3 = 3, I8 = 4, U8 = 5 };
enum class Act : int { None = 0, Silu = 1, GeluTanh = 2, GeluErf = 3 };
enum class RopeStyle : int { Neox = 0, Gptj = 1 };
// quant_linear schemes (kernels/quant.h): FP8 W8A8, int8 / int4 weight-only.
enum class QuantKind : int { Fp8 = 0, Int8 = 1, Int4 = 2 };
// moe (kernels.h): the routing kernel keeps a token's expert scores in one warp's registers (8 per lane) and
// each pick in one lane; the engine reader refuses larger attributes.
constexpr int kMoeMaxExperts = 256;
constexpr int kMoeMaxTopK = 16;

// Unary elementwise ops, fp32 math (common.cuh unary_value): tanh, sigmoid 1/(1+e^-x), exp, scale x*param,
// softcap param*tanh(x/param).
enum class UnaryOp : int { Tanh = 0, Sigmoid = 1, Exp = 2, Scale = 3, Softcap = 4 };

// A chain of unary ops folded into a linear's epilogue or a norm (src/ops/ew-chain.ts: attrs pre / post),
// applied in order in fp32 with no rounding between steps. Passed to kernels by value; n == 0: none.
constexpr int kMaxEwChain = 4;  // src/ops/ew-chain.ts MAX_CHAIN
struct EwChain {
  int n = 0;
  UnaryOp op[kMaxEwChain] = {};
  float arg[kMaxEwChain] = {};
};

}  // namespace tsllm
