// tsllm-bench serve's client side (like `vllm bench serve`): send a dataset's requests to an
// OpenAI-compatible server as streamed /v1/completions, arriving as a Poisson process at a request
// rate (or all at once) and/or with at most N in flight, and time each token as it arrives.
import { performance } from "node:perf_hooks";
import { createParser } from "eventsource-parser";
import type { DatasetEntry } from "../serving/dataset.ts";
import { type Percentiles, percentiles } from "../serving/throughput.ts";
import { lowbias32 } from "../weights/random.ts";

export interface ServeBenchOptions {
  url: string;
  model: string;
  apiKey?: string;
  /** Requests per second, Poisson arrivals; Infinity sends all at once. */
  requestRate: number;
  /** Most requests in flight (default: no limit). */
  maxConcurrency?: number;
  seed?: number;
  /** SLOs in ms for goodput: a request counts when it meets every one given. */
  goodput?: { ttft?: number; tpot?: number; e2el?: number };
  onProgress?: (done: number, total: number) => void;
}

export interface RequestTiming {
  ok: boolean;
  error?: string;
  promptTokens: number;
  outputTokens: number;
  ttftMs: number;
  /** Gaps between consecutive token-bearing chunks. */
  itlMs: number[];
  e2eMs: number;
}

export interface ServeBenchReport {
  successful_requests: number;
  failed_requests: number;
  first_error?: string;
  request_rate: number | "inf";
  max_concurrency: number | null;
  duration_s: number;
  total_input_tokens: number;
  total_output_tokens: number;
  request_throughput_req_s: number;
  output_throughput_tok_s: number;
  total_token_throughput_tok_s: number;
  goodput_req_s: number | null;
  slo_ms: ServeBenchOptions["goodput"] | null;
  ttft_ms: Percentiles;
  tpot_ms: Percentiles;
  itl_ms: Percentiles;
  e2e_ms: Percentiles;
}

/** One streamed completion request: prompt ids in, exactly outputTokens out (ignore_eos). */
export async function timedRequest(o: ServeBenchOptions, e: DatasetEntry): Promise<RequestTiming> {
  const t0 = performance.now();
  const fail = (error: string): RequestTiming => ({
    ok: false,
    error,
    promptTokens: e.inputIds.length,
    outputTokens: 0,
    ttftMs: Number.NaN,
    itlMs: [],
    e2eMs: performance.now() - t0,
  });
  let res: Response;
  try {
    res = await fetch(`${o.url.replace(/\/+$/, "")}/v1/completions`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {}),
      },
      body: JSON.stringify({
        model: o.model,
        prompt: e.inputIds,
        max_tokens: e.outputTokens,
        temperature: 0,
        ignore_eos: true,
        stream: true,
        return_token_ids: true,
      }),
    });
  } catch (err) {
    return fail((err as Error).message);
  }
  let ttft = Number.NaN;
  let last = 0;
  let end = 0;
  let tokens = 0;
  const itl: number[] = [];
  try {
    if (!res.ok || !res.body) return fail(`HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`);
    // Server-sent events as the standard defines them (CRLF or CR line ends, comments, a data field over several
    // lines), not only as our server and vLLM write them.
    const events: string[] = [];
    const parser = createParser({ onEvent: (ev) => events.push(ev.data) });
    const decoder = new TextDecoder();
    for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
      parser.feed(decoder.decode(part, { stream: true }));
      for (const data of events.splice(0)) {
        if (data === "[DONE]") continue;
        const j = JSON.parse(data) as {
          choices?: { token_ids?: number[]; text?: string }[];
          error?: { message: string };
        };
        if (j.error) return fail(j.error.message);
        if (!j.choices?.length) continue;
        // End to end runs to the last chunk with choices (the one with finish_reason), as vllm's
        // benchmark_serving measures it: not to [DONE], which follows a usage chunk when one is asked for.
        const now = performance.now();
        end = now;
        const n = j.choices.reduce((a, c) => a + (c.token_ids?.length ?? 0), 0);
        if (n === 0) continue;
        if (tokens === 0) ttft = now - t0;
        else itl.push(now - last);
        last = now;
        tokens += n;
      }
    }
  } catch (err) {
    // The connection broke off mid-stream, or an event was not JSON: this request failed, not the benchmark
    // (a rejection here used to end runServeBench, or hang it on a concurrency slot never given back).
    return fail(`reading the response: ${(err as Error).message}`);
  }
  // As vllm's benchmark_serving, a request with no chunk to time failed: without token ids (a server that
  // ignores return_token_ids) it would pass with 0 tokens and a NaN TTFT that spoils every TTFT figure.
  if (tokens === 0) return fail("no token ids in the stream (does the server support return_token_ids?)");
  return {
    ok: true,
    promptTokens: e.inputIds.length,
    outputTokens: tokens,
    ttftMs: ttft,
    itlMs: itl,
    e2eMs: end - t0,
  };
}

/** Seeded exponential inter-arrival gaps (ms) of a Poisson process at `rate` per second. */
export function poissonGaps(n: number, rate: number, seed: number): number[] {
  if (!Number.isFinite(rate)) return new Array(n).fill(0);
  const base = lowbias32(seed >>> 0);
  return Array.from({ length: n }, (_, i) => {
    const u = (lowbias32((base ^ Math.imul(i + 1, 0x9e3779b9)) >>> 0) + 0.5) / 2 ** 32;
    return (-Math.log(u) / rate) * 1000;
  });
}

