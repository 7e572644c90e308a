// The batch manager on the CPU reference executor: in-flight batching with chunked context must give
// every request exactly the tokens it gets alone (temperature 0), also when max_utilization pauses and
// recomputes requests; blocks come back on finish and cancel; impossible requests are refused at once.
// Beside the outputs, a backend that checks every launched step against the scheduler's contract (limits,
// decode tokens first, cache positions, the KV pool, resume order), exact token accounting, timings, the
// exact-fit admission and a failing step (added in session 28 for mutants the others let live: docs/mutation.md).
import { beforeAll, describe, expect, it } from "vitest";
import { openEngine } from "../../src/engine/reader.ts";
import { generate } from "../../src/executor/generate.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import type { BackendSeq, StepBackend, StepOutput } from "../../src/serving/backend.ts";
import { type HeldBy, InflightBatchManager, warmupBatchSizes } from "../../src/serving/batch-manager.ts";
import { CpuStepBackend } from "../../src/serving/cpu-backend.ts";
import { openBatchManager } from "../../src/serving/open.ts";
import {
  type GenerationRequest,
  RequestRejectedError,
  type SchedulerPolicy,
} from "../../src/serving/types.ts";
import { buildFixture } from "../fixtures.ts";

let dir: string;
let eos: number[];
const requests: GenerationRequest[] = [];
let alone: number[][];

/** Deterministic mixed workload: prompts of 1..200 tokens, 1..24 new tokens. */
function workload(n: number, seed: number): GenerationRequest[] {
  let s = seed;
  const rnd = (k: number) => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % k;
  };
  return Array.from({ length: n }, (_, i) => {
    const len = i === 0 ? 1 : i === 1 ? 200 : 1 + rnd(200);
    return {
      promptIds: Array.from({ length: len }, () => rnd(500)),
      maxNewTokens: 1 + rnd(24),
    };
  });
}

beforeAll(async () => {
  dir = await buildFixture("llama", {
    maxSeqLen: 256,
    maxNumTokens: 256,
    maxBatchSize: 16,
    tokensPerBlock: 8,
  });
  const ex = ReferenceExecutor.load(dir);
  eos = ex.engine.config.facts.eosTokenIds;
  requests.push(...workload(64, 7));
  // The oracle: each request alone through the plain generate loop (whole prompt in one step).
  alone = [];
  for (const r of requests) {
    alone.push(generate(ex, [[...r.promptIds]], { maxNewTokens: r.maxNewTokens, eosTokenIds: eos })[0]);
    await new Promise((res) => setImmediate(res)); // keep the worker's event loop (vitest RPC) responsive
  }
  ex.close();
});

/** n requests of 8 prompt tokens and 40 new ones (ignore_eos): 6 blocks of 8 each at the end. */
const growing = (n: number): GenerationRequest[] =>
  Array.from({ length: n }, (_, i) => ({
    promptIds: Array.from({ length: 8 }, (_, k) => 10 * i + k + 1),
    maxNewTokens: 40,
    ignoreEos: true,
  }));

/**
 * Counts bm's steps by what held requests back (held), those planned while nothing waited (quiet), those that name a
 * reason with nothing waiting or none while requests waited (wrong), and those planned while only paused requests
 * waited for blocks, the queue already empty (pausedAlone).
 */
function watchSteps(bm: InflightBatchManager) {
  const w = {
    held: { max_batch_size: 0, max_num_tokens: 0, kv_cache: 0 } as Record<HeldBy, number>,
    quiet: 0,
    wrong: 0,
    pausedAlone: 0,
  };
  bm.onStep = (st) => {
    if ((st.heldBy === null) !== (st.waiting === 0)) w.wrong++;
    if (st.heldBy) w.held[st.heldBy]++;
    else w.quiet++;
    if (bm.stats().queued === 0 && st.waiting > 0 && st.heldBy === "kv_cache") w.pausedAlone++;
  };
  return w;
}

async function runAll(o: Parameters<typeof openBatchManager>[1]) {
  const bm = await openBatchManager(dir, { device: "cpu", ...o });
  const w = watchSteps(bm);
  const handles = requests.map((r) => bm.submit(r));
  const results = await Promise.all(handles.map((h) => h.done));
  const stats = bm.stats();
  await bm.shutdown();
  return { results, stats, ...w };
}

