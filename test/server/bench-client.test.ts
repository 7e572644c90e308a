// tsllm-bench serve's client (src/server/bench-client.ts) against a small HTTP server inside the test that
// streams scripted SSE chunks, with the client's clock scripted where the figures are checked exactly:
// the request it sends, how it times the tokens of a stream, how it fails, its arrival schedule and
// concurrency limit, and the report's figures against hand computations (numpy.percentile's linear rule,
// as vllm's benchmark_serving prints them; the values were checked with numpy 2.4).
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import { afterEach, describe, expect, it } from "vitest";
import {
  formatServeBench,
  poissonGaps,
  type RequestTiming,
  runServeBench,
  type ServeBenchReport,
  summarizeServeBench,
  timedRequest,
} from "../../src/server/bench-client.ts";
import type { DatasetEntry } from "../../src/serving/dataset.ts";

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: { max_tokens: number; prompt: number[] } & Record<string, unknown>;
  /** performance.now() (the real clock) when the request arrived. */
  at: number;
}

const realNow = performance.now.bind(performance);
const servers: http.Server[] = [];
let restoreClock: (() => void) | undefined;

afterEach(async () => {
  restoreClock?.();
  restoreClock = undefined;
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

/** A server whose handler gets each request with its parsed JSON body; the requests it saw, in order. */
async function fakeServer(
  handler: (q: Seen, res: http.ServerResponse) => void | Promise<void>,
): Promise<{ url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    const at = realNow();
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (c) => (text += c));
    req.on("end", () => {
      const q: Seen = {
        method: req.method ?? "",
        url: req.url ?? "",
        headers: req.headers,
        body: JSON.parse(text),
        at,
      };
      seen.push(q);
      void handler(q, res);
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

const tick = (ms = 2) => new Promise((r) => setTimeout(r, ms));

/** Writes an SSE stream: objects as `data: JSON` events, strings as they are; pieces written apart. */
async function sse(res: http.ServerResponse, events: (object | string)[], end = true): Promise<void> {
  res.writeHead(200, { "content-type": "text/event-stream" });
  for (const e of events) {
    res.write(typeof e === "string" ? e : `data: ${JSON.stringify(e)}\n\n`);
    await tick();
  }
  if (end) res.end("data: [DONE]\n\n");
}

/** A chunk of a streamed completion carrying these token ids. */
const tok = (...ids: number[]) => ({
  choices: [{ index: 0, text: "x", token_ids: ids, finish_reason: null }],
});

/**
 * Scripts the clock bench-client.ts reads: each performance.now() called from that file returns the next value;
 * calls from anywhere else (fetch reads it too) get the real clock. `left()` = scripted readings not yet taken.
 */
function scriptClock(values: number[]): { left: () => number } {
  const queue = [...values];
  Object.defineProperty(performance, "now", {
    configurable: true,
    writable: true,
    value: () => {
      const caller = new Error().stack?.split("\n")[2] ?? "";
      if (!/src[/\\]server[/\\]bench-client\.ts/.test(caller)) return realNow();
      const v = queue.shift();
      if (v === undefined) throw new Error("the client read the clock more often than scripted");
      return v;
    },
  });
  restoreClock = () => {
    delete (performance as unknown as { now?: unknown }).now;
  };
  return { left: () => queue.length };
}

const entry = (inputIds: number[], outputTokens: number, taskId: number | string = 0): DatasetEntry => ({
  taskId,
  inputIds,
  outputTokens,
});

/** Replies to a completion with max_tokens chunks of one token each (the token = the request's index). */
const streamTokens = (q: Seen, res: http.ServerResponse, index: number) =>
  sse(
    res,
    Array.from({ length: q.body.max_tokens }, () => tok(index)),
  );

describe("timedRequest", { timeout: 10_000 }, () => {
  it("sends one streamed /v1/completions request with the entry's ids, exactly its length, no eos", async () => {
    const s = await fakeServer((_q, res) => sse(res, [tok(1)]));
    const e = entry([11, 12, 13], 1);
    const t = await timedRequest({ url: `${s.url}//`, model: "m-1", apiKey: "k-1", requestRate: 1 }, e);
    expect(t.ok).toBe(true);
    await timedRequest({ url: s.url, model: "m-2", requestRate: 1 }, entry([7], 5));
    await timedRequest({ url: `${s.url}/`, model: "m-3", apiKey: "", requestRate: 1 }, entry([8, 9], 2));
    expect(s.seen.map((q) => [q.method, q.url])).toEqual([
      ["POST", "/v1/completions"],
      ["POST", "/v1/completions"],
      ["POST", "/v1/completions"],
    ]);
    expect(s.seen[0].headers["content-type"]).toBe("application/json");
    expect(s.seen[0].headers.authorization).toBe("Bearer k-1");
    expect(s.seen[0].body).toStrictEqual({
      model: "m-1",
      prompt: [11, 12, 13],
      max_tokens: 1,
      temperature: 0,
      ignore_eos: true,
      stream: true,
      return_token_ids: true,
    });
    expect(s.seen[1].headers.authorization).toBeUndefined();
    expect(s.seen[1].body).toMatchObject({ model: "m-2", prompt: [7], max_tokens: 5 });
    expect(s.seen[2].headers.authorization).toBeUndefined();
    expect(s.seen[2].body).toMatchObject({ model: "m-3", prompt: [8, 9], max_tokens: 2 });
  });

  it("times the token-bearing chunks (TTFT, the gaps between them), end to end at the last chunk with choices", async () => {
    const first = JSON.stringify(tok(5));
    const s = await fakeServer((_q, res) =>
      sse(res, [
        "\n\n", // an empty event, then a comment
        ": keep-alive\n\n",
        { choices: [{ index: 0, text: "", token_ids: [] }] }, // no token: not timed
        `data: ${first.slice(0, 9)}`, // one event written in three pieces
        `${first.slice(9)}\n`,
        "\n",
        {
          choices: [
            { index: 0, text: "é", token_ids: [6] },
            { index: 1, text: "ü", token_ids: [7] },
          ],
        },
        "event: ping\n\n",
        tok(8),
        { choices: [{ index: 0, text: "", finish_reason: "length" }] }, // no token_ids: not timed
        { usage: { prompt_tokens: 4, completion_tokens: 4 } }, // no choices
        { choices: [], usage: { prompt_tokens: 4, completion_tokens: 4 } },
      ]),
    );
    // start, the chunk with no token, the three token-bearing chunks, the finish chunk (vllm's end to end: the
    // usage chunks and [DONE] after it are not read; the old client read the clock once more at the stream's end)
    const clock = scriptClock([1000, 1005, 1012.5, 1015, 1021, 1030]);
    const t = await timedRequest({ url: s.url, model: "m", requestRate: 1 }, entry([1, 2, 3, 4], 4));
    expect(t).toStrictEqual({
      ok: true,
      promptTokens: 4,
      outputTokens: 4,
      ttftMs: 12.5,
      itlMs: [2.5, 6],
      e2eMs: 30,
    });
    expect(clock.left()).toBe(0);
  });

  it("an error event in the stream fails the request with its message", async () => {
    const s = await fakeServer((_q, res) =>
      sse(res, [tok(1), { error: { message: "engine died", code: 500 } }, tok(2)]),
    );
    const clock = scriptClock([100, 107, 109]);
    const t = await timedRequest({ url: s.url, model: "m", requestRate: 1 }, entry([1, 2], 3));
    expect(t).toStrictEqual({
      ok: false,
      error: "engine died",
      promptTokens: 2,
      outputTokens: 0,
      ttftMs: Number.NaN,
      itlMs: [],
      e2eMs: 9,
    });
    expect(clock.left()).toBe(0);
  });

  it("an HTTP error fails the request with its status and the first 300 characters of the body", async () => {
    const body = `${"a".repeat(299)}bcdef`;
    const s = await fakeServer((_q, res) => {
      res.writeHead(429, { "content-type": "text/plain" });
      res.end(body);
    });
    scriptClock([50, 80.25]);
    const t = await timedRequest({ url: s.url, model: "m", requestRate: 1 }, entry([1, 2, 3], 3));
    expect(t).toStrictEqual({
      ok: false,
      error: `HTTP 429: ${"a".repeat(299)}b`,
      promptTokens: 3,
      outputTokens: 0,
      ttftMs: Number.NaN,
      itlMs: [],
      e2eMs: 30.25,
    });
  });

  it("an unreachable server fails the request with fetch's message", async () => {
    const s = await fakeServer(() => {});
    const url = s.url;
    for (const srv of servers.splice(0)) await new Promise((r) => srv.close(r)); // nothing listens there now
    scriptClock([10, 14]);
    const t = await timedRequest({ url, model: "m", requestRate: 1 }, entry([1], 1));
    expect(t).toStrictEqual({
      ok: false,
      error: "fetch failed",
      promptTokens: 1,
      outputTokens: 0,
      ttftMs: Number.NaN,
      itlMs: [],
      e2eMs: 4,
    });
  });

  it("a stream that breaks off, or an event that is not JSON, fails the request (it used to reject)", async () => {
    const s = await fakeServer(async (q, res) => {
      if (q.body.model === "cut") {
        await sse(res, [tok(1)], false);
        res.destroy();
      } else await sse(res, [tok(1), "data: {not json\n\n", tok(2)]);
    });
    scriptClock([0, 3, 8]);
    const cut = await timedRequest({ url: s.url, model: "cut", requestRate: 1 }, entry([1, 2], 4));
    expect(cut).toMatchObject({ ok: false, promptTokens: 2, outputTokens: 0, itlMs: [], e2eMs: 8 });
    expect(cut.error).toMatch(/^reading the response: terminated/);
    scriptClock([0, 3, 5]);
    const bad = await timedRequest({ url: s.url, model: "json", requestRate: 1 }, entry([1], 4));
    expect(bad).toMatchObject({ ok: false, promptTokens: 1, outputTokens: 0, itlMs: [], e2eMs: 5 });
    expect(bad.error).toMatch(/^reading the response: .*JSON/);
  });

  it("reads server-sent events as the standard writes them: CRLF / CR line ends, comments, split fields", async () => {
    // The same three chunks of one, two and one ids, each event framed another legal way: CRLF line ends, a
    // comment line and "data:" with no space, CR line ends, an event cut across two writes mid-field; [DONE] last.
    const j = (...ids: number[]) => JSON.stringify(tok(...ids));
    const s = await fakeServer((_q, res) =>
      sse(
        res,
        [
          `data: ${j(7)}\r\n\r\n`,
          `: keep-alive\r\ndata:${j(8, 9)}\r\n\r\n`,
          `data: ${j(10).slice(0, 9)}`,
          `${j(10).slice(9)}\r\r`,
        ],
        true,
      ),
    );
    scriptClock([0, 4, 9, 15]);
    const t = await timedRequest({ url: s.url, model: "m", requestRate: 1 }, entry([1, 2], 4));
    expect(t).toStrictEqual({
      ok: true,
      promptTokens: 2,
      outputTokens: 4,
      ttftMs: 4,
      itlMs: [5, 6],
      e2eMs: 15,
    });
  });

  it("a stream without token ids fails the request rather than passing with no tokens and no TTFT", async () => {
    // A server that ignores return_token_ids: text chunks only.
    const s = await fakeServer((_q, res) =>
      sse(res, [{ choices: [{ index: 0, text: "Hello" }] }, { choices: [{ index: 0, text: " world" }] }]),
    );
    scriptClock([0, 1, 2, 6]); // start, the two chunks, the failure
    const t = await timedRequest({ url: s.url, model: "m", requestRate: 1 }, entry([1, 2, 3], 2));
    expect(t).toStrictEqual({
      ok: false,
      error: "no token ids in the stream (does the server support return_token_ids?)",
      promptTokens: 3,
      outputTokens: 0,
      ttftMs: Number.NaN,
      itlMs: [],
      e2eMs: 6,
    });
  });
});

describe("poissonGaps", () => {
  it("-ln(u) / rate with u from the seeded hash (values computed apart, in Python)", () => {
    const close = (a: number[], b: number[]) => {
      expect(a).toHaveLength(b.length);
      a.forEach((x, i) => expect(x).toBeCloseTo(b[i], 9));
    };
    close(poissonGaps(3, 10, 0), [485.81116279469984, 394.13625530299134, 280.1288601963288]);
    close(poissonGaps(3, 10, 7), [47.617423316207, 16.058222014430825, 226.04722676372538]);
    close(poissonGaps(2, 20, 19210), [478.0614328262801, 5.758703300974154]);
    close(poissonGaps(3, 10, -1), [48.0406801003381, 221.8680015657987, 20.2641212345191]);
    expect(poissonGaps(0, 10, 1)).toEqual([]);
    expect(poissonGaps(2, Infinity, 5)).toEqual([0, 0]);
  });
});

describe("runServeBench", { timeout: 10_000 }, () => {
  const entries = [
    entry([1, 2, 3], 2, "a"),
    entry([4], 3, "b"),
    entry([5, 6], 1, "c"),
    entry([7, 8, 9, 10], 4, "d"),
  ];

  it("at rate inf with no limit sends every request at once; timings in entry order; progress", async () => {
    // The server answers only once all four are in: a client that waits for one before sending the next never ends.
    const waiting: (() => void)[] = [];
    const s = await fakeServer((q, res) => {
      waiting.push(() => void streamTokens(q, res, q.body.prompt[0]));
      if (waiting.length === 4) for (const w of waiting) w();
    });
    for (const maxConcurrency of [undefined, 0, -1]) {
      waiting.length = 0;
      const progress: number[][] = [];
      const { report, timings } = await runServeBench(entries, {
        url: s.url,
        model: "m",
        requestRate: Infinity,
        maxConcurrency,
        onProgress: (d, n) => progress.push([d, n]),
      });
      expect(progress).toEqual([
        [1, 4],
        [2, 4],
        [3, 4],
        [4, 4],
      ]);
      expect(timings.map((t) => [t.ok, t.promptTokens, t.outputTokens, t.itlMs.length])).toEqual([
        [true, 3, 2, 1],
        [true, 1, 3, 2],
        [true, 2, 1, 0],
        [true, 4, 4, 3],
      ]);
      expect(report).toMatchObject({
        successful_requests: 4,
        failed_requests: 0,
        request_rate: "inf",
        max_concurrency: maxConcurrency ?? null,
        total_input_tokens: 10,
        total_output_tokens: 10,
      });
    }
    expect(s.seen.map((q) => q.body.prompt[0])).toEqual([1, 4, 5, 7, 1, 4, 5, 7, 1, 4, 5, 7]);
  });

  it("keeps at most maxConcurrency requests in flight, and that many while enough are left", async () => {
    // The server finishes the oldest request only while exactly min(limit, not yet finished) are in flight:
    // a client that sends more is seen, one that sends fewer never gets an answer.
    const limit = 3;
    const n = 8;
    let inFlight = 0;
    let finished = 0;
    let peak = 0;
    const held: (() => Promise<void>)[] = [];
    const step = async () => {
      while (held.length && inFlight === Math.min(limit, n - finished)) {
        const next = held.shift()!;
        await next();
        inFlight--;
        finished++;
      }
    };
    const s = await fakeServer((q, res) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      held.push(() => streamTokens(q, res, q.body.prompt[0]));
      void step();
    });
    const many = Array.from({ length: n }, (_, i) => entry([i + 1], 2, i));
    const { report, timings } = await runServeBench(many, {
      url: s.url,
      model: "m",
      requestRate: Infinity,
      maxConcurrency: limit,
    });
    expect(peak).toBe(limit);
    expect(timings.every((t) => t.ok && t.outputTokens === 2)).toBe(true);
    expect(report.successful_requests).toBe(n);
    expect(report.max_concurrency).toBe(limit);
  });

  it("a failed request frees its slot: the rest still run, the first failure is reported", async () => {
    const s = await fakeServer(async (q, res) => {
      if (q.body.prompt[0] === 4) {
        res.writeHead(500);
        res.end("nope");
      } else if (q.body.prompt[0] === 5) {
        await sse(res, [tok(1)], false);
        res.destroy();
      } else await streamTokens(q, res, 0);
    });
    const { report, timings } = await runServeBench(entries, {
      url: s.url,
      model: "m",
      requestRate: Infinity,
      maxConcurrency: 1,
    });
    expect(timings.map((t) => t.ok)).toEqual([true, false, false, true]);
    expect(report).toMatchObject({
      successful_requests: 2,
      failed_requests: 2,
      first_error: "HTTP 500: nope",
    });
  });

  it("sends the requests on the seeded Poisson schedule, measured from the start", async () => {
    // Seed 19210 at 20 req/s: arrivals 478.1 and 483.8 ms after the start (seed 0 would give 242.9 and 440.0).
    const s = await fakeServer((q, res) => void streamTokens(q, res, 0));
    const start = realNow();
    const { report } = await runServeBench(entries.slice(0, 2), {
      url: s.url,
      model: "m",
      requestRate: 20,
      seed: 19210,
    });
    const end = realNow();
    expect(s.seen).toHaveLength(2);
    expect(s.seen[0].at - start).toBeGreaterThan(478.06 - 5);
    expect(s.seen[1].at - start).toBeGreaterThan(478.06 + 5.76 - 5);
    expect(report.request_rate).toBe(20);
    expect(report.duration_s).toBeGreaterThan((478.06 + 5.76 - 5) / 1000);
    expect(report.duration_s).toBeLessThanOrEqual((end - start) / 1000);
    expect(report.request_throughput_req_s).toBeCloseTo(2 / report.duration_s, 9);
  });

  it("the duration runs from the start to the last answer, on the client's clock", async () => {
    const s = await fakeServer((q, res) => void streamTokens(q, res, 0));
    // start; the loop's arrival check; one request: its start, its one token (also its end); the benchmark's end
    scriptClock([2000, 2000, 2000, 2010, 4500]);
    const { report, timings } = await runServeBench([entry([1, 2], 1)], {
      url: s.url,
      model: "m",
      requestRate: Infinity,
    });
    expect(timings[0]).toMatchObject({ ok: true, ttftMs: 10, e2eMs: 10 });
    expect(report.duration_s).toBe(2.5);
    expect(report.request_throughput_req_s).toBe(0.4);
  });
});

describe("summarizeServeBench", () => {
  const timing = (
    ok: boolean,
    promptTokens: number,
    outputTokens: number,
    ttftMs: number,
    itlMs: number[],
    e2eMs: number,
    error?: string,
  ): RequestTiming => ({ ok, ...(error ? { error } : {}), promptTokens, outputTokens, ttftMs, itlMs, e2eMs });
  const timings = [
    timing(true, 5, 4, 10, [3, 4, 5], 22), // TPOT (22 − 10) / 3 = 4
    timing(true, 7, 1, 30, [], 31), // one token: no TPOT (0 for goodput)
    timing(false, 9, 0, Number.NaN, [], 2, "HTTP 503: busy"),
    timing(true, 3, 3, 20, [6, 2], 40), // TPOT 10
    timing(true, 4, 6, 50, [1, 1, 1, 1, 1], 60), // TPOT 2
    timing(false, 1, 0, Number.NaN, [], 1, "second error"),
  ];
  const opts = { url: "u", model: "m" };

  it("counts successful requests only; throughputs over the duration; numpy percentiles", () => {
    const r = summarizeServeBench(timings, 4, { ...opts, requestRate: 7.5, maxConcurrency: 3 });
    const close = (x: number) => expect.closeTo(x, 9);
    expect(r).toStrictEqual({
      successful_requests: 4,
      failed_requests: 2,
      first_error: "HTTP 503: busy",
      request_rate: 7.5,
      max_concurrency: 3,
      duration_s: 4,
      total_input_tokens: 19, // 5 + 7 + 3 + 4: not the failed requests'
      total_output_tokens: 14,
      request_throughput_req_s: 1,
      output_throughput_tok_s: 3.5,
      total_token_throughput_tok_s: 8.25,
      goodput_req_s: null,
      slo_ms: null,
      // numpy.percentile([10, 30, 20, 50], [50, 90, 99]) = 25, 44, 49.4
      ttft_ms: { mean: 27.5, p50: close(25), p90: close(44), p99: close(49.4), min: 10, max: 50 },
      // [4, 10, 2]: 4, 8.8, 9.88
      tpot_ms: { mean: close(16 / 3), p50: close(4), p90: close(8.8), p99: close(9.88), min: 2, max: 10 },
      // every gap of every successful request, [3, 4, 5, 6, 2, 1, 1, 1, 1, 1]: 1.5, 5.1, 5.91
      itl_ms: { mean: close(2.5), p50: close(1.5), p90: close(5.1), p99: close(5.91), min: 1, max: 6 },
      // [22, 31, 40, 60]: 35.5, 54, 59.4
      e2e_ms: { mean: 38.25, p50: close(35.5), p90: close(54), p99: close(59.4), min: 22, max: 60 },
    });
  });

  it("goodput: the successful requests meeting every SLO given (<=), a one-token request's TPOT as 0", () => {
    const goodput = (slo: { ttft?: number; tpot?: number; e2el?: number } | undefined) =>
      summarizeServeBench(timings, 4, { ...opts, requestRate: 1, goodput: slo });
    expect(goodput({ ttft: 20 })).toMatchObject({ goodput_req_s: 0.5, slo_ms: { ttft: 20 } }); // 10, 20
    expect(goodput({ tpot: 4 }).goodput_req_s).toBe(0.75); // 4, 0, 2
    expect(goodput({ tpot: 2 }).goodput_req_s).toBe(0.5); // 0, 2
    expect(goodput({ tpot: 3 }).goodput_req_s).toBe(0.5); // 0, 2 (not the first: (22 − 10) / (4 − 1) = 4)
    expect(goodput({ e2el: 31 }).goodput_req_s).toBe(0.5); // 22, 31 (the failed ones' 2 and 1 not counted)
    expect(goodput({ e2el: 40 }).goodput_req_s).toBe(0.75);
    expect(goodput({ ttft: 30, tpot: 4 }).goodput_req_s).toBe(0.5); // the first two
    expect(goodput({ ttft: 30, tpot: 4, e2el: 25 })).toMatchObject({
      goodput_req_s: 0.25,
      slo_ms: { ttft: 30, tpot: 4, e2el: 25 },
    });
    expect(goodput({ ttft: 5 }).goodput_req_s).toBe(0);
    expect(goodput({})).toMatchObject({ goodput_req_s: null, slo_ms: null });
    expect(goodput(undefined)).toMatchObject({ goodput_req_s: null, slo_ms: null });
  });

  it("no failure: no first_error; rate inf; no limit; every request failed: statistics 0, as vllm's", () => {
    const r = summarizeServeBench(timings.slice(0, 2), 2, { ...opts, requestRate: Infinity });
    expect("first_error" in r).toBe(false);
    expect(r).toMatchObject({ failed_requests: 0, request_rate: "inf", max_concurrency: null });
    expect(r.tpot_ms).toStrictEqual({ mean: 4, p50: 4, p90: 4, p99: 4, min: 4, max: 4 });
    const none = summarizeServeBench([timings[2], timings[5]], 2, { ...opts, requestRate: 3 });
    // vllm/benchmarks/serve.py calculate_metrics: np.mean(ttfts or 0) and np.percentile(ttfts or 0, p) are 0.
    const zero = { mean: 0, p50: 0, p90: 0, p99: 0, min: 0, max: 0 };
    expect(none).toMatchObject({
      successful_requests: 0,
      failed_requests: 2,
      first_error: "HTTP 503: busy",
      total_input_tokens: 0,
      request_throughput_req_s: 0,
      ttft_ms: zero,
      tpot_ms: zero,
      itl_ms: zero,
      e2e_ms: zero,
    });
  });

  it("every request of one token: no TPOT or ITL values, printed 0.00 as vllm prints them, not NaN", () => {
    // vllm's calculate_metrics: tpots only of output_len > 1, so empty; np.mean(tpots or 0) * 1000 = 0.
    const r = summarizeServeBench([timing(true, 7, 1, 30, [], 31), timing(true, 2, 1, 10, [], 12)], 1, {
      ...opts,
      requestRate: Infinity,
    });
    const zero = { mean: 0, p50: 0, p90: 0, p99: 0, min: 0, max: 0 };
    expect(r.tpot_ms).toStrictEqual(zero);
    expect(r.itl_ms).toStrictEqual(zero);
    expect(JSON.parse(JSON.stringify(r)).tpot_ms.mean).toBe(0); // not null
    const text = formatServeBench(r);
    expect(text).toContain("Mean TPOT (ms):                         0.00\n");
    expect(text).toContain("P99 ITL (ms):                           0.00\n");
    expect(text).not.toContain("NaN");
  });
});

describe("formatServeBench", () => {
  it("prints vllm's table: counts as they are, figures to 2 decimals, the optional rows when they apply", () => {
    const r = summarizeServeBench(
      [
        { ok: true, promptTokens: 5, outputTokens: 4, ttftMs: 10, itlMs: [3, 4, 5], e2eMs: 22 },
        { ok: true, promptTokens: 7, outputTokens: 1, ttftMs: 30, itlMs: [], e2eMs: 31 },
        {
          ok: false,
          error: "HTTP 503: busy",
          promptTokens: 9,
          outputTokens: 0,
          ttftMs: Number.NaN,
          itlMs: [],
          e2eMs: 2,
        },
        { ok: true, promptTokens: 3, outputTokens: 3, ttftMs: 20, itlMs: [6, 2], e2eMs: 40 },
        { ok: true, promptTokens: 4, outputTokens: 6, ttftMs: 50, itlMs: [1, 1, 1, 1, 1], e2eMs: 60 },
      ],
      4,
      { url: "u", model: "m", requestRate: 7.5, maxConcurrency: 3, goodput: { ttft: 30, tpot: 4 } },
    );
    expect(formatServeBench(r).split("\n")).toEqual([
      "============ Serving Benchmark Result ============",
      "Successful requests:                    4",
      "Failed requests:                        1 (first: HTTP 503: busy)",
      "Request rate (req/s):                   7.50",
      "Maximum request concurrency:            3",
      "Benchmark duration (s):                 4.00",
      "Total input tokens:                     19",
      "Total generated tokens:                 14",
      "Request throughput (req/s):             1.00",
      "Request goodput (req/s):                0.50",
      "  SLOs:                                 ttft <= 30 ms, tpot <= 4 ms",
      "Output token throughput (tok/s):        3.50",
      "Total token throughput (tok/s):         8.25",
      "-------------- Time to First Token ---------------",
      "Mean TTFT (ms):                         27.50",
      "Median TTFT (ms):                       25.00",
      "P90 TTFT (ms):                          44.00",
      "P99 TTFT (ms):                          49.40",
      "---- Time per Output Token (excl. 1st token) -----",
      "Mean TPOT (ms):                         5.33",
      "Median TPOT (ms):                       4.00",
      "P90 TPOT (ms):                          8.80",
      "P99 TPOT (ms):                          9.88",
      "-------------- Inter-token Latency ---------------",
      "Mean ITL (ms):                          2.50",
      "Median ITL (ms):                        1.50",
      "P90 ITL (ms):                           5.10",
      "P99 ITL (ms):                           5.91",
      "-------------- End-to-end Latency ----------------",
      "Mean E2EL (ms):                         38.25",
      "Median E2EL (ms):                       35.50",
      "P90 E2EL (ms):                          54.00",
      "P99 E2EL (ms):                          59.40",
      "==================================================",
      "",
    ]);
  });

  it("leaves out failures, the concurrency limit and goodput when there are none; rate inf", () => {
    const p = { mean: 1.005, p50: 2, p90: 3.456, p99: 4, min: 0, max: 9 };
    const r: ServeBenchReport = {
      successful_requests: 2,
      failed_requests: 0,
      request_rate: "inf",
      max_concurrency: null,
      duration_s: 0.5,
      total_input_tokens: 8,
      total_output_tokens: 6,
      request_throughput_req_s: 4,
      output_throughput_tok_s: 12,
      total_token_throughput_tok_s: 28,
      goodput_req_s: null,
      slo_ms: null,
      ttft_ms: p,
      tpot_ms: p,
      itl_ms: p,
      e2e_ms: p,
    };
    const text = formatServeBench(r);
    expect(text.split("\n").slice(0, 9)).toEqual([
      "============ Serving Benchmark Result ============",
      "Successful requests:                    2",
      "Request rate (req/s):                   inf",
      "Benchmark duration (s):                 0.50",
      "Total input tokens:                     8",
      "Total generated tokens:                 6",
      "Request throughput (req/s):             4.00",
      "Output token throughput (tok/s):        12.00",
      "Total token throughput (tok/s):         28.00",
    ]);
    expect(text).toContain("P90 ITL (ms):                           3.46\n");
    expect(formatServeBench({ ...r, goodput_req_s: 0, slo_ms: { e2el: 100 } })).toContain(
      "Request goodput (req/s):                0.00\n  SLOs:                                 e2el <= 100 ms\n",
    );
  });
});
