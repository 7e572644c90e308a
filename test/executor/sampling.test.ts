// The reference executor's host-side sampling (src/executor/sampling.ts) against hand-computed
// distributions: token frequencies over many steps match the probabilities that temperature, top-k and
// top-p leave (a counter-based generator, so every figure here is exact and repeats), and the draw follows
// the generator the file documents.
import { describe, expect, it } from "vitest";
import { argmax, type SamplingParams, sampleToken } from "../../src/executor/sampling.ts";
import { lowbias32 } from "../../src/weights/random.ts";

const N = 20_000;
const row = (...v: number[]) => Float32Array.from(v);
const params = (o: Partial<SamplingParams>): SamplingParams => ({
  temperature: 1,
  topK: 0,
  topP: 1,
  seed: 7,
  ...o,
});

/** Fraction of N steps that draw each token. */
function freqs(r: Float32Array, p: SamplingParams): number[] {
  const n = new Array<number>(r.length).fill(0);
  for (let s = 0; s < N; s++) n[sampleToken(r, p, s)]++;
  return n.map((c) => c / N);
}

/** Frequencies within 0.02 of `want` (more than 5 standard deviations at N = 20000), zero exactly where 0. */
function expectFreqs(got: number[], want: number[]): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (want[i] === 0) expect(got[i], `token ${i}`).toBe(0);
    else expect(Math.abs(got[i] - want[i]), `token ${i}: ${got[i]} vs ${want[i]}`).toBeLessThan(0.02);
  }
}

describe("argmax", () => {
  it("returns the first of equal maxima", () => {
    expect(argmax(row(1, 3, 3, 2))).toBe(1);
    expect(argmax(row(4, 1, 4))).toBe(0);
    expect(argmax(row(-5, -2, -9))).toBe(1);
    expect(argmax(row(0, 0, 0, 7))).toBe(3);
    expect(argmax(row(2))).toBe(0);
  });
});

