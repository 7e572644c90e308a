// tsllm-bench serve against an in-process tsllm-serve (tiny engine, CPU): every request completes with
// exactly its output length, timings are consistent, goodput follows the SLOs, arrivals are Poisson.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { poissonGaps, runServeBench } from "../../src/server/bench-client.ts";
import { tokenNormDist } from "../../src/serving/dataset.ts";
import { buildFixture, REPO, tmpDir } from "../fixtures.ts";
import { runBin, startServer, type TestServer } from "./helpers.ts";

describe("tsllm-bench serve", () => {
  let s: TestServer;
  let engine: string;
  beforeAll(async () => {
    engine = await buildFixture("llama", { maxBatchSize: 16 });
    s = await startServer(engine);
  });
  afterAll(async () => s?.close());

  const entries = tokenNormDist({
    numRequests: 24,
    inputMean: 12,
    inputStdev: 4,
    outputMean: 6,
    outputStdev: 2,
    seed: 3,
    vocabSize: 512,
  });

  it("Poisson arrivals at a rate, bounded concurrency: all complete with their lengths; goodput by SLO", async () => {
    const { report, timings } = await runServeBench(entries, {
      url: s.url,
      model: "tiny",
      requestRate: 200,
      maxConcurrency: 6,
      goodput: { ttft: 60_000, tpot: 60_000 },
    });
    expect(report.successful_requests).toBe(24);
    expect(report.failed_requests).toBe(0);
    timings.forEach((t, i) => {
      expect(t.outputTokens).toBe(entries[i].outputTokens);
      expect(t.itlMs).toHaveLength(entries[i].outputTokens - 1);
      expect(t.ttftMs).toBeGreaterThan(0);
      expect(t.ttftMs).toBeLessThanOrEqual(t.e2eMs);
    });
    expect(report.total_output_tokens).toBe(entries.reduce((a, e) => a + e.outputTokens, 0));
    expect(report.total_input_tokens).toBe(entries.reduce((a, e) => a + e.inputIds.length, 0));
    expect(report.goodput_req_s).toBeCloseTo(report.request_throughput_req_s, 6);
    for (const p of [report.ttft_ms, report.tpot_ms, report.itl_ms, report.e2e_ms]) {
      expect(p.p50).toBeLessThanOrEqual(p.p90);
      expect(p.p90).toBeLessThanOrEqual(p.p99);
    }
    const strict = await runServeBench(entries.slice(0, 4), {
      url: s.url,
      model: "tiny",
      requestRate: Infinity,
      goodput: { ttft: 0.001 },
    });
    expect(strict.report.goodput_req_s).toBe(0);
  });

  it("exponential gaps: mean 1/rate, seeded", () => {
    const g = poissonGaps(4000, 16, 1);
    const mean = g.reduce((a, b) => a + b, 0) / g.length;
    expect(mean).toBeGreaterThan((1000 / 16) * 0.93);
    expect(mean).toBeLessThan((1000 / 16) * 1.07);
    expect(poissonGaps(5, 16, 1)).toEqual(g.slice(0, 5));
    expect(poissonGaps(3, Infinity, 1)).toEqual([0, 0, 0]);
  });

  const run = (args: string[]) => runBin(path.join(REPO, "bin/tsllm-bench.mjs"), args);

  it("the CLI prints vllm's table and writes the JSON report", async () => {
    const json = path.join(tmpDir(), "r.json");
    const r = await run([
      "serve",
      "--url",
      s.url,
      "--num-prompts",
      "6",
      "--random-input-len",
      "9",
      "--random-output-len",
      "3",
      "--request-rate",
      "100",
      "--goodput",
      "ttft:100000",
      "--json",
      json,
    ]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/Successful requests:\s+6\n/);
    expect(r.stdout).toMatch(/Total generated tokens:\s+18\n/);
    expect(r.stdout).toMatch(/P99 TTFT \(ms\):\s+\d+\.\d\d\n/);
    expect(r.stdout).toMatch(/Median ITL \(ms\):/);
    const rep = JSON.parse(fs.readFileSync(json, "utf8"));
    expect(rep.tsllm_bench).toBe("serve");
    expect(rep.total_input_tokens).toBe(54);
    // A trtllm-bench dataset: ids lines as they are, "prompt" lines through --tokenizer.
    const ds = path.join(tmpDir(), "ds.jsonl");
    fs.writeFileSync(
      ds,
      '{"task_id": 0, "prompt": "Hello world", "output_tokens": 3}\n{"task_id": 1, "input_ids": [1, 2, 3], "output_tokens": 2}\n',
    );
    const d = await run(["serve", "--url", s.url, "--dataset", ds, "--tokenizer", engine, "--warmup", "0"]);
    expect(d.status).toBe(0);
    expect(d.stdout).toMatch(/Total input tokens:\s+12\n/); // "Hello world" is 9 ids with bos
    expect(d.stdout).toMatch(/Total generated tokens:\s+5\n/);
    const bad = await run(["serve", "--url", "http://127.0.0.1:1", "--num-prompts", "1"]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^error: --url http:\/\/127.0.0.1:1: cannot reach the server/);
  });
});
