// The CPU StepBackend (src/serving/cpu-backend.ts) on its own, over a scripted executor that records what it is
// asked and answers with logits chosen by the test: the limits and info it states, what one step hands the
// executor (token copies, "last" / "none" logits rows), the tokens it samples (greedy, and seeded sampling at
// the position of the sequence's last token, worked out from sampling.ts's counter-based generator), the
// null-token rule (the token the previous step sampled, never an older or an unsampled one), its timings,
// and release / close. One case runs it over the real reference executor of tiny-llama against generate().
import { beforeAll, describe, expect, it } from "vitest";
import { openEngine } from "../../src/engine/reader.ts";
import { generate } from "../../src/executor/generate.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import type { SeqRequest } from "../../src/executor/types.ts";
import type { BackendSeq } from "../../src/serving/backend.ts";
import { CpuStepBackend } from "../../src/serving/cpu-backend.ts";
import type { SamplingOptions } from "../../src/serving/types.ts";
import { lowbias32 } from "../../src/weights/random.ts";
import { buildFixture } from "../fixtures.ts";

const GREEDY: SamplingOptions = { temperature: 0, topK: 0, topP: 1, seed: 0 };

/** A stand-in for ReferenceExecutor: records steps, releases and closes; row(seqId) is the logits it returns. */
class Scripted {
  readonly calls: SeqRequest[][] = [];
  readonly released: number[] = [];
  closed = 0;
  busyMs = 0;
  readonly engine = {
    config: { build: { tokens_per_block: 8, dtype: "fp16", kv_cache_dtype: "fp8" } },
  };
  constructor(
    readonly vocabSize: number,
    readonly limits = { max_batch_size: 3, max_num_tokens: 64, max_seq_len: 20 },
    private readonly row: (seqId: number, tokens: number[]) => Float32Array = (_, t) => oneHot(vocabSize, t),
  ) {}
  step(seqs: SeqRequest[]): Map<number, Float32Array[]> {
    this.calls.push(seqs.map((s) => ({ ...s, tokens: [...s.tokens] })));
    const t0 = performance.now();
    while (performance.now() - t0 < this.busyMs) {
      /* a step that takes busyMs */
    }
    return new Map(seqs.map((s) => [s.seqId, s.logits === "none" ? [] : [this.row(s.seqId, s.tokens)]]));
  }
  release(seqId: number): void {
    this.released.push(seqId);
  }
  close(): void {
    this.closed++;
  }
}

/** Logits whose argmax is (sum of the tokens + 1) mod V: the next token depends on what the step was given. */
function oneHot(V: number, tokens: number[]): Float32Array {
  const r = new Float32Array(V);
  r[(tokens.reduce((a, b) => a + b, 0) + 1) % V] = 5;
  return r;
}

const backendOver = (ex: Scripted, o?: { kvBlocks?: number }) =>
  new CpuStepBackend(ex as unknown as ReferenceExecutor, o);

const seq = (
  seqId: number,
  tokens: number[] | null,
  startPos: number,
  sample = true,
  sampling = GREEDY,
): BackendSeq => ({ seqId, tokens, startPos, sample, sampling });

/**
 * The token sampleToken draws from a row of equal logits at temperature 1 (no top-k / top-p): every token has
 * probability 1/V, so it is floor(u · V) for the generator's u in [0, 1) at (seed, position).
 */
const flatDraw = (seed: number, pos: number, V: number) =>
  Math.floor((lowbias32((lowbias32(seed >>> 0) ^ Math.imul(pos + 1, 0x9e3779b9)) >>> 0) / 2 ** 32) * V);

