// The batch manager's step loop (src/serving/batch-manager.ts: plan, launch, complete, loop, finish, warmup,
// shutdown) over a backend that behaves like a model: the token it samples is a hash of the whole sequence it has
// cached (prompt, then every token fed back), so a request gets the tokens it gets alone (one token at a time,
// `alone` below) only if every step feeds it the right tokens at the right positions, feeds the pipelined token
// (tokens null) only right after the step that sampled it, samples only where the whole known sequence is cached,
// and drops nothing it should keep. Each schedule with exact steps below is worked out by hand from the planner's
// definition (the file's header comment); the random workloads compare with `alone` only. Added in session 33 for
// the parts of the file that mutation testing had not measured (docs/mutation.md).
import { performance } from "node:perf_hooks";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { BackendSeq, StepBackend, StepOutput } from "../../src/serving/backend.ts";
import { InflightBatchManager, type StepRecord, warmupBatchSizes } from "../../src/serving/batch-manager.ts";
import {
  type BatchLimits,
  type GenerationRequest,
  type RequestHandle,
  RequestRejectedError,
  type SamplingOptions,
  type SchedulerPolicy,
} from "../../src/serving/types.ts";
import { FUZZ_SEED } from "../fuzz/harness.ts";

const VOCAB = 64;

/** The token a sequence samples next: a hash of all its tokens (never 62 or 63, kept for tests' end ids). */
function next(seq: readonly number[]): number {
  let h = 17;
  for (const t of seq) h = (h * 131 + t + 7) % 1000003;
  return h % 62;
}

/** What a request generates alone, one token at a time: the reference every batched run must equal. */
function alone(prompt: readonly number[], maxNew: number, ends: ReadonlySet<number> = new Set()) {
  const seq = [...prompt];
  const out: number[] = [];
  while (out.length < maxNew) {
    const t = next(seq);
    out.push(t);
    if (ends.has(t)) break;
    seq.push(t);
  }
  return out;
}

/** launch: throws before computing anything (nothing cached or sampled), as a failed launch on the CPU or GPU. */
type Fail = "reject" | "throw" | "string" | "launch";

/**
 * A step backend that computes like a model (next() of the cached sequence) and checks the scheduler's contract,
 * writing each breach down: at most max_batch_size sequences and max_num_tokens tokens, no sequence twice, decode
 * tokens (one-token sequences) before context chunks, startPos = the sequence's cached length, a null token only
 * right after a step that sampled for that sequence, the cached sequences within the KV pool, close() only with no
 * step running. Once a step failed at launch, a step that continues one of its sequences (a token nothing sampled, a
 * position past the cache) is refused whole instead, as the CPU and CUDA backends refuse it. Steps resolve in call
 * order: on the next macrotask ("immediate"), after a timer (ms), or when the test calls resolveNext() ("manual").
 */
class ModelBackend implements StepBackend {
  readonly vocabSize = VOCAB;
  readonly info = { device: "cpu" as const, deviceName: "model-like", dtype: "f32", kvDtype: "f32" };
  readonly steps: BackendSeq[][] = [];
  readonly releases: number[] = [];
  readonly breaches: string[] = [];
  readonly fail = new Map<number, Fail>();
  peakBlocks = 0;
  inFlight = 0;
  maxInFlight = 0;
  closed = 0;
  private cache = new Map<number, number[]>();
  /** The token a sequence's last step sampled, not yet fed back. */
  private sampled = new Map<number, number>();
  private held: (() => void)[] = [];
  private launchFailed = false;
  constructor(
    readonly limits: BatchLimits,
    private readonly mode: "immediate" | "manual" | number = "immediate",
    private readonly times: (k: number) => { stepMs: number; gapMs: number } = () => ({
      stepMs: 1,
      gapMs: 0,
    }),
  ) {}
  step(seqs: readonly BackendSeq[]): Promise<StepOutput> {
    const k = this.steps.length;
    this.steps.push(seqs.map((s) => ({ ...s })));
    const bad = (what: string) => this.breaches.push(`step ${k}: ${what}`);
    const L = this.limits;
    const n = (s: BackendSeq) => s.tokens?.length ?? 1;
    if (seqs.length > L.maxBatchSize) bad(`${seqs.length} sequences`);
    const total = seqs.reduce((a, s) => a + n(s), 0);
    if (total > L.maxNumTokens) bad(`${total} tokens`);
    if (new Set(seqs.map((s) => s.seqId)).size !== seqs.length) bad("a sequence twice");
    const chunk = seqs.findIndex((s) => n(s) > 1);
    if (chunk >= 0 && seqs.slice(chunk).some((s) => n(s) === 1)) bad("a decode token after a context chunk");
    const f = this.fail.get(k);
    if (f === "launch") {
      this.launchFailed = true;
      throw new Error(`step ${k} failed at launch (test)`);
    }
    const orphan = seqs.find(
      (s) =>
        (s.tokens === null && !this.sampled.has(s.seqId)) ||
        s.startPos > (this.cache.get(s.seqId)?.length ?? 0),
    );
    if (orphan && this.launchFailed)
      throw new Error(`step ${k}: ${orphan.seqId} continues a failed step (test)`);
    const out = new Int32Array(seqs.length).fill(-1);
    seqs.forEach((s, i) => {
      const seq = this.cache.get(s.seqId) ?? [];
      if (s.startPos !== seq.length) bad(`${s.seqId} at ${s.startPos}, cache ${seq.length}`);
      let toks: readonly number[];
      if (s.tokens === null) {
        const t = this.sampled.get(s.seqId);
        if (t === undefined) bad(`${s.seqId}: a null token with nothing sampled`);
        toks = [t ?? -1];
      } else toks = s.tokens;
      if (toks.length < 1) bad(`${s.seqId}: no tokens`);
      this.sampled.delete(s.seqId);
      seq.push(...toks);
      this.cache.set(s.seqId, seq);
      if (s.sample) {
        out[i] = next(seq);
        this.sampled.set(s.seqId, out[i]);
      }
    });
    const blocks = [...this.cache.values()].reduce((a, s) => a + Math.ceil(s.length / L.tokensPerBlock), 0);
    if (blocks > L.kvBlocksTotal) bad(`${blocks} KV blocks`);
    this.peakBlocks = Math.max(this.peakBlocks, blocks);
    if (f === "throw") throw new Error(`step ${k} threw (test)`);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    return new Promise<StepOutput>((res, rej) => {
      const done = () => {
        this.inFlight--;
        if (f === "reject") rej(new Error(`step ${k} failed (test)`));
        else if (f === "string") rej(`step ${k} failed as a string`);
        else res({ tokens: out, ...this.times(k) });
      };
      if (this.mode === "manual") this.held.push(done);
      else if (this.mode === "immediate") setImmediate(done);
      else setTimeout(done, this.mode);
    });
  }
  /** Resolves the oldest step held (manual mode); false when none is. */
  resolveNext(): boolean {
    const d = this.held.shift();
    d?.();
    return d !== undefined;
  }
  release(seqId: number): void {
    this.releases.push(seqId);
    this.cache.delete(seqId);
    this.sampled.delete(seqId);
  }
  close(): void {
    if (this.inFlight > 0) this.breaches.push(`closed with ${this.inFlight} steps running`);
    this.closed++;
  }
  /** Each step as "id:tokens" entries, "id:null" for a pipelined token. */
  plan(): string[][] {
    return this.steps.map((ss) =>
      ss.map((s) => `${s.seqId}:${s.tokens === null ? "null" : s.tokens.length}`),
    );
  }
}

const limits = (o: Partial<BatchLimits> = {}): BatchLimits => ({
  maxBatchSize: 8,
  maxNumTokens: 64,
  maxSeqLen: 48,
  tokensPerBlock: 4,
  kvBlocksTotal: 16,
  ...o,
});

function manager(
  o: {
    policy?: SchedulerPolicy;
    overlap?: boolean;
    eos?: number[];
    mode?: "immediate" | "manual" | number;
    times?: (k: number) => { stepMs: number; gapMs: number };
  } & Partial<BatchLimits> = {},
) {
  const backend = new ModelBackend(limits(o), o.mode, o.times);
  const bm = new InflightBatchManager(backend, {
    policy: o.policy ?? "guaranteed_no_evict",
    overlap: o.overlap ?? false,
    eosTokenIds: o.eos ?? [63],
  });
  const records: StepRecord[] = [];
  bm.onStep = (s) => records.push(s);
  return { backend, bm, records };
}