/**
 * A backend over the CPU reference executor that checks every step the scheduler launches against its contract
 * (what the CUDA runtime relies on, and what the CPU executor would not notice): at most max_batch_size sequences
 * and max_num_tokens tokens, no sequence twice, every sequence with tokens (an array of at least one, or null: the
 * token the previous step sampled); decode tokens (one-token sequences) before context chunks (the native runtime
 * runs that prefix through its decode attention kernel); each sequence continuing where its cache ends (startPos =
 * the tokens it has had since its last release, 0 after one: the native KV pool is addressed by it); the cached
 * sequences' KV blocks within the pool. Each breach is written down, not thrown; resumeOrder checks, after
 * the run, the order in which paused requests came back. failAt: the step (0-based) whose launch rejects, as a
 * failing GPU step would.
 */
class ContractBackend implements StepBackend {
  readonly breaches: string[] = [];
  readonly steps: BackendSeq[][] = [];
  peakBlocks = 0;
  private cached = new Map<number, number>();
  /** Each release: the sequence, and how many steps had been launched before it. */
  private releases: { id: number; after: number }[] = [];
  constructor(
    private readonly inner: StepBackend,
    private readonly failAt = -1,
  ) {}
  get vocabSize() {
    return this.inner.vocabSize;
  }
  get limits() {
    return this.inner.limits;
  }
  get info() {
    return this.inner.info;
  }
  step(seqs: readonly BackendSeq[]): Promise<StepOutput> {
    const L = this.limits;
    const k = this.steps.length;
    const n = (s: BackendSeq) => s.tokens?.length ?? 1;
    const bad = (what: string) => this.breaches.push(`step ${k}: ${what}`);
    if (seqs.length > L.maxBatchSize) bad(`${seqs.length} sequences`);
    const tokens = seqs.reduce((a, s) => a + n(s), 0);
    if (tokens > L.maxNumTokens) bad(`${tokens} tokens`);
    if (new Set(seqs.map((s) => s.seqId)).size !== seqs.length) bad("a sequence twice");
    for (const s of seqs)
      if (s.tokens === undefined || n(s) < 1)
        bad(`sequence ${s.seqId} with tokens ${JSON.stringify(s.tokens)}`);
    const firstChunk = seqs.findIndex((s) => n(s) > 1);
    if (firstChunk >= 0 && seqs.slice(firstChunk).some((s) => n(s) === 1))
      bad("a decode token after a context chunk");
    for (const s of seqs) {
      const had = this.cached.get(s.seqId) ?? 0;
      if (s.startPos !== had) bad(`sequence ${s.seqId} at ${s.startPos}, its cache holds ${had}`);
      this.cached.set(s.seqId, had + n(s));
    }
    const blocks = [...this.cached.values()].reduce((a, len) => a + Math.ceil(len / L.tokensPerBlock), 0);
    if (blocks > L.kvBlocksTotal) bad(`${blocks} KV blocks of ${L.kvBlocksTotal}`);
    this.peakBlocks = Math.max(this.peakBlocks, blocks);
    this.steps.push([...seqs]);
    if (k === this.failAt) return Promise.reject(new Error(`step ${k} failed (test)`));
    return this.inner.step(seqs);
  }
  release(seqId: number): void {
    this.cached.delete(seqId);
    this.releases.push({ id: seqId, after: this.steps.length });
    this.inner.release(seqId);
  }
  /**
   * After the run: a released sequence that comes back in a later step was paused; each must come back while it is
   * the oldest (smallest id) of those paused and not yet back (max_utilization resumes oldest first). Also the most
   * requests paused at once (a test of the order needs two).
   */
  resumeOrder(): { breaches: string[]; mostPaused: number } {
    const breaches: string[] = [];
    const last = new Map<number, number>(); // each sequence's last step
    this.steps.forEach((ss, k) => {
      for (const s of ss) last.set(s.seqId, k);
    });
    const paused = new Set<number>();
    let mostPaused = 0;
    let r = 0;
    this.steps.forEach((ss, k) => {
      for (; r < this.releases.length && this.releases[r].after <= k; r++) {
        const { id, after } = this.releases[r];
        if ((last.get(id) ?? -1) >= after) paused.add(id);
        mostPaused = Math.max(mostPaused, paused.size);
      }
      for (const s of ss)
        if (paused.has(s.seqId)) {
          const oldest = Math.min(...paused);
          if (s.seqId !== oldest) breaches.push(`sequence ${s.seqId} resumed before ${oldest}`);
          paused.delete(s.seqId);
        }
    });
    return { breaches, mostPaused };
  }
  close(): void {
    this.inner.close();
  }
}

