// tsllm-bench throughput's figures (src/serving/throughput.ts) from timings made up by hand: percentiles
// by trtllm-bench's rule (and numpy's, which tsllm-bench serve uses), summarize's throughputs, latencies
// and step figures worked out by hand, and the text report line by line. No engine runs here (test/serving/bench-cli.test.ts runs one end to end).
import { beforeEach, describe, expect, it } from "vitest";
import type { HeldBy, StepRecord } from "../../src/serving/batch-manager.ts";
import type { DatasetEntry } from "../../src/serving/dataset.ts";
import { formatReport, percentiles, summarize } from "../../src/serving/throughput.ts";
import type { FinishReason, RequestResult } from "../../src/serving/types.ts";

const nan = Number.NaN;

describe("percentiles", () => {
  it("trtllm-bench's rule, sorted[floor(q·n)], worked out by hand", () => {
    const ten = [7, 3, 10, 1, 9, 2, 8, 4, 6, 5];
    expect(percentiles(ten, "trtllm")).toEqual({ mean: 5.5, p50: 6, p90: 10, p99: 10, min: 1, max: 10 });
    const hundred = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(percentiles(hundred, "trtllm")).toEqual({
      mean: 50.5,
      p50: 51,
      p90: 91,
      p99: 100,
      min: 1,
      max: 100,
    });
    // 3 values: p50 is sorted[1] (floor 1.5), p90 and p99 sorted[2].
    expect(percentiles([30, 10, 20], "trtllm")).toEqual({
      mean: 20,
      p50: 20,
      p90: 30,
      p99: 30,
      min: 10,
      max: 30,
    });
    expect(percentiles([4, 2], "trtllm")).toEqual({ mean: 3, p50: 4, p90: 4, p99: 4, min: 2, max: 4 });
    expect(percentiles([-1.5], "trtllm")).toEqual({
      mean: -1.5,
      p50: -1.5,
      p90: -1.5,
      p99: -1.5,
      min: -1.5,
      max: -1.5,
    });
  });

  it("numpy.percentile's linear rule, worked out by hand", () => {
    const near = (p: { p50: number; p90: number; p99: number }, want: number[]) =>
      [p.p50, p.p90, p.p99].forEach((v, i) => expect(v).toBeCloseTo(want[i], 12));
    const ten = [7, 3, 10, 1, 9, 2, 8, 4, 6, 5];
    near(percentiles(ten, "numpy"), [5.5, 9.1, 9.91]); // (n − 1)·q = 4.5, 8.1, 8.91
    near(
      percentiles(
        Array.from({ length: 100 }, (_, i) => 100 - i),
        "numpy",
      ),
      [50.5, 90.1, 99.01],
    );
    near(percentiles([30, 10, 20], "numpy"), [20, 28, 29.8]);
    near(percentiles([4, 2], "numpy"), [3, 3.8, 3.98]);
    expect(percentiles([-1.5], "numpy")).toEqual(percentiles([-1.5], "trtllm"));
    expect(percentiles([5, 5, 5], "numpy")).toEqual({ mean: 5, p50: 5, p90: 5, p99: 5, min: 5, max: 5 });
  });

  it("numpy's rule rounds as numpy does: from the upper neighbour when the fraction is 0.5 or more", () => {
    // The two ways of writing the lerp agree in exact arithmetic, not in floating point; the expected values are
    // what numpy 2.4.6's np.percentile prints for the same lists. [1, 1e16]: q·(n − 1) = 0.5, 0.9, 0.99, the span
    // 1e16 − 1 rounds to 1e16; from the upper end 1e16 − 1e16·0.5 = 5e15, from the lower 1 + 5e15 = 5000000000000001.
    const two = percentiles([1e16, 1], "numpy");
    expect([two.p50, two.p90, two.p99]).toEqual([5e15, 9e15, 9.9e15]);
    // Seven values: p90's index 6 · 0.9 has fraction 0.40000000000000036, below 0.5: numpy lerps from the lower
    // neighbour (1), giving 4000000000000004.5 where the upper one (1e16) gives 4000000000000004.
    const seven = percentiles([0, 0, 0, 0, 0, 1, 1e16], "numpy");
    expect([seven.p50, seven.p90, seven.p99]).toEqual([0, 4000000000000004.5, 9399999999999996]);
  });

  it("sorts numbers as numbers and leaves its input as it was", () => {
    const xs = [100, 9, 10, 80];
    expect(percentiles(xs, "trtllm")).toEqual({ mean: 49.75, p50: 80, p90: 100, p99: 100, min: 9, max: 100 });
    expect(percentiles(xs, "numpy").p50).toBe(45); // between 10 and 80
    expect(xs).toEqual([100, 9, 10, 80]);
  });

  it("agree with independent oracles on random data", () => {
    // trtllm: the value v at sorted rank k = min(n − 1, floor(q·n)) has at most k values below it and more
    // than k at or below it. numpy: the inverse of the piecewise-linear curve through (i / (n − 1), sorted[i]).
    const rankOk = (xs: number[], q: number, v: number) => {
      const k = Math.min(xs.length - 1, Math.floor(q * xs.length));
      return xs.filter((x) => x < v).length <= k && xs.filter((x) => x <= v).length > k;
    };
    const curve = (xs: number[], q: number) => {
      const s = [...xs].sort((a, b) => a - b);
      if (s.length === 1) return s[0];
      for (let i = 0; i + 1 < s.length; i++) {
        const q0 = i / (s.length - 1),
          q1 = (i + 1) / (s.length - 1);
        if (q <= q1 + 1e-15) return s[i] + ((s[i + 1] - s[i]) * (q - q0)) / (q1 - q0);
      }
      return s[s.length - 1];
    };
    let seed = 11;
    for (const n of [1, 2, 5, 19, 20, 99, 101, 250]) {
      const xs = Array.from({ length: n }, () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % 1000);
      const t = percentiles(xs, "trtllm");
      const p = percentiles(xs, "numpy");
      for (const [q, a, b] of [
        [0.5, t.p50, p.p50],
        [0.9, t.p90, p.p90],
        [0.99, t.p99, p.p99],
      ]) {
        expect(rankOk(xs, q, a), `trtllm n ${n} q ${q}`).toBe(true);
        expect(b, `numpy n ${n} q ${q}`).toBeCloseTo(curve(xs, q), 9);
      }
      for (const r of [t, p]) expect([r.min, r.max]).toEqual([Math.min(...xs), Math.max(...xs)]);
    }
  });

  it("no values: every figure NaN by trtllm-bench's rule, 0 by vllm's (np.mean / np.percentile of `xs or 0`)", () => {
    expect(percentiles([], "trtllm")).toEqual({
      mean: nan,
      p50: nan,
      p90: nan,
      p99: nan,
      min: nan,
      max: nan,
    });
    // vllm/benchmarks/serve.py calculate_metrics: np.mean(tpots or 0), np.percentile(tpots or 0, p) on no values.
    expect(percentiles([], "numpy")).toEqual({ mean: 0, p50: 0, p90: 0, p99: 0, min: 0, max: 0 });
  });
});

