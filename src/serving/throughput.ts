// tsllm-bench throughput's measurement: run a dataset through a batch manager (all queued at once, as
// trtllm-bench's offline mode, or at most `concurrency` in flight) and reduce the per-request timings to
// the figures trtllm-bench prints.
import { performance } from "node:perf_hooks";
import type { HeldBy, InflightBatchManager, StepRecord } from "./batch-manager.ts";
import type { DatasetEntry } from "./dataset.ts";
import { failureText, type RequestResult } from "./types.ts";

export interface ThroughputOptions {
  /** Requests in flight at once (default: all). */
  concurrency?: number;
  /** Stop at the engine's eos ids (default false: exactly output_tokens per request, as trtllm-bench). */
  stopAtEos?: boolean;
  onProgress?: (done: number, total: number, outputTokens: number) => void;
}

export interface Percentiles {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  min: number;
  max: number;
}

export interface ThroughputReport {
  num_requests: number;
  total_time_s: number;
  total_input_tokens: number;
  total_output_tokens: number;
  request_throughput_req_s: number;
  output_throughput_tok_s: number;
  /**
   * trtllm-bench's "Per User Output Throughput [w/ ctx]": mean over requests of output tokens / e2e latency (the
   * first token and its TTFT included), tok/s per user.
   */
  per_user_output_throughput_tok_s: number;
  /**
   * trtllm-bench's "Per User Output Speed" (its streaming figure): mean over requests of (output tokens - 1) /
   * (e2e - ttft), 0 for a request of one token; tok/s per user.
   */
  per_user_output_speed_tok_s: number;
  total_token_throughput_tok_s: number;
  ttft_ms: Percentiles;
  tpot_ms: Percentiles;
  itl_ms: Percentiles;
  e2e_ms: Percentiles;
  kv_blocks_total: number;
  kv_blocks_peak_used: number;
  kv_peak_use_pct: number;
  preemptions: number;
  /**
   * What bounded the batch (issue 11: "say what bounded yours"): the most sequences in one step, and how many
   * steps were planned while requests waited, by what held them back (batch-manager.ts HeldBy).
   */
  admission: { peak_batch: number; waiting_steps: Record<HeldBy, number> };
  finish_reasons: Record<string, number>;
  steps: {
    count: number;
    mean_ms: number;
    /** Steady state: steps whose sequences all decoded, with the largest batch seen. */
    decode_steps: number;
    mean_decode_batch: number;
    /** Device idle between steps (waiting for the host) as a share of steps + gaps. */
    host_gap_pct: number;
    mean_host_gap_ms: number;
    /**
     * Where the device time went, by step kind: context-only steps (no sequence decoded), mixed ones (decode
     * tokens packed with context chunks) and decode-only ones: steps, their device time and tokens.
     */
    by_kind: Record<"context" | "mixed" | "decode", { steps: number; ms: number; tokens: number }>;
    /** Full decode batches (batch >= the largest batch seen): mean step time and host gap. */
    full_batch: {
      batch: number;
      steps: number;
      mean_step_ms: number;
      mean_host_gap_ms: number;
      host_gap_pct: number;
    };
  };
}

/**
 * How a report reads pq from the n sorted values: as the tool it mirrors, so its figures compare.
 * - "trtllm": trtllm-bench's PercentileStats, sorted[floor(q·n)], no interpolation (p50 of 10 values is the
 *   6th) — tsllm-bench throughput;
 * - "numpy": numpy.percentile's default (linear between the ranks around q·(n − 1)), which vllm's
 *   benchmark_serving prints — tsllm-bench serve; no values read as 0, as vllm's `np.mean(xs or 0)`.
 * No values under "trtllm": NaN (printed n/a; trtllm-bench's PercentileStats has no answer for an empty list).
 */
export type PercentileRule = "trtllm" | "numpy";

export function percentiles(xs: number[], rule: PercentileRule): Percentiles {
  if (xs.length === 0) {
    // vllm's calculate_metrics (vllm/benchmarks/serve.py) takes np.mean / np.percentile of `xs or 0`: 0, not NaN.
    const none = rule === "numpy" ? 0 : Number.NaN;
    return { mean: none, p50: none, p90: none, p99: none, min: none, max: none };
  }
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  const at = (q: number) => {
    if (rule === "trtllm") return s[Math.min(n - 1, Math.floor(q * n))];
    // numpy's "linear": virtual index (n − 1)·q, its neighbours clipped to the ends, and its lerp (from the
    // upper neighbour when the fraction is ≥ 0.5), written as numpy writes them.
    const v = (n - 1) * q;
    const lo = Math.min(n - 1, Math.max(0, Math.floor(v)));
    const hi = Math.min(n - 1, lo + 1);
    const t = v - Math.floor(v);
    const d = s[hi] - s[lo];
    return t >= 0.5 ? s[hi] - d * (1 - t) : s[lo] + d * t;
  };
  return {
    mean: s.reduce((a, b) => a + b, 0) / n,
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    min: s[0],
    max: s[n - 1],
  };
}

