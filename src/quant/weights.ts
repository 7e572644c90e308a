// Weight quantisation schemes: how a [N, K] fp32 weight becomes stored values + scales, how the
// kernels turn them back into numbers, and the random-weight distributions in the quantised layout.
//
//   fp8      E4M3 weight [N, K], per-output-channel scale s[n] = amax(w[n,:]) / 448 (f32 [N]);
//            q = e4m3(w / s) (IEEE fp32 division, RNE, saturating).
//   int8-wo  int8 weight [N, K], per-channel s[n] = amax / 127; q = clamp(rne(w / s), -127, 127).
//   int4-wo  int4 weight packed two per byte [N, K/2] (element k in the low nibble of byte k/2 when k is
//            even, the high nibble when odd; two's complement), group-wise s[n, k/G] = amax(group) / 7
//            (f32 [N, K/G]); q = clamp(rne(w / s), -8, 7).
// A zero amax gives scale 1. Weight-only kernels dequantise w = fp32(q · s) rounded to the activation
// dtype (RNE) and run the GEMM in that dtype with fp32 accumulation. With an f16 / bf16 activation dtype
// (spec.scaleDtype, set by the quantize pass) the weight-only scales are rounded UP to the smallest value
// of that dtype >= fround(amax / qmax) (the f32 value if none is finite), so the GPU can dequantise with
// an exact half-precision multiply and |w / s| <= qmax still holds; fp8 scales stay f32 (they multiply
// the fp32 accumulator).
import type { DType } from "../ir/types.ts";
import { roundToDtype, roundUpToDtype } from "../ops/round.ts";
import type { WeightInit } from "../weights/recipe.ts";
import { E4M3_MAX, e4m3ToF32, encodeE4m3, f32BitsToE4m3, roundE4m3 } from "./fp8.ts";

export const QUANT_SCHEMES = ["fp8", "int8-wo", "int4-wo"] as const;
export type QuantScheme = (typeof QUANT_SCHEMES)[number];

export interface QuantSpec {
  scheme: QuantScheme;
  /** int4-wo only. */
  groupSize?: number;
  /** int8-wo / int4-wo: the activation dtype the scales are rounded up to (f32 scales without). */
  scaleDtype?: "f16" | "bf16";
}

const RNE_MAGIC = 6755399441055744; // 1.5·2^52: adding and subtracting it rounds a double to an integer, ties to even

/** Round half to even (exact for |y| < 2^51). */
export function rne(y: number): number {
  return y + RNE_MAGIC - RNE_MAGIC;
}

const QMAX: Record<QuantScheme, number> = { fp8: E4M3_MAX, "int8-wo": 127, "int4-wo": 7 };

export function storedDtype(s: QuantScheme): DType {
  return s === "fp8" ? "fp8e4m3" : s === "int8-wo" ? "i8" : "u8";
}

/** Values a stored element holds along K: int4-wo packs two a byte. */
export function valuesPerStoredColumn(scheme: string): number {
  return scheme === "int4-wo" ? 2 : 1;
}

export function storedShape(spec: QuantSpec, n: number, k: number): number[] {
  return [n, k / valuesPerStoredColumn(spec.scheme)];
}

/** Scales shape: [N] per channel, [N, K/G] per group. */
export function scalesShape(spec: QuantSpec, n: number, k: number): number[] {
  return spec.scheme === "int4-wo" ? [n, k / groupOf(spec)] : [n];
}

function groupOf(spec: QuantSpec): number {
  if (!spec.groupSize) throw new Error("int4-wo needs a group size");
  return spec.groupSize;
}

/** Elements per scale along K. */
function span(spec: QuantSpec, k: number): number {
  return spec.scheme === "int4-wo" ? groupOf(spec) : k;
}

/** The dtype the scales are rounded up to, if any; fp8 refuses one. */
function scaleDtypeOf(spec: QuantSpec): "f16" | "bf16" | undefined {
  if (spec.scaleDtype && spec.scheme === "fp8")
    throw new Error(`fp8 scales stay f32 (they multiply the fp32 accumulator), not ${spec.scaleDtype}`);
  return spec.scaleDtype;
}

/** A scale as stored: s itself without `dtype`, else rounded up to it (fround(s) where that overflows). */
function storedScale(s: number, dtype: "f16" | "bf16" | undefined): number {
  if (!dtype) return s;
  const up = roundUpToDtype(s, dtype);
  return Number.isFinite(up) ? up : Math.fround(s);
}

/** The scales of a [N, K] weight (f32). */
export function computeScales(w: Float32Array, n: number, k: number, spec: QuantSpec): Float32Array {
  const g = span(spec, k);
  const perRow = k / g;
  const out = new Float32Array(n * perRow);
  const qmax = QMAX[spec.scheme];
  const dtype = scaleDtypeOf(spec);
  for (let r = 0; r < n; r++)
    for (let j = 0; j < perRow; j++) {
      let amax = 0;
      const o = r * k + j * g;
      for (let i = 0; i < g; i++) amax = Math.max(amax, Math.abs(w[o + i]));
      out[r * perRow + j] = amax > 0 ? storedScale(Math.fround(amax / qmax), dtype) : 1;
    }
  return out;
}

/** Quantised values in the stored layout, as numbers (E4M3 values, int8 values, packed int4 bytes 0..255). */
export function quantizeValues(w: Float32Array, n: number, k: number, spec: QuantSpec): Float32Array {
  return decodeStored(storedDtype(spec.scheme), quantizeToBytes(w, n, k, spec));
}