const entry = (n: number, taskId = 0): DatasetEntry => ({
  taskId,
  inputIds: Array(n).fill(1),
  outputTokens: 1,
});
const result = (
  finishReason: FinishReason,
  ttftMs: number,
  tokenTimesMs: number[],
  e2eMs: number,
): RequestResult => ({
  outputIds: tokenTimesMs.map((_, i) => i),
  finishReason,
  timings: { queueMs: 0, ttftMs, tokenTimesMs, e2eMs },
  preemptions: 0,
});
const step = (
  seqs: number,
  decode: number,
  ms: number,
  stepMs: number,
  gapMs: number,
  tokens = 0,
  heldBy: HeldBy | null = null,
): StepRecord => ({
  seqs,
  tokens,
  decode,
  ms,
  stepMs,
  gapMs,
  waiting: heldBy ? 1 : 0,
  heldBy,
});

/** Three requests, five steps; the figures below are worked out from these by hand. */
const entries = [entry(4), entry(2, 1), entry(6, 2)];
const run = {
  results: [
    result("length", 10, [10, 14, 20, 30], 31), // tpot (31 − 10) / 3 = 7, itl 4 6 10
    result("stop", 5, [5], 6), // one token: tpot 0, no itl
    result("length", 8, [8, 18], 20), // tpot (20 − 8) / 1 = 12, itl 10
  ],
  seconds: 2,
  steps: [
    step(4, 0, 5, 4, 0, 12, "kv_cache"), // context, the most sequences; a request waited for KV blocks
    step(3, 3, 3, 2, 1, 3, "max_batch_size"), // decode, the largest batch
    step(2, 2, 3, nan, 0.5, 2, "max_batch_size"), // decode, no device time: its 3 ms on the host count
    step(3, 3, 2, 2, 0.5, 3), // decode, the largest batch; nothing waited
    step(2, 1, 2, 2, 0, 4, "max_num_tokens"), // mixed: one decode token and a 3-token context chunk
  ],
};
const kv = { total: 64, peakUsed: 16, preemptions: 2 };
/** One request of one token, no steps, no KV blocks used: the figures that cannot be had are NaN. */
const oneToken = (seconds: number) =>
  summarize([entry(2)], { results: [result("stop", 4, [4], 4)], seconds, steps: [] }, { ...kv, peakUsed: 0 });

