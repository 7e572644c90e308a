import { describe, expect, it } from "vitest";
import {
  bf16BitsToF32,
  DTYPE_SIZES,
  DTYPES,
  dtypeSize,
  e4m3BitsToF32,
  e5m2BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  fromFloat32,
  isDtype,
  isFloatDtype,
  toFloat32,
} from "../../src/checkpoint/dtype.ts";
import { thrown } from "../thrown.ts";
import { refF16 } from "./ref-float.ts";

const bitsOf = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0];
const f32OfBits = (b: number) => new Float32Array(new Uint32Array([b]).buffer)[0];

describe("dtype sizes", () => {
  it("match the safetensors spec", () => {
    expect(DTYPE_SIZES).toMatchObject({ F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1, I8: 1, U8: 1 });
    expect(DTYPE_SIZES).toMatchObject({ I16: 2, I32: 4, I64: 8, BOOL: 1, F64: 8 });
  });
});

describe("f32 → f16 (round to nearest even)", () => {
  it.each(
    [
      [1, 0x3c00],
      [-2, 0xc000],
      [1 + 2 ** -11, 0x3c00], // exact tie → even (down)
      [1 + 3 * 2 ** -11, 0x3c02], // exact tie → even (up)
      [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie → up
      [65504, 0x7bff], // max finite
      [65519, 0x7bff], // below the halfway point to 65536
      [65520, 0x7c00], // tie between 65504 and 2^16 → even → inf
      [-65520, 0xfc00],
      [1e6, 0x7c00],
      [Number.POSITIVE_INFINITY, 0x7c00],
      [Number.NEGATIVE_INFINITY, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -14 - 2 ** -25, 0x0400], // tie between 0x03ff and 0x0400 → even
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // tie between 0 and 2^-24 → even (0)
      [1.5 * 2 ** -25, 0x0001],
      [1.5 * 2 ** -24, 0x0002], // tie between 1 and 2 ulp → 2
      [2.5 * 2 ** -24, 0x0002], // tie between 2 and 3 ulp → 2
      [1e-10, 0x0000],
      [-0, 0x8000],
    ].map(([x, h]) => ({ x, h, hex: h.toString(16) })),
  )("$x → 0x$hex", ({ x, h }) => {
    expect(f32ToF16Bits(x).toString(16)).toBe(h.toString(16));
  });

  it("keeps NaN a NaN, including NaNs whose payload sits only in low bits", () => {
    for (const b of [0x7fc00000, 0x7f800001, 0xff800001, 0x7fffffff]) {
      const h = f32ToF16Bits(f32OfBits(b));
      expect(h & 0x7c00).toBe(0x7c00);
      expect(h & 0x3ff).not.toBe(0);
    }
  });

  it("round-trips every non-NaN f16 pattern", () => {
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7c00) === 0x7c00 && h & 0x3ff) continue;
      expect(f32ToF16Bits(f16BitsToF32(h))).toBe(h);
    }
  });

  it("picks the nearest f16 (ties to even) for random f32 values", () => {
    let seed = 12345;
    const rand = () => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed;
    };
    for (let i = 0; i < 50_000; i++) {
      // Exponents spanning subnormals to overflow.
      const x = f32OfBits((rand() & 0x80000000) | ((((rand() % 50) + 95) << 23) >>> 0) | (rand() & 0x7fffff));
      const h = f32ToF16Bits(x);
      const got = refF16(h);
      const ax = Math.abs(x);
      if (ax >= 65520) {
        expect(Math.abs(got)).toBe(Number.POSITIVE_INFINITY);
        continue;
      }
      // Neighbours of the result must not be nearer; on a tie the result must be even.
      const mag = h & 0x7fff;
      const err = Math.abs(got - x);
      for (const nb of [mag - 1, mag + 1]) {
        if (nb < 0 || nb > 0x7bff) continue;
        const e2 = Math.abs(refF16((h & 0x8000) | nb) - x);
        expect(err <= e2).toBe(true);
        if (err === e2) expect(mag & 1).toBe(0);
      }
    }
  });
});

