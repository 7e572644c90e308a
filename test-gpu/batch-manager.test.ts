// The batch manager on the native runtime (tiny-llama fp16): one-by-one and in-flight results, and paused and
// recomputed requests (max_utilization, small pool), all equal the oracle (tsllm_generate, one request at a
// time, no scheduler, no pipelining); cancellation gives every KV block back to the engine's own pool; the
// event loop keeps running while steps run on the GPU.
// Half precision: a batched GEMM may round differently from a batch-1 one, so where two greedy runs part,
// the two tokens must be a near-tie of the logits at that point (checked with the runtime's own logits).
import { beforeAll, describe, expect, it } from "vitest";
import { CudaEngine } from "../src/native/binding.ts";
import { InflightBatchManager, warmupBatchSizes } from "../src/serving/batch-manager.ts";
import { CudaStepBackend } from "../src/serving/cuda-backend.ts";
import type { GenerationRequest, SchedulerPolicy } from "../src/serving/types.ts";
import { tinyEngine } from "./helpers.ts";

let dir: string;

function manager(policy: SchedulerPolicy, o: { kvCacheMaxBlocks?: number; maxNumTokens?: number } = {}) {
  // One logits row per sequence, as openBatchManager asks: the arena is re-planned at load (the oracle's is not).
  const engine = CudaEngine.load(dir, { maxLogitsRows: 32, ...o });
  const bm = new InflightBatchManager(new CudaStepBackend(engine), { policy, eosTokenIds: [508, 511] });
  return { engine, bm };
}

function workload(n: number, seed: number): GenerationRequest[] {
  let s = seed;
  const rnd = (k: number) => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % k;
  };
  return Array.from({ length: n }, (_, i) => ({
    promptIds: Array.from({ length: i === 0 ? 1 : i === 1 ? 200 : 1 + rnd(200) }, () => rnd(500)),
    maxNewTokens: 1 + rnd(40),
  }));
}

const reqs = workload(32, 11);
let alone: number[][];

/** Largest |logit(a) - logit(b)| allowed where two greedy runs pick different tokens (fp16 rounding). */
const TIE = 0.05;

async function tieGap(prompt: readonly number[], prefix: number[], a: number, b: number): Promise<number> {
  const e = CudaEngine.load(dir);
  try {
    const r = e.step([{ id: 1, tokens: [...prompt, ...prefix], startPos: 0 }], { logits: true });
    return Math.abs(r.logits![a] - r.logits![b]);
  } finally {
    e.close();
  }
}

async function expectSameOrTie(got: number[][], label: string) {
  let ties = 0;
  for (let i = 0; i < reqs.length; i++) {
    const a = alone[i];
    const b = got[i];
    const k = a.findIndex((t, j) => b[j] !== t);
    if (k < 0 && a.length === b.length) continue;
    expect(k, `${label} request ${i}: one output is a prefix of the other`).toBeGreaterThanOrEqual(0);
    const gap = await tieGap(reqs[i].promptIds, a.slice(0, k), a[k], b[k]);
    expect(gap, `${label} request ${i} parts at token ${k} (${a[k]} vs ${b[k]})`).toBeLessThan(TIE);
    ties++;
  }
  console.log(`${label}: ${reqs.length - ties} of ${reqs.length} identical, ${ties} part at near-ties`);
  expect(ties).toBeLessThanOrEqual(reqs.length / 4);
}

beforeAll(async () => {
  dir = await tinyEngine("llama", "fp16", {
    maxBatchSize: 32,
    maxNumTokens: 256,
    maxSeqLen: 256,
    tokensPerBlock: 16,
  });
  // The oracle: tsllm_generate (C++ loop, no scheduler, no pipelining), one request at a time, cut after the
  // first eos id as the batch manager stops there.
  const e = CudaEngine.load(dir);
  alone = reqs.map((r) => {
    const t = Array.from(e.generate([r.promptIds], r.maxNewTokens).tokens[0]);
    const k = t.findIndex((x) => x === 508 || x === 511);
    return k < 0 ? t : t.slice(0, k + 1);
  });
  e.close();
});

