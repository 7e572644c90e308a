// The engine writer's FP8 hot loop: a [N, K] weight given as its (possibly concatenated) half-precision
// or fp32 source rows → E4M3 values and per-row scales in one pass, row by row, with no fp32 copy of the
// whole tensor. Same numbers as quantizeToBytes (src/quant/weights.ts): s = fp32(amax/448) (1 if 0),
// q = e4m3(fp32(w / s)) RNE saturating. The loops are src/quant/fp8-kernel.mjs (plain JavaScript, so worker
// threads run them too: src/quant/fp8-pool.ts); here are its tables, built once in SharedArrayBuffers that
// the workers read in place. The encoding is a 128K-entry table indexed by the top 16 bits of the fp32
// quotient and whether any low bit is set (E4M3 keeps at most 3 mantissa bits, so its rounding bit is bit
// 19 or higher and the low 16 bits only matter as a sticky bit).
import { f16BitsTable } from "../checkpoint/dtype.ts";
import { f32BitsToE4m3 } from "./fp8.ts";
import { type Fp8Tables, type KernelRows, quantizeFp8RowRange } from "./fp8-kernel.mjs";

let tables: Fp8Tables | null = null;
export function fp8Tables(): Fp8Tables {
  if (!tables) {
    const e4m3 = new Uint8Array(new SharedArrayBuffer(2 * 65536));
    const bf16 = new Float32Array(new SharedArrayBuffer(4 * 65536));
    const f16 = new Float32Array(new SharedArrayBuffer(4 * 65536));
    const bf16Bits = new Uint32Array(bf16.buffer);
    for (let h = 0; h < 65536; h++) {
      e4m3[2 * h] = f32BitsToE4m3((h << 16) >>> 0);
      e4m3[2 * h + 1] = f32BitsToE4m3(((h << 16) | 1) >>> 0);
      bf16Bits[h] = (h << 16) >>> 0;
    }
    new Uint32Array(f16.buffer).set(f16BitsTable());
    tables = { bf16, f16, e4m3 };
  }
  return tables;
}

/** fp32 bits → E4M3 through the table (exactly f32BitsToE4m3; checked over all top halves in tests). */
export function e4m3ByTable(bits: number): number {
  return fp8Tables().e4m3[((bits >>> 16) << 1) | ((bits & 0xffff) === 0 ? 0 : 1)];
}

/** Rows of one source, in its stored dtype: half-precision bits or fp32 values. */
export type SourceRows = KernelRows;

/**
 * Quantises the rows of `parts` (concatenated along rows, each row K elements) to E4M3 `values`
 * [N, K] and fp32 `scales` [N], on this thread.
 */
export function quantizeFp8Rows(
  parts: SourceRows[],
  k: number,
  values: Uint8Array,
  scales: Float32Array,
): void {
  const n = parts.reduce((a, p) => a + p.rows, 0);
  quantizeFp8RowRange(parts, k, 0, n, values, scales, fp8Tables());
}
