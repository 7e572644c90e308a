/**
 * Safetensors dtypes and exact conversions between the float formats and fp32.
 *
 * These run over every weight of a checkpoint (13 GB for a 7B model), so they
 * work on typed-array views with table lookups or integer bit tricks and never
 * allocate per element. Values are handled as raw bits (Uint32Array) so NaN
 * payloads survive, which a round trip through a JS number would not promise.
 */

export const DTYPE_SIZES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
} as const;

export type Dtype = keyof typeof DTYPE_SIZES;
/** Dtypes that `toFloat32` can decode. */
/** The safetensors dtypes a weight is read from. */
export const FLOAT_DTYPES = ["F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"] as const;
export type FloatDtype = (typeof FLOAT_DTYPES)[number];

export const DTYPES = Object.keys(DTYPE_SIZES) as Dtype[];

export function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZES, s);
}

export function dtypeSize(dtype: Dtype): number {
  return DTYPE_SIZES[dtype];
}

export function isFloatDtype(s: unknown): s is FloatDtype {
  return (FLOAT_DTYPES as readonly unknown[]).includes(s);
}

// Typed-array views use host byte order; safetensors is little-endian.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("tsllm checkpoint: big-endian hosts are not supported");
}

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Bits of an IEEE fp32 → bits of the nearest fp16 (round to nearest, ties to even). */
export function f32BitsToF16Bits(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) {
    // Inf stays inf; NaN keeps its top payload bits and is forced quiet so it cannot become inf.
    return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13);
  }
  const e = exp - 112; // rebias 127 → 15
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // fp16 subnormal: value = m × 2^-24 with m = full >> (14 - e). Below shift 24 it rounds to zero.
    if (e < -10) return sign;
    const full = mant | 0x800000;
    const shift = 14 - e;
    let h = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++; // a carry into bit 10 gives the smallest normal, as it should
    return sign | h;
  }
  let h = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // carry may overflow into the exponent → inf, correctly
  return h;
}

/** fp32 value → bits of the nearest fp16 (RNE; overflow → ±inf). */
export function f32ToF16Bits(x: number): number {
  scratchF32[0] = x;
  return f32BitsToF16Bits(scratchU32[0]);
}

