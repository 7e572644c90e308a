// tsllm-bench throughput's request driver (src/serving/throughput.ts runRequests) against a scripted batch
// manager whose requests finish when the test says: what is submitted (ids, output_tokens, eos, tag), how many are
// in flight (all, or at most --concurrency), results in dataset order whatever order they finish in, the steps
// recorded through onStep (and onStep given back), the progress callback, the elapsed time, and each way a run
// fails (a request ending in error, a submit that refuses, first or later). No engine runs here.
import { performance } from "node:perf_hooks";
import { describe, expect, it } from "vitest";
import type { InflightBatchManager, StepRecord } from "../../src/serving/batch-manager.ts";
import type { DatasetEntry } from "../../src/serving/dataset.ts";
import { runRequests } from "../../src/serving/throughput.ts";
import {
  type GenerationRequest,
  type RequestHandle,
  RequestRejectedError,
  type RequestResult,
} from "../../src/serving/types.ts";

/** Lets every settled promise's callbacks run (a macrotask after them). */
const flush = () => new Promise((res) => setTimeout(res, 0));

const entry = (taskId: number, inputIds: number[], outputTokens: number): DatasetEntry => ({
  taskId,
  inputIds,
  outputTokens,
});

const ok = (outputIds: number[]): RequestResult => ({
  outputIds,
  finishReason: "length",
  timings: { queueMs: 0, ttftMs: 1, tokenTimesMs: outputIds.map((_, k) => k + 1), e2eMs: outputIds.length },
  preemptions: 0,
});

const stepOf = (seqs: number): StepRecord => ({
  seqs,
  tokens: seqs,
  decode: seqs,
  ms: 1,
  stepMs: 1,
  gapMs: 0,
  waiting: 0,
  heldBy: null,
});

/**
 * A batch manager whose requests finish only when the test calls finish(k, result) (k: the k-th submitted). It
 * records what was submitted, the most requests in flight at once, and reports a step through onStep on each finish.
 * refuse(k): the k-th submit throws that error instead.
 */
class ScriptedManager {
  readonly submitted: GenerationRequest[] = [];
  private settle: ((r: RequestResult) => void)[] = [];
  inFlight = 0;
  mostInFlight = 0;
  onStep?: (s: StepRecord) => void;
  constructor(private readonly refuse: (k: number) => Error | undefined = () => undefined) {}
  submit(req: GenerationRequest): RequestHandle {
    const k = this.submitted.length;
    const err = this.refuse(k);
    if (err) throw err;
    this.submitted.push(req);
    this.inFlight++;
    this.mostInFlight = Math.max(this.mostInFlight, this.inFlight);
    const done = new Promise<RequestResult>((res) => {
      this.settle[k] = res;
    });
    return {
      id: k + 1,
      done,
      cancel: () => {},
      [Symbol.asyncIterator]: () => {
        throw new Error("not streamed here");
      },
    };
  }
  finish(k: number, r: RequestResult): void {
    this.inFlight--;
    this.onStep?.(stepOf(k + 1));
    this.settle[k](r);
  }
  get bm(): InflightBatchManager {
    return this as unknown as InflightBatchManager;
  }
}

const dataset = [
  entry(10, [1, 2, 3], 2),
  entry(11, [4], 1),
  entry(12, [5, 6], 3),
  entry(13, [7, 8, 9, 10], 1),
  entry(14, [11], 2),
];

