// generate() (src/executor/generate.ts) over a scripted executor that records each step: one packed prefill, then
// one token per sequence and step, eos, the step budget, sampling parameters and per-prompt seeds, release.
import { describe, expect, it } from "vitest";
import { generate } from "../../src/executor/generate.ts";
import { type SamplingParams, sampleToken } from "../../src/executor/sampling.ts";
import type { Executor, SeqRequest } from "../../src/executor/types.ts";

const V = 8;

/** Logits of a sequence that has seen `sum` (its tokens' total so far): greedy picks (sum + seqId + 1) mod V. */
function row(sum: number, seqId: number): Float32Array {
  const r = new Float32Array(V);
  const best = (sum + seqId + 1) % V;
  // Close enough that sampling at temperature 1 often picks another token.
  for (let j = 0; j < V; j++) r[j] = j === best ? 1 : ((j * 5 + sum) % 7) / 10;
  return r;
}

/** An executor whose logits depend on everything a sequence was given; records steps and releases. */
function scripted() {
  const sums = new Map<number, number>();
  const steps: SeqRequest[][] = [];
  const released: number[] = [];
  const ex: Executor = {
    vocabSize: V,
    step(seqs) {
      steps.push(seqs.map((s) => ({ ...s, tokens: [...s.tokens] })));
      const out = new Map<number, Float32Array[]>();
      for (const s of seqs) {
        const sum = (sums.get(s.seqId) ?? 0) + s.tokens.reduce((a, b) => a + b, 0);
        sums.set(s.seqId, sum);
        out.set(s.seqId, [row(sum, s.seqId)]);
      }
      return out;
    },
    release(id) {
      released.push(id);
      sums.delete(id);
    },
    close() {},
  };
  return { ex, steps, released };
}

/** What generate should give, step by step: sampleToken on each row, seed + 1000003 · prompt index. */
function expected(prompts: number[][], p: SamplingParams, max: number, eos: number[] = []): number[][] {
  return prompts.map((prompt, i) => {
    const out: number[] = [];
    let sum = prompt.reduce((a, b) => a + b, 0);
    for (let step = 0; step < max; step++) {
      const tok = sampleToken(row(sum, i), { ...p, seed: Number(p.seed) + i * 1000003 }, step);
      out.push(tok);
      if (eos.includes(tok)) break;
      sum += tok;
    }
    return out;
  });
}

const GREEDY = { temperature: 0, topK: 0, topP: 1, seed: 0 };
const req = (seqId: number, tokens: number[]) => ({ seqId, tokens, logits: "last" });

describe("generate", () => {
  it("greedy by default: prefill of all prompts, then one token each per step, max steps, then release", () => {
    const { ex, steps, released } = scripted();
    const out = generate(ex, [[1, 2], [3]], { maxNewTokens: 3 });
    // seq 0: 1+2 → (3+0+1) = 4, then 3+4 → 8 % 8 = 0, then 7+0 → 0; seq 1: 3 → 5, 8 → 10 % 8 = 2, 10 → 12 % 8 = 4.
    expect(out).toEqual([
      [4, 0, 0],
      [5, 2, 4],
    ]);
    expect(out).toEqual(expected([[1, 2], [3]], GREEDY, 3));
    expect(steps).toEqual([
      [req(0, [1, 2]), req(1, [3])],
      [req(0, [4]), req(1, [5])],
      [req(0, [0]), req(1, [2])],
    ]);
    expect(released).toEqual([0, 1]);
  });

  it("no new tokens: the prefill alone, empty outputs, released", () => {
    const { ex, steps, released } = scripted();
    expect(generate(ex, [[1], [2]], { maxNewTokens: 0 })).toEqual([[], []]);
    expect(steps).toHaveLength(1);
    expect(released).toEqual([0, 1]);
    const one = scripted();
    expect(generate(one.ex, [[1], [2]], { maxNewTokens: 1 })).toEqual([[2], [4]]);
    expect(one.steps).toHaveLength(1);
  });

  it("eos ends a sequence (the eos id kept); the others go on; no step once all ended", () => {
    const { ex, steps, released } = scripted();
    // seq 0: 4, then 7+… : 4 → sum 7 → 0; seq 1: [3] → 5 (eos).
    const out = generate(ex, [[1, 2], [3]], { maxNewTokens: 10, eosTokenIds: [5, 0] });
    expect(out).toEqual([[4, 0], [5]]);
    expect(out).toEqual(expected([[1, 2], [3]], GREEDY, 10, [5, 0]));
    expect(steps).toEqual([[req(0, [1, 2]), req(1, [3])], [req(0, [4])]]);
    expect(released).toEqual([0, 1]);
    // Without eos ids, the same prompts run the whole budget.
    const all = scripted();
    expect(generate(all.ex, [[1, 2], [3]], { maxNewTokens: 10 }).map((o) => o.length)).toEqual([10, 10]);
    expect(all.steps).toHaveLength(10);
  });

  it("sampling parameters reach the sampler, each prompt with seed + 1000003 · its index", () => {
    const prompts = [[1, 2], [3], [6, 6]];
    const p = { temperature: 1, topK: 3, topP: 0.5, seed: 1 };
    const want = expected(prompts, p, 12);
    const { ex } = scripted();
    expect(generate(ex, prompts, { maxNewTokens: 12, ...p })).toEqual(want);
    // The test tells these apart: greedy, each parameter at its default, another seed per prompt.
    const differs = (q: SamplingParams, seedOf?: (i: number) => number) => {
      const other = seedOf
        ? prompts.map((pr, i) => expected([pr], { ...q, seed: seedOf(i) }, 12)[0])
        : expected(prompts, q, 12);
      expect(other).not.toEqual(want);
    };
    differs(GREEDY);
    differs({ ...p, temperature: 0 });
    differs({ ...p, topK: 0 });
    differs({ ...p, topP: 1 });
    differs({ ...p, seed: 0 });
    differs(p, (i) => p.seed - i * 1000003);
    differs(p, (i) => p.seed + i);
    differs(p, () => p.seed);
  });

  it("the defaults are temperature 0, top-k 0, top-p 1, seed 0 (sampling given only a temperature)", () => {
    const prompts = [[1, 2], [3]];
    const { ex } = scripted();
    const want = expected(prompts, { temperature: 1, topK: 0, topP: 1, seed: 0 }, 12);
    expect(generate(ex, prompts, { maxNewTokens: 12, temperature: 1 })).toEqual(want);
    expect(want).not.toEqual(expected(prompts, GREEDY, 12));
    // topK 1 is greedy whatever the temperature.
    const k1 = scripted();
    expect(generate(k1.ex, prompts, { maxNewTokens: 12, temperature: 1, topK: 1 })).toEqual(
      expected(prompts, GREEDY, 12),
    );
  });
});