/** Quantises a [N, K] weight straight to its stored bytes (the engine writer's hot loop). */
export function quantizeToBytes(w: Float32Array, n: number, k: number, spec: QuantSpec): Uint8Array {
  const scales = computeScales(w, n, k, spec);
  const g = span(spec, k);
  const perRow = k / g;
  const y = new Float32Array(g); // fp32 quotients w / s (a Float32Array store rounds the double quotient)
  const yBits = new Uint32Array(y.buffer);
  const out = new Uint8Array(spec.scheme === "int4-wo" ? (n * k) / 2 : n * k);
  const i8 = new Int8Array(out.buffer);
  for (let r = 0; r < n; r++)
    for (let j = 0; j < perRow; j++) {
      const o = r * k + j * g;
      const s = scales[r * perRow + j];
      for (let i = 0; i < g; i++) y[i] = w[o + i] / s;
      if (spec.scheme === "fp8") for (let i = 0; i < g; i++) out[o + i] = f32BitsToE4m3(yBits[i]);
      else if (spec.scheme === "int8-wo")
        for (let i = 0; i < g; i++) i8[o + i] = Math.min(127, Math.max(-127, y[i] + RNE_MAGIC - RNE_MAGIC));
      else
        for (let i = 0; i < g; i += 2) {
          const lo = Math.min(7, Math.max(-8, y[i] + RNE_MAGIC - RNE_MAGIC));
          const hi = Math.min(7, Math.max(-8, y[i + 1] + RNE_MAGIC - RNE_MAGIC));
          out[(o + i) >> 1] = (lo & 0xf) | ((hi & 0xf) << 4);
        }
    }
  return out;
}

/** Unpacks stored values to one number per weight element (int4: two's complement nibbles). */
export function unpackValues(stored: Float32Array, spec: QuantSpec): Float32Array {
  if (spec.scheme !== "int4-wo") return stored;
  const out = new Float32Array(stored.length * 2);
  for (let j = 0; j < stored.length; j++) {
    const b = stored[j];
    out[2 * j] = ((b & 0xf) ^ 8) - 8;
    out[2 * j + 1] = (((b >> 4) & 0xf) ^ 8) - 8;
  }
  return out;
}

/** Weight-only dequantisation as the kernels do it: fp32(q · s), rounded to the activation dtype. */
export function dequantize(
  stored: Float32Array,
  scales: Float32Array,
  n: number,
  k: number,
  spec: QuantSpec,
  computeDtype: string,
): Float32Array {
  const q = unpackValues(stored, spec);
  const g = span(spec, k);
  const perRow = k / g;
  const w = new Float32Array(n * k);
  for (let r = 0; r < n; r++)
    for (let i = 0; i < k; i++)
      w[r * k + i] = Math.fround(q[r * k + i] * scales[r * perRow + Math.floor(i / g)]);
  roundToDtype(w, computeDtype);
  return w;
}

/** Stored values (as numbers) → bytes of a quantised dtype. */
export function encodeStored(dtype: DType, values: Float32Array): Uint8Array {
  if (dtype === "fp8e4m3") return encodeE4m3(values);
  if (dtype === "i8") {
    const out = new Int8Array(values.length);
    for (let i = 0; i < values.length; i++) out[i] = values[i];
    return new Uint8Array(out.buffer);
  }
  if (dtype === "u8") return Uint8Array.from(values);
  throw new Error(`no quantised encoding for dtype ${dtype}`);
}

/** Bytes of a quantised dtype → stored values as numbers. */
export function decodeStored(dtype: DType, bytes: Uint8Array): Float32Array {
  if (dtype === "fp8e4m3") {
    const out = new Float32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = e4m3ToF32(bytes[i]);
    return out;
  }
  if (dtype === "i8") return Float32Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, bytes.length));
  if (dtype === "u8") return Float32Array.from(bytes);
  throw new Error(`no quantised decoding for dtype ${dtype}`);
}

export function isQuantDtype(dtype: DType): boolean {
  return dtype === "fp8e4m3" || dtype === "i8" || dtype === "u8";
}

/**
 * Random values rounded to a quantised storage dtype, in place (random-weight engines): fp8e4m3 RNE
 * saturating; i8 and u8 round half to even and clamp to their range.
 */
export function roundStored(data: Float32Array, dtype: DType): void {
  if (dtype === "fp8e4m3") for (let i = 0; i < data.length; i++) data[i] = roundE4m3(data[i]);
  else if (dtype === "i8")
    for (let i = 0; i < data.length; i++) data[i] = Math.min(127, Math.max(-128, rne(data[i])));
  else if (dtype === "u8")
    for (let i = 0; i < data.length; i++) data[i] = Math.min(255, Math.max(0, rne(data[i])));
}

/**
 * Random-weight distributions in the quantised layout, matching what quantising the fp32 distribution
 * `init` (uniform, mean 0, half-width a) would give: stored values spread over the code range and a
 * constant scale a/qmax, stored as computeScales stores it (rounded up to spec.scaleDtype).
 */
export function randomInits(spec: QuantSpec, init: WeightInit): { weight: WeightInit; scales: WeightInit } {
  const qmax = QMAX[spec.scheme];
  const weight =
    spec.scheme === "int4-wo"
      ? { mean: 127.5, scale: 128 } // bytes 0..255: both nibbles uniform over -8..7
      : { mean: 0, scale: qmax };
  const mean = init.scale > 0 ? storedScale(init.scale / qmax, scaleDtypeOf(spec)) : 1;
  return { weight, scales: { mean, scale: 0 } };
}
