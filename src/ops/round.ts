// Rounding fp32 values to half-precision storage formats (RNE), in place.
import { f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "../checkpoint/dtype.ts";

const box = new Float32Array(1);
const bits = new Uint32Array(box.buffer);

export function roundBf16(x: number): number {
  bits[0] = f32ToBf16Bits(x) << 16;
  return box[0];
}

export function roundF16(x: number): number {
  return f16BitsToF32(f32ToF16Bits(x));
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