const prompt = (p: number, first = 1) => Array.from({ length: p }, (_, k) => (first + 3 * k) % VOCAB);
const req = (p: number, maxNewTokens: number, first = 1): GenerationRequest => ({
  promptIds: prompt(p, first),
  maxNewTokens,
});
const tick = () => new Promise((res) => setImmediate(res));

/** Resolves a manual backend's steps one by one until p settles. */
async function drive<T>(backend: ModelBackend, p: Promise<T>): Promise<T> {
  let settled = false;
  p.then(
    () => {
      settled = true;
    },
    () => {
      settled = true;
    },
  );
  while (!settled) {
    backend.resolveNext();
    await tick();
  }
  return p;
}

describe("in-flight tokens equal each request alone", { timeout: 20000 }, () => {
  it("random workloads, both policies, with and without overlap: tokens, finish reasons, counters, contract", async () => {
    const seen = { preempted: 0, stops: 0, cancelled: 0, pipelined: 0, chunks: 0, heldTokens: 0 };
    for (const policy of ["guaranteed_no_evict", "max_utilization"] as const)
      for (const overlap of [false, true])
        for (let seed = 1; seed <= 12; seed++) {
          const what = `${policy} overlap ${overlap} seed ${seed}`;
          let s = seed * 7919 + (overlap ? 1 : 0);
          const rnd = (k: number) => {
            s = (Math.imul(s, 1103515245) + 12345) >>> 0;
            return (s >>> 8) % k;
          };
          // 8 blocks of 4 tokens, steps of 8 tokens: prompts are read in chunks and max_utilization pauses.
          const { backend, bm, records } = manager({
            policy,
            overlap,
            kvBlocksTotal: 8,
            maxNumTokens: 8,
            maxBatchSize: 4,
            eos: [61],
          });
          const rq = Array.from({ length: 7 }, (_, i): GenerationRequest => {
            const r: GenerationRequest = { ...req(1 + rnd(12), 1 + rnd(14), 1 + 9 * i) };
            const ref = alone(r.promptIds, r.maxNewTokens);
            const k = rnd(4);
            if (k === 0 && ref.length > 2) r.stopTokenIds = [ref[rnd(ref.length)]];
            if (k === 1) r.endIds = [ref[rnd(ref.length)]];
            if (k === 2) r.ignoreEos = true;
            return r;
          });
          const ends = rq.map(
            (r) =>
              new Set([...(r.ignoreEos ? [] : (r.endIds ?? [61])), ...(r.stopTokenIds ?? [])]) as Set<number>,
          );
          const cancelAt = rnd(10);
          const lateAt = 1 + rnd(6);
          const hs: ReturnType<InflightBatchManager["submit"]>[] = [];
          for (const r of rq.slice(0, 4)) hs.push(bm.submit(r));
          const late = () => {
            if (hs.length === 4) for (const r of rq.slice(4)) hs.push(bm.submit(r));
          };
          let k = 0;
          bm.onStep = (st) => {
            records.push(st);
            if (++k === lateAt) late();
            if (k === cancelAt) hs[1].cancel();
          };
          // (Or once the first four are done, should they need fewer steps.)
          while (hs.length < rq.length) {
            await tick();
            if (bm.stats().running + bm.stats().queued === 0) late();
          }
          const rs = await Promise.all(hs.map((h) => h.done));
          rs.forEach((r, i) => {
            const ref = alone(rq[i].promptIds, rq[i].maxNewTokens, ends[i]);
            if (r.finishReason === "cancelled") {
              expect(i, what).toBe(1);
              expect(r.outputIds, `${what} request ${i}`).toEqual(ref.slice(0, r.outputIds.length));
              seen.cancelled++;
            } else {
              expect(r.outputIds, `${what} request ${i}`).toEqual(ref);
              const last = ref.at(-1)!;
              const stop = ends[i].has(last);
              expect([r.finishReason, r.stopTokenId], `${what} request ${i}`).toEqual(
                stop ? ["stop", last] : ["length", undefined],
              );
              if (stop) seen.stops++;
            }
            expect(r.timings.tokenTimesMs.length, what).toBe(r.outputIds.length);
            if (policy === "guaranteed_no_evict") expect(r.preemptions, what).toBe(0);
          });
          // (A step launched ahead for a request that stopped may still be running: its record comes after.)
          await bm.shutdown();
          expect(backend.breaches, what).toEqual([]);
          // Steps in flight at once: 2 with overlap (one running, the next planned behind it), else 1.
          expect(backend.maxInFlight, what).toBe(overlap ? 2 : 1);
          const st = bm.stats();
          const fed = backend.steps.flat().reduce((a, q) => a + (q.tokens?.length ?? 1), 0);
          const decode = records.reduce((a, r) => a + r.decode, 0);
          expect(
            [st.steps, st.tokensGenerated, st.promptTokensComputed + decode, st.requestsFinished],
            what,
          ).toEqual([backend.steps.length, rs.reduce((a, r) => a + r.outputIds.length, 0), fed, rq.length]);
          expect(
            records.map((r) => [r.seqs, r.tokens]),
            what,
          ).toEqual(
            backend.steps.map((ss) => [ss.length, ss.reduce((a, q) => a + (q.tokens?.length ?? 1), 0)]),
          );
          expect(st.preemptions, what).toBe(rs.reduce((a, r) => a + r.preemptions, 0));
          // Without pauses every token fed is a prompt token (read in chunks) or a decode token (at or past the prompt's end).
          if (st.preemptions === 0) {
            const plen = new Map(hs.map((h, i) => [h.id, rq[i].promptIds.length]));
            const entries = backend.steps.flat();
            const inPrompt = entries.filter((q) => q.startPos < plen.get(q.seqId)!);
            expect([st.promptTokensComputed, decode], what).toEqual([
              inPrompt.reduce((a, q) => a + (q.tokens?.length ?? 1), 0),
              entries.length - inPrompt.length,
            ]);
          }
          // Nothing waited without a reason, no reason without waiting; a step held by the budget used all of it.
          for (const r of records) {
            expect(r.heldBy === null, what).toBe(r.waiting === 0);
            if (r.heldBy === "max_num_tokens") {
              expect(r.tokens, what).toBe(8);
              seen.heldTokens++;
            }
          }
          expect(st.kvBlocksPeakUsed, what).toBe(backend.peakBlocks);
          expect([st.kvBlocksFree, st.running, st.queued, st.paused], what).toEqual([8, 0, 0, 0]);
          seen.preempted += st.preemptions;
          seen.pipelined += backend.steps.flat().filter((q) => q.tokens === null).length;
          seen.chunks += backend.steps.flat().filter((q) => !q.sample).length;
        }
    // The workloads reach what they are meant to: pauses, stops, a cancel, pipelined tokens, chunked prompts.
    for (const [k, v] of Object.entries(seen)) expect(v, k).toBeGreaterThan(0);
  });
});

