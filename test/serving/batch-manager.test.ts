// The batch manager on the CPU reference executor: in-flight batching with chunked context must give
// every request exactly the tokens it gets alone (temperature 0), also when max_utilization pauses and
// recomputes requests; blocks come back on finish and cancel; impossible requests are refused at once.
import { beforeAll, describe, expect, it } from "vitest";
import { generate } from "../../src/executor/generate.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import { type HeldBy, type InflightBatchManager, warmupBatchSizes } from "../../src/serving/batch-manager.ts";
import { openBatchManager } from "../../src/serving/open.ts";
import { type GenerationRequest, RequestRejectedError } from "../../src/serving/types.ts";
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

describe("batch manager (CPU reference executor)", () => {
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
    const four = Array.from({ length: 4 }, (_, i) => ({
      promptIds: Array.from({ length: 8 }, (_, k) => 10 * i + k + 1),
      maxNewTokens: 40,
      ignoreEos: true,
    }));
    const rs = await Promise.all(four.map((r) => bm.submit(r).done));
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

  it("warmupBatchSizes: 1-4, then the powers of two up to max_batch_size", () => {
    expect(warmupBatchSizes(1)).toEqual([1]);
    expect(warmupBatchSizes(3)).toEqual([1, 2, 3]);
    expect(warmupBatchSizes(15)).toEqual([1, 2, 3, 4, 8]);
    expect(warmupBatchSizes(64)).toEqual([1, 2, 3, 4, 8, 16, 32, 64]);
    expect(warmupBatchSizes(1000)).toEqual([1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512]);
  });

  it("warmup() runs warmupBatchSizes (capped by max_batch_size), then starts the counters again; requests after it equal alone", async () => {
    const bm = await openBatchManager(dir, { device: "cpu", maxBatchSize: 12, maxNumTokens: 64 });
    const steps: number[] = [];
    bm.onStep = (st) => steps.push(st.decode === st.seqs ? st.seqs : 0); // decode-only steps: their batch
    const w = await bm.warmup();
    expect(w.batchSizes).toEqual([1, 2, 3, 4, 8]);
    // Each size: a context step (8 prompts of 8 tokens fit max_num_tokens 64), then two decode-only steps of that
    // many sequences (the second is where the native runtime captures its graph).
    for (const b of [1, 2, 3, 4, 8]) expect(steps.filter((s) => s === b).length, `batch ${b}`).toBe(2);
    expect(steps.filter((s) => s === 0).length).toBe(5);
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
