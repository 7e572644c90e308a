// The writer's FP8 row quantiser (src/quant/fp8-rows.ts) against the reference quantisation
// (computeScales + quantizeToBytes, src/quant/weights.ts): identical bytes, including NaN/inf/zero rows.
import { describe, expect, it } from "vitest";
import { fromFloat32 } from "../../src/checkpoint/dtype.ts";
import { f32BitsToE4m3 } from "../../src/quant/fp8.ts";
import { quantizeFp8RowRange } from "../../src/quant/fp8-kernel.mjs";
import { e4m3ByTable, fp8Tables, quantizeFp8Rows } from "../../src/quant/fp8-rows.ts";
import { computeScales, quantizeToBytes } from "../../src/quant/weights.ts";

describe("fp8 row quantiser", () => {
  // First in the file: the tables are built once per module, so under the mutation run the test that
  // builds them is the one their mutants are run against.
  it("the tables: bf16[h] the value with bits h << 16, f16[h] the half with bits h, the E4M3 encoding equals f32BitsToE4m3", () => {
    const t = fp8Tables();
    expect([t.bf16.length, t.f16.length, t.e4m3.length]).toEqual([65536, 65536, 131072]);
    const f32 = new Float32Array(1);
    const u32 = new Uint32Array(f32.buffer);
    let bad = 0;
    for (let h = 0; h < 65536; h++) {
      u32[0] = (h << 16) >>> 0;
      if (!Object.is(t.bf16[h], f32[0]) && !(Number.isNaN(t.bf16[h]) && Number.isNaN(f32[0]))) bad++;
    }
    expect(bad).toBe(0);
    // f16: 1.0 = 0x3c00, -2 = 0xc000, the largest normal 65504 = 0x7bff, the smallest subnormal 2^-24 = 1.
    expect([t.f16[0x3c00], t.f16[0xc000], t.f16[0x7bff], t.f16[1], t.f16[0x7c00]]).toEqual([
      1,
      -2,
      65504,
      2 ** -24,
      Infinity,
    ]);
    // The E4M3 table equals f32BitsToE4m3 for every top half and low halves 0, 1, 0x8000, 0xffff, random.
    let x = 12345;
    let badCodes = 0;
    for (let h = 0; h < 65536; h++)
      for (const lo of [0, 1, 0x8000, 0xffff, (x = (Math.imul(x, 1103515245) + 12345) >>> 0) & 0xffff]) {
        const b = ((h << 16) | lo) >>> 0;
        if (e4m3ByTable(b) !== f32BitsToE4m3(b)) badCodes++;
      }
    expect(badCodes).toBe(0);
  });

  // k = 64 takes the WebAssembly SIMD kernel, k = 40 (not a multiple of 16) the JavaScript loop.
  for (const k of [64, 40])
    for (const dtype of ["BF16", "F16", "F32"] as const)
      it(`${dtype} rows (two concatenated parts, k ${k}) quantise to the reference bytes and scales`, () => {
        const n1 = 5,
          n2 = 3;
        const w = new Float32Array((n1 + n2) * k);
        let x = 7;
        for (let i = 0; i < w.length; i++)
          w[i] =
            (((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8) / 2 ** 24 - 0.5) * 2 ** ((i % 40) - 20);
        w.fill(0, 2 * k, 3 * k); // an all-zero row: scale 1
        w[4 * k + 3] = Number.POSITIVE_INFINITY;
        w[6 * k + 1] = Number.NaN;
        w[7 * k + 2] = 1e-30;
        // The reference sees what the checkpoint holds: the values rounded to its dtype.
        const stored = dtype === "F32" ? fromFloat32("F32", w) : fromFloat32(dtype, w);
        const vals = dtype === "F32" ? new Float32Array(stored.buffer) : new Float32Array(w.length);
        if (dtype !== "F32") {
          const u = new Uint16Array(stored.buffer);
          const out = new Uint32Array(vals.buffer);
          const f = new Float32Array(1);
          for (let i = 0; i < u.length; i++) {
            if (dtype === "BF16") out[i] = u[i] << 16;
            else {
              const h = u[i],
                e = (h >>> 10) & 31,
                m = h & 1023,
                s = h & 0x8000 ? -1 : 1;
              f[0] =
                e === 0
                  ? s * m * 2 ** -24
                  : e === 31
                    ? m
                      ? Number.NaN
                      : s * Number.POSITIVE_INFINITY
                    : s * (1 + m / 1024) * 2 ** (e - 15);
              vals[i] = f[0];
            }
          }
        }
        const spec = { scheme: "fp8" as const };
        const refQ = quantizeToBytes(vals, n1 + n2, k, spec);
        const refS = computeScales(vals, n1 + n2, k, spec);
        const data = dtype === "F32" ? new Float32Array(stored.buffer) : new Uint16Array(stored.buffer);
        const q = new Uint8Array((n1 + n2) * k);
        const s = new Float32Array(n1 + n2);
        quantizeFp8Rows(
          [
            { dtype, data: data.subarray(0, n1 * k), rows: n1 },
            { dtype, data: data.subarray(n1 * k), rows: n2 },
          ],
          k,
          q,
          s,
        );
        expect(Array.from(s)).toEqual(Array.from(refS));
        expect(Buffer.from(q).equals(Buffer.from(refQ))).toBe(true);
        // A worker's share: rows [2, 7) across the parts' boundary (row 5), nothing else written.
        const q2 = new Uint8Array((n1 + n2) * k).fill(0xee);
        const s2 = new Float32Array(n1 + n2).fill(-1);
        const parts = [
          { dtype, data: data.subarray(0, n1 * k), rows: n1 },
          { dtype, data: data.subarray(n1 * k), rows: n2 },
        ];
        quantizeFp8RowRange(parts, k, 2, 7, q2, s2, fp8Tables());
        expect(Array.from(s2)).toEqual([-1, -1, ...Array.from(refS.subarray(2, 7)), -1]);
        expect(Array.from(q2)).toEqual([
          ...new Array(2 * k).fill(0xee),
          ...Array.from(refQ.subarray(2 * k, 7 * k)),
          ...new Array(k).fill(0xee),
        ]);
      });
});
