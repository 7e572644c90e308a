// The batch manager's submit checks, admission, pause / resume, cancel and block accounting
// (src/serving/batch-manager.ts) over a scripted step backend, so that each case is milliseconds and its whole
// schedule can be worked out by hand from the policies' definitions (the file's header comment): a sequence of n
// tokens holds ceil(n / 4) blocks here; guaranteed_no_evict admits when the worst cases (prompt + max_new_tokens - 1
// tokens) of the running requests and the new one fit the pool, max_utilization when the new one's context fits
// the blocks free now and pauses the newest running request when a decode token needs a block. The backend samples
// a token that depends only on the position (10 + position % 40), so every request's tokens are known without a
// model, paused and recomputed or not. Added in session 32 for mutants batch-manager.test.ts let live
// (docs/mutation.md).
import { performance } from "node:perf_hooks";
import { describe, expect, it } from "vitest";
import type { BackendSeq, StepBackend, StepOutput } from "../../src/serving/backend.ts";
import { InflightBatchManager, type StepRecord } from "../../src/serving/batch-manager.ts";
import {
  type BatchLimits,
  type GenerationRequest,
  RequestRejectedError,
  type SchedulerPolicy,
} from "../../src/serving/types.ts";
import { thrown } from "../thrown.ts";

/** The token sampled after a sequence's first p tokens. */
const tok = (p: number) => 10 + (p % 40);
/** What a request of prompt length p and n new tokens generates (no end id among them). */
const expected = (p: number, n: number) => Array.from({ length: n }, (_, k) => tok(p + k));

/**
 * Runs each step on the next macrotask and samples tok(startPos + tokens) for the sequences asked to; records
 * every step's sequences and each release, and checks startPos against the tokens the sequence has had since its
 * last release (breaches written down, not thrown).
 */
class ScriptedBackend implements StepBackend {
  readonly vocabSize = 64;
  readonly info = { device: "cpu" as const, deviceName: "scripted", dtype: "f32", kvDtype: "f32" };
  readonly steps: BackendSeq[][] = [];
  readonly releases: number[] = [];
  /** Each release with the number of steps launched before it. */
  readonly releasesAfter: { id: number; after: number }[] = [];
  readonly breaches: string[] = [];
  private cached = new Map<number, number>();
  constructor(readonly limits: BatchLimits) {}
  step(seqs: readonly BackendSeq[]): Promise<StepOutput> {
    const k = this.steps.length;
    this.steps.push(seqs.map((s) => ({ ...s })));
    const out = new Int32Array(seqs.length).fill(-1);
    seqs.forEach((s, i) => {
      const n = s.tokens?.length ?? 1;
      const had = this.cached.get(s.seqId) ?? 0;
      if (s.startPos !== had) this.breaches.push(`step ${k}: ${s.seqId} at ${s.startPos}, cache ${had}`);
      this.cached.set(s.seqId, had + n);
      if (s.sample) out[i] = tok(s.startPos + n);
    });
    const blocks = [...this.cached.values()].reduce(
      (a, n) => a + Math.ceil(n / this.limits.tokensPerBlock),
      0,
    );
    if (blocks > this.limits.kvBlocksTotal) this.breaches.push(`step ${k}: ${blocks} blocks`);
    return new Promise((res) => setImmediate(() => res({ tokens: out, stepMs: 1, gapMs: 0 })));
  }
  release(seqId: number): void {
    this.releases.push(seqId);
    this.releasesAfter.push({ id: seqId, after: this.steps.length });
    this.cached.delete(seqId);
  }
  close(): void {}
  /** Each step as "id:tokens" entries, e.g. ["1:4"], ["1:1", "2:4"]. */
  plan(): string[][] {
    return this.steps.map((ss) => ss.map((s) => `${s.seqId}:${s.tokens?.length ?? 1}`));
  }
}