describe("the steps planned", { timeout: 10000 }, () => {
  it("with overlap the next step is launched while one runs and feeds the token it samples on the device", async () => {
    // Prompt 3, 3 new tokens: the context step, then two decode steps, each launched before the one before it is
    // back (its token null: the one that step samples). Without overlap the same steps, one at a time, the token
    // fed from the host.
    for (const overlap of [true, false]) {
      const { backend, bm, records } = manager({ overlap });
      const r = await bm.submit({ ...req(3, 3), ignoreEos: true }).done;
      await bm.shutdown();
      expect(r.outputIds).toEqual(alone(prompt(3), 3));
      const t = overlap ? "null" : "1";
      expect(backend.plan(), `overlap ${overlap}`).toEqual([["1:3"], [`1:${t}`], [`1:${t}`]]);
      expect(backend.steps.map((ss) => ss.map((q) => [q.startPos, q.sample]))).toEqual([
        [[0, true]],
        [[3, true]],
        [[4, true]],
      ]);
      if (!overlap) expect(backend.steps[2][0].tokens).toEqual([r.outputIds[1]]);
      expect(backend.maxInFlight, `overlap ${overlap}`).toBe(overlap ? 2 : 1);
      expect(records.map((s) => [s.seqs, s.tokens, s.decode])).toEqual([
        [1, 3, 0],
        [1, 1, 1],
        [1, 1, 1],
      ]);
      expect([bm.stats().promptTokensComputed, bm.stats().tokensGenerated, bm.stats().steps]).toEqual([
        3, 3, 3,
      ]);
    }
  });

  it("with overlap a request that stops drops what the step launched ahead computed for it", async () => {
    // Steps 0 and 1 (A's context and first pipelined token) are launched at A's submit, B (prompt 2, 4 new tokens)
    // joins step 2, launched while step 1 runs. A stops at its 2nd token (a stop id, sampled by step 1): what step 2
    // computed for it is dropped, not streamed, not counted. B goes on alone.
    const ref = alone(prompt(3), 10);
    const { backend, bm, records } = manager({ overlap: true });
    const a = bm.submit({ ...req(3, 10), stopTokenIds: [ref[1]] });
    const b = bm.submit({ ...req(2, 4, 30), ignoreEos: true });
    const events: number[] = [];
    for await (const e of a) events.push(e.tokenId);
    const [ra, rb] = await Promise.all([a.done, b.done]);
    await bm.shutdown();
    expect(ref.indexOf(ref[1])).toBe(1);
    expect([ra.outputIds, ra.finishReason, ra.stopTokenId, events]).toEqual([
      ref.slice(0, 2),
      "stop",
      ref[1],
      ref.slice(0, 2),
    ]);
    expect(rb.outputIds).toEqual(alone(prompt(2, 30), 4));
    expect(backend.plan()).toEqual([
      ["1:3"],
      ["1:null"],
      ["1:null", "2:2"],
      ["2:null"],
      ["2:null"],
      ["2:null"],
    ]);
    expect(ra.timings.tokenTimesMs.length).toBe(2);
    expect(bm.stats().tokensGenerated).toBe(6);
    expect(records.map((s) => s.decode)).toEqual([0, 1, 1, 1, 1, 1]);
    expect(backend.releases).toEqual([1, 2]);
    expect(backend.breaches).toEqual([]);
  });

  it("a long prompt is read in chunks of what is left of the budget while the others decode; only its last chunk samples", async () => {
    // max_num_tokens 4. Step 0: A's context (2). Step 1: A's decode token, B (prompt 9) gets the 3 tokens left;
    // steps 2, 3: 3 more each, the last samples B's first token; step 4: both decode; step 5: A's 6th token.
    const { backend, bm, records } = manager({ maxNumTokens: 4 });
    const hs = [
      bm.submit({ ...req(2, 6), ignoreEos: true }),
      bm.submit({ ...req(9, 2, 20), ignoreEos: true }),
    ];
    const rs = await Promise.all(hs.map((h) => h.done));
    await bm.shutdown();
    expect(rs.map((r) => r.outputIds)).toEqual([alone(prompt(2), 6), alone(prompt(9, 20), 2)]);
    expect(backend.plan()).toEqual([
      ["1:2"],
      ["1:1", "2:3"],
      ["1:1", "2:3"],
      ["1:1", "2:3"],
      ["1:1", "2:1"],
      ["1:1"],
    ]);
    const bSeqs = backend.steps.flat().filter((q) => q.seqId === 2);
    expect(bSeqs.map((q) => [q.startPos, q.sample, q.tokens])).toEqual([
      [0, false, prompt(9, 20).slice(0, 3)],
      [3, false, prompt(9, 20).slice(3, 6)],
      [6, true, prompt(9, 20).slice(6, 9)],
      [9, true, [rs[1].outputIds[0]]],
    ]);
    expect(records.map((s) => [s.seqs, s.tokens, s.decode])).toEqual([
      [1, 2, 0],
      [2, 4, 1],
      [2, 4, 1],
      [2, 4, 1],
      [2, 2, 2],
      [1, 1, 1],
    ]);
    expect([bm.stats().promptTokensComputed, bm.stats().tokensGenerated]).toEqual([11, 8]);
  });

  it("a one-token prompt's step reads context, it decodes nothing", async () => {
    const { bm, records } = manager();
    const r = await bm.submit({ promptIds: [5], maxNewTokens: 2, ignoreEos: true }).done;
    await bm.shutdown();
    expect(r.outputIds).toEqual(alone([5], 2));
    expect(records.map((s) => [s.tokens, s.decode])).toEqual([
      [1, 0],
      [1, 1],
    ]);
    expect(bm.stats().promptTokensComputed).toBe(1);
  });

  it("max_utilization: a context chunk shrinks to the blocks left, then its request is paused and recomputed", async () => {
    // 4 blocks of 4 tokens, max_num_tokens 4. A: prompt 2, 10 new tokens (3 blocks at most); B: prompt 12, 1 new.
    // Step 1: B admitted (its 12 tokens fit the 3 free blocks), reads 3; step 2: 3 more (2 blocks); step 3: A's
    // 5th token takes the last block, B's chunk shrinks to the 2 tokens its 2 blocks still hold; step 4: no block
    // for B's next chunk: B, the newest, is paused (its 12 tokens need 3 blocks, 2 are free) until A is done
    // (step 9), then recomputed from position 0 in chunks of 4, the last sampling its token.
    const { backend, bm, records } = manager({
      policy: "max_utilization",
      kvBlocksTotal: 4,
      maxNumTokens: 4,
    });
    const hs = [
      bm.submit({ ...req(2, 10), ignoreEos: true }),
      bm.submit({ ...req(12, 1, 20), ignoreEos: true }),
    ];
    const rs = await Promise.all(hs.map((h) => h.done));
    await bm.shutdown();
    expect(rs.map((r) => [r.outputIds, r.preemptions])).toEqual([
      [alone(prompt(2), 10), 0],
      [alone(prompt(12, 20), 1), 1],
    ]);
    expect(backend.plan()).toEqual([
      ["1:2"],
      ["1:1", "2:3"],
      ["1:1", "2:3"],
      ["1:1", "2:2"],
      ...Array(6).fill(["1:1"]),
      ["2:4"],
      ["2:4"],
      ["2:4"],
    ]);
    const bSeqs = backend.steps.flat().filter((q) => q.seqId === 2);
    expect(bSeqs.map((q) => [q.startPos, q.sample])).toEqual([
      [0, false],
      [3, false],
      [6, false],
      [0, false],
      [4, false],
      [8, true],
    ]);
    expect(records.map((s) => s.heldBy)).toEqual([
      null,
      null,
      null,
      null,
      ...Array(6).fill("kv_cache"),
      null,
      null,
      null,
    ]);
    expect(backend.releases).toEqual([2, 1, 2]);
    expect(backend.breaches).toEqual([]);
    expect([bm.stats().preemptions, bm.stats().kvBlocksPeakUsed, bm.stats().kvBlocksFree]).toEqual([1, 4, 4]);
  });

  it("max_utilization: a chunk shrinks to the blocks free beside its own, then to none: paused", async () => {
    // 8 blocks of 2 tokens, max_num_tokens 5. A: prompt 2, 12 new tokens (7 blocks at most); B: prompt 12, 1 new.
    // Step 1: B admitted (6 blocks for its 12 tokens, 6 free), reads 4 (2 blocks); step 2: 4 more (4 blocks); step
    // 3: A's 5th token takes a 3rd block, 1 is free: B's chunk of 4 (2 more blocks) shrinks to the 2 tokens that its
    // 4 blocks and the free one hold; step 4: A's 6th token fits its 3 blocks, no block is free: B is paused (its
    // 12 tokens need 6 blocks, 5 are free) until A is done (step 11), then recomputed in chunks of 5, 5 and 2.
    const { backend, bm, records } = manager({
      policy: "max_utilization",
      kvBlocksTotal: 8,
      tokensPerBlock: 2,
      maxNumTokens: 5,
    });
    const hs = [
      bm.submit({ ...req(2, 12), ignoreEos: true }),
      bm.submit({ ...req(12, 1, 20), ignoreEos: true }),
    ];
    const rs = await Promise.all(hs.map((h) => h.done));
    await bm.shutdown();
    expect(rs.map((r) => [r.outputIds, r.preemptions])).toEqual([
      [alone(prompt(2), 12), 0],
      [alone(prompt(12, 20), 1), 1],
    ]);
    expect(backend.plan()).toEqual([
      ["1:2"],
      ["1:1", "2:4"],
      ["1:1", "2:4"],
      ["1:1", "2:2"],
      ...Array(8).fill(["1:1"]),
      ["2:5"],
      ["2:5"],
      ["2:2"],
    ]);
    expect(
      backend.steps
        .flat()
        .filter((q) => q.seqId === 2)
        .map((q) => [q.startPos, q.sample]),
    ).toEqual([
      [0, false],
      [4, false],
      [8, false],
      [0, false],
      [5, false],
      [10, true],
    ]);
    expect(records.map((s) => s.heldBy)).toEqual([
      ...Array(4).fill(null),
      ...Array(8).fill("kv_cache"),
      ...Array(3).fill(null),
    ]);
    expect(backend.releases).toEqual([2, 1, 2]);
    expect(backend.breaches).toEqual([]);
    expect([bm.stats().preemptions, bm.stats().kvBlocksPeakUsed, bm.stats().kvBlocksFree]).toEqual([1, 8, 8]);
  });

  it("max_utilization with overlap: the newest request waits for a block while nothing else is planned, unpaused", async () => {
    // 3 blocks of 4 tokens. A: prompt 4, 3 new tokens; steps 0 and 1 (its context, a pipelined token) are launched
    // at its submit. B (prompt 4, 3 new) joins step 2 in A's last free block. When step 3 is planned A's last token
    // is being sampled (nothing to plan for it) and B's first decode token needs a block, none free: B is not paused
    // (pausing it would free nothing that anything planned needs); no step is launched until step 2 is back, A is
    // done, and B goes on, its token fed from the host.
    const { backend, bm } = manager({ policy: "max_utilization", overlap: true, kvBlocksTotal: 3 });
    const hs = [
      bm.submit({ ...req(4, 3), ignoreEos: true }),
      bm.submit({ ...req(4, 3, 20), ignoreEos: true }),
    ];
    const rs = await Promise.all(hs.map((h) => h.done));
    await bm.shutdown();
    expect(rs.map((r) => [r.outputIds, r.preemptions])).toEqual([
      [alone(prompt(4), 3), 0],
      [alone(prompt(4, 20), 3), 0],
    ]);
    expect(backend.plan()).toEqual([["1:4"], ["1:null"], ["1:null", "2:4"], ["2:1"], ["2:null"]]);
    expect([bm.stats().preemptions, bm.stats().kvBlocksPeakUsed]).toEqual([0, 3]);
    expect(backend.releases).toEqual([1, 2]);
    expect(backend.breaches).toEqual([]);
  });

  it("max_utilization with overlap: a request whose last token is being sampled is not paused for an older one's block", async () => {
    // 2 blocks of 4 tokens. A: prompt 1, 7 new tokens; B: prompt 1, 2 new, joins step 2. When step 4 is planned, B's
    // last token is being sampled by step 3 and A's decode token at position 4 needs a second block, none free.
    // Before, B was paused: the token step 3 sampled for it was dropped, and it waited for A to finish to recompute
    // its context for that one token (preempted once, done 4 steps late). B frees its block once step 3 is back, so
    // A waits for that instead, one step, and B finishes there.
    const { backend, bm } = manager({ policy: "max_utilization", overlap: true, kvBlocksTotal: 2 });
    const hs = [
      bm.submit({ ...req(1, 7), ignoreEos: true }),
      bm.submit({ ...req(1, 2, 20), ignoreEos: true }),
    ];
    const rs = await Promise.all(hs.map((h) => h.done));
    await bm.shutdown();
    expect(rs.map((r) => [r.outputIds, r.preemptions])).toEqual([
      [alone(prompt(1), 7), 0],
      [alone(prompt(1, 20), 2), 0],
    ]);
    expect(backend.plan()).toEqual([
      ["1:1"],
      ["1:null"],
      ["1:null", "2:1"],
      ["1:null", "2:null"],
      ["1:1"],
      ["1:null"],
      ["1:null"],
    ]);
    expect([bm.stats().preemptions, bm.stats().kvBlocksPeakUsed, bm.stats().kvBlocksFree]).toEqual([0, 2, 2]);
    expect(backend.releases).toEqual([2, 1]);
    expect(backend.breaches).toEqual([]);
  });

  it("each sequence carries its request's id and sampling options (the defaults where it gives none)", async () => {
    const { backend, bm } = manager();
    const sampling: Partial<SamplingOptions> = { temperature: 0.7, topK: 5 };
    await Promise.all([
      bm.submit({ ...req(2, 2), sampling }).done,
      bm.submit({ ...req(3, 1, 9), sampling: { seed: 4, topP: 0.5 } }).done,
    ]);
    await bm.shutdown();
    expect(backend.steps.flat().map((q) => [q.seqId, q.sampling])).toEqual([
      [1, { temperature: 0.7, topK: 5, topP: 1, seed: 0 }],
      [1, { temperature: 0.7, topK: 5, topP: 1, seed: 0 }],
      [2, { temperature: 0, topK: 0, topP: 0.5, seed: 4 }],
    ]);
  });

  it("a sampling option given as undefined takes its default, as one left out does", async () => {
    // Partial<SamplingOptions> allows { temperature: undefined } (a caller passing its own optional setting on);
    // spreading it over the defaults refused the request as "sampling options out of range".
    const { backend, bm } = manager();
    const r = await bm.submit({
      ...req(2, 1),
      sampling: { temperature: undefined, topK: undefined, topP: undefined, seed: 4 },
    }).done;
    await bm.shutdown();
    expect([r.finishReason, r.outputIds]).toEqual(["length", alone(prompt(2), 1)]);
    expect(backend.steps.flat().map((q) => q.sampling)).toEqual([
      { temperature: 0, topK: 0, topP: 1, seed: 4 },
    ]);
  });

  it("a cancelled running request leaves the queue as it was: the queued ones run in order", async () => {
    // Batch of 1: A runs, B and C wait. A cancelled mid-run: B, then C, each its own tokens.
    const { backend, bm } = manager({ maxBatchSize: 1 });
    const hs = [bm.submit(req(2, 5)), bm.submit(req(2, 2, 20)), bm.submit(req(3, 2, 40))];
    let n = 0;
    bm.onStep = () => {
      if (++n === 2) hs[0].cancel();
    };
    const rs = await Promise.all(hs.map((h) => h.done));
    await bm.shutdown();
    expect(rs.map((r) => [r.outputIds, r.finishReason])).toEqual([
      [alone(prompt(2), 2), "cancelled"],
      [alone(prompt(2, 20), 2), "length"],
      [alone(prompt(3, 40), 2), "length"],
    ]);
    expect(backend.plan()).toEqual([["1:2"], ["1:1"], ["2:2"], ["2:1"], ["3:3"], ["3:1"]]);
  });
});

