// The reference executor's host-side sampling (src/executor/sampling.ts) against hand-computed
// distributions: token frequencies over many steps match the probabilities that temperature, top-k and
// top-p leave (a counter-based generator, so every figure here is exact and repeats), and the draw follows
// the generator the file documents.
import fc from "fast-check";
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

  it("keeps the fewest most likely tokens whose mass reaches top-p, and every token tied with the last one kept", () => {
    // equal logits are one tie: whatever top-p, all four stay (before: top-p 0.5 kept two, by index)
    const eq = row(5, 5, 5, 5);
    for (const topP of [0.5, 0.51, 0.25, 0.1, 1e-9, 1])
      expectFreqs(freqs(eq, params({ topP })), [0.25, 0.25, 0.25, 0.25]);
    // two ties, p ∝ 1, 1, 1/e, 1/e: the first pair holds e / (e + 1) ≈ 0.73 of the mass
    const e = Math.E;
    const two = row(5, 5, 4, 4);
    expectFreqs(freqs(two, params({ topP: 0.3 })), [0.5, 0.5, 0, 0]);
    expectFreqs(freqs(two, params({ topP: 0.73 })), [0.5, 0.5, 0, 0]);
    const q = 1 / (2 + 2 / e);
    expectFreqs(freqs(two, params({ topP: 0.74 })), [q, q, q / e, q / e]);
    // p = 0.1, 0.2, 0.3, 0.4 in the order 3, 2, 1, 0 of likelihood: 0.4 < 0.6 ≤ 0.7, 0.7 < 0.85 ≤ 0.9
    const lg = row(0, Math.log(2), Math.log(3), Math.log(4));
    expectFreqs(freqs(lg, params({ topP: 0.6 })), [0, 0, 3 / 7, 4 / 7]);
    expectFreqs(freqs(lg, params({ topP: 0.85 })), [0, 2 / 9, 3 / 9, 4 / 9]);
    expectFreqs(freqs(lg, params({ topP: 0.3 })), [0, 0, 0, 1]);
    // top-p cuts the tempered distribution (temperature first, as transformers' warpers and vLLM): at T = 0.25,
    // p ∝ 1, 16, 81, 256 and the most likely alone holds 0.72 ≥ 0.6; at T = 4, p ∝ 1, 2^¼, 3^¼, 4^¼ and three
    // tokens are needed (0.55 < 0.6 ≤ 0.80). On the untempered p both would keep two.
    expectFreqs(freqs(lg, params({ temperature: 0.25, topP: 0.6 })), [0, 0, 0, 1]);
    const r4 = [1, 2, 3, 4].map((v) => v ** 0.25);
    const s4 = r4[1] + r4[2] + r4[3];
    expectFreqs(freqs(lg, params({ temperature: 4, topP: 0.6 })), [0, r4[1] / s4, r4[2] / s4, r4[3] / s4]);
    // top-p applies to the probabilities top-k left: 4/7 < 0.6 ≤ 1
    expectFreqs(freqs(lg, params({ topK: 2, topP: 0.6 })), [0, 0, 3 / 7, 4 / 7]);
    expectFreqs(freqs(lg, params({ topK: 2, topP: 0.5 })), [0, 0, 0, 1]);
  });

  it("ranks by logit and keeps every token tied at the top-k threshold (as the GPU's sampler and transformers)", () => {
    // indices 1 and 3 tie for second place behind 4: top-k 2 keeps both (before: only index 1, the lower); p ∝ e³, e³, e⁴
    const e = Math.E;
    expectFreqs(freqs(row(0, 3, 0, 3, 4), params({ topK: 2 })), [
      0,
      1 / (2 + e),
      0,
      1 / (2 + e),
      e / (2 + e),
    ]);
    expectFreqs(freqs(row(0, 3, 0, 3, 4), params({ topK: 3 })), [
      0,
      1 / (2 + e),
      0,
      1 / (2 + e),
      e / (2 + e),
    ]);
    // the tie at second place after the most likely, last in the row: p ∝ 1, 1, 2
    expectFreqs(freqs(row(0, 1, 1, 1 + Math.log(2)), params({ topK: 2 })), [0, 0.25, 0.25, 0.5]);
    // the most likely last in the row, no tie at the threshold
    expectFreqs(freqs(row(0, 1, 0.5, 1 + Math.log(2)), params({ topK: 2 })), [0, 1 / 3, 0, 2 / 3]);
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
    // seeds as the GPU's uint64: -1 is 2⁶⁴ - 1 (not 2³² - 1, as when the CPU took seed >>> 0)
    const a = Array.from({ length: 64 }, (_, s) => sampleToken(eq, params({ seed: -1 }), s));
    const b = Array.from({ length: 64 }, (_, s) => sampleToken(eq, params({ seed: 2n ** 64n - 1n }), s));
    const c = Array.from({ length: 64 }, (_, s) => sampleToken(eq, params({ seed: 2 ** 32 - 1 }), s));
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

// sampleToken against a brute-force oracle of the documented semantics (native/src/kernels/sampling.cu, which the
// reference matches): greedy at temperature <= 0, top-k 1, or a +Infinity / no finite logit (argmax, lowest index);
// else the allowed set is every token whose logit is >= a threshold, so ties at the threshold are all kept (as
// transformers' TopKLogitsWarper keeps them): top-k's threshold is the k-th largest logit (k <= 0 or >= the row's
// length: none); top-p's is the largest logit t whose tokens {x >= t} (within top-k's set) carry >= top_p of that
// set's softmax(x / T) mass. NaN weighs nothing (as -Infinity). The draw follows softmax(x / T) over the set.
describe("sampleToken against a brute-force oracle (fast-check)", () => {
  const key = (x: number) => (Number.isNaN(x) ? -Infinity : x);

  /** Probability of each token under the documented rule, computed from the definitions alone. */
  function oracle(r: Float32Array, p: SamplingParams): number[] {
    const x = Array.from(r, key);
    const n = x.length;
    const max = Math.max(...x);
    const first = x.indexOf(max);
    if (p.temperature <= 0 || p.topK === 1 || !Number.isFinite(max))
      return x.map((_, i) => (i === first ? 1 : 0));
    const desc = [...x].sort((a, b) => b - a);
    const thrK = p.topK > 0 && p.topK < n ? desc[p.topK - 1] : -Infinity;
    const w = x.map((v) => (v >= thrK ? Math.exp((v - max) / p.temperature) : 0));
    const total = w.reduce((a, b) => a + b, 0);
    let thr = thrK;
    if (p.topP < 1) {
      // the largest logit whose tokens at or above it hold at least top-p of the mass
      const massFrom = (t: number) => w.reduce((a, wi, i) => a + (x[i] >= t ? wi : 0), 0) / total;
      thr = Math.max(...x.filter((t) => t >= thrK && massFrom(t) >= p.topP));
    }
    const kept = w.map((wi, i) => (x[i] >= thr ? wi : 0));
    const mass = kept.reduce((a, b) => a + b, 0);
    return kept.map((wi) => wi / mass);
  }

  /** No top-p cut within 1e-9 of a mass boundary (float rounding could legitimately fall either way there). */
  function clearOfBoundaries(r: Float32Array, p: SamplingParams): boolean {
    if (!(p.topP < 1) || p.temperature <= 0) return true;
    const x = Array.from(r, key);
    const max = Math.max(...x);
    if (!Number.isFinite(max)) return true;
    const desc = [...x].sort((a, b) => b - a);
    const thrK = p.topK > 0 && p.topK < x.length ? desc[p.topK - 1] : -Infinity;
    const w = x.map((v) => (v >= thrK ? Math.exp((v - max) / p.temperature) : 0));
    const total = w.reduce((a, b) => a + b, 0);
    return x.every(
      (t) => Math.abs(w.reduce((a, wi, i) => a + (x[i] >= t ? wi : 0), 0) / total - p.topP) > 1e-9,
    );
  }

  // Few distinct values, so that ties (also at the top-k / top-p thresholds) are common; now and then -Infinity,
  // NaN or +Infinity.
  const arbLogit = fc.oneof(
    { weight: 60, arbitrary: fc.integer({ min: 0, max: 3 }) },
    { weight: 5, arbitrary: fc.constantFrom(-Infinity, Number.NaN) },
    { weight: 5, arbitrary: fc.double({ min: -4, max: 4, noNaN: true }) },
    { weight: 1, arbitrary: fc.constant(Infinity) },
  );
  const arbParams = fc.record({
    temperature: fc.oneof(fc.constantFrom(0, -1, 1), fc.double({ min: 0.3, max: 3, noNaN: true })),
    topK: fc.integer({ min: -1, max: 9 }),
    topP: fc.oneof(fc.constantFrom(1, 1e-9, 0.5), fc.double({ min: 0.01, max: 1, noNaN: true })),
    seed: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
  });

  it("draws each token as often as the oracle's probability; never one it excludes", () => {
    const draws = 2000;
    fc.assert(
      fc.property(
        fc.array(arbLogit, { minLength: 1, maxLength: 8 }).map((v) => Float32Array.from(v)),
        arbParams,
        (r, p) => {
          fc.pre(clearOfBoundaries(r, p));
          const want = oracle(r, p);
          const n = new Array<number>(r.length).fill(0);
          for (let s = 0; s < draws; s++) n[sampleToken(r, p, s)]++;
          // within 0.06 (over 5 standard deviations at 2000 draws); exactly 0 where the oracle says 0
          for (let i = 0; i < r.length; i++) {
            if (want[i] === 0) expect(n[i], `token ${i} of [${Array.from(r)}]`).toBe(0);
            else
              expect(Math.abs(n[i] / draws - want[i]), `token ${i} of [${Array.from(r)}]`).toBeLessThan(0.06);
          }
        },
      ),
      { seed: 20261206, numRuns: 300 },
    );
  });
});