describe("batch manager on the native runtime", () => {
  it("one request at a time through the pipelined batch manager equals tsllm_generate", async () => {
    const { bm } = manager("guaranteed_no_evict");
    const got: number[][] = [];
    for (const r of reqs) got.push((await bm.submit(r).done).outputIds);
    await bm.shutdown();
    await expectSameOrTie(got, "one-by-one");
  });

  it("in-flight batching (chunked context) equals one-by-one", async () => {
    const { bm } = manager("guaranteed_no_evict", { maxNumTokens: 64 });
    const got = (await Promise.all(reqs.map((r) => bm.submit(r).done))).map((r) => r.outputIds);
    expect(bm.stats().preemptions).toBe(0);
    await bm.shutdown();
    await expectSameOrTie(got, "in-flight");
  });

  it("max_utilization with a small pool pauses, recomputes and equals one-by-one", async () => {
    const { bm } = manager("max_utilization", { maxNumTokens: 64, kvCacheMaxBlocks: 41 });
    expect(bm.limits.kvBlocksTotal).toBe(40);
    const rs = await Promise.all(reqs.map((r) => bm.submit(r).done));
    expect(bm.stats().preemptions).toBeGreaterThan(0);
    await bm.shutdown();
    await expectSameOrTie(
      rs.map((r) => r.outputIds),
      "paused",
    );
  });

  it("cancelling half of 32 running requests frees all their blocks in the engine's pool", async () => {
    const { engine, bm } = manager("guaranteed_no_evict");
    const free0 = engine.info().kvBlocksFree;
    const hs = Array.from({ length: 32 }, (_, i) =>
      bm.submit({ promptIds: [i + 1, 2, 3], maxNewTokens: 200, ignoreEos: true }),
    );
    await Promise.all(
      hs.map(async (h) => {
        for await (const _ of h) break;
      }),
    );
    hs.filter((_, i) => i % 2).forEach((h) => h.cancel());
    const rs = await Promise.all(hs.map((h) => h.done));
    rs.forEach((r, i) => expect(r.finishReason).toBe(i % 2 ? "cancelled" : "length"));
    expect(bm.stats().kvBlocksFree).toBe(bm.limits.kvBlocksTotal);
    expect(engine.info().kvBlocksFree).toBe(free0);
    expect(engine.info().numSequences).toBe(0);
    await bm.shutdown();
  });

  it("warmup() captures the decode graphs of its batch sizes; requests after it capture none and equal tsllm_generate", async () => {
    const { engine, bm } = manager("guaranteed_no_evict");
    expect(engine.info().numCudaGraphs).toBe(0);
    const w = await bm.warmup();
    expect(w.batchSizes).toEqual(warmupBatchSizes(bm.limits.maxBatchSize));
    expect(w.batchSizes.slice(0, 4)).toEqual([1, 2, 3, 4]);
    const graphs = engine.info().numCudaGraphs;
    expect(graphs).toBeGreaterThanOrEqual(3); // batch 3 may pad to 4's graph
    // max_seq_len 256: every context is in the warm-up's length bucket, so its graphs serve any request.
    const four = reqs.slice(0, 4);
    const got = await Promise.all(four.map((r) => bm.submit(r).done));
    expect(engine.info().numCudaGraphs).toBe(graphs);
    for (const [i, r] of four.entries()) {
      const a = alone[i];
      const b = got[i].outputIds;
      const j = a.findIndex((t, x) => b[x] !== t);
      if (j >= 0)
        expect(await tieGap(r.promptIds, a.slice(0, j), a[j], b[j]), `request ${i}`).toBeLessThan(TIE);
      else expect(b).toEqual(a);
    }
    await bm.shutdown();
  });

  it("steps run off the event loop: timers fire while the GPU steps", async () => {
    const { bm } = manager("guaranteed_no_evict");
    let ticks = 0;
    const t = setInterval(() => ticks++, 1);
    const r = await bm.submit({ promptIds: [1, 2, 3], maxNewTokens: 200, ignoreEos: true }).done;
    clearInterval(t);
    await bm.shutdown();
    expect(r.outputIds.length).toBe(200);
    expect(ticks).toBeGreaterThan(10);
  });
});