describe("what each step reports", { timeout: 10000 }, () => {
  it("the backend's step time; its device gap except for the first step after idling; the time to results back", async () => {
    // The backend says step k took 3 + k ms after a gap of 7 ms: the first step of a run (the device was idle, not
    // waiting for this host) reports no gap, as does the first step after the manager idled again.
    const { bm, records } = manager({ mode: 5, times: (k) => ({ stepMs: 3 + k, gapMs: 7 }) });
    const t0 = performance.now();
    await bm.submit({ ...req(2, 3), ignoreEos: true }).done;
    const mid = performance.now();
    await tick();
    await bm.submit({ ...req(2, 2), ignoreEos: true }).done;
    const elapsed = performance.now() - t0;
    await bm.shutdown();
    expect(records.map((s) => [s.stepMs, s.gapMs])).toEqual([
      [3, 0],
      [4, 7],
      [5, 7],
      [6, 0],
      [7, 7],
    ]);
    // Each step took the backend's 5 ms timer at least, and lies within the run.
    for (const s of records) expect(s.ms).toBeGreaterThanOrEqual(4);
    for (const s of records.slice(0, 3)) expect(s.ms).toBeLessThanOrEqual(mid - t0);
    expect(records.reduce((a, s) => a + s.ms, 0)).toBeLessThanOrEqual(elapsed);
  });

  it("timings: queue time until admission, each token's time, the stream's events match the result", async () => {
    // Batch of 1, steps of 5 ms: B waits for A's 3 steps.
    const { bm } = manager({ maxBatchSize: 1, mode: 5 });
    const t0 = performance.now();
    const hs = [
      bm.submit({ ...req(2, 3), ignoreEos: true }),
      bm.submit({ ...req(2, 2, 30), ignoreEos: true }),
    ];
    const events = await Promise.all(
      hs.map(async (h) => {
        const ev: { tokenId: number; index: number; timeMs: number }[] = [];
        for await (const e of h) ev.push(e);
        return ev;
      }),
    );
    const rs = await Promise.all(hs.map((h) => h.done));
    const elapsed = performance.now() - t0;
    await bm.shutdown();
    rs.forEach((r, i) => {
      const t = r.timings;
      expect(events[i]).toEqual(
        r.outputIds.map((tokenId, index) => ({ tokenId, index, timeMs: t.tokenTimesMs[index] })),
      );
      expect(t.ttftMs).toBe(t.tokenTimesMs[0]);
      expect(t.tokenTimesMs.every((x, k) => k === 0 || x >= t.tokenTimesMs[k - 1] + 4)).toBe(true);
      expect(t.queueMs).toBeGreaterThanOrEqual(0);
      expect(t.tokenTimesMs[0]).toBeGreaterThanOrEqual(t.queueMs + 4);
      expect(t.e2eMs).toBeGreaterThanOrEqual(t.tokenTimesMs.at(-1)!);
      expect(t.e2eMs).toBeLessThanOrEqual(elapsed);
    });
    expect(rs[0].timings.queueMs).toBeLessThan(4);
    // B was admitted once A's three steps (5 ms each) were back.
    expect(rs[1].timings.queueMs).toBeGreaterThanOrEqual(12);
  });
});

