// Rounding fp32 values to half-precision storage formats (RNE), in place.
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "../checkpoint/dtype.ts";

const box = new Float32Array(1);
const bits = new Uint32Array(box.buffer);

export function roundBf16(x: number): number {
  bits[0] = f32ToBf16Bits(x) << 16;
  return box[0];
}

export function roundF16(x: number): number {
  return f16BitsToF32(f32ToF16Bits(x));
}

/**
 * The smallest f16 / bf16 value >= fround(x) (Infinity past the largest finite one; NaN stays NaN).
 * Weight-only quantisation rounds its scales up this way (src/quant/weights.ts) so that the GPU decode
 * kernel's half-precision multiply q·s (HMUL2, q and s both in the activation dtype) gives exactly the
 * reference's T(fp32(q·s)); rounding up, not to nearest, never shrinks a scale, so no weight newly falls
 * outside the code range.
 */
export function roundUpToDtype(x: number, dtype: "f16" | "bf16"): number {
  const [toBits, fromBits] = dtype === "f16" ? [f32ToF16Bits, f16BitsToF32] : [f32ToBf16Bits, bf16BitsToF32];
  const f = Math.fround(x);
  const h = toBits(f);
  const r = fromBits(h);
  if (!(r < f)) return r;
  // One step towards +inf: the next pattern for r >= 0 (+0: the smallest subnormal; r < f excludes -0),
  // the next smaller magnitude for r < 0.
  return fromBits(r >= 0 ? h + 1 : h - 1);
}

/** Rounds to our dtype names (f16, bf16; others unchanged). */
export function roundToDtype(a: Float32Array, dtype: string): void {
  if (dtype === "f16") for (let i = 0; i < a.length; i++) a[i] = roundF16(a[i]);
  else if (dtype === "bf16") for (let i = 0; i < a.length; i++) a[i] = roundBf16(a[i]);
}

/** Rounds to a torch dtype name as written in HF configs (float16, bfloat16; others unchanged). */
export function roundToTorchDtype(a: Float32Array, torchDtype: string): void {
  roundToDtype(a, torchDtype === "bfloat16" ? "bf16" : torchDtype === "float16" ? "f16" : "f32");
}
