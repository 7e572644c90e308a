// One reduction of a sampling seed for every path (src/executor/seed.ts): the u64 the GPU's sampler keys on, folded
// to the CPU sampler's 32-bit key with every bit counting. The CPU took seed >>> 0, so seeds differing only above
// bit 31 sampled alike on the CPU (and differently on the GPU), and -1 was 2^32 - 1 there but refused by the GPU.
import { describe, expect, it } from "vitest";
import { seedArg } from "../../src/cli/common.ts";
import { type SamplingParams, sampleToken } from "../../src/executor/sampling.ts";
import { seedKey32, seedProblem, seedU64 } from "../../src/executor/seed.ts";
import { lowbias32 } from "../../src/weights/random.ts";

/** 256 equally likely tokens: each draw shows its u (token = floor(u · 256)). */
const FLAT = new Float32Array(256);
const draws = (seed: number | bigint, n = 32) => {
  const p: SamplingParams = { temperature: 1, topK: 0, topP: 1, seed };
  return Array.from({ length: n }, (_, step) => sampleToken(FLAT, p, step));
};

describe("sampling seeds", () => {
  it("seeds differing only above bit 32 sample differently on the CPU; -1 is the u64 2^64 - 1, not 2^32 - 1", () => {
    for (const lo of [0, 5, 2 ** 32 - 1]) {
      const base = draws(lo);
      for (const hi of [1, 2 ** 20, 2 ** 21 - 1])
        expect(draws(hi * 2 ** 32 + lo), `${hi}·2^32 + ${lo}`).not.toEqual(base);
    }
    expect(draws(-1)).not.toEqual(draws(2 ** 32 - 1));
    expect(draws(-1)).toEqual(draws(2n ** 64n - 1n));
    expect(draws(2 ** 53 - 1)).toEqual(draws(2n ** 53n - 1n));
  });

  it("a seed below 2^32 keeps its key (lowbias32(seed)), so its samples are as before", () => {
    for (const s of [0, 1, 7, 123456789, 2 ** 32 - 1]) expect(seedKey32(s)).toBe(lowbias32(s));
    // the fold of a larger one, by its definition: lowbias32(lo ^ lowbias32(hi))
    expect(seedKey32(3 * 2 ** 32 + 9)).toBe(lowbias32((9 ^ lowbias32(3)) >>> 0));
  });

  it("the u64: two's complement for a negative seed, offsets in exact u64 arithmetic (past 2^53 too)", () => {
    expect(seedU64(-1)).toBe(2n ** 64n - 1n);
    expect(seedU64(-(2 ** 53 - 1))).toBe(2n ** 64n - (2n ** 53n - 1n));
    expect(seedU64(2 ** 53 - 1, 2)).toBe(2n ** 53n + 1n); // 2^53 + 1 as a number is 2^53
    expect(seedU64(-1, 1)).toBe(0n);
    expect(seedU64(2n ** 64n - 1n, 1)).toBe(0n);
  });

  it("what cannot be honoured exactly is refused, in one line naming the seed", () => {
    for (const s of [2 ** 53, -(2 ** 53), 2 ** 63, 1.5, Number.NaN, Number.POSITIVE_INFINITY, "1", null])
      expect(seedProblem(s), String(s)).toBe(
        `must be an integer from -(2^53 - 1) to 2^53 - 1, got ${String(s)}`,
      );
    expect(seedProblem(2n ** 64n)).toBe("must fit in 64 bits");
    expect(seedProblem(-(2n ** 63n) - 1n)).toBe("must fit in 64 bits");
    for (const s of [0, -1, 2 ** 53 - 1, -(2 ** 53 - 1), 2n ** 64n - 1n, -(2n ** 63n)])
      expect(seedProblem(s)).toBeUndefined();
    expect(() => seedU64(2 ** 53)).toThrow(
      new RangeError("seed must be an integer from -(2^53 - 1) to 2^53 - 1, got 9007199254740992"),
    );
    expect(() => draws(2 ** 63)).toThrow(RangeError);
  });

  it("tsllm-run --seed: the same range, a larger one refused as typed (not as the number it rounds to)", () => {
    expect(seedArg("--seed")("-5")).toBe(-5);
    expect(seedArg("--seed")("9007199254740991")).toBe(2 ** 53 - 1);
    expect(() => seedArg("--seed")("9223372036854775807")).toThrow(
      '--seed must be an integer from -(2^53 - 1) to 2^53 - 1, got "9223372036854775807"',
    );
  });
});
