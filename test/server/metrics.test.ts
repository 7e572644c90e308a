// ServerMetrics read back through prom-client's own text exposition format (what /metrics serves):
// counters and histograms after hand-worked requests (latencies in seconds, each in the bucket a
// Prometheus `le` bound puts it), the scheduler gauges read from the batch manager at scrape time,
// and one registry per server.
import { describe, expect, it } from "vitest";
import { ServerMetrics } from "../../src/server/metrics.ts";
import type { BatchManager, BatchStats, RequestResult } from "../../src/serving/types.ts";

/** A manager of which only stats() is read, its figures set by the test. */
function managerWith(s: Partial<BatchStats>): { manager: BatchManager; stats: Partial<BatchStats> } {
  const stats = { queued: 0, running: 0, paused: 0, kvBlocksTotal: 0, kvBlocksFree: 0, ...s };
  return { manager: { stats: () => stats } as unknown as BatchManager, stats };
}

/** Prometheus text → samples by 'name{labels}' as written, plus each metric's TYPE. */
async function scrape(
  m: ServerMetrics,
): Promise<{ samples: Map<string, number>; types: Map<string, string> }> {
  const text = await m.registry.metrics();
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    const t = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (t) types.set(t[1], t[2]);
    if (line === "" || line.startsWith("#")) continue;
    const s = /^(\S+?(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (!s) throw new Error(`not a sample line: ${line}`);
    samples.set(s[1], Number(s[2]));
  }
  return { samples, types };
}

function result(outputIds: number[], tokenTimesMs: number[], e2eMs: number): RequestResult {
  return {
    outputIds,
    finishReason: "stop",
    timings: { queueMs: 0, ttftMs: tokenTimesMs[0] ?? Number.NaN, tokenTimesMs, e2eMs },
    preemptions: 0,
  } as RequestResult;
}

const TTFT = "tsllm_time_to_first_token_seconds";
const ITL = "tsllm_inter_token_latency_seconds";
const E2E = "tsllm_e2e_request_latency_seconds";

describe("ServerMetrics", () => {
  it("declares vLLM's metrics under the tsllm_ prefix, with their Prometheus types, all zero at start", async () => {
    const { samples, types } = await scrape(new ServerMetrics(managerWith({}).manager));
    expect(Object.fromEntries(types)).toEqual({
      tsllm_http_requests_total: "counter",
      tsllm_request_success_total: "counter",
      tsllm_prompt_tokens_total: "counter",
      tsllm_generation_tokens_total: "counter",
      [TTFT]: "histogram",
      [ITL]: "histogram",
      [E2E]: "histogram",
      tsllm_num_requests_waiting: "gauge",
      tsllm_num_requests_running: "gauge",
      tsllm_num_requests_paused: "gauge",
      tsllm_kv_cache_blocks_total: "gauge",
      tsllm_kv_cache_blocks_free: "gauge",
      tsllm_kv_cache_usage_perc: "gauge",
    });
    expect(samples.get("tsllm_prompt_tokens_total")).toBe(0);
    expect(samples.get("tsllm_generation_tokens_total")).toBe(0);
    for (const h of [TTFT, ITL, E2E]) {
      expect(samples.get(`${h}_count`)).toBe(0);
      expect(samples.get(`${h}_bucket{le="+Inf"}`)).toBe(0);
    }
  });

  it("counts HTTP requests by endpoint and status code", async () => {
    const m = new ServerMetrics(managerWith({}).manager);
    m.request("/v1/completions", 200);
    m.request("/v1/completions", 200);
    m.request("/v1/completions", 400);
    m.request("/v1/chat/completions", 200);
    const { samples } = await scrape(m);
    const key = (e: string, s: string) => `tsllm_http_requests_total{endpoint="${e}",status="${s}"}`;
    expect(samples.get(key("/v1/completions", "200"))).toBe(2);
    expect(samples.get(key("/v1/completions", "400"))).toBe(1);
    expect(samples.get(key("/v1/chat/completions", "200"))).toBe(1);
    expect([...samples.keys()].filter((k) => k.startsWith("tsllm_http_requests_total"))).toHaveLength(3);
  });

  it("a finished request: token counts, TTFT and the gaps between tokens and submit-to-finish in seconds", async () => {
    const m = new ServerMetrics(managerWith({}).manager);
    // Tokens at 10, 12 and 20 ms after submit, finished at 25 ms: TTFT 0.010 s, gaps 0.002 s and
    // 0.008 s, end to end 0.025 s.
    m.finishedRequest(5, "stop", result([7, 8, 9], [10, 12, 20], 25));
    // Cut off before any token (e.g. cancelled in the queue): no TTFT, no gap, its latency still counts.
    m.finishedRequest(4, "cancelled", result([], [], 300));
    // One token: a TTFT of 0.050 s, no gap.
    m.finishedRequest(2, "length", result([1], [50], 60));
    const { samples } = await scrape(m);
    expect(samples.get('tsllm_request_success_total{finish_reason="stop"}')).toBe(1);
    // A cancelled request is vLLM's "abort" (its FinishReason: stop, length, abort, error), as the responses say.
    expect(samples.get('tsllm_request_success_total{finish_reason="abort"}')).toBe(1);
    expect(samples.get('tsllm_request_success_total{finish_reason="cancelled"}')).toBeUndefined();
    expect(samples.get('tsllm_request_success_total{finish_reason="length"}')).toBe(1);
    expect(samples.get("tsllm_prompt_tokens_total")).toBe(11);
    expect(samples.get("tsllm_generation_tokens_total")).toBe(4);

    expect(samples.get(`${TTFT}_count`)).toBe(2);
    expect(samples.get(`${TTFT}_sum`)).toBeCloseTo(0.06, 12);
    // Buckets are cumulative, `le` inclusive: 0.010 counts from le="0.01" on, 0.050 from le="0.06".
    expect(samples.get(`${TTFT}_bucket{le="0.005"}`)).toBe(0);
    expect(samples.get(`${TTFT}_bucket{le="0.01"}`)).toBe(1);
    expect(samples.get(`${TTFT}_bucket{le="0.04"}`)).toBe(1);
    expect(samples.get(`${TTFT}_bucket{le="0.06"}`)).toBe(2);

    expect(samples.get(`${ITL}_count`)).toBe(2);
    expect(samples.get(`${ITL}_sum`)).toBeCloseTo(0.01, 12);
    expect(samples.get(`${ITL}_bucket{le="0.001"}`)).toBe(0);
    expect(samples.get(`${ITL}_bucket{le="0.0025"}`)).toBe(1);
    expect(samples.get(`${ITL}_bucket{le="0.0075"}`)).toBe(1);
    expect(samples.get(`${ITL}_bucket{le="0.01"}`)).toBe(2);

    expect(samples.get(`${E2E}_count`)).toBe(3);
    expect(samples.get(`${E2E}_sum`)).toBeCloseTo(0.385, 12);
    expect(samples.get(`${E2E}_bucket{le="0.05"}`)).toBe(1);
    expect(samples.get(`${E2E}_bucket{le="0.1"}`)).toBe(2);
    expect(samples.get(`${E2E}_bucket{le="0.25"}`)).toBe(2);
    expect(samples.get(`${E2E}_bucket{le="0.5"}`)).toBe(3);
  });

  it("finish_reason labels are vLLM's FinishReason strings: stop, length, abort, error", async () => {
    // vllm/v1/metrics/loggers.py labels vllm:request_success_total with str(FinishReason) (vllm/v1/engine/__init__.py);
    // tsllm said "cancelled" where vLLM, and tsllm's own responses, say "abort".
    const m = new ServerMetrics(managerWith({}).manager);
    for (const reason of ["stop", "length", "cancelled", "error", "cancelled"] as const)
      m.finishedRequest(1, reason, result([1], [1], 2));
    const { samples } = await scrape(m);
    expect(
      Object.fromEntries([...samples].filter(([k]) => k.startsWith("tsllm_request_success_total"))),
    ).toEqual({
      'tsllm_request_success_total{finish_reason="stop"}': 1,
      'tsllm_request_success_total{finish_reason="length"}': 1,
      'tsllm_request_success_total{finish_reason="abort"}': 2,
      'tsllm_request_success_total{finish_reason="error"}': 1,
    });
  });

  it("latency buckets: increasing, from 1 ms, up to CPU-test scales, +Inf last", async () => {
    const { samples } = await scrape(new ServerMetrics(managerWith({}).manager));
    for (const h of [TTFT, ITL, E2E]) {
      const les = [...samples.keys()]
        .filter((k) => k.startsWith(`${h}_bucket{`))
        .map((k) => /le="([^"]+)"/.exec(k)![1]);
      expect(les.at(-1)).toBe("+Inf");
      const bounds = les.slice(0, -1).map(Number);
      for (let i = 1; i < bounds.length; i++) expect(bounds[i]).toBeGreaterThan(bounds[i - 1]);
      expect(bounds[0]).toBeLessThanOrEqual(0.05);
      expect(bounds.at(-1)).toBeGreaterThanOrEqual(1);
    }
  });

  it("scheduler gauges are read from the manager at each scrape; KV use is the used share, 0 with no blocks", async () => {
    const { manager, stats } = managerWith({
      queued: 3,
      running: 2,
      paused: 1,
      kvBlocksTotal: 10,
      kvBlocksFree: 4,
    });
    const m = new ServerMetrics(manager);
    let { samples } = await scrape(m);
    expect(samples.get("tsllm_num_requests_waiting")).toBe(3);
    expect(samples.get("tsllm_num_requests_running")).toBe(2);
    expect(samples.get("tsllm_num_requests_paused")).toBe(1);
    expect(samples.get("tsllm_kv_cache_blocks_total")).toBe(10);
    expect(samples.get("tsllm_kv_cache_blocks_free")).toBe(4);
    expect(samples.get("tsllm_kv_cache_usage_perc")).toBeCloseTo(0.6, 12);
    Object.assign(stats, { queued: 0, running: 5, paused: 0, kvBlocksFree: 10 });
    ({ samples } = await scrape(m));
    expect(samples.get("tsllm_num_requests_waiting")).toBe(0);
    expect(samples.get("tsllm_num_requests_running")).toBe(5);
    expect(samples.get("tsllm_kv_cache_usage_perc")).toBe(0);
    Object.assign(stats, { kvBlocksTotal: 0, kvBlocksFree: 0 });
    ({ samples } = await scrape(m));
    expect(samples.get("tsllm_kv_cache_usage_perc")).toBe(0);
  });

  it("one registry per server: two instances count apart", async () => {
    const a = new ServerMetrics(managerWith({}).manager);
    const b = new ServerMetrics(managerWith({}).manager);
    a.request("/health", 200);
    a.finishedRequest(3, "stop", result([1, 2], [5, 6], 7));
    expect((await scrape(a)).samples.get("tsllm_prompt_tokens_total")).toBe(3);
    const sb = (await scrape(b)).samples;
    expect(sb.get("tsllm_prompt_tokens_total")).toBe(0);
    expect(sb.get('tsllm_http_requests_total{endpoint="/health",status="200"}')).toBeUndefined();
  });
});
