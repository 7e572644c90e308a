// The random weights of --random-weights (src/weights/random.ts) against an independent implementation
// of its documented formula (Python with integers masked to 32 bits and numpy float32, run once; the
// values are pasted here): u = lowbias32(lowbias32(seed) ^ i), r = (u >>> 8) / 2^24,
// value = fp32(fp32(mean) + fp32(fp32(scale) · (2r − 1))). The names' hash is FNV-1a, whose published
// test vectors are FNV-1a("a") = 0xe40c292c and FNV-1a("foobar") = 0xbf9cf968.
import { describe, expect, it } from "vitest";
import { lowbias32, randomFill, weightSeed } from "../../src/weights/random.ts";
import { uniformWithStd } from "../../src/weights/recipe.ts";

describe("lowbias32", () => {
  it("hashes as the Python oracle does (0 is its fixed point; unsigned results)", () => {
    expect(lowbias32(0)).toBe(0);
    expect(lowbias32(1)).toBe(0x688990c0);
    expect(lowbias32(2)).toBe(0xd1132181);
    expect(lowbias32(0xffffffff)).toBe(0x6768824a);
    expect(lowbias32(1234)).toBe(0x400c726e);
  });
});

describe("randomFill", () => {
  it("gives the oracle's values bit for bit", () => {
    // seed 0: lowbias32(0) = 0 and u = lowbias32(0) = 0 at i = 0, so r = 0 and the value is mean - scale.
    expect(Array.from(randomFill(5, 0, 0, 1))).toEqual([
      -1, -0.1833019256591797, 0.6333962678909302, -0.34417998790740967, 0.6991689205169678,
    ]);
    // a negative seed is taken as its unsigned 32-bit value (2^32 - 1)
    const neg = [
      -0.6443401575088501, -0.8173465728759766, 0.7794737815856934, 0.955196738243103, -0.8604145050048828,
    ];
    expect(Array.from(randomFill(5, -1, 0, 1))).toEqual(neg);
    expect(Array.from(randomFill(5, 2 ** 32 - 1, 0, 1))).toEqual(neg);
    // mean and scale not representable in fp32: rounded to it first, the sum rounded again
    expect(Array.from(randomFill(6, 42, 0.1, 0.3))).toEqual([
      0.025256164371967316, 0.13761533796787262, 0.23238372802734375, 0.1983221024274826,
      -0.003493286669254303, 0.19795188307762146,
    ]);
    expect(Array.from(randomFill(4, 3, -2.5, 1e-3))).toEqual([
      -2.5001912117004395, -2.4994285106658936, -2.499338388442993, -2.4990692138671875,
    ]);
  });

  it("fills the first n elements of the array it is given and returns it, the rest untouched", () => {
    const out = new Float32Array(7).fill(9);
    expect(randomFill(5, 0, 0, 1, out)).toBe(out);
    expect(Array.from(out)).toEqual([
      -1, -0.1833019256591797, 0.6333962678909302, -0.34417998790740967, 0.6991689205169678, 9, 9,
    ]);
    expect(randomFill(0, 0, 0, 1)).toHaveLength(0);
    expect(randomFill(3, 0, 0, 1)).toHaveLength(3);
  });

  it("refuses more than 2^32 elements (the generator's index is 32 bits)", () => {
    expect(() => randomFill(2 ** 32 + 1, 0, 0, 1, new Float32Array(1))).toThrow(
      new Error("random weight of 4294967297 elements exceeds 2^32"),
    );
  });

  it("is uniform on [mean - scale, mean + scale): uniformWithStd's scale gives that std", () => {
    const { mean, scale } = uniformWithStd(0.5, 2);
    const s = randomFill(200_000, 9, mean, scale);
    const m = s.reduce((a, b) => a + b, 0) / s.length;
    const sd = Math.sqrt(s.reduce((a, b) => a + (b - m) ** 2, 0) / s.length);
    expect(Math.abs(m - 2)).toBeLessThan(0.005);
    expect(Math.abs(sd - 0.5)).toBeLessThan(0.005);
    // within fp32 rounding of the bounds
    expect(s.reduce((a, b) => Math.min(a, b))).toBeGreaterThan(2 - 0.5 * Math.sqrt(3) - 1e-6);
    expect(s.reduce((a, b) => Math.max(a, b))).toBeLessThan(2 + 0.5 * Math.sqrt(3) + 1e-6);
  });
});

describe("weightSeed", () => {
  it("is lowbias32(FNV-1a(name) ^ lowbias32(build seed))", () => {
    // FNV-1a("") is the offset basis 0x811c9dc5; of "a" 0xe40c292c, of "foobar" 0xbf9cf968 (published vectors)
    expect(weightSeed(0, "")).toBe(lowbias32(0x811c9dc5));
    expect(weightSeed(0, "a")).toBe(lowbias32(0xe40c292c));
    expect(weightSeed(5, "foobar")).toBe(lowbias32((0xbf9cf968 ^ lowbias32(5)) >>> 0));
    expect(weightSeed(0, "")).toBe(1947474976);
    expect(weightSeed(0, "a")).toBe(1817065451);
    expect(weightSeed(11, "emb")).toBe(1552733151);
    expect(weightSeed(-1, "a")).toBe(3531525318);
    expect(weightSeed(7, "model.norm.weight")).toBe(1508732438);
  });
});

describe("uniformWithStd", () => {
  it("has half-width std·√3 (the std of U(-a, a) is a/√3), mean 0 unless given", () => {
    expect(uniformWithStd(2)).toStrictEqual({ mean: 0, scale: 3.4641016151377544 });
    expect(uniformWithStd(2, -1.5)).toStrictEqual({ mean: -1.5, scale: 3.4641016151377544 });
    expect(uniformWithStd(1 / Math.sqrt(3)).scale).toBeCloseTo(1, 15);
    expect(uniformWithStd(0)).toStrictEqual({ mean: 0, scale: 0 });
  });
});