/** The batch manager over a ContractBackend: the CPU reference executor with these limits. */
function contractManager(o: {
  maxNumTokens: number;
  maxBatchSize?: number;
  kvBlocks?: number;
  policy: SchedulerPolicy;
  overlap?: boolean;
  failAt?: number;
}) {
  const ex = new ReferenceExecutor(openEngine(dir), {
    limits: { max_num_tokens: o.maxNumTokens, max_batch_size: o.maxBatchSize },
  });
  const backend = new ContractBackend(new CpuStepBackend(ex, { kvBlocks: o.kvBlocks }), o.failAt);
  const bm = new InflightBatchManager(backend, { policy: o.policy, eosTokenIds: eos, overlap: o.overlap });
  return { backend, bm };
}

/** Checks what every request's timings and stream say about it: ordered, non-negative, consistent. */
async function checkTimings(h: ReturnType<InflightBatchManager["submit"]>, label: string) {
  const events: { tokenId: number; index: number; timeMs: number }[] = [];
  for await (const e of h) events.push(e);
  const r = await h.done;
  const t = r.timings;
  expect(
    events.map((e) => e.tokenId),
    label,
  ).toEqual(r.outputIds);
  expect(
    events.map((e) => e.index),
    label,
  ).toEqual(r.outputIds.map((_, k) => k));
  expect(
    events.map((e) => e.timeMs),
    label,
  ).toEqual(t.tokenTimesMs);
  expect(
    t.tokenTimesMs.every((x, k) => x >= 0 && (k === 0 || x >= t.tokenTimesMs[k - 1])),
    label,
  ).toBe(true);
  expect(t.queueMs, label).toBeGreaterThanOrEqual(0);
  expect(t.queueMs, label).toBeLessThanOrEqual(t.tokenTimesMs[0]);
  expect(t.ttftMs, label).toBe(t.tokenTimesMs[0]);
  expect(t.e2eMs, label).toBeGreaterThanOrEqual(t.tokenTimesMs.at(-1)!);
  return r;
}

