// The engine writer's FP8 hot loop: a [N, K] weight given as its (possibly concatenated) half-precision
// or fp32 source rows → E4M3 values and per-row scales in one pass, row by row, with no fp32 copy of the
// whole tensor. Same numbers as quantizeToBytes (src/quant/weights.ts): s = fp32(amax/448) (1 if 0),
// q = e4m3(fp32(w / s)) RNE saturating; the encoding is two 64K-entry tables indexed by the top 16 bits
// of the fp32 quotient (E4M3 keeps at most 3 mantissa bits, so its rounding bit is bit 19 or higher and
// the low 16 bits only matter as "any set", which picks the table).
import { f16BitsTable } from "../checkpoint/dtype.ts";
import { E4M3_MAX, f32BitsToE4m3 } from "./fp8.ts";

let tables: [Uint8Array, Uint8Array] | null = null;
function e4m3Tables(): [Uint8Array, Uint8Array] {
  if (!tables) {
    const lo0 = new Uint8Array(65536);
    const lo1 = new Uint8Array(65536);
    for (let h = 0; h < 65536; h++) {
      lo0[h] = f32BitsToE4m3((h << 16) >>> 0);
      lo1[h] = f32BitsToE4m3(((h << 16) | 1) >>> 0);
    }
    tables = [lo0, lo1];
  }
  return tables;
}

/** fp32 bits → E4M3 through the tables (exactly f32BitsToE4m3; checked over all top halves in tests). */
export function e4m3ByTable(bits: number): number {
  const [t0, t1] = e4m3Tables();
  return (bits & 0xffff ? t1 : t0)[bits >>> 16];
}

/** Rows of one source, in its stored dtype: half-precision bits or fp32 values. */
export interface SourceRows {
  dtype: "F16" | "BF16" | "F32";
  data: Uint16Array | Float32Array;
  rows: number;
}

/**
 * Quantises the rows of `parts` (concatenated along rows, each row K elements) to E4M3 `values`
 * [N, K] and fp32 `scales` [N].
 */
export function quantizeFp8Rows(parts: SourceRows[], k: number, values: Uint8Array, scales: Float32Array): void {
  const [t0, t1] = e4m3Tables();
  const row = new Float32Array(k);
  const bits = new Uint32Array(row.buffer);
  let r = 0;
  for (const p of parts) {
    const f16 = p.dtype === "F16" ? f16BitsTable() : null;
    for (let i = 0; i < p.rows; i++, r++) {
      const o = i * k;
      if (p.dtype === "F32") row.set((p.data as Float32Array).subarray(o, o + k));
      else if (f16) {
        const src = p.data as Uint16Array;
        for (let j = 0; j < k; j++) bits[j] = f16[src[o + j]];
      } else {
        const src = p.data as Uint16Array;
        for (let j = 0; j < k; j++) bits[j] = src[o + j] << 16;
      }
      let amax = 0;
      for (let j = 0; j < k; j++) amax = Math.max(amax, Math.abs(row[j])); // NaN propagates, as in computeScales
      const s = amax > 0 ? Math.fround(amax / E4M3_MAX) : 1;
      scales[r] = s;
      const out = r * k;
      for (let j = 0; j < k; j++) row[j] = row[j] / s;
      for (let j = 0; j < k; j++) {
        const b = bits[j];
        values[out + j] = (b & 0xffff ? t1 : t0)[b >>> 16];
      }
    }
  }
}