const limits = (o: Partial<BatchLimits> = {}): BatchLimits => ({
  maxBatchSize: 8,
  maxNumTokens: 64,
  maxSeqLen: 32,
  tokensPerBlock: 4,
  kvBlocksTotal: 4,
  ...o,
});

function manager(policy: SchedulerPolicy, l: Partial<BatchLimits> = {}) {
  const backend = new ScriptedBackend(limits(l));
  // No step overlap: each step is planned after the last one's tokens are back, so the schedule is the one worked
  // out by hand below (the first submit plans step 0 at once, before the next request is submitted).
  const bm = new InflightBatchManager(backend, { policy, overlap: false, eosTokenIds: [63] });
  const records: StepRecord[] = [];
  bm.onStep = (s) => records.push(s);
  return { backend, bm, records };
}

const req = (p: number, maxNewTokens: number, first = 1): GenerationRequest => ({
  promptIds: Array.from({ length: p }, (_, k) => first + k),
  maxNewTokens,
});

describe("submit refuses what can never run, each with its reason, message and figures", {
  timeout: 10000,
}, () => {
  // vocabulary 64, max_seq_len 32, KV pool of 6 blocks of 4 tokens.
  const bm = () => manager("guaranteed_no_evict", { kvBlocksTotal: 6 }).bm;
  const refusal = (m: InflightBatchManager, r: GenerationRequest) => {
    const e = thrown(() => m.submit(r), RequestRejectedError);
    return { reason: e.reason, message: e.message, details: e.details };
  };

  it("an empty prompt, max_new_tokens not an integer >= 1, a token outside the vocabulary", () => {
    const m = bm();
    const invalid = (message: string, details = {}) => ({ reason: "invalid", message, details });
    expect(refusal(m, { promptIds: [], maxNewTokens: 1 })).toEqual(invalid("the prompt is empty"));
    expect(refusal(m, { promptIds: [], maxNewTokens: 0 })).toEqual(invalid("the prompt is empty"));
    for (const n of [0, -1, 1.5, Number.NaN])
      expect(refusal(m, { promptIds: [1], maxNewTokens: n })).toEqual(
        invalid(`max_new_tokens must be an integer >= 1, got ${n}`),
      );
    for (const t of [-1, 64, 1.5, 100])
      expect(refusal(m, { promptIds: [0, 5, t, 63], maxNewTokens: 1 })).toEqual(
        invalid(`token id ${t} outside the vocabulary (0..63)`, { vocabSize: 64 }),
      );
    // The tag leads the message; every refusal is counted and nothing is queued.
    expect(refusal(m, { promptIds: [], maxNewTokens: 1, tag: "request 7" }).message).toBe(
      "request 7: the prompt is empty",
    );
    expect([m.stats().requestsRejected, m.stats().queued]).toEqual([11, 0]);
  });

  it("sampling options out of range; the limits themselves pass", async () => {
    const m = bm();
    const msg = "sampling options out of range (temperature >= 0, top_k >= 0, 0 < top_p <= 1)";
    for (const sampling of [
      { temperature: -0.5 },
      { temperature: Number.NaN },
      { topP: 0 },
      { topP: -1 },
      { topP: 1.5 },
      { topP: Number.NaN },
      { topK: -1 },
      { topK: Number.NaN },
    ])
      expect(refusal(m, { promptIds: [1], maxNewTokens: 1, sampling }), JSON.stringify(sampling)).toEqual({
        reason: "invalid",
        message: msg,
        details: {},
      });
    expect(m.stats().requestsRejected).toBe(8);
    const ok = [
      { temperature: 0 },
      { topP: 1 },
      { topP: 1e-9 },
      { topK: 0 },
      { temperature: 2, topK: 5, seed: 3 },
    ];
    const rs = await Promise.all(
      ok.map((sampling) => m.submit({ promptIds: [1], maxNewTokens: 1, sampling }).done),
    );
    expect(rs.map((r) => r.outputIds)).toEqual(ok.map(() => [tok(1)]));
    expect(m.stats().requestsRejected).toBe(8);
    await m.shutdown();
  });

  it("token ids 0 and vocab - 1, a one-token prompt and one new token are accepted", async () => {
    const m = bm();
    const r = await m.submit({ promptIds: [0, 63], maxNewTokens: 1 }).done;
    const one = await m.submit({ promptIds: [0], maxNewTokens: 1 }).done;
    expect([r.outputIds, one.outputIds]).toEqual([[tok(2)], [tok(1)]]);
    await m.shutdown();
  });

  it("prompt + max_new_tokens over max_seq_len (32); exactly 32 passes", async () => {
    const m = bm();
    expect(refusal(m, { ...req(20, 13), tag: "t" })).toEqual({
      reason: "too_long",
      message: "t: prompt of 20 tokens + max_new_tokens 13 = 33 exceeds max_seq_len 32",
      details: { promptTokens: 20, maxNewTokens: 13, maxSeqLen: 32 },
    });
    // 20 + 12 = 32 fits max_seq_len, but needs ceil(31 / 4) = 8 blocks of the 6.
    expect(refusal(m, req(20, 12))).toEqual({
      reason: "kv_capacity",
      message: "prompt of 20 tokens + max_new_tokens 12 needs 8 KV blocks of 4 tokens, the pool has 6",
      details: { promptTokens: 20, maxNewTokens: 12, blocksNeeded: 8, blocksTotal: 6, tokensPerBlock: 4 },
    });
    // 6 blocks hold 24 tokens: prompt + max_new_tokens - 1 = 24 passes (the last token is never cached), 25 not.
    expect(refusal(m, req(20, 6)).details).toEqual({
      promptTokens: 20,
      maxNewTokens: 6,
      blocksNeeded: 7,
      blocksTotal: 6,
      tokensPerBlock: 4,
    });
    const r = await m.submit({ ...req(20, 5), ignoreEos: true }).done;
    expect(r.outputIds).toEqual(expected(20, 5));
    const big = manager("guaranteed_no_evict", { kvBlocksTotal: 8 }).bm;
    expect((await big.submit(req(20, 12)).done).outputIds).toEqual(expected(20, 12));
    await m.shutdown();
    await big.shutdown();
  });

  it("after shutdown: shutting_down, counted like the others", async () => {
    const m = bm();
    await m.shutdown();
    expect(refusal(m, { ...req(1, 1), tag: "late" })).toEqual({
      reason: "shutting_down",
      message: "late: the batch manager is shutting down",
      details: {},
    });
    expect(m.stats().requestsRejected).toBe(1);
  });
});