describe("runRequests", { timeout: 5000 }, () => {
  it("submits every entry at once by default, with its ids, output_tokens, eos ignored and its tag", async () => {
    const m = new ScriptedManager();
    const progress: number[][] = [];
    const p = runRequests(m.bm, dataset, { onProgress: (...a) => progress.push(a) });
    expect(m.submitted).toEqual(
      dataset.map((e) => ({
        promptIds: e.inputIds,
        maxNewTokens: e.outputTokens,
        ignoreEos: true,
        tag: `request ${e.taskId}`,
      })),
    );
    expect(m.mostInFlight).toBe(5);
    // They finish out of order: results come back in dataset order, progress counts requests and tokens so far.
    const outs = [[21, 22], [23], [24, 25, 26], [27], [28, 29]];
    for (const k of [3, 0, 4, 2, 1]) {
      m.finish(k, ok(outs[k]));
      await flush();
    }
    const run = await p;
    expect(run.results).toEqual(outs.map(ok));
    expect(progress).toEqual([
      [1, 5, 1],
      [2, 5, 3],
      [3, 5, 5],
      [4, 5, 8],
      [5, 5, 9],
    ]);
    // One step per finish, as onStep reported them, in order; onStep is given back afterwards.
    expect(run.steps).toEqual([4, 1, 5, 3, 2].map(stepOf));
    expect(m.onStep).toBeUndefined();
  });

  it("stopAtEos submits requests that stop at the engine's eos ids; no onProgress is fine", async () => {
    const m = new ScriptedManager();
    const p = runRequests(m.bm, dataset.slice(0, 2), { stopAtEos: true });
    expect(m.submitted.map((r) => r.ignoreEos)).toEqual([false, false]);
    m.finish(1, ok([3]));
    await flush();
    m.finish(0, ok([1, 2]));
    const run = await p;
    expect(run.results.map((r) => r.outputIds)).toEqual([[1, 2], [3]]);
    expect(m.submitted.map((r) => r.ignoreEos)).toEqual([false, false]);
  });

  it("concurrency 2: at most two in flight, the next entry submitted as one finishes", async () => {
    const m = new ScriptedManager();
    const p = runRequests(m.bm, dataset, { concurrency: 2 });
    expect(m.submitted.map((r) => r.tag)).toEqual(["request 10", "request 11"]);
    m.finish(1, ok([1]));
    await flush();
    expect(m.submitted.map((r) => r.tag)).toEqual(["request 10", "request 11", "request 12"]);
    m.finish(0, ok([2]));
    await flush();
    expect(m.submitted.length).toBe(4);
    m.finish(3, ok([3]));
    await flush();
    m.finish(2, ok([4]));
    await flush();
    expect(m.submitted.length).toBe(5);
    m.finish(4, ok([5]));
    const run = await p;
    expect(run.results.map((r) => r.outputIds)).toEqual([[2], [1], [4], [3], [5]]);
    expect(m.mostInFlight).toBe(2);
  });

  it("concurrency 1 runs one request at a time; 0, a negative count or one over the entries is all at once", async () => {
    const one = new ScriptedManager();
    const p = runRequests(one.bm, dataset.slice(0, 3), { concurrency: 1 });
    for (let k = 0; k < 3; k++) {
      expect(one.submitted.length).toBe(k + 1);
      one.finish(k, ok([k]));
      await flush();
    }
    expect((await p).results.length).toBe(3);
    expect(one.mostInFlight).toBe(1);
    for (const concurrency of [0, -1, 9]) {
      const m = new ScriptedManager();
      const q = runRequests(m.bm, dataset, { concurrency });
      expect(m.submitted.length, `concurrency ${concurrency}`).toBe(5);
      for (let k = 0; k < 5; k++) m.finish(k, ok([k]));
      expect((await q).results.length).toBe(5);
    }
  });

  it("no entries: resolves at once with no results and no steps", async () => {
    // (Nothing is submitted, so no request's finish resolves it; it must not wait.)
    const m = new ScriptedManager();
    const run = await Promise.race([
      runRequests(m.bm, []),
      new Promise<"waiting">((res) => setTimeout(() => res("waiting"), 200)),
    ]);
    expect(run === "waiting" ? run : [run.results, run.steps]).toEqual([[], []]);
    expect(m.submitted).toEqual([]);
  });

  it("seconds: the time from the first submit to the last result", async () => {
    const m = new ScriptedManager();
    const before = performance.now();
    const p = runRequests(m.bm, dataset.slice(0, 1));
    await new Promise((res) => setTimeout(res, 60));
    m.finish(0, ok([1]));
    const { seconds } = await p;
    const after = performance.now();
    expect(seconds).toBeGreaterThanOrEqual(0.05);
    expect(seconds).toBeLessThanOrEqual((after - before) / 1000);
  });

  it("a request that ends in error rejects the run, naming its task and the error", async () => {
    const m = new ScriptedManager();
    const progress: number[] = [];
    const p = runRequests(m.bm, dataset.slice(0, 3), { onProgress: (d) => progress.push(d) });
    m.finish(0, ok([1]));
    await flush();
    m.finish(1, { ...ok([]), finishReason: "error", error: new Error("step 4 failed") });
    await expect(p).rejects.toThrow(/^request 11: step 4 failed$/);
    expect(progress).toEqual([1]);
  });

  it("an error result without an error says the generation failed (not 'undefined')", async () => {
    const m = new ScriptedManager();
    const p = runRequests(m.bm, dataset.slice(0, 1));
    m.finish(0, { ...ok([]), finishReason: "error" });
    await expect(p).rejects.toThrow(/^request 10: generation failed$/);
  });

  it("a submit that refuses rejects the run with that error: the first, or a later one under a concurrency", async () => {
    const refusal = new RequestRejectedError(
      "kv_capacity",
      "request 12: needs 9 KV blocks of 8 tokens, the pool has 4",
    );
    // All at once: the third submit throws while the first two wait.
    const all = new ScriptedManager((k) => (k === 2 ? refusal : undefined));
    await expect(runRequests(all.bm, dataset)).rejects.toBe(refusal);
    expect(all.submitted.length).toBe(2);
    // Concurrency 1: the third is submitted only when the second finishes, from that request's callback; the run
    // must still reject with it, not leave it unhandled and wait for ever.
    const later = new ScriptedManager((k) => (k === 2 ? refusal : undefined));
    const p = runRequests(later.bm, dataset, { concurrency: 1 });
    const settled = p.then(
      () => "resolved",
      (e) => e,
    );
    later.finish(0, ok([1]));
    await flush();
    later.finish(1, ok([2]));
    const outcome = await Promise.race([
      settled,
      new Promise((res) => setTimeout(() => res("still waiting"), 500)),
    ]);
    expect(outcome).toBe(refusal);
    expect(later.submitted.length).toBe(2);
  });
});