describe("f16 → f32", () => {
  it.each(
    [
      [0x0001, 2 ** -24],
      [0x03ff, 1023 * 2 ** -24],
      [0x0400, 2 ** -14],
      [0x3c00, 1],
      [0xc000, -2],
      [0x7bff, 65504],
      [0x7c00, Number.POSITIVE_INFINITY],
      [0xfc00, Number.NEGATIVE_INFINITY],
      [0x8000, -0],
    ].map(([h, x]) => ({ h, x, hex: h.toString(16) })),
  )("0x$hex → $x", ({ h, x }) => {
    expect(Object.is(f16BitsToF32(h), x)).toBe(true);
  });
  it("decodes NaN", () => {
    expect(f16BitsToF32(0x7e00)).toBeNaN();
    expect(f16BitsToF32(0xfc01)).toBeNaN();
  });
  it("toFloat32 agrees with an independent decode for all 65536 patterns", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const out = toFloat32("F16", new Uint8Array(all.buffer));
    for (let h = 0; h < 65536; h++) {
      const r = refF16(h);
      if (Number.isNaN(r)) expect(out[h]).toBeNaN();
      else expect(Object.is(out[h], r)).toBe(true);
    }
  });
});

describe("f32 → bf16 (round to nearest even)", () => {
  it.each(
    [
      [1, 0x3f80],
      [1 + 2 ** -8, 0x3f80], // tie → even (down)
      [1 + 3 * 2 ** -8, 0x3f82], // tie → even (up)
      [1 + 2 ** -8 + 2 ** -20, 0x3f81],
      [-1.5, 0xbfc0],
      [3.4028234663852886e38, 0x7f80], // max f32 rounds up to inf
      [Number.POSITIVE_INFINITY, 0x7f80],
      [Number.NEGATIVE_INFINITY, 0xff80],
      [f32OfBits(0x00000001), 0x0000], // smallest f32 subnormal rounds to zero
      [f32OfBits(0x00008000), 0x0000], // tie → even
      [f32OfBits(0x00018000), 0x0002], // tie → even (up)
    ].map(([x, h]) => ({ x, h, hex: h.toString(16) })),
  )("$x → 0x$hex", ({ x, h }) => {
    expect(f32ToBf16Bits(x).toString(16)).toBe(h.toString(16));
  });
  it("keeps NaN a NaN (a low-payload NaN must not round to inf)", () => {
    for (const b of [0x7fc00000, 0x7f800001, 0xffffffff]) {
      const h = f32ToBf16Bits(f32OfBits(b));
      expect(bf16BitsToF32(h)).toBeNaN();
    }
  });
  it("decodes by shifting into the high half", () => {
    expect(bf16BitsToF32(0x3f80)).toBe(1);
    expect(bf16BitsToF32(0xc040)).toBe(-3);
    expect(bitsOf(bf16BitsToF32(0x1234))).toBe(0x12340000);
  });
});

describe("fp8", () => {
  it("E4M3 (fn): max 448, no inf, 0x7f/0xff NaN, subnormals", () => {
    expect(e4m3BitsToF32(0x7e)).toBe(448);
    expect(e4m3BitsToF32(0xfe)).toBe(-448);
    expect(e4m3BitsToF32(0x7f)).toBeNaN();
    expect(e4m3BitsToF32(0xff)).toBeNaN();
    expect(e4m3BitsToF32(0x78)).toBe(256); // exponent 15 is finite in the fn variant
    expect(e4m3BitsToF32(0x38)).toBe(1);
    expect(e4m3BitsToF32(0xb8)).toBe(-1);
    expect(e4m3BitsToF32(0x01)).toBe(2 ** -9);
    expect(e4m3BitsToF32(0x08)).toBe(2 ** -6);
  });
  it("E5M2: IEEE-like with inf and NaN", () => {
    expect(e5m2BitsToF32(0x3c)).toBe(1);
    expect(e5m2BitsToF32(0x7b)).toBe(57344);
    expect(e5m2BitsToF32(0x7c)).toBe(Number.POSITIVE_INFINITY);
    expect(e5m2BitsToF32(0xfc)).toBe(Number.NEGATIVE_INFINITY);
    expect(e5m2BitsToF32(0x7d)).toBeNaN();
    expect(e5m2BitsToF32(0x01)).toBe(2 ** -16);
  });
  it("toFloat32 decodes buffers through the same tables", () => {
    const bytes = new Uint8Array([0x38, 0x7e, 0x01, 0x7f]);
    expect(Array.from(toFloat32("F8_E4M3", bytes))).toEqual([1, 448, 2 ** -9, Number.NaN]);
    expect(Array.from(toFloat32("F8_E5M2", new Uint8Array([0x3c, 0x7c])))).toEqual([
      1,
      Number.POSITIVE_INFINITY,
    ]);
  });
});

