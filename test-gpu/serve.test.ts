// tsllm-serve on the native runtime (tiny-llama fp16): the openai client gets tsllm-run --device cuda's
// tokens at temperature 0, n sampled choices are the single requests of seed + j (the GPU sampler's seeding),
// 64 concurrent streams all complete with their lengths, and 32 streams cancelled mid-way give every KV
// block back (seen through /metrics).
import { execFile } from "node:child_process";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { metric, startServer, type TestServer } from "../test/server/helpers.ts";
import { REPO, tinyEngine } from "./helpers.ts";

type Chunk = { choices: { token_ids?: number[]; finish_reason: string | null }[] };

describe("tsllm-serve on the GPU", () => {
  let engine: string;
  let s: TestServer;
  beforeAll(async () => {
    engine = await tinyEngine("llama", "fp16", { maxBatchSize: 64 });
    s = await startServer(engine, { batch: { device: "cuda" } });
  });
  afterAll(async () => s?.close());

  it("completions at temperature 0 equal tsllm-run --device cuda on the same text prompt", async () => {
    const prompt = "The quick brown fox jumps over the lazy dog.";
    const run = await new Promise<{ ids: number[]; text: string }>((res, rej) =>
      execFile(path.join(REPO, "bin/tsllm-run.mjs"), [engine, "--device", "cuda", "--json", "--prompt", prompt, "--max-new-tokens", "24"], (e, out, err) =>
        e ? rej(new Error(err)) : res(JSON.parse(out)),
      ),
    );
    const r = await s.client.completions.create({ model: "tiny", prompt, max_tokens: 24, temperature: 0, return_token_ids: true } as never);
    const c = (r as unknown as { choices: { token_ids: number[]; text: string }[] }).choices[0];
    expect(c.token_ids).toEqual(run.ids);
    expect(c.text).toBe(run.text);
  });

  it("n = 4 sampled choices, in one batch, are the n = 1 requests of seed + j; not one sample four times", async () => {
    const sampled = { temperature: 1.5, top_k: 50, top_p: 0.95, ignore_eos: true, return_token_ids: true };
    const prompt = [507, 31, 32, 33];
    type Choices = { choices: { index: number; token_ids: number[] }[] };
    const r = (await s.client.completions.create({ model: "tiny", prompt, n: 4, seed: 7, max_tokens: 16, ...sampled } as never)) as unknown as Choices;
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    const singles = await Promise.all(
      [0, 1, 2, 3].map(async (j) => ((await s.client.completions.create({ model: "tiny", prompt, seed: 7 + j, max_tokens: 16, ...sampled } as never)) as unknown as Choices).choices[0].token_ids),
    );
    expect(r.choices.map((c) => c.token_ids)).toEqual(singles);
    expect(new Set(singles.map((t) => t.join())).size).toBeGreaterThan(1);
  });

  const stream = async (prompt: number[], maxTokens: number, stopAfter?: number) => {
    const st = await s.client.completions.create({ model: "tiny", prompt, max_tokens: maxTokens, temperature: 0, stream: true, ignore_eos: true, return_token_ids: true } as never);
    let n = 0;
    let finish: string | null = null;
    for await (const ch of st as unknown as AsyncIterable<Chunk>) {
      n += ch.choices[0]?.token_ids?.length ?? 0;
      finish = ch.choices[0]?.finish_reason ?? finish;
      if (stopAfter !== undefined && n >= stopAfter) break;
    }
    return { n, finish };
  };

  it("64 concurrent streams complete with their lengths", async () => {
    const got = await Promise.all(Array.from({ length: 64 }, (_, i) => stream([507, 1 + i, 2 + i], 8 + (i % 24))));
    got.forEach((g, i) => {
      expect(g.n).toBe(8 + (i % 24));
      expect(g.finish).toBe("length");
    });
  });

  it("32 streams cancelled mid-way free every KV block", async () => {
    await Promise.all(Array.from({ length: 32 }, (_, i) => stream([507, 100 + i], 200, 3)));
    let m = "";
    for (let t = 0; t < 100; t++) {
      m = await (await fetch(`${s.url}/metrics`)).text();
      if (metric(m, "tsllm_num_requests_running") === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(metric(m, "tsllm_num_requests_running")).toBe(0);
    expect(metric(m, "tsllm_kv_cache_blocks_free")).toBe(metric(m, "tsllm_kv_cache_blocks_total"));
    expect(metric(m, 'tsllm_request_success_total{finish_reason="abort"}')).toBe(32);
  });
});
