// FP8 quantisation on worker threads (src/quant/fp8-pool.ts), as --quant fp8 builds of large models run it:
// bit for bit the main thread's quantiser (src/quant/fp8-rows.ts, itself checked against quantizeToBytes in
// fp8-rows.test.ts), for bf16, f16 and fp32 sources concatenated along rows, with NaN, ±inf, zero and
// subnormal rows, and with a source in ordinary memory (quantised on the calling thread instead).
import { afterAll, describe, expect, it } from "vitest";
import { Fp8Pool } from "../../src/quant/fp8-pool.ts";
import { quantizeFp8Rows, type SourceRows } from "../../src/quant/fp8-rows.ts";

const K = 1024;
const pool = new Fp8Pool(2);
afterAll(() => pool.close());

function halfRows(rows: number, seed: number, shared = true): Uint16Array {
  const d = shared ? new Uint16Array(new SharedArrayBuffer(rows * K * 2)) : new Uint16Array(rows * K);
  let x = seed;
  for (let i = 0; i < d.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    d[i] = x >>> 16; // every bit pattern: NaNs, infinities, subnormals included
  }
  for (let j = 0; j < K; j++) {
    d[j] = 0; // a zero row: scale 1
    d[K + j] = (0x0001 + j) & 0x03ff; // subnormal f16 / tiny bf16
    d[2 * K + j] = j === 7 ? 0x7c00 : 0x3c00; // one +inf in f16 (a huge finite in bf16)
  }
  return d;
}

function f32Rows(rows: number): Float32Array {
  const d = new Float32Array(new SharedArrayBuffer(rows * K * 4));
  for (let i = 0; i < d.length; i++) d[i] = Math.sin(i) * (i % 3 === 0 ? 1e-3 : 100);
  d[5] = Number.NaN;
  d[K + 9] = Number.NEGATIVE_INFINITY;
  return d;
}

async function both(parts: SourceRows[]): Promise<void> {
  const n = parts.reduce((a, p) => a + p.rows, 0);
  const want = new Uint8Array(n * K);
  const wantScales = new Float32Array(n);
  quantizeFp8Rows(parts, K, want, wantScales);
  const got = new Uint8Array(new SharedArrayBuffer(n * K));
  const scales = new Float32Array(new SharedArrayBuffer(n * 4));
  await pool.quantize(parts, K, got, scales);
  expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true);
  expect(Buffer.from(scales.buffer).equals(Buffer.from(wantScales.buffer))).toBe(true);
}

describe("FP8 quantisation on worker threads", () => {
  it("equals the main thread's, bit for bit, over concatenated bf16 / f16 / fp32 sources", async () => {
    await both([
      { dtype: "BF16", data: halfRows(300, 1), rows: 300 },
      { dtype: "F16", data: halfRows(257, 2), rows: 257 },
      { dtype: "F32", data: f32Rows(65), rows: 65 },
    ]);
  });

  it("quantises sources in ordinary memory on the calling thread, with the same numbers", async () => {
    await both([{ dtype: "BF16", data: halfRows(400, 3, false), rows: 400 }]);
  });
});
