// Prometheus metrics of tsllm-serve (prom-client, one registry per server). Names follow vLLM's where
// one exists (prefix tsllm_ instead of vllm:). Scheduler state (queue, running batch, KV blocks) is read
// from the batch manager at scrape time, so it cannot drift from the truth.
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { BatchManager, FinishReason, RequestResult } from "../serving/types.ts";

/**
 * The status tsllm_http_requests_total counts for a response the client closed before it was complete, streamed or
 * not: nginx's 499 "client closed request". Nothing, or not all, of the response reached the client; counted with the
 * status it would have had (200 by default), an abandoned request looked like a success.
 */
export const CLIENT_CLOSED_REQUEST = 499;

/**
 * tsllm_request_success_total's finish_reason values: vLLM's FinishReason strings (vllm/v1/engine/__init__.py: stop,
 * length, abort, error), as the OpenAI responses' finish_reason already says them. A cancelled request (its client went
 * away, or the drain after SIGTERM ran out) is vLLM's "abort".
 */
const FINISHED_REASON: Record<FinishReason, string> = {
  stop: "stop",
  length: "length",
  cancelled: "abort",
  error: "error",
};

// Latency buckets in seconds: fine at the low end, where GPU TTFT/ITL live, up to CPU-test scales.
const TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40,
];
const ITL_BUCKETS = [
  0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5,
];
const E2E_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160];

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<"endpoint" | "status">;
  private readonly finished: Counter<"finish_reason">;
  private readonly promptTokens: Counter;
  private readonly generationTokens: Counter;
  private readonly ttft: Histogram;
  private readonly itl: Histogram;
  private readonly e2e: Histogram;

  constructor(manager: BatchManager) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: "tsllm_http_requests_total",
      help: "HTTP requests by endpoint and status code",
      labelNames: ["endpoint", "status"],
      registers,
    });
    this.finished = new Counter({
      name: "tsllm_request_success_total",
      help: "Generation requests finished, by finish reason (stop, length, abort, error)",
      labelNames: ["finish_reason"],
      registers,
    });
    this.promptTokens = new Counter({
      name: "tsllm_prompt_tokens_total",
      help: "Prompt tokens of admitted requests",
      registers,
    });
    this.generationTokens = new Counter({
      name: "tsllm_generation_tokens_total",
      help: "Tokens generated",
      registers,
    });
    this.ttft = new Histogram({
      name: "tsllm_time_to_first_token_seconds",
      help: "Time to first token",
      buckets: TTFT_BUCKETS,
      registers,
    });
    this.itl = new Histogram({
      name: "tsllm_inter_token_latency_seconds",
      help: "Time between consecutive generated tokens of a request",
      buckets: ITL_BUCKETS,
      registers,
    });
    this.e2e = new Histogram({
      name: "tsllm_e2e_request_latency_seconds",
      help: "Submit to finish",
      buckets: E2E_BUCKETS,
      registers,
    });
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
    gauge("tsllm_num_requests_waiting", "Requests queued, not yet scheduled", () => manager.stats().queued);
    gauge("tsllm_num_requests_running", "Requests in the running batch", () => manager.stats().running);
    gauge(
      "tsllm_num_requests_paused",
      "Requests paused (blocks freed), to resume by recomputation",
      () => manager.stats().paused,
    );
    gauge(
      "tsllm_kv_cache_blocks_total",
      "KV cache blocks requests may use",
      () => manager.stats().kvBlocksTotal,
    );
    gauge("tsllm_kv_cache_blocks_free", "KV cache blocks free", () => manager.stats().kvBlocksFree);
    gauge("tsllm_kv_cache_usage_perc", "KV cache use, 0..1", () => {
      const s = manager.stats();
      return s.kvBlocksTotal ? (s.kvBlocksTotal - s.kvBlocksFree) / s.kvBlocksTotal : 0;
    });
  }

  request(endpoint: string, status: number): void {
    this.requests.inc({ endpoint, status: String(status) });
  }

  /** One finished generation: its token counts and latencies (timings from the batch manager). */
  finishedRequest(promptTokens: number, finishReason: FinishReason, r: RequestResult): void {
    this.finished.inc({ finish_reason: FINISHED_REASON[finishReason] });
    this.promptTokens.inc(promptTokens);
    this.generationTokens.inc(r.outputIds.length);
    const t = r.timings.tokenTimesMs;
    if (t.length) this.ttft.observe(t[0] / 1000);
    for (let i = 1; i < t.length; i++) this.itl.observe((t[i] - t[i - 1]) / 1000);
    this.e2e.observe(r.timings.e2eMs / 1000);
  }
}