describe("CpuStepBackend limits and info", () => {
  it("states the executor's limits, tokens_per_block and a pool of max_batch_size · ceil(max_seq_len / tpb) blocks", () => {
    const ex = new Scripted(16);
    expect(backendOver(ex).limits).toEqual({
      maxBatchSize: 3,
      maxNumTokens: 64,
      maxSeqLen: 20,
      tokensPerBlock: 8,
      kvBlocksTotal: 9, // 3 sequences · ceil(20 / 8) = 3 blocks each
    });
    expect(
      backendOver(new Scripted(16, { max_batch_size: 5, max_num_tokens: 7, max_seq_len: 16 })).limits,
    ).toEqual({ maxBatchSize: 5, maxNumTokens: 7, maxSeqLen: 16, tokensPerBlock: 8, kvBlocksTotal: 10 });
  });

  it("a given kvBlocks replaces the computed pool, 0 included", () => {
    expect(backendOver(new Scripted(16), { kvBlocks: 5 }).limits.kvBlocksTotal).toBe(5);
    expect(backendOver(new Scripted(16), { kvBlocks: 0 }).limits.kvBlocksTotal).toBe(0);
    expect(backendOver(new Scripted(16), {}).limits.kvBlocksTotal).toBe(9);
  });

  it("info: cpu, the executor's name, the build's dtypes; vocabSize is the executor's", () => {
    const b = backendOver(new Scripted(16));
    expect(b.info).toEqual({
      device: "cpu",
      deviceName: "CPU reference executor",
      dtype: "fp16",
      kvDtype: "fp8",
    });
    expect(b.vocabSize).toBe(16);
  });
});

describe("CpuStepBackend.step", () => {
  it("hands the executor copies of the tokens, 'last' rows for sampled sequences and 'none' otherwise; -1 where not sampled", async () => {
    const ex = new Scripted(16);
    const b = backendOver(ex);
    const given = [3, 4];
    const out = await b.step([seq(0, given, 0), seq(1, [7, 1, 2], 0, false), seq(2, [9], 0)]);
    expect(ex.calls).toEqual([
      [
        { seqId: 0, tokens: [3, 4], logits: "last" },
        { seqId: 1, tokens: [7, 1, 2], logits: "none" },
        { seqId: 2, tokens: [9], logits: "last" },
      ],
    ]);
    // argmax of oneHot: (3 + 4 + 1) mod 16 = 8; (9 + 1) = 10.
    expect([...out.tokens]).toEqual([8, -1, 10]);
    expect(out.tokens).toBeInstanceOf(Int32Array);
    // The tokens handed on are copies, not the caller's array.
    expect(ex.calls[0][0].tokens).not.toBe(given);
  });

  it("a null-token sequence reads the token the previous step sampled for it", async () => {
    const ex = new Scripted(16);
    const b = backendOver(ex);
    const a = await b.step([seq(0, [1, 2], 0), seq(1, [5], 0)]);
    expect([...a.tokens]).toEqual([4, 6]);
    const c = await b.step([seq(1, null, 1), seq(0, null, 2)]);
    expect(ex.calls[1]).toEqual([
      { seqId: 1, tokens: [6], logits: "last" },
      { seqId: 0, tokens: [4], logits: "last" },
    ]);
    expect([...c.tokens]).toEqual([7, 5]);
    const d = await b.step([seq(0, null, 3)]);
    expect(ex.calls[2]).toEqual([{ seqId: 0, tokens: [5], logits: "last" }]);
    expect([...d.tokens]).toEqual([6]);
  });

  it("refuses a null-token sequence the previous step did not sample: never, not sampled, or only an older step", async () => {
    const msg = (id: number) => `sequence ${id} gives no token and the previous step sampled none for it`;
    const ex = new Scripted(16);
    const b = backendOver(ex);
    expect(() => b.step([seq(4, null, 0)])).toThrow(new Error(msg(4)));
    // Step 1 samples 0 and 1; step 2 runs 0 without sampling (a context chunk) and leaves 1 out.
    await b.step([seq(0, [1], 0), seq(1, [2], 0)]);
    await b.step([seq(0, [3, 3], 1, false)]);
    expect(() => b.step([seq(0, null, 3)])).toThrow(new Error(msg(0)));
    expect(() => b.step([seq(1, null, 1)])).toThrow(new Error(msg(1)));
    expect(ex.calls).toHaveLength(2); // the refused steps reached no executor
  });

  it("samples at the position of the sequence's last token (startPos + its tokens − 1), with its own options", async () => {
    const V = 64;
    const ex = new Scripted(V, undefined, () => new Float32Array(V)); // equal logits: the draw is the generator's
    const b = backendOver(ex);
    const hot = (seed: number): SamplingOptions => ({ temperature: 1, topK: 0, topP: 1, seed });
    // Positions of the last tokens: 5 + 3 − 1 = 7, 0 + 1 − 1 = 0, 11 + 1 − 1 = 11; seeds 7, 7, 99.
    const out = await b.step([
      seq(0, [1, 2, 3], 5, true, hot(7)),
      seq(1, [4], 0, true, hot(7)),
      seq(2, [5], 11, true, hot(99)),
      seq(3, [6], 9, true, GREEDY), // greedy on equal logits: token 0
    ]);
    const want = [flatDraw(7, 7, V), flatDraw(7, 0, V), flatDraw(99, 11, V), 0];
    expect([...out.tokens]).toEqual(want);
    // The case tells the positions apart: one position earlier or later draws other tokens.
    expect([flatDraw(7, 6, V), flatDraw(7, 8, V)]).not.toContain(want[0]);
    expect(flatDraw(7, 1, V)).not.toBe(want[1]);
    expect([flatDraw(99, 10, V), flatDraw(99, 12, V)]).not.toContain(want[2]);
  });

  it("resolves on a later event-loop turn with the step's time and the gap since the previous step ended", async () => {
    const ex = new Scripted(16);
    ex.busyMs = 15;
    const b = backendOver(ex);
    let resolved = false;
    const t0 = performance.now();
    const p = b.step([seq(0, [1], 0)]).then((o) => {
      resolved = true;
      return o;
    });
    await Promise.resolve();
    expect(resolved).toBe(false); // not in this turn's microtasks
    const first = await p;
    const t1 = performance.now();
    expect(first.gapMs).toBe(0); // no previous step
    expect(first.stepMs).toBeGreaterThanOrEqual(15);
    expect(first.stepMs).toBeLessThanOrEqual(t1 - t0);
    await new Promise((r) => setTimeout(r, 30));
    ex.busyMs = 0;
    const t2 = performance.now();
    const second = await b.step([seq(0, null, 1)]);
    const t3 = performance.now();
    // The gap runs from the first step's end (before t1) to the second's start (after t2).
    expect(second.gapMs).toBeGreaterThanOrEqual(t2 - t1);
    expect(second.gapMs).toBeLessThanOrEqual(t3 - t0);
    expect(second.gapMs).toBeGreaterThanOrEqual(25);
    expect(second.stepMs).toBeGreaterThanOrEqual(0);
    expect(second.stepMs).toBeLessThanOrEqual(t3 - t2);
  });

  it("release and close go to the executor", () => {
    const ex = new Scripted(16);
    const b = backendOver(ex);
    b.release(7);
    b.release(2);
    expect(ex.released).toEqual([7, 2]);
    expect(ex.closed).toBe(0);
    b.close();
    expect(ex.closed).toBe(1);
  });
});