describe("failures", { timeout: 10000 }, () => {
  for (const [fail, message] of [
    ["reject", "step 1 failed (test)"],
    ["throw", "step 1 threw (test)"],
    ["string", "step 1 failed as a string"],
  ] as const)
    it(`a step that ${fail === "throw" ? "throws at launch" : fail === "reject" ? "rejects" : "rejects with a string"}: its requests end with the error, the queued one runs, serving goes on`, async () => {
      for (const overlap of [false, true]) {
        // Batch of 2, C queued behind A and B. Step 1 fails: without overlap it is A's decode token and B's context
        // (B joined after A's step 0 was planned), with overlap A's pipelined token alone (launched with step 0, B
        // joining step 2). The requests in it end with its error and the tokens they had, their blocks back; the
        // others get their own tokens; D, submitted afterwards, too.
        const { backend, bm, records } = manager({ maxBatchSize: 2, overlap });
        backend.fail.set(1, fail);
        const rq = [req(2, 5), req(3, 5, 20), req(2, 3, 40)];
        const hs = rq.map((r) => bm.submit(r));
        const rs = await Promise.all(hs.map((h) => h.done));
        const what = `overlap ${overlap}`;
        expect(backend.plan().slice(0, 2), what).toEqual(
          overlap ? [["1:2"], ["1:null"]] : [["1:2"], ["1:1", "2:3"]],
        );
        const failed = new Set(backend.steps[1].map((q) => q.seqId));
        rs.forEach((r, i) => {
          const ref = alone(rq[i].promptIds, rq[i].maxNewTokens);
          if (failed.has(hs[i].id)) {
            expect([r.finishReason, r.error instanceof Error, r.error?.message], what).toEqual([
              "error",
              true,
              message,
            ]);
            expect(r.outputIds, what).toEqual(ref.slice(0, i === 0 ? 1 : 0)); // A: step 0's token; B: none yet
          } else {
            expect([r.finishReason, r.outputIds, "error" in r], what).toEqual(["length", ref, false]);
          }
        });
        // The failed step reports no time of its own and no gap.
        expect([records[1].stepMs, records[1].gapMs], what).toEqual([Number.NaN, 0]);
        const d = await bm.submit(req(4, 2, 50)).done;
        expect(d.outputIds, what).toEqual(alone(prompt(4, 50), 2));
        await bm.shutdown();
        const st = bm.stats();
        expect([st.kvBlocksFree, st.requestsFinished, st.steps], what).toEqual([16, 4, backend.steps.length]);
        expect(backend.breaches, what).toEqual([]);
      }
    });

  it("with overlap, every step failing from some step on (a dead device): each request still ends with an error", async () => {
    // Steps 1-99 reject. Step 0 is A's prompt, step 1 A's pipelined token; B, submitted once step 0 is back, joins
    // step 2 beside A's next token. Step 1's failure ends A and restarts B (restartBehind: step 2 continues A). Step
    // 2 then fails too, but B, restarted, was no longer in it: its failure ended nobody, so nothing behind it depends
    // on it, and B in step 3 ends with step 3's error. Before, step 2's failure restarted B again, and so did each
    // failed step after it: B never ended while the device kept failing (here it was served once step 100 ran).
    const { backend, bm } = manager({ overlap: true });
    for (let k = 1; k < 100; k++) backend.fail.set(k, "reject");
    const a = bm.submit({ ...req(2, 8), ignoreEos: true });
    let b: ReturnType<typeof bm.submit> | undefined;
    bm.onStep = () => {
      b ??= bm.submit({ ...req(3, 8, 20), ignoreEos: true });
    };
    const ra = await a.done;
    await tick();
    const rb = await b!.done;
    expect([ra.finishReason, ra.error?.message]).toEqual(["error", "step 1 failed (test)"]);
    expect([rb.finishReason, rb.error?.message, rb.outputIds]).toEqual(["error", "step 3 failed (test)", []]);
    // (Step 4, B's pipelined token, was launched behind step 3; its failure found B ended.)
    expect(backend.plan()).toEqual([["1:2"], ["1:null"], ["1:null", "2:3"], ["2:3"], ["2:null"]]);
    await bm.shutdown();
    expect([bm.stats().kvBlocksFree, bm.stats().preemptions]).toEqual([16, 0]);
    expect(backend.breaches).toEqual([]);
  });

  it("with overlap, a step failed at launch whose request was cancelled meanwhile: the step behind it, refused, restarts its others", async () => {
    // Step 1 (A's pipelined token) fails at launch. B, submitted once step 0 is back, joins step 2 beside A's next
    // token; A is cancelled right after step 2 is launched, before step 1's failure is seen. Step 2 still continues
    // A (the backend refuses it whole), so B starts over in step 3 and is served, as without the cancel.
    const { backend, bm } = manager({ overlap: true });
    backend.fail.set(1, "launch");
    const a = bm.submit({ ...req(2, 8), ignoreEos: true });
    let b: ReturnType<typeof bm.submit> | undefined;
    bm.onStep = () => {
      if (b) return;
      b = bm.submit({ ...req(3, 4, 20), ignoreEos: true });
      queueMicrotask(() => a.cancel()); // (after the loop has launched step 2 and waits for step 1)
    };
    const ra = await a.done;
    await tick();
    const rb = await b!.done;
    expect(ra.finishReason).toBe("cancelled");
    expect([rb.finishReason, rb.outputIds]).toEqual(["length", alone(prompt(3, 20), 4)]);
    expect(backend.plan().slice(0, 4)).toEqual([["1:2"], ["1:null"], ["1:null", "2:3"], ["2:3"]]);
    await bm.shutdown();
    expect(bm.stats().kvBlocksFree).toBe(16);
    expect(backend.breaches).toEqual([]);
  });

  it("an onStep that throws ends every request with its error; a later request starts the step loop again", async () => {
    const { bm } = manager({ maxBatchSize: 1, overlap: true });
    let n = 0;
    bm.onStep = () => {
      if (++n === 2) throw new Error("onStep failed (test)");
    };
    const hs = [bm.submit({ ...req(2, 6), ignoreEos: true }), bm.submit(req(3, 2, 20))];
    const rs = await Promise.all(hs.map((h) => h.done));
    expect(rs.map((r) => [r.finishReason, r.error?.message, r.outputIds])).toEqual([
      ["error", "onStep failed (test)", alone(prompt(2), 2)],
      ["error", "onStep failed (test)", []],
    ]);
    expect([bm.stats().running, bm.stats().queued, bm.stats().kvBlocksFree]).toEqual([0, 0, 16]);
    const c = await bm.submit(req(3, 3, 40)).done;
    expect([c.finishReason, c.outputIds]).toEqual(["length", alone(prompt(3, 40), 3)]);
    await bm.shutdown();
  });
  it("a loop that fails with a step still running: an Error for what was thrown, the backend closed only once the step is back", async () => {
    // With overlap, step 1 is launched while step 0 runs; step 0's report throws (a string) with step 1 still on
    // the device. The request's error must be an Error (RequestResult.error's type; a string had no message), and
    // shutdown() must not close the backend under step 1: before, the failed loop let go at once and shutdown's
    // fresh loop closed it with step 1 running.
    const { backend, bm } = manager({ mode: "manual", overlap: true });
    bm.onStep = () => {
      throw "onStep failed as a string";
    };
    const a = bm.submit({ ...req(2, 6), ignoreEos: true });
    backend.resolveNext();
    const r = await a.done;
    expect([r.finishReason, r.error instanceof Error, r.error?.message, r.outputIds]).toEqual([
      "error",
      true,
      "onStep failed as a string",
      alone(prompt(2), 1),
    ]);
    const sd = bm.shutdown();
    for (let k = 0; k < 5; k++) await tick();
    expect([backend.inFlight, backend.closed]).toEqual([1, 0]);
    backend.resolveNext();
    await sd;
    expect(backend.closed).toBe(1);
    expect(backend.breaches).toEqual([]);
    expect(bm.stats().kvBlocksFree).toBe(16);
  });

  it("a request submitted from the done callback of a request the failed loop ended runs (none left waiting)", async () => {
    // Before, the loop's failure handler finished the requests while the failed loop was still the current one, so a
    // submit from their `done` callbacks (a retry) did not start a loop and, once it let go, nothing ever ran it.
    for (const overlap of [false, true]) {
      const { bm } = manager({ overlap });
      let n = 0;
      bm.onStep = () => {
        if (++n === 2) throw new Error("onStep failed (test)");
      };
      const a = bm.submit({ ...req(2, 6), ignoreEos: true });
      const retry = a.done.then(() => bm.submit(req(3, 3, 40)).done);
      let settled = false;
      void retry.then(() => {
        settled = true;
      });
      for (let k = 0; k < 50 && !settled; k++) await tick();
      expect(settled, `overlap ${overlap}`).toBe(true);
      expect((await a.done).finishReason).toBe("error");
      const r = await retry;
      expect([r.finishReason, r.outputIds], `overlap ${overlap}`).toEqual([
        "length",
        alone(prompt(3, 40), 3),
      ]);
      await bm.shutdown();
      expect(bm.stats().kvBlocksFree).toBe(16);
    }
  });
});