describe("summarize", () => {
  // Computed in each test, not in the describe body: Stryker turns a mutant on before a file's tests run, after its
  // describe bodies have been collected, so a report made there would show the unmutated code (session 32).
  let r: ReturnType<typeof summarize>;
  beforeEach(() => {
    r = summarize(entries, run, kv);
  });

  it("counts, throughputs and finish reasons", () => {
    expect(r.num_requests).toBe(3);
    expect(r.total_time_s).toBe(2);
    expect(r.total_input_tokens).toBe(12);
    expect(r.total_output_tokens).toBe(7);
    expect(r.request_throughput_req_s).toBe(1.5);
    expect(r.output_throughput_tok_s).toBe(3.5);
    expect(r.total_token_throughput_tok_s).toBe(9.5);
    // trtllm-bench: mean of n / e2e (4 / 31 ms, 1 / 6 ms, 2 / 20 ms) and of (n − 1) / (e2e − ttft) (3 / 21 ms, 0, 1 / 12 ms)
    expect(r.per_user_output_throughput_tok_s).toBeCloseTo((4000 / 31 + 1000 / 6 + 100) / 3, 9);
    expect(r.per_user_output_speed_tok_s).toBeCloseTo((1000 / 7 + 0 + 1000 / 12) / 3, 9);
    expect(r.finish_reasons).toEqual({ length: 2, stop: 1 });
    expect(r.admission).toEqual({
      peak_batch: 4,
      waiting_steps: { max_batch_size: 2, max_num_tokens: 1, kv_cache: 1 },
    });
    expect([r.kv_blocks_total, r.kv_blocks_peak_used, r.kv_peak_use_pct, r.preemptions]).toEqual([
      64, 16, 25, 2,
    ]);
  });

  it("latencies: ttft, e2e and tpot of every request (tpot 0 for one token), itl of those with two or more", () => {
    expect(r.ttft_ms).toEqual({ mean: 23 / 3, p50: 8, p90: 10, p99: 10, min: 5, max: 10 });
    expect(r.e2e_ms).toEqual({ mean: 19, p50: 20, p90: 31, p99: 31, min: 6, max: 31 });
    expect(r.tpot_ms).toEqual({
      mean: 19 / 3, // 7, 0, 12
      p50: 7, // trtllm-bench's rule: sorted[floor(0.5 · 3)]
      p90: 12,
      p99: 12,
      min: 0,
      max: 12,
    });
    expect(r.itl_ms).toEqual({ mean: 7.5, p50: 10, p90: 10, p99: 10, min: 4, max: 10 }); // 4 6 10 10: sorted[2]
  });

  it("steps: device time, decode-only steps, host gaps, the full decode batch", () => {
    const s = r.steps;
    expect([s.count, s.decode_steps]).toEqual([5, 3]);
    expect(s.mean_ms).toBeCloseTo(13 / 5, 12); // 4 + 2 + 3 + 2 + 2
    expect(s.mean_decode_batch).toBeCloseTo(8 / 3, 12);
    expect(s.host_gap_pct).toBeCloseTo((100 * 2) / 15, 12); // gaps 2 of 13 + 2
    expect(s.mean_host_gap_ms).toBeCloseTo(0.4, 12);
    expect(s.by_kind).toEqual({
      context: { steps: 1, ms: 4, tokens: 12 },
      mixed: { steps: 1, ms: 2, tokens: 4 },
      decode: { steps: 3, ms: 7, tokens: 8 }, // 2 + 3 (host) + 2
    });
    expect(s.full_batch).toEqual({
      batch: 3,
      steps: 2,
      mean_step_ms: 2,
      mean_host_gap_ms: 0.75,
      host_gap_pct: 150 / 5.5,
    });
  });

  it("a request whose tokens came at once counts a finite per-user figure", () => {
    const z = summarize([entry(1)], { results: [result("length", 3, [3, 3], 3)], seconds: 1, steps: [] }, kv);
    expect(z.tpot_ms.mean).toBe(0);
    expect(z.itl_ms.max).toBe(0);
    expect(z.per_user_output_throughput_tok_s).toBeCloseTo(2000 / 3, 9);
    expect(Number.isFinite(z.per_user_output_speed_tok_s)).toBe(true);
    expect(z.per_user_output_speed_tok_s).toBeGreaterThan(1e11); // 1 token in at most 1e-9 ms
  });

  it("a step without sequences is no decode-only step: decode_steps counts what by_kind's decode counts", () => {
    const z = summarize(entries, { ...run, steps: [...run.steps, step(0, 0, 1, 1, 0)] }, kv).steps;
    expect([z.decode_steps, z.by_kind.decode.steps, z.by_kind.context.steps]).toEqual([3, 3, 2]);
    expect(z.mean_decode_batch).toBeCloseTo(8 / 3, 12);
  });

  it("a full decode batch that waited on the host as long as it ran: half the loop is gap", () => {
    const steps = [step(2, 2, 3, 1, 1), step(2, 2, 3, 1, 1)];
    expect(summarize([entry(1)], { ...run, steps }, kv).steps.full_batch.host_gap_pct).toBe(50);
  });

  it("no steps and no decoded tokens: NaN, not 0 or Infinity; one token's tpot and speed 0, as trtllm-bench's", () => {
    const z = oneToken(0.5);
    expect(z.per_user_output_throughput_tok_s).toBe(250); // 1 token in 4 ms
    expect(z.per_user_output_speed_tok_s).toBe(0);
    expect(z.tpot_ms).toEqual({ mean: 0, p50: 0, p90: 0, p99: 0, min: 0, max: 0 });
    expect(z.itl_ms.mean).toBeNaN();
    expect(z.steps).toEqual({
      count: 0,
      mean_ms: nan,
      decode_steps: 0,
      mean_decode_batch: nan,
      host_gap_pct: nan,
      mean_host_gap_ms: nan,
      by_kind: {
        context: { steps: 0, ms: 0, tokens: 0 },
        mixed: { steps: 0, ms: 0, tokens: 0 },
        decode: { steps: 0, ms: 0, tokens: 0 },
      },
      full_batch: { batch: 0, steps: 0, mean_step_ms: nan, mean_host_gap_ms: nan, host_gap_pct: nan },
    });
  });
});