describe("buffer conversion", () => {
  const values = new Float32Array([0, -0, 1, -2.5, 3.140625, 65504, 1e-5, 2 ** -24]);

  it("F16 and BF16 encode then decode back exactly for representable values", () => {
    for (const dt of ["F16", "BF16", "F32"] as const) {
      // Round to the target format first so every value is exactly representable.
      const v =
        dt === "BF16"
          ? values.map((x) => bf16BitsToF32(f32ToBf16Bits(x)))
          : dt === "F16"
            ? values.map((x) => f16BitsToF32(f32ToF16Bits(x)))
            : values;
      const enc = fromFloat32(dt, v);
      expect(enc.byteLength).toBe(v.length * DTYPE_SIZES[dt]);
      const dec = toFloat32(dt, enc);
      expect(Array.from(dec).map((x) => bitsOf(x))).toEqual(Array.from(v).map((x) => bitsOf(x)));
    }
  });

  it("handles an input that is not 2-byte aligned", () => {
    const enc = fromFloat32("BF16", new Float32Array([1, -3]));
    const shifted = new Uint8Array(enc.byteLength + 1);
    shifted.set(enc, 1);
    expect(Array.from(toFloat32("BF16", shifted.subarray(1)))).toEqual([1, -3]);
    expect(Array.from(toFloat32("F16", fromFloat32("F16", new Float32Array([0.5]))))).toEqual([0.5]);
  });

  it("writes into caller-provided outputs", () => {
    const out = new Float32Array(2);
    expect(toFloat32("F16", fromFloat32("F16", new Float32Array([1, -2])), out)).toBe(out);
    expect(Array.from(out)).toEqual([1, -2]);
    const enc = new Uint8Array(5);
    fromFloat32("BF16", new Float32Array([1, -2]), enc.subarray(1)); // misaligned target
    expect(Array.from(toFloat32("BF16", enc.subarray(1)))).toEqual([1, -2]);
    expect(() => toFloat32("F16", new Uint8Array(6), out)).toThrow(/expected 3/);
  });

  it("rejects a byte count that is not a whole number of elements", () => {
    expect(() => toFloat32("F16", new Uint8Array(3))).toThrow(/not a whole number/);
  });

  it("preserves NaN payload bits through F32", () => {
    const nan = new Float32Array(new Uint32Array([0x7fa00001]).buffer);
    const out = toFloat32("F32", fromFloat32("F32", nan));
    expect(new Uint32Array(out.buffer)[0]).toBe(0x7fa00001);
  });
});