describe("shutdown", { timeout: 10000 }, () => {
  it("without a drain time: cancels at once, with the tokens so far; closes the backend once its step is back, once", async () => {
    const { backend, bm } = manager({ mode: "manual", overlap: true });
    const a = bm.submit({ ...req(2, 8), ignoreEos: true });
    backend.resolveNext();
    await tick();
    const b = bm.submit({ ...req(2, 8), ignoreEos: true });
    const sd = bm.shutdown();
    const [ra, rb] = await Promise.all([a.done, b.done]);
    expect([ra.finishReason, ra.outputIds, rb.finishReason, rb.outputIds]).toEqual([
      "cancelled",
      alone(prompt(2), 1),
      "cancelled",
      [],
    ]);
    // Steps are still running on the device: the backend stays open until they are back.
    await tick();
    expect(backend.closed).toBe(0);
    while (backend.resolveNext()) await tick();
    await sd;
    await bm.shutdown();
    expect(backend.closed).toBe(1);
    expect(backend.breaches).toEqual([]);
    expect(bm.stats().kvBlocksFree).toBe(16);
    expect(() => bm.submit(req(1, 1))).toThrow("shutting down");
  });

  it("without a drain time nothing more is generated once it is called", async () => {
    // Shut down from the third step's report: A has exactly its 3 tokens, though steps come back at once.
    for (const overlap of [false, true]) {
      const { bm } = manager({ overlap });
      const a = bm.submit({ ...req(2, 20), ignoreEos: true });
      let n = 0;
      let sd: Promise<void> | undefined;
      bm.onStep = () => {
        if (++n === 3) sd = bm.shutdown();
      };
      const r = await a.done;
      await sd;
      expect([r.finishReason, r.outputIds], `overlap ${overlap}`).toEqual(["cancelled", alone(prompt(2), 3)]);
      expect(bm.stats().tokensGenerated, `overlap ${overlap}`).toBe(3);
    }
  });

  it("with a drain time: waits for the requests to finish, not for the time", async () => {
    const { backend, bm } = manager();
    const hs = [
      bm.submit({ ...req(2, 6), ignoreEos: true }),
      bm.submit({ ...req(3, 4, 20), ignoreEos: true }),
    ];
    const t0 = performance.now();
    await bm.shutdown({ drainTimeoutMs: 5000 });
    expect(performance.now() - t0).toBeLessThan(2500);
    const rs = await Promise.all(hs.map((h) => h.done));
    expect(rs.map((r) => [r.finishReason, r.outputIds])).toEqual([
      ["length", alone(prompt(2), 6)],
      ["length", alone(prompt(3, 20), 4)],
    ]);
    expect(backend.closed).toBe(1);
  });

  it("with a drain time the requests outlast: cancels them when it is up", async () => {
    const { backend, bm } = manager({ mode: "manual" });
    const a = bm.submit({ ...req(2, 6), ignoreEos: true });
    const t0 = performance.now();
    let settled = false;
    const sd = bm.shutdown({ drainTimeoutMs: 40 }).then(() => {
      settled = true;
    });
    const r = await a.done;
    expect(performance.now() - t0).toBeGreaterThanOrEqual(35);
    expect([r.finishReason, r.outputIds]).toEqual(["cancelled", []]);
    await tick();
    expect([settled, backend.closed]).toEqual([false, 0]);
    backend.resolveNext();
    await sd;
    expect(backend.closed).toBe(1);
  });

  it("a drain time beyond what a timer holds (over 2^31 - 1 ms, or Infinity) waits for the requests", async () => {
    // Node fires setTimeout after 1 ms for such a delay: before, shutdown({ drainTimeoutMs: Infinity }) (or
    // tsllm-serve --drain-timeout 3000000) cancelled every request at once instead of letting it finish.
    for (const ms of [2 ** 31, Number.POSITIVE_INFINITY]) {
      const { backend, bm } = manager({ mode: 2 });
      const a = bm.submit({ ...req(2, 6), ignoreEos: true });
      await bm.shutdown({ drainTimeoutMs: ms });
      const r = await a.done;
      expect([r.finishReason, r.outputIds], `${ms}`).toEqual(["length", alone(prompt(2), 6)]);
      expect(backend.closed).toBe(1);
    }
  });

  it("cancels queued, running and paused requests alike", async () => {
    // max_utilization, 4 blocks: A and B (4 + 9) run, B is paused before step 5 (as in batch-manager-admission's
    // schedule); C waits behind max_batch_size 2. Shut down after step 5: all three cancelled with what they had.
    const { bm } = manager({ policy: "max_utilization", kvBlocksTotal: 4, maxBatchSize: 2 });
    const hs = [
      bm.submit({ ...req(4, 9), ignoreEos: true }),
      bm.submit({ ...req(4, 9, 20), ignoreEos: true }),
      bm.submit({ ...req(1, 1, 40), ignoreEos: true }),
    ];
    let n = 0;
    let sd: Promise<void> | undefined;
    bm.onStep = () => {
      if (++n === 6) {
        expect([bm.stats().running, bm.stats().paused, bm.stats().queued]).toEqual([1, 1, 1]);
        sd = bm.shutdown();
      }
    };
    const rs = await Promise.all(hs.map((h) => h.done));
    await sd;
    expect(rs.map((r) => [r.finishReason, r.outputIds, r.preemptions])).toEqual([
      ["cancelled", alone(prompt(4), 6), 0],
      ["cancelled", alone(prompt(4, 20), 4), 1],
      ["cancelled", [], 0],
    ]);
    expect(bm.stats().kvBlocksFree).toBe(4);
  });

  it("with nothing ever submitted: closes the backend", async () => {
    const { backend, bm } = manager();
    await bm.shutdown();
    expect(backend.closed).toBe(1);
  });
});