/** Runs entries through bm; requests must fit (callers check max_seq_len first for a clear error). */
export async function runRequests(
  bm: InflightBatchManager,
  entries: DatasetEntry[],
  o: ThroughputOptions = {},
): Promise<{ results: RequestResult[]; seconds: number; steps: StepRecord[] }> {
  const limit = o.concurrency && o.concurrency > 0 ? o.concurrency : entries.length;
  const results: RequestResult[] = new Array(entries.length);
  const steps: StepRecord[] = [];
  bm.onStep = (s) => steps.push(s);
  let next = 0;
  let done = 0;
  let outTokens = 0;
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const launch = () => {
      while (next < entries.length && next - done < limit) {
        const i = next++;
        const e = entries[i];
        const h = bm.submit({
          promptIds: e.inputIds,
          maxNewTokens: e.outputTokens,
          ignoreEos: !o.stopAtEos,
          tag: `request ${e.taskId}`,
        });
        h.done
          .then((r) => {
            if (r.finishReason === "error")
              return reject(new Error(`request ${e.taskId}: ${failureText(r)}`));
            results[i] = r;
            done++;
            outTokens += r.outputIds.length;
            o.onProgress?.(done, entries.length, outTokens);
            if (done === entries.length) resolve();
            else launch(); // a submit that throws here rejects the run (the catch below), as the first ones do
          })
          .catch(reject);
      }
    };
    try {
      launch();
      if (entries.length === 0) resolve();
    } catch (e) {
      reject(e);
    }
  });
  bm.onStep = undefined;
  return { results, seconds: (performance.now() - t0) / 1000, steps };
}

export function summarize(
  entries: DatasetEntry[],
  run: { results: RequestResult[]; seconds: number; steps: StepRecord[] },
  kv: { total: number; peakUsed: number; preemptions: number },
): ThroughputReport {
  const { results, seconds, steps } = run;
  const inTok = entries.reduce((a, e) => a + e.inputIds.length, 0);
  const outTok = results.reduce((a, r) => a + r.outputIds.length, 0);
  const ttft: number[] = [];
  const tpot: number[] = [];
  const itl: number[] = [];
  const e2e: number[] = [];
  const perUser: number[] = [];
  const perUserSpeed: number[] = [];
  const reasons: Record<string, number> = {};
  for (const r of results) {
    const t = r.timings;
    reasons[r.finishReason] = (reasons[r.finishReason] ?? 0) + 1;
    ttft.push(t.ttftMs);
    e2e.push(t.e2eMs);
    const n = t.tokenTimesMs.length;
    // Every request counts, one of a single token too, as trtllm-bench's RequestRecord (bench/dataclasses/
    // statistics.py): intertoken_latency (e2e - ttft) / (n - 1), else 0; output_token_throughput n / e2e;
    // generation_token_throughput (n - 1) / (e2e - ttft).
    const genMs = t.e2eMs - t.ttftMs;
    tpot.push(n > 1 ? genMs / (n - 1) : 0);
    perUser.push((n * 1000) / Math.max(t.e2eMs, 1e-9));
    perUserSpeed.push(n > 1 ? ((n - 1) * 1000) / Math.max(genMs, 1e-9) : 0);
    for (let k = 1; k < n; k++) itl.push(t.tokenTimesMs[k] - t.tokenTimesMs[k - 1]);
  }
  const meanOf = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : Number.NaN);
  // Device time: each step's own time plus the idle gap before it (GPU timeline on cuda).
  const stepMs = (xs: StepRecord[]) =>
    xs.reduce((a, s) => a + (Number.isFinite(s.stepMs) ? s.stepMs : s.ms), 0);
  const gapOf = (xs: StepRecord[]) => xs.reduce((a, s) => a + s.gapMs, 0);
  const gapMs = gapOf(steps);
  const loopMs = stepMs(steps) + gapMs;
  // Decode-only: every sequence of the step decoded one token (no context chunk), one definition for the steady
  // state below and by_kind's "decode".
  const decodeOnly = (s: StepRecord) => s.seqs > 0 && s.decode === s.seqs;
  const decodeSteps = steps.filter(decodeOnly);
  const maxBatch = decodeSteps.reduce((a, s) => Math.max(a, s.seqs), 0);
  const full = decodeSteps.filter((s) => s.seqs === maxBatch);
  const fullStep = stepMs(full);
  const kind = (pick: (s: StepRecord) => boolean) => {
    const xs = steps.filter(pick);
    return { steps: xs.length, ms: stepMs(xs), tokens: xs.reduce((a, s) => a + s.tokens, 0) };
  };
  const fullGap = gapOf(full);
  const waiting: Record<HeldBy, number> = { max_batch_size: 0, max_num_tokens: 0, kv_cache: 0 };
  for (const st of steps) if (st.heldBy) waiting[st.heldBy]++;
  return {
    num_requests: entries.length,
    total_time_s: seconds,
    total_input_tokens: inTok,
    total_output_tokens: outTok,
    request_throughput_req_s: entries.length / seconds,
    output_throughput_tok_s: outTok / seconds,
    per_user_output_throughput_tok_s: meanOf(perUser),
    per_user_output_speed_tok_s: meanOf(perUserSpeed),
    total_token_throughput_tok_s: (inTok + outTok) / seconds,
    ttft_ms: percentiles(ttft, "trtllm"),
    tpot_ms: percentiles(tpot, "trtllm"),
    itl_ms: percentiles(itl, "trtllm"),
    e2e_ms: percentiles(e2e, "trtllm"),
    kv_blocks_total: kv.total,
    kv_blocks_peak_used: kv.peakUsed,
    kv_peak_use_pct: (100 * kv.peakUsed) / kv.total,
    preemptions: kv.preemptions,
    admission: { peak_batch: steps.reduce((a, st) => Math.max(a, st.seqs), 0), waiting_steps: waiting },
    finish_reasons: reasons,
    steps: {
      count: steps.length,
      mean_ms: steps.length ? stepMs(steps) / steps.length : Number.NaN,
      decode_steps: decodeSteps.length,
      mean_decode_batch: decodeSteps.length
        ? decodeSteps.reduce((a, s) => a + s.seqs, 0) / decodeSteps.length
        : Number.NaN,
      host_gap_pct: loopMs ? (100 * gapMs) / loopMs : Number.NaN,
      mean_host_gap_ms: steps.length ? gapMs / steps.length : Number.NaN,
      by_kind: {
        context: kind((s) => s.decode === 0),
        mixed: kind((s) => s.decode > 0 && s.decode < s.seqs),
        decode: kind(decodeOnly),
      },
      full_batch: {
        batch: maxBatch,
        steps: full.length,
        mean_step_ms: full.length ? fullStep / full.length : Number.NaN,
        mean_host_gap_ms: full.length ? fullGap / full.length : Number.NaN,
        host_gap_pct: fullStep + fullGap ? (100 * fullGap) / (fullStep + fullGap) : Number.NaN,
      },
    },
  };
}