// Session 31: what the first mutation run of dtype.ts found untested.
describe("dtype names", () => {
  // The safetensors spec's dtypes and their widths in bits.
  const SPEC: Record<string, number> = {
    F64: 64,
    F32: 32,
    F16: 16,
    BF16: 16,
    F8_E4M3: 8,
    F8_E5M2: 8,
    I64: 64,
    I32: 32,
    I16: 16,
    I8: 8,
    U8: 8,
    BOOL: 8,
  };

  it("isDtype and dtypeSize know exactly the spec's dtypes", () => {
    expect([...DTYPES].sort()).toEqual(Object.keys(SPEC).sort());
    for (const [name, bits] of Object.entries(SPEC)) {
      expect(isDtype(name)).toBe(true);
      expect(dtypeSize(name as keyof typeof DTYPE_SIZES)).toBe(bits / 8);
    }
    // Not names: other spellings, inherited keys, and non-strings that would convert to a dtype's name.
    for (const s of [
      "f32",
      "",
      "F8_E4M3FN",
      "U16",
      "toString",
      "__proto__",
      "hasOwnProperty",
      4,
      null,
      undefined,
    ])
      expect(isDtype(s)).toBe(false);
    expect(isDtype(["F32"])).toBe(false);
    expect(isDtype({ toString: () => "F16" })).toBe(false);
  });

  it("isFloatDtype is true for the five dtypes toFloat32 decodes and no other", () => {
    const floats = ["F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"];
    for (const s of floats) expect(isFloatDtype(s)).toBe(true);
    for (const s of [...DTYPES.filter((d) => !floats.includes(d)), "f16", "", ["F16"], 16, undefined])
      expect(isFloatDtype(s)).toBe(false);
  });
});

describe("fp8 E4M3 by hand (bias 7; exponent field 0 is subnormal: mant × 2^-9)", () => {
  it.each([
    [0x02, 2 ** -8], // subnormal 2 × 2^-9 (not 2^-9 / 2)
    [0x07, 7 * 2 ** -9], // largest subnormal: a NaN only with exponent field 15
    [0x0f, 1.875 * 2 ** -6], // exponent field 1, mantissa 7
    [0x77, 240], // 2^7 × 1.875: mantissa 7 below the top exponent is finite
    [0x87, -7 * 2 ** -9],
    [0x80, -0],
    [0xf7, -240],
  ])("byte %i → %s", (b, x) => {
    expect(Object.is(e4m3BitsToF32(b), x)).toBe(true);
    expect(Object.is(toFloat32("F8_E4M3", new Uint8Array([b]))[0], x)).toBe(true);
  });
});

describe("conversion guards and output windows", () => {
  it("refuses a dtype it cannot convert, naming it", () => {
    expect(thrown(() => toFloat32("I32" as never, new Uint8Array(4)), TypeError).message).toBe(
      "cannot decode dtype I32 to fp32",
    );
    expect(thrown(() => fromFloat32("F8_E4M3" as never, new Float32Array(1)), TypeError).message).toBe(
      "cannot encode fp32 as F8_E4M3",
    );
  });

  it("refuses an output of the wrong size", () => {
    for (const dt of ["F32", "F16", "BF16"] as const) {
      const need = 2 * DTYPE_SIZES[dt];
      expect(
        thrown(() => fromFloat32(dt, new Float32Array(2), new Uint8Array(need + 1)), RangeError).message,
      ).toBe(`output has ${need + 1} bytes, expected ${need}`);
    }
    expect(thrown(() => toFloat32("F32", new Uint8Array(8), new Float32Array(3)), RangeError).message).toBe(
      "output has 3 elements, expected 2",
    );
  });

  // [1, -2] little-endian: fp16 0x3c00 0xc000, bf16 0x3f80 0xc000, fp32 0x3f800000 0xc0000000.
  const WANT = {
    F16: [0x00, 0x3c, 0x00, 0xc0],
    BF16: [0x80, 0x3f, 0x00, 0xc0],
    F32: [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0],
  };
  it.each([2, 3])("writes only its window of a larger buffer (window at byte %i)", (at) => {
    for (const dt of ["F16", "BF16", "F32"] as const) {
      const whole = new Uint8Array(16).fill(0xee);
      const n = WANT[dt].length;
      expect(fromFloat32(dt, new Float32Array([1, -2]), whole.subarray(at, at + n))).toEqual(
        new Uint8Array(WANT[dt]),
      );
      const expected = new Uint8Array(16).fill(0xee);
      expected.set(WANT[dt], at);
      expect(whole).toEqual(expected);
    }
  });

  it("decodes fp32 bytes into a caller's output", () => {
    const out = new Float32Array(2);
    expect(toFloat32("F32", new Uint8Array(WANT.F32), out)).toBe(out);
    expect(Array.from(out)).toEqual([1, -2]);
  });
});