/** Bits of an IEEE fp32 → bits of the nearest bf16 (RNE). */
export function f32BitsToBf16Bits(b: number): number {
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff; // quiet NaN, never rounds to inf
  // Adding 0x7fff plus the lsb of the kept half rounds to nearest-even; cannot pass 2^32 for non-NaN.
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** fp32 value → bits of the nearest bf16 (RNE). */
export function f32ToBf16Bits(x: number): number {
  scratchF32[0] = x;
  return f32BitsToBf16Bits(scratchU32[0]);
}

function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // Subnormal: normalise so the leading 1 sits at bit 10.
  let e = 113;
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

// All 65536 fp16 patterns decoded once (256 KB): one load per element beats any bit arithmetic.
let f16Table: Uint32Array | undefined;
/** fp32 bits of every fp16 pattern (index: the fp16 bits). */
export function f16BitsTable(): Uint32Array {
  if (!f16Table) {
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32Bits(h);
  }
  return f16Table;
}

export function f16BitsToF32(h: number): number {
  scratchU32[0] = f16BitsToF32Bits(h & 0xffff);
  return scratchF32[0];
}

export function bf16BitsToF32(h: number): number {
  scratchU32[0] = (h & 0xffff) << 16;
  return scratchF32[0];
}

/** OCP FP8 E4M3 ("fn"): bias 7, no infinities, S.1111.111 is NaN, max 448. */
export function e4m3BitsToF32(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const exp = (b >>> 3) & 0xf;
  const mant = b & 0x7;
  if (exp === 0xf && mant === 0x7) return Number.NaN;
  if (exp === 0) return sign * mant * 2 ** -9;
  return sign * (1 + mant / 8) * 2 ** (exp - 7);
}

/** FP8 E5M2 is the top byte of an fp16, so it inherits inf, NaN and subnormals. */
export function e5m2BitsToF32(b: number): number {
  return f16BitsToF32((b & 0xff) << 8);
}

let e4m3Table: Float32Array | undefined;
let e5m2Table: Float32Array | undefined;

/** A Uint16Array over `bytes`, copying only if the view would be misaligned. */
function u16View(bytes: Uint8Array): Uint16Array {
  const b = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice();
  return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
}

function checkLength(dtype: Dtype, bytes: Uint8Array): void {
  if (bytes.byteLength % DTYPE_SIZES[dtype] !== 0) {
    throw new RangeError(`${dtype} buffer of ${bytes.byteLength} bytes is not a whole number of elements`);
  }
}

/** `out` if given (checked to fit), else a fresh array. Reusing one avoids page-faulting fresh memory per tensor. */
function outputF32(n: number, out: Float32Array | undefined): Float32Array {
  if (!out) return new Float32Array(n);
  if (out.length !== n) throw new RangeError(`output has ${out.length} elements, expected ${n}`);
  return out;
}

/**
 * Decode a little-endian buffer of `dtype` into fp32 (exact for every supported dtype),
 * writing into `out` when given.
 */
export function toFloat32(dtype: FloatDtype, bytes: Uint8Array, out?: Float32Array): Float32Array {
  checkLength(dtype, bytes);
  switch (dtype) {
    case "F32": {
      const res = outputF32(bytes.byteLength / 4, out);
      new Uint8Array(res.buffer, res.byteOffset, res.byteLength).set(bytes);
      return res;
    }
    case "F16":
    case "BF16": {
      const src = u16View(bytes);
      const n = src.length;
      const res = outputF32(n, out);
      const dst = new Uint32Array(res.buffer, res.byteOffset, n);
      if (dtype === "BF16") {
        for (let i = 0; i < n; i++) dst[i] = src[i] << 16;
      } else {
        const t = f16BitsTable();
        for (let i = 0; i < n; i++) dst[i] = t[src[i]];
      }
      return res;
    }
    case "F8_E4M3":
    case "F8_E5M2": {
      let t: Float32Array;
      if (dtype === "F8_E4M3") {
        e4m3Table ??= Float32Array.from({ length: 256 }, (_, b) => e4m3BitsToF32(b));
        t = e4m3Table;
      } else {
        e5m2Table ??= Float32Array.from({ length: 256 }, (_, b) => e5m2BitsToF32(b));
        t = e5m2Table;
      }
      const n = bytes.length;
      const res = outputF32(n, out);
      for (let i = 0; i < n; i++) res[i] = t[bytes[i]];
      return res;
    }
    default:
      throw new TypeError(`cannot decode dtype ${String(dtype)} to fp32`);
  }
}

/** Encode fp32 values as little-endian `dtype` bytes (RNE for F16/BF16), writing into `out` when given. */
export function fromFloat32(dtype: "F32" | "F16" | "BF16", data: Float32Array, out?: Uint8Array): Uint8Array {
  const n = data.length;
  if (dtype !== "F32" && dtype !== "F16" && dtype !== "BF16") {
    throw new TypeError(`cannot encode fp32 as ${String(dtype)}`);
  }
  const size = DTYPE_SIZES[dtype];
  if (out && out.byteLength !== n * size) {
    throw new RangeError(`output has ${out.byteLength} bytes, expected ${n * size}`);
  }
  const res = out ?? new Uint8Array(n * size);
  // Read bits, not values, so NaN payloads are preserved.
  const src = new Uint32Array(data.buffer, data.byteOffset, n);
  if (dtype === "F32") {
    res.set(new Uint8Array(data.buffer, data.byteOffset, n * 4));
    return res;
  }
  // A misaligned `out` gets an aligned scratch copy.
  const aligned = res.byteOffset % 2 === 0;
  const dst = aligned ? new Uint16Array(res.buffer, res.byteOffset, n) : new Uint16Array(n);
  if (dtype === "F16") {
    for (let i = 0; i < n; i++) dst[i] = f32BitsToF16Bits(src[i]);
  } else {
    for (let i = 0; i < n; i++) dst[i] = f32BitsToBf16Bits(src[i]);
  }
  if (!aligned) res.set(new Uint8Array(dst.buffer));
  return res;
}