describe("warmup", { timeout: 10000 }, () => {
  it("runs the batch sizes (1-4, powers of two, capped), 3 steps each; then the counters start from zero", async () => {
    // Every token the backend samples is an end id here: the warm-up ignores them and makes its 3 steps. (The loop
    // is parked when each later batch is submitted, so a batch's requests start together.)
    const { backend, bm, records } = manager({
      maxBatchSize: 8,
      overlap: true,
      eos: [...Array(62).keys()],
      kvBlocksTotal: 64,
    });
    const t0 = performance.now();
    const w = await bm.warmup();
    const elapsed = performance.now() - t0;
    expect(w.batchSizes).toEqual(warmupBatchSizes(8));
    expect(w.batchSizes).toEqual([1, 2, 3, 4, 8]);
    expect(backend.plan().map((ss) => ss.length)).toEqual([1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 8, 8, 8]);
    expect(w.steps).toBe(15);
    expect(records.length).toBe(15);
    expect(w.ms).toBeGreaterThanOrEqual(0);
    expect(w.ms).toBeLessThanOrEqual(elapsed);
    // Each request: the prompt 1..8, then two decode tokens.
    const ctx = backend.steps.flat().filter((q) => q.startPos === 0);
    expect(ctx.length).toBe(18);
    for (const q of ctx) expect(q.tokens).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    const st = bm.stats();
    expect(st).toEqual({
      queued: 0,
      running: 0,
      paused: 0,
      kvBlocksTotal: 64,
      kvBlocksFree: 64,
      kvBlocksPeakUsed: 0,
      tokensGenerated: 0,
      promptTokensComputed: 0,
      requestsFinished: 0,
      requestsRejected: 0,
      preemptions: 0,
      steps: 0,
    });
    const r = await bm.submit({ ...req(3, 4), endIds: [] }).done;
    expect(r.outputIds).toEqual(alone(prompt(3), 4));
    expect([bm.stats().steps, bm.stats().requestsFinished]).toEqual([4, 1]);
    await bm.shutdown();
  });

  it("the batch sizes asked for, those outside 1..max_batch_size left out; the prompt length within max_seq_len - 3", async () => {
    const cases: [Parameters<InflightBatchManager["warmup"]>[0], number[], number][] = [
      [{ batchSizes: [0, 1, 3, -1, 5, 6] }, [1, 3, 5], 8],
      [{ promptLen: 20 }, [1, 2], 13],
      [{ promptLen: 0 }, [1, 2], 1],
      [{ promptLen: 2, batchSizes: [] }, [], 0],
    ];
    for (const [o, sizes, len] of cases) {
      const { backend, bm } = manager({
        maxBatchSize: o?.batchSizes ? 5 : 2,
        maxSeqLen: 16,
        kvBlocksTotal: 64,
      });
      const w = await bm.warmup(o);
      expect(w.batchSizes, JSON.stringify(o)).toEqual(sizes);
      expect(backend.plan().map((ss) => ss.length)).toEqual(sizes.flatMap((b) => [b, b, b]));
      for (const q of backend.steps.flat().filter((s) => s.startPos === 0))
        expect(q.tokens, JSON.stringify(o)).toEqual(Array.from({ length: len }, (_, i) => i + 1));
      await bm.shutdown();
    }
  });

  it("the first batch asked for starts together too: a context step of all its requests, then two decode steps", async () => {
    // (Until session 33 the step loop started at the first submit, so a first batch of b ran its first request's
    // context alone: steps of 1, b, b, b - 1 sequences, the decode-only step of b once.)
    for (const overlap of [false, true]) {
      const { backend, bm } = manager({ maxBatchSize: 8, overlap, kvBlocksTotal: 64 });
      await bm.warmup({ batchSizes: [4, 2] });
      const d = overlap ? "null" : "1"; // a decode token: pipelined, or fed from the host
      expect(backend.plan(), `overlap ${overlap}`).toEqual([
        ["1:8", "2:8", "3:8", "4:8"],
        [`1:${d}`, `2:${d}`, `3:${d}`, `4:${d}`],
        [`1:${d}`, `2:${d}`, `3:${d}`, `4:${d}`],
        ["5:8", "6:8"],
        [`5:${d}`, `6:${d}`],
        [`5:${d}`, `6:${d}`],
      ]);
      await bm.shutdown();
    }
  });

  it("the warm-up prompt's ids wrap around a vocabulary shorter than it", async () => {
    const backend = new ModelBackend(limits({ maxSeqLen: 100, kvBlocksTotal: 64 }));
    Object.defineProperty(backend, "vocabSize", { value: 30 });
    const bm = new InflightBatchManager(backend, { overlap: false });
    await bm.warmup({ batchSizes: [1], promptLen: 40 });
    expect(backend.steps[0][0].tokens).toEqual(Array.from({ length: 40 }, (_, i) => (i + 1) % 30));
    await bm.shutdown();
  });

  it("refuses once anything was submitted: running, queued or paused", async () => {
    const refusal = async (bm: InflightBatchManager) => {
      try {
        await bm.warmup();
      } catch (e) {
        return (e as Error).message;
      }
      return "warmed up";
    };
    const msg = "warmup() runs before any request is submitted";
    // Running.
    const m1 = manager();
    const a = m1.bm.submit(req(2, 3));
    expect(await refusal(m1.bm)).toBe(msg);
    await a.done;
    await m1.bm.shutdown();
    // Queued alone: A cancelled while its step runs, B submitted before the step is back.
    const m2 = manager({ mode: "manual" });
    m2.bm.submit(req(2, 3)).cancel();
    const b = m2.bm.submit(req(2, 2, 20));
    expect([m2.bm.stats().running, m2.bm.stats().queued]).toEqual([0, 1]);
    expect(await refusal(m2.bm)).toBe(msg);
    expect((await drive(m2.backend, b.done)).outputIds).toEqual(alone(prompt(2, 20), 2));
    await m2.bm.shutdown();
    // Paused alone: the running one cancelled right after the pause.
    const m3 = manager({ policy: "max_utilization", kvBlocksTotal: 4 });
    const hs = [m3.bm.submit(req(4, 9)), m3.bm.submit(req(4, 9, 20))];
    let n = 0;
    let refused: Promise<string> | undefined;
    m3.bm.onStep = () => {
      if (++n === 6) {
        hs[0].cancel();
        expect([m3.bm.stats().running, m3.bm.stats().paused, m3.bm.stats().queued]).toEqual([0, 1, 0]);
        refused = refusal(m3.bm);
      }
    };
    await Promise.all(hs.map((h) => h.done));
    expect(await refused).toBe(msg);
    await m3.bm.shutdown();
  });

  it("a warm-up request the pool cannot hold is refused as the warm-up's", async () => {
    // 8 prompt tokens + 3 new ones need ceil(10 / 4) = 3 blocks; the pool has 2.
    const { bm } = manager({ kvBlocksTotal: 2 });
    await expect(bm.warmup()).rejects.toThrow(
      "warm-up: prompt of 8 tokens + max_new_tokens 3 needs 3 KV blocks of 4 tokens, the pool has 2",
    );
    await bm.shutdown();
  });

  it("a failing step fails the warm-up with the batch size and the error", async () => {
    const { backend, bm } = manager({ maxBatchSize: 4 });
    backend.fail.set(4, "reject");
    await expect(bm.warmup()).rejects.toThrow(new Error("warm-up at batch 2 failed: step 4 failed (test)"));
    // The failed warm-up no longer holds submits back.
    expect((await bm.submit({ ...req(3, 2), endIds: [] }).done).finishReason).toBe("length");
    await bm.shutdown();
  });

  it("a submit while it runs is refused (warming_up), not folded into its steps; afterwards it is served", async () => {
    const { backend, bm } = manager({ maxBatchSize: 4, kvBlocksTotal: 64 });
    const warming = bm.warmup({ batchSizes: [2, 1] });
    let refusal: unknown;
    try {
      bm.submit({ ...req(3, 2), tag: "user" });
    } catch (e) {
      refusal = e;
    }
    expect(refusal).toBeInstanceOf(RequestRejectedError);
    expect([(refusal as RequestRejectedError).reason, (refusal as RequestRejectedError).message]).toEqual([
      "warming_up",
      "user: warmup() is running: submit once it has returned",
    ]);
    const w = await warming;
    // Only the warm-up's sequences ran: 2 requests, then 1, three steps each.
    expect(backend.plan().map((ss) => ss.length)).toEqual([2, 2, 2, 1, 1, 1]);
    expect(w.steps).toBe(6);
    const r = await bm.submit({ ...req(3, 2), endIds: [] }).done;
    expect(r.outputIds).toEqual(alone(prompt(3), 2));
    expect([bm.stats().requestsFinished, bm.stats().requestsRejected]).toEqual([1, 0]);
    await bm.shutdown();
  });
});