describe("sampleToken", () => {
  const r = row(1, 5, 5, 3); // two equal maxima: greedy takes the first

  it("is greedy at temperature 0 or below and at top-k 1, whatever the seed and step", () => {
    for (let s = 0; s < 50; s++) {
      expect(sampleToken(r, params({ temperature: 0, seed: s }), s)).toBe(1);
      expect(sampleToken(r, params({ temperature: -1, seed: s }), s)).toBe(1);
      expect(sampleToken(r, params({ temperature: 2, topK: 1, seed: s }), s)).toBe(1);
    }
    expect(sampleToken(row(0, 0, 0, 0), params({ temperature: 0 }), 3)).toBe(0);
  });

  it("draws from softmax(logits / T) over the whole row (top-k 0, top-p 1)", () => {
    // p ∝ 1, 2, 3, 4 at T = 1
    const lg = row(0, Math.log(2), Math.log(3), Math.log(4));
    expectFreqs(freqs(lg, params({})), [0.1, 0.2, 0.3, 0.4]);
    // T = 2: p ∝ 1, √2, √3, 2
    const s = 1 + Math.SQRT2 + Math.sqrt(3) + 2;
    expectFreqs(freqs(lg, params({ temperature: 2 })), [1 / s, Math.SQRT2 / s, Math.sqrt(3) / s, 2 / s]);
    // T = 0.5: p ∝ 1, 4, 9, 16
    expectFreqs(freqs(lg, params({ temperature: 0.5 })), [1 / 30, 4 / 30, 9 / 30, 16 / 30]);
  });

  it("is the same for large logits (the maximum is subtracted before exp) and ignores -Infinity", () => {
    const lg = row(1000, 1000 + Math.log(3)); // p = 1/4, 3/4; exp(1000) alone would overflow
    expectFreqs(freqs(lg, params({})), [0.25, 0.75]);
    expectFreqs(freqs(row(-1000, -1000 + Math.log(3)), params({})), [0.25, 0.75]);
    expectFreqs(freqs(row(-Infinity, 0, -Infinity, 0), params({})), [0, 0.5, 0, 0.5]);
  });

  it("keeps the k largest logits at top-k k, renormalised; k at or past the row's length or below 1 keeps all", () => {
    const lg = row(Math.log(4), 0, Math.log(3), Math.log(2)); // p ∝ 4, 1, 3, 2
    expectFreqs(freqs(lg, params({ topK: 2 })), [4 / 7, 0, 3 / 7, 0]);
    expectFreqs(freqs(lg, params({ topK: 3 })), [4 / 9, 0, 3 / 9, 2 / 9]);
    for (const topK of [0, -1, 4, 5, 100]) expectFreqs(freqs(lg, params({ topK })), [0.4, 0.1, 0.3, 0.2]);
  });

  it("keeps the fewest most likely tokens whose mass reaches top-p (a mass equal to top-p is enough)", () => {
    // equal logits: cumulative mass 0.25, 0.5, 0.75, 1 exactly; ties ranked by index
    const eq = row(5, 5, 5, 5);
    expectFreqs(freqs(eq, params({ topP: 0.5 })), [0.5, 0.5, 0, 0]);
    expectFreqs(freqs(eq, params({ topP: 0.51 })), [1 / 3, 1 / 3, 1 / 3, 0]);
    expectFreqs(freqs(eq, params({ topP: 0.25 })), [1, 0, 0, 0]);
    expectFreqs(freqs(eq, params({ topP: 0.1 })), [1, 0, 0, 0]);
    expectFreqs(freqs(eq, params({ topP: 1 })), [0.25, 0.25, 0.25, 0.25]);
    // p = 0.1, 0.2, 0.3, 0.4 in the order 3, 2, 1, 0 of likelihood: 0.4 < 0.6 ≤ 0.7, 0.7 < 0.85 ≤ 0.9
    const lg = row(0, Math.log(2), Math.log(3), Math.log(4));
    expectFreqs(freqs(lg, params({ topP: 0.6 })), [0, 0, 3 / 7, 4 / 7]);
    expectFreqs(freqs(lg, params({ topP: 0.85 })), [0, 2 / 9, 3 / 9, 4 / 9]);
    // top-p applies to the probabilities top-k left: 4/7 < 0.6 ≤ 1
    expectFreqs(freqs(lg, params({ topK: 2, topP: 0.6 })), [0, 0, 3 / 7, 4 / 7]);
    expectFreqs(freqs(lg, params({ topK: 2, topP: 0.5 })), [0, 0, 0, 1]);
  });

  it("ranks by logit, ties by index", () => {
    // 0 and 3 tie for second place behind 4: top-k 2 keeps index 1, the lower; p ∝ e³, e⁴
    const e = Math.E;
    expectFreqs(freqs(row(0, 3, 0, 3, 4), params({ topK: 2 })), [0, 1 / (1 + e), 0, 0, e / (1 + e)]);
    // the most likely last in the row
    expectFreqs(freqs(row(0, 1, 1, 1 + Math.log(2)), params({ topK: 2 })), [0, 1 / 3, 0, 2 / 3]);
  });

  it("repeats for a seed and step; the draw is u = lowbias32(lowbias32(seed) ^ (step + 1)·0x9e3779b9) / 2³² of the kept mass", () => {
    const eq = row(0, 0); // p = 1/2 each: token 0 iff u < 1/2
    for (const seed of [0, 1, 7, 123456789, 2 ** 32 - 1]) {
      for (let step = 0; step < 64; step++) {
        const h = lowbias32((lowbias32(seed) ^ Math.imul(step + 1, 0x9e3779b9)) >>> 0) / 2 ** 32;
        const p = params({ seed });
        expect(sampleToken(eq, p, step), `seed ${seed} step ${step}`).toBe(h < 0.5 ? 0 : 1);
        expect(sampleToken(eq, p, step)).toBe(sampleToken(eq, { ...p }, step));
      }
    }
    // seeds as uint32: -1 is 2³² - 1
    const a = Array.from({ length: 64 }, (_, s) => sampleToken(eq, params({ seed: -1 }), s));
    const b = Array.from({ length: 64 }, (_, s) => sampleToken(eq, params({ seed: 2 ** 32 - 1 }), s));
    const c = Array.from({ length: 64 }, (_, s) => sampleToken(eq, params({ seed: 1 }), s));
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
  });

  it("never draws a NaN logit, and is greedy when a logit is +Infinity or none is finite (as the GPU's sampler)", () => {
    // Before: exp(Infinity - Infinity) made every weight NaN and the least likely kept token was returned.
    for (let s = 0; s < 200; s++) {
      expect(sampleToken(row(Infinity, 0, -1), params({ seed: s }), s)).toBe(0);
      expect(sampleToken(row(0, Infinity, 5, Infinity), params({ topK: 2, seed: s }), s)).toBe(1);
      expect(sampleToken(row(-Infinity, -Infinity), params({ seed: s }), s)).toBe(0);
      expect(sampleToken(row(NaN, NaN, NaN), params({ seed: s }), s)).toBe(0);
    }
    // NaN weighs nothing: the other tokens keep their softmax (p ∝ 1, 3 at T = 1)
    expectFreqs(freqs(row(NaN, 0, Math.log(3), NaN), params({})), [0, 0.25, 0.75, 0]);
    expectFreqs(freqs(row(0, NaN, Math.log(3)), params({ topP: 0.5 })), [0, 0, 1]);
    expect(argmax(row(NaN, 5, 0))).toBe(1);
    expect(argmax(row(0, 5, NaN))).toBe(1);
    expect(argmax(row(NaN, -Infinity))).toBe(0);
  });

  it("leaves the row as it was", () => {
    const lg = row(3, 1, 2);
    sampleToken(lg, params({ topK: 2, topP: 0.9 }), 5);
    expect(Array.from(lg)).toEqual([3, 1, 2]);
  });
});