describe("summarize: trtllm-bench's per-request figures", () => {
  // Four requests whose end (e2e) comes after their last token, one of a single token. Each expected value is
  // trtllm-bench's RequestRecord formula (tensorrt_llm/bench/dataclasses/statistics.py) worked out by hand:
  // intertoken_latency (e2e − ttft) / (n − 1), 0 when n = 1; output_token_throughput n / e2e;
  // generation_token_throughput (n − 1) / (e2e − ttft); PercentileStats sorted[int(q · n)].
  const four = {
    results: [
      result("length", 20, [20, 30, 45, 50], 52), // tpot 32 / 3, 4 / 52 ms, 3 / 32 ms
      result("stop", 12, [12], 15), // tpot 0, 1 / 15 ms, speed 0
      result("length", 40, [40, 60], 60), // tpot 20, 2 / 60 ms, 1 / 20 ms
      result("length", 5, [5, 10, 15], 17), // tpot 6, 3 / 17 ms, 2 / 12 ms
    ],
    seconds: 1,
    steps: [],
  };
  const ents = [entry(1), entry(1, 1), entry(1, 2), entry(1, 3)];

  it("TPOT is (e2e − ttft) / (n − 1) of every request, 0 for one token, read by sorted[int(q · n)]", () => {
    const r = summarize(ents, four, kv);
    // sorted: 0, 6, 32 / 3, 20; p50 sorted[2], p90 sorted[int(3.6)] = sorted[3], p99 sorted[3]
    expect(r.tpot_ms.mean).toBeCloseTo((0 + 6 + 32 / 3 + 20) / 4, 12);
    expect([r.tpot_ms.p50, r.tpot_ms.p90, r.tpot_ms.p99, r.tpot_ms.min, r.tpot_ms.max]).toEqual([
      32 / 3,
      20,
      20,
      0,
      20,
    ]);
  });

  it("per-user output throughput is the mean of n / e2e (trtllm-bench's [w/ ctx]); output speed the mean of (n − 1) / (e2e − ttft)", () => {
    const r = summarize(ents, four, kv);
    expect(r.per_user_output_throughput_tok_s).toBeCloseTo(
      (4000 / 52 + 1000 / 15 + 2000 / 60 + 3000 / 17) / 4,
      9,
    );
    expect(r.per_user_output_speed_tok_s).toBeCloseTo((3000 / 32 + 0 + 1000 / 20 + 2000 / 12) / 4, 9);
  });
});

