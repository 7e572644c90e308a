// Types of src/quant/fp8-simd.mjs (plain JavaScript so worker threads load it without the TypeScript loader).
export function simdRows(k: number): boolean;
export function quantizeRowsSimd(
  dtype: "F16" | "BF16" | "F32",
  data: Uint16Array | Float32Array,
  k: number,
  r0: number,
  n: number,
  values: Uint8Array,
  scales: Float32Array,
  out: number,
): void;
export function encodeE4m3Simd(bits: Uint32Array): Uint8Array;
