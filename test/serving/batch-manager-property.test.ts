// The batch manager (src/serving/batch-manager.ts) against its contract on random workloads (fast-check): random
// limits (batch, step tokens, block size, pool, max_seq_len), both policies, with and without step overlap, and
// requests of random lengths, end and stop ids, arriving and cancelled at random steps. The backend is a model
// whose next token is a hash of the sequence's whole history as the backend has seen it fed (the tokens given, or
// for a pipelined decode token the one it sampled last step), so a wrong token, a token fed twice or in the wrong
// order, a chunk at the wrong position, or a resumed request recomputed from the wrong context changes what
// follows. The oracle is each request generated alone by the same rule. Checked for every run:
// - submit refuses exactly the requests that can never fit (max_seq_len, or more blocks than the pool);
// - every request that was not cancelled gets exactly its tokens alone and the right finish reason; a
//   cancelled one a prefix of them; each stream carries its result's tokens in order;
// - no step exceeds max_batch_size sequences or max_num_tokens tokens, names a sequence twice, or needs more KV
//   blocks than the pool (counted by the backend from what it holds); every startPos is the cached length;
// - guaranteed_no_evict never pauses; at the end every block is free and every sequence released.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { BackendSeq, StepBackend, StepOutput } from "../../src/serving/backend.ts";
import { InflightBatchManager } from "../../src/serving/batch-manager.ts";
import {
  type BatchLimits,
  type RequestHandle,
  RequestRejectedError,
  type RequestResult,
  type SchedulerPolicy,
} from "../../src/serving/types.ts";
import { FUZZ_SEED } from "../fuzz/harness.ts";

const VOCAB = 64;
const EOS = 63;

/** The model: the token after a history (FNV-1a of its ids, mod the vocabulary). */
function nextToken(history: readonly number[]): number {
  let x = 2166136261;
  for (const t of history) x = Math.imul(x ^ t, 16777619) >>> 0;
  return x % VOCAB;
}

/** A request generated alone: its tokens and how it ends. */
function alone(prompt: readonly number[], maxNew: number, stops: ReadonlySet<number>) {
  const h = [...prompt];
  const ids: number[] = [];
  for (let k = 0; k < maxNew; k++) {
    const t = nextToken(h);
    ids.push(t);
    if (stops.has(t)) return { ids, reason: "stop" as const };
    h.push(t);
  }
  return { ids, reason: "length" as const };
}

/** Computes each step at launch (as the CPU backend does) and resolves it on a later turn. */
class HistoryBackend implements StepBackend {
  readonly vocabSize = VOCAB;
  readonly info = { device: "cpu" as const, deviceName: "history model", dtype: "f32", kvDtype: "f32" };
  readonly history = new Map<number, number[]>();
  readonly breaches: string[] = [];
  /** Called when step k's results are about to come back (the test's arrivals and cancels). */
  onStepDone: (k: number) => void = () => {};
  private last = new Map<number, number>();
  private steps = 0;
  constructor(readonly limits: BatchLimits) {}

  step(seqs: readonly BackendSeq[]): Promise<StepOutput> {
    const k = this.steps++;
    const L = this.limits;
    const fed = seqs.map((s) => s.tokens?.length ?? 1);
    const total = fed.reduce((a, n) => a + n, 0);
    if (seqs.length === 0) this.breaches.push(`step ${k}: empty`);
    if (seqs.length > L.maxBatchSize) this.breaches.push(`step ${k}: ${seqs.length} sequences`);
    if (total > L.maxNumTokens) this.breaches.push(`step ${k}: ${total} tokens`);
    if (new Set(seqs.map((s) => s.seqId)).size !== seqs.length)
      this.breaches.push(`step ${k}: a sequence twice`);
    const out = new Int32Array(seqs.length).fill(-1);
    const sampled = new Map<number, number>();
    seqs.forEach((s, i) => {
      const h = this.history.get(s.seqId) ?? [];
      if (s.startPos !== h.length)
        this.breaches.push(`step ${k}: seq ${s.seqId} at ${s.startPos}, holds ${h.length}`);
      const prev = this.last.get(s.seqId);
      if (s.tokens === null && prev === undefined)
        this.breaches.push(`step ${k}: seq ${s.seqId} fed nothing`);
      h.push(...(s.tokens ?? [prev ?? -1]));
      this.history.set(s.seqId, h);
      if (s.sample) sampled.set(s.seqId, (out[i] = nextToken(h)));
    });
    this.last = sampled;
    let blocks = 0;
    for (const h of this.history.values()) blocks += Math.ceil(h.length / L.tokensPerBlock);
    if (blocks > L.kvBlocksTotal) this.breaches.push(`step ${k}: ${blocks} of ${L.kvBlocksTotal} blocks`);
    return new Promise((res) =>
      setImmediate(() => {
        this.onStepDone(k);
        res({ tokens: out, stepMs: 1, gapMs: 0 });
      }),
    );
  }

  release(seqId: number): void {
    this.history.delete(seqId);
  }

  close(): void {}
}

