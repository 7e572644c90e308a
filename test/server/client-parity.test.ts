// What a vLLM user driving tsllm-serve with the official openai client got wrong, fixed: on a KV pool that holds
// fewer tokens than max_seq_len, /v1/models promised max_seq_len and a chat without max_tokens was refused as
// context_length_exceeded (vLLM would not even start so; we serve the pool's length), and requests whose client
// went away mid-response were missing from tsllm_http_requests_total (fastify's onResponse runs only for a
// response that finished), then counted as 200 (the reply's default status, though a non-streamed one had sent
// nothing): now 499, nginx's "client closed request", streamed or not.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildFixture } from "../fixtures.ts";
import { metric, startServer, type TestServer, waitIdle } from "./helpers.ts";

const CHAT = { model: "tiny", messages: [{ role: "user" as const, content: "Hi" }], temperature: 0 };

describe("tsllm-serve as the openai client sees it", () => {
  let engine: string;
  // 4 KV blocks of 32 tokens: 129 tokens a request (its last token takes no slot), max_seq_len 256.
  let small: TestServer;
  beforeAll(async () => {
    engine = await buildFixture("llama");
    small = await startServer(engine, { batch: { kvBlocks: 4 } });
  });
  afterAll(async () => small?.close());

  it("a chat without max_tokens on a KV pool shorter than max_seq_len fills the pool, streamed and not", async () => {
    const l = small.manager.limits;
    const room = l.kvBlocksTotal * l.tokensPerBlock + 1;
    expect(room).toBeLessThan(l.maxSeqLen);
    // What /v1/models promises is what a request can have.
    const model = await small.client.models.retrieve("tiny");
    expect((model as unknown as { max_model_len: number }).max_model_len).toBe(room);
    const r = await small.client.chat.completions.create({ ...CHAT, ignore_eos: true } as never);
    expect(r.usage?.total_tokens).toBe(room);
    expect(r.choices[0].finish_reason).toBe("length");
    const stream = await small.client.chat.completions.create({
      ...CHAT,
      stream: true,
      stream_options: { include_usage: true },
      ignore_eos: true,
    } as never);
    let usage: { total_tokens: number } | undefined;
    let finish: string | null = null;
    for await (const ch of stream as unknown as AsyncIterable<{
      choices: { finish_reason: string | null }[];
      usage?: { total_tokens: number };
    }>) {
      usage = ch.usage ?? usage;
      finish = ch.choices[0]?.finish_reason ?? finish;
    }
    expect(usage?.total_tokens).toBe(room);
    expect(finish).toBe("length");
    // An explicit max_tokens past the pool is still the client's to fix, with the numbers.
    const over = await small.client.chat.completions
      .create({ ...CHAT, max_tokens: room } as never)
      .catch((e) => e);
    expect(over.status).toBe(400);
    expect(over.code).toBe("context_length_exceeded");
    expect(over.message).toMatch(/needs 5 KV blocks of 32 tokens, the pool has 4/);
  });

  it("requests the client aborts mid-response are counted in tsllm_http_requests_total as 499, streamed or not", async () => {
    const key = (endpoint: string, status: number) =>
      `tsllm_http_requests_total{endpoint="${endpoint}",status="${status}"}`;
    const count = async (endpoint: string, status = 499) =>
      metric(await (await fetch(`${small.url}/metrics`)).text(), key(endpoint, status)) || 0;
    const chatBefore = await count("/v1/chat/completions");
    const cmplBefore = await count("/v1/completions");
    const okBefore = [await count("/v1/chat/completions", 200), await count("/v1/completions", 200)];
    // Three chat streams left after their second chunk.
    await Promise.all(
      [0, 1, 2].map(async (i) => {
        const stream = await small.client.chat.completions.create({
          ...CHAT,
          messages: [{ role: "user", content: `Hi ${i}` }],
          max_tokens: 100,
          stream: true,
          ignore_eos: true,
        } as never);
        let n = 0;
        for await (const _ of stream as unknown as AsyncIterable<unknown>) if (++n === 2) break;
      }),
    );
    // A non-streamed completion aborted while it generates.
    await waitIdle(small);
    const ac = new AbortController();
    const pending = small.client.completions
      .create({ model: "tiny", prompt: [507, 1], max_tokens: 100, ignore_eos: true } as never, {
        signal: ac.signal,
      })
      .catch((e) => e);
    while (small.manager.stats().running === 0) await new Promise((r) => setTimeout(r, 2));
    ac.abort();
    expect(await pending).toBeInstanceOf(Error);
    await waitIdle(small);
    let chat = 0;
    let cmpl = 0;
    for (let t = 0; t < 100; t++) {
      [chat, cmpl] = [await count("/v1/chat/completions"), await count("/v1/completions")];
      if (chat - chatBefore >= 3 && cmpl - cmplBefore >= 1) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(chat - chatBefore).toBe(3);
    expect(cmpl - cmplBefore).toBe(1);
    // None of them counted as served; a request that completes still is.
    expect([await count("/v1/chat/completions", 200), await count("/v1/completions", 200)]).toEqual(okBefore);
    await small.client.completions.create({ model: "tiny", prompt: [507, 1], max_tokens: 1 } as never);
    expect(await count("/v1/completions", 200)).toBe(okBefore[1] + 1);
    expect(await count("/v1/completions")).toBe(cmplBefore + 1);
  });
});
