// FP8 E4M3 ("e4m3fn", OCP): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; S.1111.111 is
// NaN; largest finite 448; subnormals m·2^-9. Encoding rounds to nearest, ties to even, and saturates
// out-of-range values (±inf included) to ±448 — the CUDA __nv_cvt_float_to_fp8(x, __NV_SATFINITE,
// __NV_E4M3) conversion that the runtime's quantisation kernels use. Decoding lives with the other
// dtype tables (src/checkpoint/dtype.ts).
import { e4m3BitsToF32 } from "../checkpoint/dtype.ts";

export const E4M3_MAX = 448;
const NAN = 0x7f;
const MAX = 0x7e;

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Bits of an fp32 → FP8 E4M3 bits (RNE, saturating, NaN → NaN). */
export function f32BitsToE4m3(b: number): number {
  const sign = (b >>> 24) & 0x80;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return mant ? sign | NAN : sign | MAX;
  const e = exp - 120; // rebias 127 → 7
  if (e >= 16) return sign | MAX;
  if (e >= 1) {
    let q = (e << 3) | (mant >>> 20);
    const rem = mant & 0xfffff;
    if (rem > 0x80000 || (rem === 0x80000 && q & 1)) q++; // a carry into the exponent is right
    return sign | Math.min(q, MAX);
  }
  // Subnormal (or rounds up to the smallest normal, code 8): value in units of 2^-9.
  const shift = 21 - e; // full = 1.mant · 2^23; units of 2^-9 need a shift of 21 - e
  if (shift > 24 || exp === 0) return sign;
  const full = mant | 0x800000;
  let q = full >>> shift;
  const rem = full & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && q & 1)) q++;
  return sign | q;
}

/** fp32 value → FP8 E4M3 bits. */
export function f32ToE4m3(x: number): number {
  f32[0] = x;
  return f32BitsToE4m3(u32[0]);
}

const DECODE = Float32Array.from({ length: 256 }, (_, b) => e4m3BitsToF32(b));

/** The fp32 value of FP8 E4M3 bits. */
export function e4m3ToF32(bits: number): number {
  return DECODE[bits & 0xff];
}

/** x rounded to the nearest E4M3 value (as fp32), saturating. */
export function roundE4m3(x: number): number {
  return DECODE[f32ToE4m3(x)];
}

/** Encodes values (each already an E4M3 value, or rounded to one) as E4M3 bytes. */
export function encodeE4m3(data: Float32Array, out = new Uint8Array(data.length)): Uint8Array {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  for (let i = 0; i < data.length; i++) out[i] = f32BitsToE4m3(bits[i]);
  return out;
}

/**
 * Dynamic per-token activation quantisation (no calibration): each row t of x [rows, cols] gets
 * s[t] = fp32(amax(x[t,:]) / 448) (1 for an all-zero row) and q = e4m3(fp32(x / s[t])).
 */
export function quantizeRowsE4m3(
  x: Float32Array,
  rows: number,
  cols: number,
): { q: Float32Array; scales: Float32Array } {
  const q = new Float32Array(rows * cols);
  const scales = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let amax = 0;
    for (let i = 0; i < cols; i++) amax = Math.max(amax, Math.abs(x[o + i]));
    const s = amax > 0 ? Math.fround(amax / E4M3_MAX) : 1;
    scales[r] = s;
    for (let i = 0; i < cols; i++) q[o + i] = roundE4m3(Math.fround(x[o + i] / s));
  }
  return { q, scales };
}
