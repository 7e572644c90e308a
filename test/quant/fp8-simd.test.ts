// The WebAssembly SIMD FP8 quantiser (src/quant/fp8-simd.mjs) against the references it replaces: its E4M3
// conversion against f32BitsToE4m3 (src/quant/fp8.ts) over every top half with round-off-critical low halves
// (ties, just below/above a tie, sticky bits), a strided sweep of all 2^32 patterns and the special values; its
// rows (amax, scale, division, conversion) against the JavaScript loop (quantizeFp8RowRangeJs) over every bf16 /
// f16 bit pattern under scales from the smallest subnormal to NaN, and fp32 rows.
import { describe, expect, it } from "vitest";
import { f32BitsToE4m3 } from "../../src/quant/fp8.ts";
import { type KernelRows, quantizeFp8RowRangeJs } from "../../src/quant/fp8-kernel.mjs";
import { fp8Tables } from "../../src/quant/fp8-rows.ts";
import { encodeE4m3Simd, quantizeRowsSimd, simdRows } from "../../src/quant/fp8-simd.mjs";

function firstMismatch(bits: Uint32Array): string | null {
  const got = encodeE4m3Simd(bits);
  for (let i = 0; i < bits.length; i++)
    if (got[i] !== f32BitsToE4m3(bits[i]))
      return `0x${bits[i].toString(16)}: simd 0x${got[i].toString(16)}, reference 0x${f32BitsToE4m3(bits[i]).toString(16)}`;
  return null;
}

/** Both quantisers on the same rows: null when scales and bytes agree, else the first difference. */
function compareRows(dtype: KernelRows["dtype"], data: Uint16Array | Float32Array, k: number): string | null {
  const n = data.length / k;
  const q = new Uint8Array(n * k),
    s = new Float32Array(n);
  const rq = new Uint8Array(n * k),
    rs = new Float32Array(n);
  quantizeRowsSimd(dtype, data, k, 0, n, q, s, 0);
  quantizeFp8RowRangeJs([{ dtype, data, rows: n }], k, 0, n, rq, rs, fp8Tables());
  const su = new Uint32Array(s.buffer),
    ru = new Uint32Array(rs.buffer);
  for (let r = 0; r < n; r++)
    if (su[r] !== ru[r]) return `row ${r}: scale bits 0x${su[r].toString(16)} vs 0x${ru[r].toString(16)}`;
  for (let i = 0; i < q.length; i++)
    if (q[i] !== rq[i])
      return `row ${Math.floor(i / k)} element ${i % k} (input 0x${(data instanceof Float32Array ? new Uint32Array(data.buffer)[i] : data[i]).toString(16)}, scale ${s[Math.floor(i / k)]}): 0x${q[i].toString(16)} vs 0x${rq[i].toString(16)}`;
  return null;
}