// Pools from 8 to 64 tokens: small enough that max_utilization pauses, large enough that most requests fit.
const arbLimits = fc
  .record({
    maxBatchSize: fc.integer({ min: 1, max: 6 }),
    maxNumTokens: fc.integer({ min: 1, max: 32 }),
    maxSeqLen: fc.integer({ min: 12, max: 40 }),
    tokensPerBlock: fc.integer({ min: 1, max: 8 }),
    kvTokens: fc.integer({ min: 8, max: 64 }),
  })
  .map(
    ({ kvTokens, ...l }): BatchLimits => ({ ...l, kvBlocksTotal: Math.ceil(kvTokens / l.tokensPerBlock) }),
  );

const arbRequest = fc.record({
  prompt: fc.array(fc.integer({ min: 0, max: VOCAB - 1 }), { minLength: 1, maxLength: 16 }),
  maxNew: fc.integer({ min: 1, max: 16 }),
  ignoreEos: fc.boolean(),
  stopTokenIds: fc.array(fc.integer({ min: 0, max: VOCAB - 1 }), { maxLength: 2 }),
  /** Submitted when this step's results come back (0: before the first step). */
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

async function runWorkload(
  limits: BatchLimits,
  policy: SchedulerPolicy,
  overlap: boolean,
  reqs: Req[],
): Promise<void> {
  const backend = new HistoryBackend(limits);
  const bm = new InflightBatchManager(backend, { policy, overlap, eosTokenIds: [EOS] });
  const handles = new Map<number, { h: RequestHandle; streamed: Promise<number[]> }>();
  const refused = new Set<number>();
  let stepsDone = 0;
  const cancels: { at: number; i: number }[] = [];
  const submit = (i: number) => {
    const r = reqs[i];
    try {
      const h = bm.submit({
        promptIds: r.prompt,
        maxNewTokens: r.maxNew,
        ignoreEos: r.ignoreEos,
        stopTokenIds: r.stopTokenIds,
        tag: `r${i}`,
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
      if (r.cancelAfter !== undefined) cancels.push({ at: stepsDone + r.cancelAfter, i });
    } catch (e) {
      if (!(e instanceof RequestRejectedError)) throw e;
      refused.add(i);
    }
  };
  const due = (step: number) =>
    reqs.forEach((r, i) => r.arrival === step && !handles.has(i) && !refused.has(i) && submit(i));
  backend.onStepDone = (k) => {
    stepsDone = k + 1;
    due(k + 1);
    for (const c of cancels) if (c.at === stepsDone) handles.get(c.i)?.h.cancel();
  };
  due(0);
  for (const c of cancels) if (c.at === 0) handles.get(c.i)?.h.cancel();
  // Arrivals after the work ran out (no step left to bring them) are submitted when it has.
  for (;;) {
    await Promise.all([...handles.values()].map((x) => x.h.done));
    const left = reqs.map((_, i) => i).filter((i) => !handles.has(i) && !refused.has(i));
    if (left.length === 0) break;
    for (const i of left) submit(i);
  }

  const blocksFor = (n: number) => Math.ceil(n / limits.tokensPerBlock);
  for (const [i, r] of reqs.entries()) {
    const never =
      r.prompt.length + r.maxNew > limits.maxSeqLen ||
      blocksFor(r.prompt.length + r.maxNew - 1) > limits.kvBlocksTotal;
    expect(refused.has(i), `request ${i} refused`).toBe(never);
    const x = handles.get(i);
    if (!x) continue;
    const res: RequestResult = await x.h.done;
    const stops = new Set([...(r.ignoreEos ? [] : [EOS]), ...r.stopTokenIds]);
    const want = alone(r.prompt, r.maxNew, stops);
    expect(await x.streamed, `request ${i} stream`).toEqual(res.outputIds);
    if (res.finishReason === "cancelled") {
      expect(r.cancelAfter, `request ${i} cancelled unasked`).toBeDefined();
      expect(res.outputIds, `request ${i}`).toEqual(want.ids.slice(0, res.outputIds.length));
    } else {
      expect([res.outputIds, res.finishReason], `request ${i}`).toEqual([want.ids, want.reason]);
      if (want.reason === "stop") expect(res.stopTokenId).toBe(want.ids.at(-1));
    }
    if (policy === "guaranteed_no_evict") expect(res.preemptions).toBe(0);
  }
  expect(backend.breaches).toEqual([]);
  const s = bm.stats();
  expect([s.queued, s.running, s.paused, s.kvBlocksFree]).toEqual([0, 0, 0, limits.kvBlocksTotal]);
  if (policy === "guaranteed_no_evict") expect(s.preemptions).toBe(0);
  await bm.shutdown();
  expect([...backend.history.keys()]).toEqual([]);
}

describe("batch manager on random workloads", () => {
  it("each request as generated alone, within the limits, blocks all returned", {
    timeout: 120_000,
  }, async () => {
    await fc.assert(
      fc.asyncProperty(
        arbLimits,
        fc.constantFrom<SchedulerPolicy>("guaranteed_no_evict", "max_utilization"),
        fc.boolean(),
        fc.array(arbRequest, { minLength: 1, maxLength: 12 }),
        async (limits, policy, overlap, reqs) => runWorkload(limits, policy, overlap, reqs),
      ),
      { seed: FUZZ_SEED, numRuns: 1000 },
    );
  });
});
