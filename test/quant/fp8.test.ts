// FP8 E4M3 encoding against known encodings and an exhaustive nearest-value search.
import { describe, expect, it } from "vitest";
import { e4m3BitsToF32 } from "../../src/checkpoint/dtype.ts";
import { E4M3_MAX, e4m3ToF32, f32ToE4m3, roundE4m3 } from "../../src/quant/fp8.ts";

describe("FP8 E4M3 encode", () => {
  it.each([
    [0, 0x00],
    [-0, 0x80],
    [1, 0x38],
    [-1, 0xb8],
    [0.5, 0x30],
    [2, 0x40],
    [1.125, 0x39],
    [1.75, 0x3e],
    [-3.5, 0xc6],
    [240, 0x77],
    [256, 0x78],
    [448, 0x7e], // largest finite
    [-448, 0xfe],
    [2 ** -6, 0x08], // smallest normal
    [2 ** -9, 0x01], // smallest subnormal
    [-(2 ** -9), 0x81],
    [7 * 2 ** -9, 0x07], // largest subnormal
    [3 * 2 ** -9, 0x03],
  ])("%f → %i", (x, bits) => {
    expect(f32ToE4m3(x)).toBe(bits);
    expect(e4m3ToF32(bits)).toBe(x);
  });

  it("rounds to nearest, ties to even", () => {
    expect(f32ToE4m3(1.0625)).toBe(0x38); // between 1 (even) and 1.125 → 1
    expect(f32ToE4m3(1.1875)).toBe(0x3a); // between 1.125 and 1.25 (even) → 1.25
    expect(f32ToE4m3(1.0626)).toBe(0x39); // above the tie → up
    expect(f32ToE4m3(15.5)).toBe(0x58); // between 15 (0x57, odd) and 16 (0x58) → 16, carry into exponent
    expect(f32ToE4m3(416)).toBe(0x7d); // 1.101₂·2^8
    expect(roundE4m3(424)).toBe(416); // 416 and 448 tie at 432; 424 is nearer 416
    expect(roundE4m3(432)).toBe(448); // tie → even mantissa (448 = 1.110₂·2^8)
  });

  it("subnormals down to 2^-9, ties to even, underflow to signed zero", () => {
    expect(f32ToE4m3(2 ** -10)).toBe(0x00); // tie between 0 (even) and 2^-9 → 0
    expect(f32ToE4m3(1.0001 * 2 ** -10)).toBe(0x01);
    expect(f32ToE4m3(3 * 2 ** -10)).toBe(0x02); // tie between 1 and 2 (even) → 2·2^-9
    expect(f32ToE4m3(7.5 * 2 ** -9)).toBe(0x08); // tie between 7 and 8 (even) → smallest normal
    expect(f32ToE4m3(2 ** -12)).toBe(0x00);
    expect(f32ToE4m3(-(2 ** -12))).toBe(0x80);
    expect(f32ToE4m3(1e-45)).toBe(0x00); // fp32 subnormal
  });

  it("fp32 values far below E4M3's range (and fp32 subnormals) become signed zero", () => {
    for (const v of [1e-30, 2 ** -40, 1e-45, 2 ** -126]) {
      expect(f32ToE4m3(v)).toBe(0);
      expect(f32ToE4m3(-v)).toBe(0x80);
    }
  });

  it("saturates out-of-range values (±inf included) to ±448", () => {
    for (const x of [449, 464, 480, 1e4, 3.4e38, Infinity]) {
      expect(f32ToE4m3(x)).toBe(0x7e);
      expect(f32ToE4m3(-x)).toBe(0xfe);
    }
    expect(E4M3_MAX).toBe(448);
  });

  it("NaN → NaN (S.1111.111)", () => {
    expect(f32ToE4m3(Number.NaN) & 0x7f).toBe(0x7f);
    expect(Number.isNaN(e4m3ToF32(0x7f))).toBe(true);
    expect(Number.isNaN(e4m3ToF32(0xff))).toBe(true);
  });

  it("round-trips every finite code", () => {
    for (let b = 0; b < 256; b++) {
      if ((b & 0x7f) === 0x7f) continue;
      expect(f32ToE4m3(e4m3BitsToF32(b))).toBe(b);
    }
  });

  it("picks the nearest code (ties to even) for random fp32 values", () => {
    const codes = Array.from({ length: 127 }, (_, b) => b).filter((b) => b !== 0x7f);
    let seed = 12345;
    const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
    for (let i = 0; i < 20000; i++) {
      const x = Math.fround((rand() * 2 - 1) * 2 ** (rand() * 24 - 14));
      const a = Math.abs(x);
      let best = 0;
      for (const c of codes) {
        const d = Math.abs(e4m3BitsToF32(c) - Math.min(a, 448));
        const db = Math.abs(e4m3BitsToF32(best) - Math.min(a, 448));
        if (d < db || (d === db && (c & 1) === 0 && (best & 1) === 1)) best = c;
      }
      expect(f32ToE4m3(x)).toBe(best | (x < 0 ? 0x80 : 0));
    }
  });
});