describe("admission", { timeout: 10000 }, () => {
  it("guaranteed_no_evict: two worst cases that fill the pool exactly run together", async () => {
    // A and B: 3 + 4 new tokens, worst case ceil(6 / 4) = 2 blocks each: 2 + 2 = 4, the pool. Step 0 is A's
    // context alone (B is submitted after it was planned); B is admitted beside A's first decode token.
    const { backend, bm, records } = manager("guaranteed_no_evict");
    const a = bm.submit(req(3, 4));
    const b = bm.submit(req(3, 4, 20));
    const rs = await Promise.all([a.done, b.done]);
    expect(backend.plan()).toEqual([["1:3"], ["1:1", "2:3"], ["1:1", "2:1"], ["1:1", "2:1"], ["2:1"]]);
    expect(rs.map((r) => r.outputIds)).toEqual([expected(3, 4), expected(3, 4)]);
    expect(records.map((s) => s.heldBy)).toEqual([null, null, null, null, null]);
    expect(bm.stats().kvBlocksPeakUsed).toBe(4);
    await bm.shutdown();
  });

  it("guaranteed_no_evict: one block more waits for the running request to finish, and nothing overtakes it", async () => {
    // B: 3 + 7 new tokens, worst ceil(9 / 4) = 3: 2 + 3 > 4, B waits (kv_cache) until A is done; C (1 + 1, worst
    // 1 block: 2 + 1 would fit) must not overtake it, and runs beside B (3 + 1 = 4).
    const { backend, bm, records } = manager("guaranteed_no_evict");
    const hs = [bm.submit(req(3, 4)), bm.submit(req(3, 7, 20)), bm.submit(req(1, 1, 40))];
    const rs = await Promise.all(hs.map((h) => h.done));
    expect(backend.plan()).toEqual([
      ["1:3"],
      ["1:1"],
      ["1:1"],
      ["1:1"],
      ["3:1", "2:3"], // one-token sequences first
      ["2:1"],
      ["2:1"],
      ["2:1"],
      ["2:1"],
      ["2:1"],
      ["2:1"],
    ]);
    expect(rs.map((r) => r.outputIds)).toEqual([expected(3, 4), expected(3, 7), expected(1, 1)]);
    expect(records.map((s) => [s.waiting, s.heldBy])).toEqual([
      [0, null],
      [2, "kv_cache"],
      [2, "kv_cache"],
      [2, "kv_cache"],
      ...Array(7).fill([0, null]),
    ]);
    await bm.shutdown();
  });

  it("max_utilization admits what fits the free blocks now, exactly", async () => {
    // A: 5 + 8 new tokens takes 2 blocks for its context; B's 8-token context needs the other 2, exactly the free
    // ones, and is admitted beside A's decode token (guaranteed_no_evict would not: worst 3 + 2 > 4).
    for (const policy of ["max_utilization", "guaranteed_no_evict"] as const) {
      const { backend, bm } = manager(policy);
      const rs = await Promise.all([bm.submit(req(5, 8)).done, bm.submit(req(8, 1, 20)).done]);
      expect(rs.map((r) => r.outputIds)).toEqual([expected(5, 8), expected(8, 1)]);
      expect(backend.plan()[1], policy).toEqual(policy === "max_utilization" ? ["1:1", "2:8"] : ["1:1"]);
      await bm.shutdown();
    }
  });

  it("max_utilization: a context one block over the free ones waits", async () => {
    // B's 9-token context needs 3 blocks, 2 are free: B waits until A is done (A: 5 + 2 new tokens).
    const { backend, bm, records } = manager("max_utilization");
    const rs = await Promise.all([bm.submit(req(5, 2)).done, bm.submit(req(9, 1, 20)).done]);
    expect(rs.map((r) => r.outputIds)).toEqual([expected(5, 2), expected(9, 1)]);
    expect(backend.plan()).toEqual([["1:5"], ["1:1"], ["2:9"]]);
    expect(records.map((s) => s.heldBy)).toEqual([null, "kv_cache", null]);
    await bm.shutdown();
  });

  it("max_batch_size, then max_num_tokens, bound admission; a context chunk takes what is left of the budget", async () => {
    // Step 0: A's context (4 tokens). Step 1: A's decode token, then B (6 + 1) gets the 5 tokens left of the 6;
    // C (2 + 1) waits: for the batch of 2, or with a batch of 8 for the spent budget. Step 2: B's last prompt token
    // (a one-token chunk, first) and C's context.
    for (const [maxBatchSize, heldBy] of [
      [2, "max_batch_size"],
      [8, "max_num_tokens"],
    ] as const) {
      const { backend, bm, records } = manager("guaranteed_no_evict", {
        maxBatchSize,
        maxNumTokens: 6,
        kvBlocksTotal: 16,
      });
      const hs = [bm.submit(req(4, 2)), bm.submit(req(6, 1, 20)), bm.submit(req(2, 1, 40))];
      const rs = await Promise.all(hs.map((h) => h.done));
      expect(rs.map((r) => r.outputIds)).toEqual([expected(4, 2), expected(6, 1), expected(2, 1)]);
      expect(backend.plan()).toEqual([["1:4"], ["1:1", "2:5"], ["2:1", "3:2"]]);
      expect(records.map((s) => [s.waiting, s.heldBy])).toEqual([
        [0, null],
        [1, heldBy],
        [0, null],
      ]);
      await bm.shutdown();
    }
  });
});