// The same contract on fast-check's workloads, which shrink a failure to a small case: random limits (batch, step
// tokens, block size, pool, max_seq_len), both policies, overlap on and off, up to 12 requests of random lengths,
// end and stop ids, arriving and cancelled at random steps; in one workload in four a step fails at launch (a step
// behind it that continues its sequences refused, as the real backends refuse it): only the requests in that step may
// end with an error. Also checked: submit refuses exactly the requests that can never fit (max_seq_len, or more blocks
// than the pool), and each stream carries its result's tokens in order.
describe("random limits, arrivals and cancels (fast-check)", () => {
  const arbLimits = fc
    .record({
      maxBatchSize: fc.integer({ min: 1, max: 6 }),
      maxNumTokens: fc.integer({ min: 1, max: 32 }),
      maxSeqLen: fc.integer({ min: 12, max: 40 }),
      tokensPerBlock: fc.integer({ min: 1, max: 8 }),
      // Pools of 8 to 64 tokens: small enough that max_utilization pauses, large enough that most requests fit.
      kvTokens: fc.integer({ min: 8, max: 64 }),
    })
    .map(
      ({ kvTokens, ...l }): BatchLimits => ({ ...l, kvBlocksTotal: Math.ceil(kvTokens / l.tokensPerBlock) }),
    );
  const arbRequest = fc.record({
    prompt: fc.array(fc.integer({ min: 0, max: VOCAB - 1 }), { minLength: 1, maxLength: 16 }),
    maxNew: fc.integer({ min: 1, max: 16 }),
    ignoreEos: fc.boolean(),
    stopTokenIds: fc.array(fc.integer({ min: 0, max: 61 }), { maxLength: 2 }),
    /** Submitted after this many steps (0: before the first). */
    arrival: fc.oneof(
      { arbitrary: fc.constant(0), weight: 2 },
      { arbitrary: fc.integer({ min: 1, max: 10 }), weight: 1 },
    ),
    /** Cancelled this many steps after it was submitted (one request in five). */
    cancelAfter: fc.oneof(
      { arbitrary: fc.constant(undefined), weight: 4 },
      { arbitrary: fc.integer({ min: 0, max: 20 }), weight: 1 },
    ),
  });
  type Req = typeof arbRequest extends fc.Arbitrary<infer R> ? R : never;
  const EOS = 61;

  async function run(
    limits: BatchLimits,
    policy: SchedulerPolicy,
    overlap: boolean,
    reqs: Req[],
    failAt: number | null,
  ) {
    const backend = new ModelBackend(limits);
    if (failAt !== null) backend.fail.set(failAt, "launch");
    const bm = new InflightBatchManager(backend, { policy, overlap, eosTokenIds: [EOS] });
    const handles = new Map<number, { h: RequestHandle; streamed: Promise<number[]> }>();
    const refused = new Set<number>();
    const cancels: { at: number; i: number }[] = [];
    let steps = 0;
    const submit = (i: number) => {
      const r = reqs[i];
      try {
        const h = bm.submit({
          promptIds: r.prompt,
          maxNewTokens: r.maxNew,
          ignoreEos: r.ignoreEos,
          stopTokenIds: r.stopTokenIds,
        });
        const streamed = (async () => {
          const got: number[] = [];
          for await (const ev of h) {
            expect(ev.index).toBe(got.length);
            got.push(ev.tokenId);
          }
          return got;
        })();
        handles.set(i, { h, streamed });
        if (r.cancelAfter !== undefined) cancels.push({ at: steps + r.cancelAfter, i });
      } catch (e) {
        if (!(e instanceof RequestRejectedError)) throw e;
        refused.add(i);
      }
    };
    const arrive = () => {
      reqs.forEach((r, i) => r.arrival <= steps && !handles.has(i) && !refused.has(i) && submit(i));
      for (const c of cancels) if (c.at === steps) handles.get(c.i)?.h.cancel();
    };
    bm.onStep = () => {
      steps++;
      arrive();
    };
    arrive();
    // Arrivals after the work ran out (no step left to bring them) come when it has.
    for (;;) {
      await Promise.all([...handles.values()].map((x) => x.h.done));
      const left = reqs.map((_, i) => i).filter((i) => !handles.has(i) && !refused.has(i));
      if (left.length === 0) break;
      for (const i of left) submit(i);
    }
    const blocks = (n: number) => Math.ceil(n / limits.tokensPerBlock);
    for (const [i, r] of reqs.entries()) {
      const never =
        r.prompt.length + r.maxNew > limits.maxSeqLen ||
        blocks(r.prompt.length + r.maxNew - 1) > limits.kvBlocksTotal;
      expect(refused.has(i), `request ${i} refused`).toBe(never);
      const x = handles.get(i);
      if (!x) continue;
      const res = await x.h.done;
      const ends = new Set([...(r.ignoreEos ? [] : [EOS]), ...r.stopTokenIds]);
      const want = alone(r.prompt, r.maxNew, ends);
      expect(await x.streamed, `request ${i} stream`).toEqual(res.outputIds);
      if (res.finishReason === "cancelled" || res.finishReason === "error") {
        if (res.finishReason === "cancelled")
          expect(r.cancelAfter, `request ${i} cancelled unasked`).toBeDefined();
        else
          expect(
            backend.steps[failAt ?? -1]?.some((q) => q.seqId === x.h.id),
            `request ${i} failed outside the failed step: ${res.error?.message}`,
          ).toBe(true);
        expect(res.outputIds, `request ${i}`).toEqual(want.slice(0, res.outputIds.length));
      } else {
        const stop = ends.has(want.at(-1)!);
        expect([res.outputIds, res.finishReason, res.stopTokenId], `request ${i}`).toEqual([
          want,
          stop ? "stop" : "length",
          stop ? want.at(-1) : undefined,
        ]);
      }
      if (policy === "guaranteed_no_evict") expect(res.preemptions).toBe(0);
    }
    await bm.shutdown();
    expect(backend.breaches).toEqual([]);
    const s = bm.stats();
    expect([s.queued, s.running, s.paused, s.kvBlocksFree]).toEqual([0, 0, 0, limits.kvBlocksTotal]);
    if (policy === "guaranteed_no_evict") expect(s.preemptions).toBe(0);
    // Every sequence that ran was released (one cancelled while queued never held anything).
    expect(new Set(backend.releases)).toEqual(new Set(backend.steps.flat().map((q) => q.seqId)));
  }

  it("each request as generated alone (a cancelled one a prefix), within the limits, every block returned", {
    timeout: 120_000,
  }, async () => {
    await fc.assert(
      fc.asyncProperty(
        arbLimits,
        fc.constantFrom<SchedulerPolicy>("guaranteed_no_evict", "max_utilization"),
        fc.boolean(),
        fc.array(arbRequest, { minLength: 1, maxLength: 12 }),
        fc.oneof(
          { arbitrary: fc.constant(null), weight: 3 },
          { arbitrary: fc.integer({ min: 0, max: 12 }), weight: 1 },
        ),
        run,
      ),
      { seed: FUZZ_SEED, numRuns: 1000 },
    );
  });
});
