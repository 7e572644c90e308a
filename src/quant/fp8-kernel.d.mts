// Types of src/quant/fp8-kernel.mjs (plain JavaScript so worker threads load it without the TypeScript loader).
export interface Fp8Tables {
  /** 16 bits → fp32 value, for bf16 and f16 sources. */
  bf16: Float32Array;
  f16: Float32Array;
  /** (top 16 bits of an fp32) * 2 + (any of its low 16 bits set) → E4M3 code. */
  e4m3: Uint8Array;
}
export interface KernelRows {
  dtype: "F16" | "BF16" | "F32";
  data: Uint16Array | Float32Array;
  rows: number;
}
/** Rows [rowBegin, rowEnd) of the parts → E4M3 values and scales at the same rows. */
export type RowRangeQuantizer = (
  parts: readonly KernelRows[],
  k: number,
  rowBegin: number,
  rowEnd: number,
  values: Uint8Array,
  scales: Float32Array,
  t: Fp8Tables,
) => void;
/** The WebAssembly SIMD kernel where it applies (k a multiple of 16), else the JavaScript loop. */
export const quantizeFp8RowRange: RowRangeQuantizer;
/** The JavaScript loop (any k): the fallback and the tests' reference. */
export const quantizeFp8RowRangeJs: RowRangeQuantizer;