describe("CpuStepBackend over tiny-llama's reference executor", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await buildFixture("llama", {
      maxSeqLen: 64,
      maxNumTokens: 64,
      maxBatchSize: 4,
      tokensPerBlock: 16,
    });
  });

  it("a prompt in two chunks then null-token decode steps gives generate()'s greedy tokens; release frees the cache", async () => {
    const prompt = [1, 15, 200, 33, 7, 480, 2, 90, 11];
    const ref = ReferenceExecutor.load(dir);
    const want = generate(ref, [prompt], { maxNewTokens: 5, eosTokenIds: [] })[0];
    ref.close();

    const b = new CpuStepBackend(new ReferenceExecutor(openEngine(dir)));
    expect(b.limits).toMatchObject({ maxBatchSize: 4, maxSeqLen: 64, tokensPerBlock: 16, kvBlocksTotal: 16 });
    const run = async () => {
      const got: number[] = [];
      expect([...(await b.step([seq(5, prompt.slice(0, 4), 0, false)])).tokens]).toEqual([-1]);
      got.push((await b.step([seq(5, prompt.slice(4), 4)])).tokens[0]);
      for (let k = 1; k < 5; k++) got.push((await b.step([seq(5, null, prompt.length + k - 1)])).tokens[0]);
      return got;
    };
    expect(await run()).toEqual(want);
    // After release the sequence starts again from position 0 and computes the same tokens.
    b.release(5);
    expect(await run()).toEqual(want);
    b.close();
  });
});