describe("batch manager (CPU reference executor)", () => {
  it("every step keeps the scheduler's contract; one held back by max_num_tokens used the whole budget", async () => {
    // Both policies with a 40-block pool (max_utilization pauses in it), and a roomy pool with a batch of 8.
    for (const c of [
      { maxNumTokens: 64, kvBlocks: 40, policy: "max_utilization" as const },
      { maxNumTokens: 64, kvBlocks: 40, policy: "guaranteed_no_evict" as const },
      { maxNumTokens: 48, maxBatchSize: 8, policy: "guaranteed_no_evict" as const },
    ]) {
      const { backend, bm } = contractManager(c);
      const tokens: number[] = [];
      let underfull = 0;
      let negative = 0;
      let gaps = 0;
      const t0 = performance.now();
      bm.onStep = (st) => {
        tokens.push(st.tokens);
        if (st.heldBy === "max_num_tokens" && st.tokens !== c.maxNumTokens) underfull++;
        // A step's times lie within the run so far; the host time between steps shows as some gaps.
        if (st.waiting < 0 || !(st.ms >= 0 && st.ms <= performance.now() - t0) || !(st.stepMs >= 0))
          negative++;
        if (st.gapMs > 0) gaps++;
      };
      const rs = await Promise.all(requests.slice(0, 32).map((r) => bm.submit(r).done));
      const stats = bm.stats();
      await bm.shutdown();
      const what = JSON.stringify(c);
      rs.forEach((r, i) => expect(r.outputIds, `${what} request ${i}`).toEqual(alone[i]));
      expect(backend.breaches, what).toEqual([]);
      expect(backend.resumeOrder().breaches, what).toEqual([]);
      expect([underfull, negative], what).toEqual([0, 0]);
      expect(gaps, what).toBeGreaterThan(0);
      // The recorded steps are the manager's: its step count and each step's tokens.
      expect(
        backend.steps.map((ss) => ss.reduce((a, s) => a + (s.tokens?.length ?? 1), 0)),
        what,
      ).toEqual(tokens);
      expect(stats.steps, what).toBe(tokens.length);
      if (c.policy === "max_utilization") expect(stats.preemptions, what).toBeGreaterThan(0);
      expect(stats.kvBlocksPeakUsed, what).toBe(backend.peakBlocks);
      expect(stats.kvBlocksFree, what).toBe(stats.kvBlocksTotal);
    }
  });

  it("max_utilization resumes paused requests oldest first, by recomputation from position 0", async () => {
    // 6 requests of 8 + 40 tokens (6 blocks each at the end) in a 12-block pool: admitted together, then the newest
    // are paused as the oldest grow, several at once.
    const { backend, bm } = contractManager({
      maxNumTokens: 64,
      kvBlocks: 12,
      policy: "max_utilization",
    });
    const rs = await Promise.all(growing(6).map((r) => bm.submit(r).done));
    const stats = bm.stats();
    await bm.shutdown();
    expect(rs.every((r) => r.outputIds.length === 40 && r.finishReason === "length")).toBe(true);
    expect(backend.breaches).toEqual([]);
    const order = backend.resumeOrder();
    expect(order.breaches).toEqual([]);
    expect(order.mostPaused).toBeGreaterThanOrEqual(2);
    expect(stats.preemptions).toBe(rs.reduce((a, r) => a + r.preemptions, 0));
    expect(stats.kvBlocksPeakUsed).toBe(12);
  });

  it("counts every token once: prompts computed, decode tokens fed back, tokens generated; timings consistent", async () => {
    // ignore_eos: each request computes its prompt and feeds back every generated token but its last.
    for (const overlap of [true, false]) {
      const { backend, bm } = contractManager({
        maxNumTokens: 40,
        policy: "guaranteed_no_evict",
        overlap,
      });
      let decode = 0;
      bm.onStep = (st) => {
        decode += st.decode;
      };
      const rs = requests.slice(0, 12).map((r) => ({ ...r, ignoreEos: true }));
      const done = await Promise.all(
        rs.map((r, i) => checkTimings(bm.submit(r), `overlap ${overlap} request ${i}`)),
      );
      const stats = bm.stats();
      await bm.shutdown();
      const p = rs.reduce((a, r) => a + r.promptIds.length, 0);
      const m = rs.reduce((a, r) => a + r.maxNewTokens, 0);
      expect(done.map((r) => r.outputIds.length)).toEqual(rs.map((r) => r.maxNewTokens));
      expect(backend.breaches).toEqual([]);
      const fed = backend.steps.flat();
      expect(
        fed.reduce((a, s) => a + (s.tokens?.length ?? 1), 0),
        `overlap ${overlap}`,
      ).toBe(p + m - rs.length);
      expect([stats.promptTokensComputed, decode, stats.tokensGenerated], `overlap ${overlap}`).toEqual([
        p,
        m - rs.length,
        m,
      ]);
      // With overlap a decode token is fed on the device from the step before (tokens null); without, never.
      const pipelined = fed.filter((s) => s.tokens === null).length;
      if (overlap) expect(pipelined).toBeGreaterThan(0);
      else expect(pipelined).toBe(0);
    }
  });

  it("admits a request that needs exactly the whole pool, under both policies", async () => {
    for (const policy of ["guaranteed_no_evict", "max_utilization"] as const) {
      // 8 + 16 tokens: 3 blocks of 8, the whole pool; then a 23-token prompt whose context alone fills it.
      const { backend, bm } = contractManager({ maxNumTokens: 64, kvBlocks: 3, policy });
      const r = await bm.submit({ promptIds: [5, 6, 7, 8, 9, 10, 11, 12], maxNewTokens: 16, ignoreEos: true })
        .done;
      const r2 = await bm.submit({ promptIds: Array.from({ length: 23 }, (_, k) => k + 1), maxNewTokens: 1 })
        .done;
      await bm.shutdown();
      expect([r.finishReason, r.outputIds.length, backend.peakBlocks], policy).toEqual(["length", 16, 3]);
      expect([r2.finishReason, r2.outputIds.length], policy).toEqual(["length", 1]);
    }
  });

  it("a step that fails finishes its requests with the error, frees their blocks, and serving goes on", async () => {
    const { backend, bm } = contractManager({
      maxNumTokens: 64,
      policy: "guaranteed_no_evict",
      failAt: 3,
    });
    const stepMs: number[] = [];
    bm.onStep = (st) => stepMs.push(st.stepMs);
    const hs = requests.slice(0, 4).map((r) => bm.submit(r));
    const rs = await Promise.all(hs.map((h) => h.done));
    const inFailed = new Set(backend.steps[3].map((s) => s.seqId));
    expect(inFailed.size).toBeGreaterThan(0);
    // The failed step is reported with no time of its own; the others with theirs.
    expect(Number.isNaN(stepMs[3])).toBe(true);
    expect(stepMs.filter((t, k) => k !== 3 && !(t >= 0))).toEqual([]);
    hs.forEach((h, i) => {
      if (inFailed.has(h.id)) {
        expect(rs[i].finishReason, `request ${i}`).toBe("error");
        expect(rs[i].error?.message, `request ${i}`).toBe("step 3 failed (test)");
      } else expect(rs[i].outputIds, `request ${i}`).toEqual(alone[i]);
    });
    expect(bm.stats().kvBlocksFree).toBe(bm.stats().kvBlocksTotal);
    const after = await bm.submit(requests[5]).done;
    expect(after.outputIds).toEqual(alone[5]);
    await bm.shutdown();
    expect(backend.breaches).toEqual([]);
  });

  it("a step that fails ends its own requests only, not those of the steps behind it (overlap)", async () => {
    // One request joins each step. Step 2 (A's pipelined token, B's context) fails as a launch fails, sampling
    // nothing. Step 3, launched behind it, feeds B the token step 2 never sampled, so the backend refuses step 3
    // whole, C's context with it. Before, C ended with that error, and so did D, E and F each in turn: each one's
    // pipelined token fed the step behind the one that failed it. C is recomputed instead, and D to F never notice.
    const { backend, bm } = contractManager({ maxNumTokens: 64, policy: "guaranteed_no_evict", failAt: 2 });
    const rq = Array.from({ length: 6 }, (_, i) => ({
      promptIds: [i + 1, 20, 30],
      maxNewTokens: i === 0 ? 12 : 6,
      ignoreEos: true,
    }));
    const hs = [bm.submit(rq[0])];
    bm.onStep = () => {
      if (hs.length < rq.length) hs.push(bm.submit(rq[hs.length]));
    };
    let rs = await Promise.all(hs.map((h) => h.done));
    while (rs.length < hs.length) rs = await Promise.all(hs.map((h) => h.done));
    const ex = ReferenceExecutor.load(dir);
    const want = rq.map((r) => generate(ex, [[...r.promptIds]], { maxNewTokens: r.maxNewTokens })[0]);
    ex.close();
    await bm.shutdown();
    expect(backend.steps[2].map((s) => s.seqId)).toEqual([hs[0].id, hs[1].id]);
    expect(rs.map((r) => [r.finishReason, r.error?.message])).toEqual([
      ["error", "step 2 failed (test)"],
      ["error", "step 2 failed (test)"],
      ...rq.slice(2).map(() => ["length", undefined]),
    ]);
    rs.slice(2).forEach((r, i) => expect(r.outputIds, `request ${i + 2}`).toEqual(want[i + 2]));
    expect(bm.stats().kvBlocksFree).toBe(bm.stats().kvBlocksTotal);
    expect(backend.breaches).toEqual([]);
  });

  it("takes generation_config.json's eos ids over config.json's", () => {
    expect(eos).toEqual([508, 511]);
  });

  it("64 mixed requests with chunked context equal each request alone", async () => {
    const { results, stats, held, quiet, wrong } = await runAll({
      maxNumTokens: 64,
      policy: "guaranteed_no_evict",
    });
    results.forEach((r, i) => {
      expect(r.outputIds, `request ${i}`).toEqual(alone[i]);
      expect(r.finishReason).toBe(
        alone[i].length < requests[i].maxNewTokens
          ? "stop"
          : eos.includes(alone[i].at(-1)!)
            ? "stop"
            : "length",
      );
      expect(r.timings.tokenTimesMs.length).toBe(r.outputIds.length);
    });
    expect(stats.preemptions).toBe(0);
    expect(stats.kvBlocksFree).toBe(stats.kvBlocksTotal);
    expect(stats.requestsFinished).toBe(64);
    // Some stop at an eos id while the next (pipelined) step already includes them.
    expect(results.filter((r) => r.finishReason === "stop").length).toBeGreaterThan(0);
    // 64 requests at once, prompts of up to 200 tokens, 64-token steps: the token budget held requests back, the
    // KV pool (room for 16 whole sequences, the batch) never did, and the last steps ran with nothing waiting.
    expect(held.max_num_tokens).toBeGreaterThan(0);
    expect(held.kv_cache).toBe(0);
    expect(quiet).toBeGreaterThan(0);
    expect(wrong).toBe(0);
  });

  it("says what held requests back: a full batch of short requests", async () => {
    const bm = await openBatchManager(dir, { device: "cpu", maxBatchSize: 4, maxNumTokens: 256 });
    const { held } = watchSteps(bm);
    const short = Array.from({ length: 12 }, (_, i) => ({
      promptIds: [i + 1, 2, 3],
      maxNewTokens: 6,
      ignoreEos: true,
    }));
    const rs = await Promise.all(short.map((r) => bm.submit(r).done));
    await bm.shutdown();
    expect(rs.every((r) => r.outputIds.length === 6)).toBe(true);
    // 12 three-token requests fit any step's 256 tokens and the pool; only the batch of 4 kept 8 of them waiting.
    expect(held.max_batch_size).toBeGreaterThan(0);
    expect([held.max_num_tokens, held.kv_cache]).toEqual([0, 0]);
  });

  it("without step overlap (each step planned after the previous one's tokens are back) the same", async () => {
    const bm = await openBatchManager(dir, { device: "cpu", maxNumTokens: 64, overlap: false });
    const rs = await Promise.all(requests.slice(0, 16).map((r) => bm.submit(r).done));
    await bm.shutdown();
    rs.forEach((r, i) => expect(r.outputIds, `request ${i}`).toEqual(alone[i]));
  });

  it("max_utilization with a small KV pool pauses, resumes by recomputation and still equals alone", async () => {
    const { results, stats, held, wrong } = await runAll({
      maxNumTokens: 64,
      kvBlocks: 40,
      policy: "max_utilization",
    });
    results.forEach((r, i) => expect(r.outputIds, `request ${i}`).toEqual(alone[i]));
    expect(stats.preemptions).toBeGreaterThan(0);
    // Paused requests wait for blocks like queued ones (also once the queue is empty): every step says so.
    expect(held.kv_cache).toBeGreaterThan(0);
    expect(wrong).toBe(0);
    expect(results.some((r) => r.preemptions > 0)).toBe(true);
    expect(stats.kvBlocksPeakUsed).toBeLessThanOrEqual(40);
    expect(stats.kvBlocksFree).toBe(40);
  });

  it("seeded sampling gives each request its tokens alone, also when max_utilization pauses and recomputes it", async () => {
    // The draw depends on (logits, options, seed, position) only: batching, pipelining and a resume by recomputation
    // change none of them on this fp32 engine (logits bit for bit; batch-manager.ts says why half KV may not).
    const sampled = growing(6).map((r, i) => ({
      ...r,
      sampling: { temperature: 1.3, topK: 50, topP: 0.9, seed: 100 + i },
    }));
    const alone: number[][] = [];
    for (const r of sampled) {
      const bm = await openBatchManager(dir, { device: "cpu" });
      alone.push((await bm.submit(r).done).outputIds);
      await bm.shutdown();
    }
    for (const overlap of [true, false]) {
      const bm = await openBatchManager(dir, {
        device: "cpu",
        kvBlocks: 12,
        policy: "max_utilization",
        overlap,
      });
      const rs = await Promise.all(sampled.map((r) => bm.submit(r).done));
      expect(bm.stats().preemptions, `overlap ${overlap}`).toBeGreaterThan(0);
      await bm.shutdown();
      rs.forEach((r, i) => expect(r.outputIds, `overlap ${overlap} request ${i}`).toEqual(alone[i]));
    }
    // (sampling, not greedy decoding: the first request alone at temperature 0 gives other tokens)
    const bm = await openBatchManager(dir, { device: "cpu" });
    const greedy = (await bm.submit({ ...sampled[0], sampling: { temperature: 0 } }).done).outputIds;
    await bm.shutdown();
    expect(greedy).not.toEqual(alone[0]);
  });

  it("guaranteed_no_evict with the same small pool never pauses", async () => {
    const { results, stats, held, wrong } = await runAll({
      maxNumTokens: 64,
      kvBlocks: 40,
      policy: "guaranteed_no_evict",
    });
    results.forEach((r, i) => expect(r.outputIds, `request ${i}`).toEqual(alone[i]));
    expect(stats.preemptions).toBe(0);
    expect(held.kv_cache).toBeGreaterThan(0); // 40 blocks of 8 tokens reserve room for a few requests only
    expect(wrong).toBe(0);
    expect(results.every((r) => r.preemptions === 0)).toBe(true);
    expect(stats.kvBlocksPeakUsed).toBeLessThanOrEqual(40);
  });

  it("paused requests count as waiting once the queue is empty", async () => {
    // 4 requests of 8 + 40 tokens (6 blocks each) in a 12-block pool: all are admitted at once, then the newest
    // are paused as the others grow, while nothing is queued any more.
    const bm = await openBatchManager(dir, { device: "cpu", kvBlocks: 12, policy: "max_utilization" });
    const w = watchSteps(bm);
    const rs = await Promise.all(growing(4).map((r) => bm.submit(r).done));
    const stats = bm.stats();
    await bm.shutdown();
    expect(rs.every((r) => r.outputIds.length === 40)).toBe(true);
    expect(stats.preemptions).toBeGreaterThan(0);
    expect(w.pausedAlone).toBeGreaterThan(0);
    expect(w.wrong).toBe(0);
  });

  it("cancelling half of 32 running requests frees all their blocks", async () => {
    const bm = await openBatchManager(dir, { device: "cpu", maxBatchSize: 32, maxNumTokens: 256 });
    const total = bm.stats().kvBlocksTotal;
    const hs = Array.from({ length: 32 }, (_, i) =>
      bm.submit({ promptIds: [1 + i, 2, 3, 4, 5, 6, 7], maxNewTokens: 40, ignoreEos: true }),
    );
    // Wait until every request has its first token: all 32 are running.
    await Promise.all(
      hs.map(async (h) => {
        for await (const _ of h) break;
      }),
    );
    expect(bm.stats().running).toBe(32);
    expect(bm.stats().kvBlocksFree).toBeLessThan(total);
    hs.filter((_, i) => i % 2).forEach((h) => h.cancel());
    const rs = await Promise.all(hs.map((h) => h.done));
    rs.forEach((r, i) => {
      expect(r.finishReason).toBe(i % 2 ? "cancelled" : "length");
      if (i % 2 === 0) expect(r.outputIds.length).toBe(40);
      else expect(r.outputIds.length).toBeLessThan(40);
    });
    expect(bm.stats().kvBlocksFree).toBe(total);
    expect(bm.stats().running).toBe(0);
    await bm.shutdown();
  });

  it("warmupBatchSizes: 1-4, then the native decode graph sizes (powers of two to 256, then every 128 to 1024) up to max_batch_size", () => {
    expect(warmupBatchSizes(1)).toEqual([1]);
    expect(warmupBatchSizes(3)).toEqual([1, 2, 3]);
    expect(warmupBatchSizes(4)).toEqual([1, 2, 3, 4]);
    // Between two graph sizes: max_batch_size too, for the larger graph it pads to (16, 8, 1024), which the runtime
    // captures as well (load.cc graph_sizes); it was met first inside the timed run.
    expect(warmupBatchSizes(15)).toEqual([1, 2, 3, 4, 8, 15]);
    expect(warmupBatchSizes(6)).toEqual([1, 2, 3, 4, 6]);
    expect(warmupBatchSizes(64)).toEqual([1, 2, 3, 4, 8, 16, 32, 64]);
    expect(warmupBatchSizes(300)).toEqual([1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 300]);
    expect(warmupBatchSizes(1000)).toEqual([
      1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 384, 512, 640, 768, 896, 1000,
    ]);
    expect(warmupBatchSizes(1024).slice(-2)).toEqual([896, 1024]);
    expect(warmupBatchSizes(4096).slice(-3)).toEqual([768, 896, 1024]); // (no graph above 1024: nothing to capture)
  });

  it("warmup() runs warmupBatchSizes (capped by max_batch_size), then starts the counters again; requests after it equal alone", async () => {
    const bm = await openBatchManager(dir, { device: "cpu", maxBatchSize: 12, maxNumTokens: 96 });
    const steps: number[] = [];
    bm.onStep = (st) => steps.push(st.decode === st.seqs ? st.seqs : 0); // decode-only steps: their batch
    const w = await bm.warmup();
    expect(w.batchSizes).toEqual([1, 2, 3, 4, 8, 12]);
    // Each size: a context step (12 prompts of 8 tokens fit max_num_tokens 96), then two decode-only steps of that
    // many sequences (the second is where the native runtime captures its graph: 16 for 12).
    for (const b of [1, 2, 3, 4, 8, 12]) expect(steps.filter((s) => s === b).length, `batch ${b}`).toBe(2);
    expect(steps.filter((s) => s === 0).length).toBe(6);
    expect(w.steps).toBe(steps.length);
    const st = bm.stats();
    expect([st.steps, st.requestsFinished, st.tokensGenerated, st.kvBlocksPeakUsed]).toEqual([0, 0, 0, 0]);
    expect(st.kvBlocksFree).toBe(st.kvBlocksTotal);
    const rs = await Promise.all(requests.slice(0, 6).map((r) => bm.submit(r).done));
    rs.forEach((r, i) => expect(r.outputIds, `request ${i}`).toEqual(alone[i]));
    expect(bm.stats().requestsFinished).toBe(6);
    await expect(
      (async () => {
        bm.submit({ promptIds: [1, 2], maxNewTokens: 50, ignoreEos: true });
        await bm.warmup();
      })(),
    ).rejects.toThrow("before any request");
    await bm.shutdown();
  });

  it("warmup() completes when the KV pool holds fewer of its requests than its largest batch, under both policies", async () => {
    for (const policy of ["guaranteed_no_evict", "max_utilization"] as const) {
      // 3 blocks of 8 tokens: one warm-up request (8 + 3 tokens) at a time.
      const bm = await openBatchManager(dir, {
        device: "cpu",
        maxBatchSize: 16,
        maxNumTokens: 64,
        kvBlocks: 3,
        policy,
      });
      const w = await bm.warmup();
      expect(w.batchSizes, policy).toEqual([1, 2, 3, 4, 8, 16]);
      expect(bm.stats().kvBlocksFree, policy).toBe(bm.stats().kvBlocksTotal);
      await bm.shutdown();
    }
  });

  it("rejects a request that can never fit at submit, with the numbers", async () => {
    const bm = await openBatchManager(dir, { device: "cpu", kvBlocks: 10 });
    const tooLong = () => bm.submit({ promptIds: Array(250).fill(3), maxNewTokens: 10 });
    expect(tooLong).toThrow(RequestRejectedError);
    expect(tooLong).toThrow("prompt of 250 tokens + max_new_tokens 10 = 260 exceeds max_seq_len 256");
    const tooBig = () => bm.submit({ promptIds: Array(100).fill(3), maxNewTokens: 10 });
    expect(tooBig).toThrow("needs 14 KV blocks of 8 tokens, the pool has 10");
    try {
      tooBig();
    } catch (e) {
      expect((e as RequestRejectedError).reason).toBe("kv_capacity");
      expect((e as RequestRejectedError).details).toMatchObject({ blocksNeeded: 14, blocksTotal: 10 });
    }
    expect(() => bm.submit({ promptIds: [512], maxNewTokens: 1 })).toThrow("outside the vocabulary");
    expect(bm.stats().queued).toBe(0);
    await bm.shutdown();
    expect(() => bm.submit({ promptIds: [1], maxNewTokens: 1 })).toThrow("shutting down");
  });

  it("stops at stop token ids; ignore_eos runs to max_new_tokens; streams tokens as they come", async () => {
    const i = alone.findIndex((a) => a.length >= 6);
    const stopAt = alone[i][3];
    const first = alone[i].indexOf(stopAt);
    const bm = await openBatchManager(dir, { device: "cpu" });
    const h = bm.submit({ ...requests[i], stopTokenIds: [stopAt] });
    const streamed: number[] = [];
    for await (const t of h) streamed.push(t.tokenId);
    const r = await h.done;
    expect(r.outputIds).toEqual(alone[i].slice(0, first + 1));
    expect(streamed).toEqual(r.outputIds);
    expect(r.finishReason).toBe("stop");
    expect(r.stopTokenId).toBe(stopAt);
    const big = await bm.submit({
      promptIds: requests[i].promptIds,
      maxNewTokens: 30,
      endIds: [stopAt],
      ignoreEos: true,
    }).done;
    expect(big.outputIds.length).toBe(30);
    expect(big.finishReason).toBe("length");
    await bm.shutdown();
  });
});
