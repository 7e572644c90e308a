// The FP8 row quantiser's inner loops, in plain JavaScript so worker threads (src/quant/workers/fp8-worker.mjs)
// run them without the TypeScript loader; src/quant/fp8-rows.ts builds the tables and calls them on the main
// thread. Rows [rowBegin, rowEnd) of the concatenated parts (each row k elements) → E4M3 values and fp32
// per-row scales at the same row indices. Numbers as quantizeToBytes (src/quant/weights.ts):
//   amax over the row (NaN if any is NaN); s = fp32(amax / 448), 1 if amax is 0 or NaN; q = e4m3(fp32(w / s)).
// Half-precision amax is taken on the bits: |w| orders as the integer (bits & 0x7fff), NaNs above infinity.
// Tables (shared, built once): halfValues[dtype] maps 16 bits → fp32 value; e4m3 maps (top 16 bits of the
// fp32 quotient) * 2 + (any low bit set) → E4M3 code (the low 16 bits only matter as a sticky bit).

// Rows whose length is a multiple of 16 go through the WebAssembly SIMD kernel (src/quant/fp8-simd.mjs, same
// bytes, ~5-10x faster); the loop below is the fallback and the tests' reference.
import { quantizeRowsSimd, simdRows } from "./fp8-simd.mjs";

/**
 * @param {{dtype: "F16" | "BF16" | "F32", data: Uint16Array | Float32Array, rows: number}[]} parts
 * @param {{bf16: Float32Array, f16: Float32Array, e4m3: Uint8Array}} t
 */
export function quantizeFp8RowRange(parts, k, rowBegin, rowEnd, values, scales, t) {
  if (!simdRows(k)) return quantizeFp8RowRangeJs(parts, k, rowBegin, rowEnd, values, scales, t);
  let first = 0; // row index of the part's first row
  for (const p of parts) {
    const lo = Math.max(rowBegin, first),
      hi = Math.min(rowEnd, first + p.rows);
    if (hi > lo) quantizeRowsSimd(p.dtype, p.data, k, lo - first, hi - lo, values, scales, lo);
    first += p.rows;
  }
}

/** The same rows in plain JavaScript (any k). */
export function quantizeFp8RowRangeJs(parts, k, rowBegin, rowEnd, values, scales, t) {
  const row = new Float32Array(k);
  const bits = new Uint32Array(row.buffer);
  const e4m3 = t.e4m3;
  let first = 0; // row index of the part's first row
  for (const p of parts) {
    const lo = Math.max(rowBegin, first),
      hi = Math.min(rowEnd, first + p.rows);
    for (let r = lo; r < hi; r++) {
      const o = (r - first) * k;
      let s = 1;
      if (p.dtype === "F32") {
        const src = p.data;
        let amax = 0;
        for (let j = 0; j < k; j++) amax = Math.max(amax, Math.abs(src[o + j]));
        if (amax > 0) s = Math.fround(amax / 448);
        for (let j = 0; j < k; j++) row[j] = src[o + j] / s;
      } else {
        const src = p.data;
        const val = p.dtype === "F16" ? t.f16 : t.bf16;
        let m = 0;
        for (let j = 0; j < k; j++) {
          const h = src[o + j] & 0x7fff;
          if (h > m) m = h;
        }
        const amax = val[m];
        if (amax > 0) s = Math.fround(amax / 448);
        for (let j = 0; j < k; j++) row[j] = val[src[o + j]] / s;
      }
      scales[r] = s;
      const out = r * k;
      for (let j = 0; j < k; j++) {
        const b = bits[j];
        values[out + j] = e4m3[((b >>> 16) << 1) | ((b & 0xffff) === 0 ? 0 : 1)];
      }
    }
    first += p.rows;
  }
}