export async function runServeBench(
  entries: DatasetEntry[],
  o: ServeBenchOptions,
): Promise<{ report: ServeBenchReport; timings: RequestTiming[] }> {
  const gaps = poissonGaps(entries.length, o.requestRate, o.seed ?? 0);
  const limit = o.maxConcurrency && o.maxConcurrency > 0 ? o.maxConcurrency : Infinity;
  let inFlight = 0;
  let done = 0;
  const waiters: (() => void)[] = [];
  const slot = async () => {
    while (inFlight >= limit) await new Promise<void>((r) => waiters.push(r));
    inFlight++;
  };
  const release = () => {
    inFlight--;
    waiters.shift()?.();
  };
  const t0 = performance.now();
  const pending: Promise<RequestTiming>[] = [];
  let at = 0;
  for (const [i, e] of entries.entries()) {
    at += gaps[i];
    const wait = t0 + at - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await slot();
    pending.push(
      timedRequest(o, e).then((t) => {
        release();
        o.onProgress?.(++done, entries.length);
        return t;
      }),
    );
  }
  const timings = await Promise.all(pending);
  const seconds = (performance.now() - t0) / 1000;
  return { report: summarizeServeBench(timings, seconds, o), timings };
}

export function summarizeServeBench(
  timings: RequestTiming[],
  seconds: number,
  o: ServeBenchOptions,
): ServeBenchReport {
  const ok = timings.filter((t) => t.ok);
  const tpot = ok.filter((t) => t.outputTokens > 1).map((t) => (t.e2eMs - t.ttftMs) / (t.outputTokens - 1));
  const slo = o.goodput && Object.keys(o.goodput).length ? o.goodput : null;
  const good = slo
    ? ok.filter((t) => {
        const tp = t.outputTokens > 1 ? (t.e2eMs - t.ttftMs) / (t.outputTokens - 1) : 0;
        return (
          (slo.ttft === undefined || t.ttftMs <= slo.ttft) &&
          (slo.tpot === undefined || tp <= slo.tpot) &&
          (slo.e2el === undefined || t.e2eMs <= slo.e2el)
        );
      }).length
    : null;
  const inTok = ok.reduce((a, t) => a + t.promptTokens, 0);
  const outTok = ok.reduce((a, t) => a + t.outputTokens, 0);
  return {
    successful_requests: ok.length,
    failed_requests: timings.length - ok.length,
    ...(timings.find((t) => !t.ok) ? { first_error: timings.find((t) => !t.ok)!.error } : {}),
    request_rate: Number.isFinite(o.requestRate) ? o.requestRate : "inf",
    max_concurrency: o.maxConcurrency ?? null,
    duration_s: seconds,
    total_input_tokens: inTok,
    total_output_tokens: outTok,
    request_throughput_req_s: ok.length / seconds,
    output_throughput_tok_s: outTok / seconds,
    total_token_throughput_tok_s: (inTok + outTok) / seconds,
    goodput_req_s: good === null ? null : good / seconds,
    slo_ms: slo,
    ttft_ms: percentiles(
      ok.map((t) => t.ttftMs),
      "numpy",
    ),
    tpot_ms: percentiles(tpot, "numpy"),
    itl_ms: percentiles(
      ok.flatMap((t) => t.itlMs),
      "numpy",
    ),
    e2e_ms: percentiles(
      ok.map((t) => t.e2eMs),
      "numpy",
    ),
  };
}

/** The report as vllm bench serve prints it. */
export function formatServeBench(r: ServeBenchReport): string {
  const row = (k: string, v: string | number) =>
    `${k.padEnd(40)}${typeof v === "number" ? v.toFixed(2) : v}\n`;
  const head = (t: string) => `${` ${t} `.padStart(25 + Math.ceil(t.length / 2), "-").padEnd(50, "-")}\n`;
  let s = `${"=".repeat(12)} Serving Benchmark Result ${"=".repeat(12)}\n`;
  s += row("Successful requests:", String(r.successful_requests));
  if (r.failed_requests) s += row("Failed requests:", `${r.failed_requests} (first: ${r.first_error})`);
  s += row("Request rate (req/s):", r.request_rate === "inf" ? "inf" : r.request_rate);
  if (r.max_concurrency !== null) s += row("Maximum request concurrency:", String(r.max_concurrency));
  s += row("Benchmark duration (s):", r.duration_s);
  s += row("Total input tokens:", String(r.total_input_tokens));
  s += row("Total generated tokens:", String(r.total_output_tokens));
  s += row("Request throughput (req/s):", r.request_throughput_req_s);
  if (r.goodput_req_s !== null) {
    s += row("Request goodput (req/s):", r.goodput_req_s);
    s += row(
      "  SLOs:",
      Object.entries(r.slo_ms ?? {})
        .map(([k, v]) => `${k} <= ${v} ms`)
        .join(", "),
    );
  }
  s += row("Output token throughput (tok/s):", r.output_throughput_tok_s);
  s += row("Total token throughput (tok/s):", r.total_token_throughput_tok_s);
  for (const [title, key, p] of [
    ["Time to First Token", "TTFT", r.ttft_ms],
    ["Time per Output Token (excl. 1st token)", "TPOT", r.tpot_ms],
    ["Inter-token Latency", "ITL", r.itl_ms],
    ["End-to-end Latency", "E2EL", r.e2e_ms],
  ] as const) {
    s += head(title);
    s += row(`Mean ${key} (ms):`, p.mean);
    s += row(`Median ${key} (ms):`, p.p50);
    s += row(`P90 ${key} (ms):`, p.p90);
    s += row(`P99 ${key} (ms):`, p.p99);
  }
  return `${s}${"=".repeat(50)}\n`;
}