describe("formatReport", () => {
  it("the report of the three requests above, header lines after the title", () => {
    const text = formatReport(summarize(entries, run, kv), ["engine  /tmp/e", "device  cpu"]);
    expect(text.split("\n")).toEqual([
      "===========================================================",
      "= tsllm-bench throughput",
      "===========================================================",
      "engine  /tmp/e",
      "device  cpu",
      "-- Requests",
      "  requests                     3 (length 2, stop 1)",
      "  total time                   2.000 s",
      "  input / output tokens        12 / 7",
      "-- Throughput",
      "  request throughput           1.500 req/s",
      "  total output throughput      3.5 tok/s",
      "  per-user output throughput   131.9 tok/s/user (output tokens / e2e)",
      "  per-user output speed        75.4 tok/s/user (after the first token)",
      "  total token throughput       9.5 tok/s",
      "-- Latency (ms)",
      "  time to first token          mean 7.67  p50 8.00  p90 10.00  p99 10.00",
      "  time per output token        mean 6.33  p50 7.00  p90 12.00  p99 12.00",
      "  inter-token latency          mean 7.50  p50 10.00  p90 10.00  p99 10.00",
      "  end-to-end latency           mean 19.00  p50 20.00  p90 31.00  p99 31.00",
      "-- KV cache and steps",
      "  peak KV use                  16 of 64 blocks (25.0%), preemptions 2",
      "  requests held back by        max_batch_size 2, kv_cache 1, max_num_tokens 1 steps; peak batch 4",
      "  steps                        5, mean 2.600 ms; decode-only 3 (mean batch 2.7)",
      "  host gap between steps       0.400 ms mean, 13.33% of the step loop",
      "  device time by step kind     context 1 steps 4.0 ms 12 tok, mixed 1 steps 2.0 ms 4 tok, decode 3 steps 7.0 ms 8 tok",
      "  full decode batch 3          2 steps, 2.000 ms/step, host gap 0.750 ms (27.27%)",
    ]);
  });

  it("figures that are NaN or infinite print as n/a", () => {
    const z = oneToken(0);
    expect(formatReport(z, []).split("\n").slice(3)).toEqual([
      "-- Requests",
      "  requests                     1 (stop 1)",
      "  total time                   0.000 s",
      "  input / output tokens        2 / 1",
      "-- Throughput",
      "  request throughput           n/a req/s",
      "  total output throughput      n/a tok/s",
      "  per-user output throughput   250.0 tok/s/user (output tokens / e2e)",
      "  per-user output speed        0.0 tok/s/user (after the first token)",
      "  total token throughput       n/a tok/s",
      "-- Latency (ms)",
      "  time to first token          mean 4.00  p50 4.00  p90 4.00  p99 4.00",
      "  time per output token        mean 0.00  p50 0.00  p90 0.00  p99 0.00",
      "  inter-token latency          mean n/a  p50 n/a  p90 n/a  p99 n/a",
      "  end-to-end latency           mean 4.00  p50 4.00  p90 4.00  p99 4.00",
      "-- KV cache and steps",
      "  peak KV use                  0 of 64 blocks (0.0%), preemptions 2",
      "  requests held back by        max_batch_size 0, kv_cache 0, max_num_tokens 0 steps; peak batch 0",
      "  steps                        0, mean n/a ms; decode-only 0 (mean batch n/a)",
      "  host gap between steps       n/a ms mean, n/a% of the step loop",
      "  device time by step kind     context 0 steps 0.0 ms 0 tok, mixed 0 steps 0.0 ms 0 tok, decode 0 steps 0.0 ms 0 tok",
      "  full decode batch 0          0 steps, n/a ms/step, host gap n/a ms (n/a%)",
    ]);
  });
});