const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");

export function formatReport(r: ThroughputReport, header: string[]): string {
  const row = (name: string, p: Percentiles) =>
    `  ${name.padEnd(28)} mean ${f(p.mean)}  p50 ${f(p.p50)}  p90 ${f(p.p90)}  p99 ${f(p.p99)}`;
  const s = r.steps;
  return [
    "===========================================================",
    "= tsllm-bench throughput",
    "===========================================================",
    ...header,
    "-- Requests",
    `  requests                     ${r.num_requests} (${Object.entries(r.finish_reasons)
      .map(([k, v]) => `${k} ${v}`)
      .join(", ")})`,
    `  total time                   ${f(r.total_time_s, 3)} s`,
    `  input / output tokens        ${r.total_input_tokens} / ${r.total_output_tokens}`,
    "-- Throughput",
    `  request throughput           ${f(r.request_throughput_req_s, 3)} req/s`,
    `  total output throughput      ${f(r.output_throughput_tok_s, 1)} tok/s`,
    `  per-user output throughput   ${f(r.per_user_output_throughput_tok_s, 1)} tok/s/user (output tokens / e2e)`,
    `  per-user output speed        ${f(r.per_user_output_speed_tok_s, 1)} tok/s/user (after the first token)`,
    `  total token throughput       ${f(r.total_token_throughput_tok_s, 1)} tok/s`,
    "-- Latency (ms)",
    row("time to first token", r.ttft_ms),
    row("time per output token", r.tpot_ms),
    row("inter-token latency", r.itl_ms),
    row("end-to-end latency", r.e2e_ms),
    "-- KV cache and steps",
    `  peak KV use                  ${r.kv_blocks_peak_used} of ${r.kv_blocks_total} blocks (${f(r.kv_peak_use_pct, 1)}%), preemptions ${r.preemptions}`,
    `  requests held back by        ${(["max_batch_size", "kv_cache", "max_num_tokens"] as const)
      .map((k) => `${k} ${r.admission.waiting_steps[k]}`)
      .join(", ")} steps; peak batch ${r.admission.peak_batch}`,
    `  steps                        ${s.count}, mean ${f(s.mean_ms, 3)} ms; decode-only ${s.decode_steps} (mean batch ${f(s.mean_decode_batch, 1)})`,
    `  host gap between steps       ${f(s.mean_host_gap_ms, 3)} ms mean, ${f(s.host_gap_pct, 2)}% of the step loop`,
    `  device time by step kind     ${(["context", "mixed", "decode"] as const)
      .map((k) => `${k} ${s.by_kind[k].steps} steps ${f(s.by_kind[k].ms, 1)} ms ${s.by_kind[k].tokens} tok`)
      .join(", ")}`,
    `  full decode batch ${String(s.full_batch.batch).padEnd(10)} ${s.full_batch.steps} steps, ${f(s.full_batch.mean_step_ms, 3)} ms/step, host gap ${f(s.full_batch.mean_host_gap_ms, 3)} ms (${f(s.full_batch.host_gap_pct, 2)}%)`,
  ].join("\n");
}