describe("pause, resume and cancel under max_utilization", { timeout: 10000 }, () => {
  // A and B: 4 + 9 new tokens each (worst 3 blocks). Step 0: A's context (1 block); step 1: A's decode token (2nd
  // block) and B's context (1 block); step 2: B's first decode token takes the last block. Steps 3, 4: no block
  // needed (7 and 8 tokens). Step 5: A's 9th token needs a 3rd block, none is free: B, the newest, is paused (its
  // 2 blocks freed). Its 8 tokens (4 + 4 generated) need 2 blocks, 1 is free: it waits while A runs to its 9th
  // token (steps 5-8), then recomputes its 8 tokens from position 0 (step 9) and decodes 4 more (steps 10-13).
  const plan = [
    ["1:4"],
    ["1:1", "2:4"],
    ["1:1", "2:1"],
    ["1:1", "2:1"],
    ["1:1", "2:1"],
    ["1:1"],
    ["1:1"],
    ["1:1"],
    ["1:1"],
    ["2:8"],
    ["2:1"],
    ["2:1"],
    ["2:1"],
    ["2:1"],
  ];

  it("pauses the newest request when a decode token needs a block, resumes it by recomputation", async () => {
    const { backend, bm, records } = manager("max_utilization");
    const paused: number[] = [];
    bm.onStep = (s) => {
      records.push(s);
      paused.push(bm.stats().paused);
    };
    const t0 = performance.now();
    const hs = [bm.submit(req(4, 9)), bm.submit(req(4, 9, 20))];
    const rs = await Promise.all(hs.map((h) => h.done));
    const elapsed = performance.now() - t0;
    expect(backend.plan()).toEqual(plan);
    expect(backend.steps[9][0].startPos).toBe(0);
    expect(backend.breaches).toEqual([]);
    expect(rs.map((r) => [r.outputIds, r.finishReason, r.preemptions])).toEqual([
      [expected(4, 9), "length", 0],
      [expected(4, 9), "length", 1],
    ]);
    expect(paused).toEqual([0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
    expect(records.map((s) => s.heldBy)).toEqual([
      null,
      null,
      null,
      null,
      null,
      "kv_cache",
      "kv_cache",
      "kv_cache",
      "kv_cache",
      ...Array(5).fill(null),
    ]);
    // B released at its pause (before step 5), then A and B when they finish.
    expect(backend.releases).toEqual([2, 1, 2]);
    const st = bm.stats();
    expect([st.preemptions, st.kvBlocksFree, st.kvBlocksPeakUsed, st.requestsFinished]).toEqual([1, 4, 4, 2]);
    // B's queue time ends at its first admission (step 1), not at its resumption.
    const b = rs[1].timings;
    expect(b.queueMs).toBeLessThanOrEqual(b.tokenTimesMs[0]);
    expect(b.tokenTimesMs.length).toBe(9);
    expect(b.e2eMs).toBeGreaterThanOrEqual(b.tokenTimesMs[8]);
    expect(b.e2eMs).toBeLessThanOrEqual(elapsed);
    await bm.shutdown();
  });

  it("a paused request cancelled is never resumed; its result says so and the pool comes back", async () => {
    const { backend, bm } = manager("max_utilization");
    const hs = [bm.submit(req(4, 9)), bm.submit(req(4, 9, 20))];
    let n = 0;
    bm.onStep = () => {
      if (n++ === 5) {
        expect(bm.stats().paused).toBe(1);
        hs[1].cancel();
        expect([bm.stats().paused, bm.stats().kvBlocksFree]).toEqual([0, 1]);
      }
    };
    const rs = await Promise.all(hs.map((h) => h.done));
    expect(backend.plan()).toEqual(plan.slice(0, 9));
    expect(rs[0].outputIds).toEqual(expected(4, 9));
    const b = rs[1];
    expect([b.outputIds, b.finishReason, b.preemptions, "stopTokenId" in b]).toEqual([
      expected(4, 4),
      "cancelled",
      1,
      false,
    ]);
    expect(b.timings.ttftMs).toBe(b.timings.tokenTimesMs[0]);
    const st = bm.stats();
    expect([st.paused, st.running, st.queued, st.kvBlocksFree, st.requestsFinished]).toEqual([0, 0, 0, 4, 2]);
    await bm.shutdown();
  });

  it("paused requests resume oldest first, some of them paused more than once", async () => {
    // Many requests in a tight pool: requests are paused and resumed, some more than once. Each must come back
    // while it is the oldest of those paused (the order is the arrival order), and generate its own tokens. (The
    // scheduler keeps the running requests in arrival order and pauses only the newest of them, so a request
    // paused is older than all those already paused: pause()'s search for its place always ends at the front.)
    const seen = { orders: 0, repaused: 0 };
    for (let seed = 1; seed <= 40; seed++) {
      let s = seed;
      const rnd = (k: number) => {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        return (s >>> 8) % k;
      };
      const { backend, bm } = manager("max_utilization", { kvBlocksTotal: 6, maxNumTokens: 8 });
      const rq = Array.from({ length: 6 }, (_, i) => ({
        ...req(1 + rnd(8), 1 + rnd(14), 1 + 8 * i),
        ignoreEos: true,
      }));
      const rs = await Promise.all(rq.map((r) => bm.submit(r).done));
      rs.forEach((r, i) =>
        expect(r.outputIds, `seed ${seed} request ${i}`).toEqual(
          expected(rq[i].promptIds.length, rq[i].maxNewTokens),
        ),
      );
      expect(backend.breaches, `seed ${seed}`).toEqual([]);
      // Replay: a sequence released and seen again later was paused.
      const last = new Map<number, number>();
      backend.steps.forEach((ss, k) => {
        for (const q of ss) last.set(q.seqId, k);
      });
      let r = 0;
      const paused = new Set<number>();
      const pausedTimes = new Map<number, number>();
      const releasesAt = backend.releasesAfter;
      backend.steps.forEach((ss, k) => {
        for (; r < releasesAt.length && releasesAt[r].after <= k; r++) {
          const { id, after } = releasesAt[r];
          if ((last.get(id) ?? -1) >= after) {
            paused.add(id);
            pausedTimes.set(id, (pausedTimes.get(id) ?? 0) + 1);
          }
        }
        for (const q of ss)
          if (paused.has(q.seqId)) {
            expect(q.seqId, `seed ${seed} step ${k}: resumed before ${Math.min(...paused)}`).toBe(
              Math.min(...paused),
            );
            paused.delete(q.seqId);
            seen.orders += paused.size > 0 ? 1 : 0;
          }
      });
      seen.repaused += [...pausedTimes.values()].filter((t) => t > 1).length;
      expect(bm.stats().kvBlocksFree).toBe(6);
      await bm.shutdown();
    }
    // The workloads do exercise the order: resumptions with others still paused, requests paused twice.
    expect(seen.orders).toBeGreaterThan(0);
    expect(seen.repaused).toBeGreaterThan(0);
  });
});

describe("cancel and finish", { timeout: 10000 }, () => {
  it("a queued request cancelled is never scheduled: no tokens, no first-token time, queue time = e2e", async () => {
    const { backend, bm } = manager("guaranteed_no_evict", { maxBatchSize: 1 });
    const hs = [bm.submit(req(2, 3)), bm.submit(req(2, 3, 20)), bm.submit(req(3, 2, 40))];
    expect(bm.stats().queued).toBe(2);
    hs[1].cancel();
    expect(bm.stats().queued).toBe(1);
    const events: unknown[] = [];
    for await (const e of hs[1]) events.push(e);
    expect(events).toEqual([]);
    const rs = await Promise.all(hs.map((h) => h.done));
    expect(rs.map((r) => [r.outputIds, r.finishReason])).toEqual([
      [expected(2, 3), "length"],
      [[], "cancelled"],
      [expected(3, 2), "length"],
    ]);
    expect(rs[1].timings.ttftMs).toBeNaN();
    expect(rs[1].timings.tokenTimesMs).toEqual([]);
    expect(rs[1].timings.queueMs).toBe(rs[1].timings.e2eMs);
    expect(rs[1].timings.e2eMs).toBeGreaterThanOrEqual(0);
    expect(backend.plan()).toEqual([["1:2"], ["1:1"], ["1:1"], ["3:3"], ["3:1"]]);
    expect([bm.stats().requestsFinished, bm.stats().kvBlocksFree]).toEqual([3, 4]);
    await bm.shutdown();
  });

  it("cancelling a finished request, or one twice, changes nothing", async () => {
    const { bm } = manager("guaranteed_no_evict");
    const h = bm.submit(req(2, 2));
    const r = await h.done;
    h.cancel();
    h.cancel();
    expect(await h.done).toBe(r);
    expect(r.finishReason).toBe("length");
    const q = bm.submit(req(2, 14)); // planned at once: cancelled while its first step runs
    q.cancel();
    q.cancel();
    const c = await q.done;
    expect(c.finishReason).toBe("cancelled");
    const st = bm.stats();
    expect([st.requestsFinished, st.kvBlocksFree, st.running, st.queued]).toEqual([2, 4, 0, 0]);
    await bm.shutdown();
  });

  it("a running request cancelled mid-run: its tokens so far, its blocks back, the others go on", async () => {
    const { backend, bm } = manager("guaranteed_no_evict", { kvBlocksTotal: 8 });
    const hs = [
      bm.submit({ ...req(4, 8), ignoreEos: true }),
      bm.submit({ ...req(4, 8, 20), ignoreEos: true }),
    ];
    let n = 0;
    bm.onStep = () => {
      if (++n === 3) hs[0].cancel(); // after step 2: A has 3 tokens
    };
    const rs = await Promise.all(hs.map((h) => h.done));
    expect(rs.map((r) => [r.outputIds, r.finishReason])).toEqual([
      [expected(4, 3), "cancelled"],
      [expected(4, 8), "length"],
    ]);
    expect(
      backend
        .plan()
        .slice(3)
        .every((ss) => ss.every((s) => s.startsWith("2:"))),
    ).toBe(true);
    expect(backend.releases).toEqual([1, 2]);
    expect(bm.stats().kvBlocksFree).toBe(8);
    await bm.shutdown();
  });

  it("results: stopTokenId only for a stop, no error unless there was one", async () => {
    const { bm } = manager("guaranteed_no_evict", { kvBlocksTotal: 8 });
    // Prompt 3 + 5 new: tokens tok(3..7) = 13..17; a stop id 15 ends it after 3 tokens; an eos (63) never comes.
    const stop = await bm.submit({ ...req(3, 5), stopTokenIds: [15] }).done;
    const length = await bm.submit(req(3, 5)).done;
    const end = await bm.submit({ ...req(3, 5), endIds: [14] }).done;
    expect(stop).toEqual({
      outputIds: [13, 14, 15],
      finishReason: "stop",
      stopTokenId: 15,
      preemptions: 0,
      timings: stop.timings,
    });
    expect(Object.keys(length).sort()).toEqual(["finishReason", "outputIds", "preemptions", "timings"]);
    expect([end.outputIds, end.finishReason, end.stopTokenId]).toEqual([[13, 14], "stop", 14]);
    await bm.shutdown();
  });
});