describe.skipIf(!simdRows(16))("WebAssembly SIMD fp8 quantiser", () => {
  it("converts fp32 to E4M3 exactly as f32BitsToE4m3: all top halves × critical low halves, a strided sweep, specials", () => {
    // Low halves around E4M3 rounding points (bit 19 and below for normals; deeper for subnormals): 0, 1, the
    // tie at bit 15 ± 1, all ones.
    const lows = [0, 1, 0x7fff, 0x8000, 0x8001, 0xffff];
    const all = new Uint32Array(65536 * lows.length);
    for (let h = 0, i = 0; h < 65536; h++) for (const lo of lows) all[i++] = ((h << 16) | lo) >>> 0;
    expect(firstMismatch(all)).toBeNull();
    // Ties and their neighbours at every E4M3 step: for each sign / exponent / 3-bit mantissa, the remainder
    // (the 20 low bits for normals) at the half, half ± 1, and 0 / max.
    const ties: number[] = [];
    for (let top = 0; top < 1 << 12; top++)
      for (const rem of [0, 1, 0x7ffff, 0x80000, 0x80001, 0xfffff, 0x40000, 0xc0000])
        ties.push(((top << 20) | rem) >>> 0);
    while (ties.length % 16) ties.push(0);
    expect(firstMismatch(Uint32Array.from(ties))).toBeNull();
    // A strided sweep over all 2^32 patterns (odd stride: every residue class of the low bits is visited).
    const stride = 1021;
    const sweep = new Uint32Array(Math.floor(2 ** 32 / stride / 16) * 16);
    for (let i = 0; i < sweep.length; i++) sweep[i] = (i * stride) >>> 0;
    expect(firstMismatch(sweep)).toBeNull();
    const specials = Uint32Array.of(
      0,
      0x80000000,
      0x7f800000,
      0xff800000,
      0x7fc00000,
      0xffc00000,
      0x7f800001,
      0xffffffff,
      0x43e00000,
      0x43e80000,
      0x43e80001,
      0x43f00000,
      0x3a800000,
      0x3a800001,
      0x00000001,
      0x7f7fffff,
    );
    expect(firstMismatch(specials)).toBeNull();
  });

  for (const dtype of ["BF16", "F16"] as const)
    it(`${dtype} rows: every bit pattern under scales from the smallest subnormal to NaN, as the JavaScript loop`, () => {
      const k = 64;
      // Rows led by an amax pattern A, then every pattern h with (h & 0x7fff) <= (A & 0x7fff) in turn (both
      // signs): each input under each of these scales; the amax element itself always maps to ±448.
      const amaxes =
        dtype === "F16"
          ? [
              0x0001, 0x0003, 0x03ff, 0x0400, 0x1c00, 0x3c00, 0x3c01, 0x5a3f, 0x7bff, 0x7c00, 0x7c01, 0x7e00,
              0xfe00,
            ]
          : [
              0x0001, 0x007f, 0x0080, 0x0d80, 0x3f80, 0x3f81, 0x4300, 0x5e9a, 0x7f7f, 0x7f80, 0x7f81, 0x7fc0,
              0xffc0,
            ];
      for (const a of amaxes) {
        const lim = a & 0x7fff;
        const inputs: number[] = [];
        for (let h = 0; h < 65536; h++) if ((h & 0x7fff) <= lim) inputs.push(h);
        const rows = Math.ceil(inputs.length / (k - 1));
        const data = new Uint16Array(rows * k);
        for (let r = 0, i = 0; r < rows; r++) {
          data[r * k] = a;
          for (let j = 1; j < k; j++) data[r * k + j] = inputs[i++ % inputs.length];
        }
        expect(compareRows(dtype, data, k), `amax 0x${a.toString(16)}`).toBeNull();
      }
      // Every pattern in rows of 16 random ones (several shuffles): scales wherever the row's max falls,
      // all-zero and negative-zero rows, rows with infinities and NaNs.
      for (const seed of [1, 2, 3]) {
        const data = new Uint16Array(65536 + 64);
        for (let h = 0; h < 65536; h++) data[h] = h;
        let x = seed;
        for (let i = 65535; i > 0; i--) {
          x = (Math.imul(x, 1103515245) + 12345) >>> 0;
          const j = x % (i + 1);
          [data[i], data[j]] = [data[j], data[i]];
        }
        data.fill(0x8000, 65536 + 16, 65536 + 32);
        expect(compareRows(dtype, data, 16), `seed ${seed}`).toBeNull();
      }
    });

  it("F32 rows: random magnitudes, subnormals, zero, ±inf and NaN rows, as the JavaScript loop", () => {
    const k = 32,
      rows = 4096;
    const bits = new Uint32Array(rows * k);
    let x = 99;
    for (let i = 0; i < bits.length; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const r = Math.floor(i / k);
      // Rows of bounded exponent ranges (the scale sets where the quotients fall), some rows any pattern.
      bits[i] = r % 4 === 0 ? x : ((x & 0x807fffff) | ((((x >>> 23) % 40) + (r % 200)) << 23)) >>> 0;
    }
    bits.fill(0, 0, k); // zero row
    bits[5 * k + 3] = 0x7f800000; // +inf amax
    bits[6 * k + 1] = 0xffc00000; // NaN: scale 1
    for (let j = 0; j < k; j++) bits[7 * k + j] = j + 1; // fp32 subnormals only
    expect(compareRows("F32", new Float32Array(bits.buffer), k)).toBeNull();
  });
});
