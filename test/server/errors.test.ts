// Bad requests get OpenAI-style errors with a message and the right status, and the server keeps
// serving: malformed bodies (400), unknown model (404), prompt too long (400 with the numbers), full
// queue (429), API key (401), an engine without a tokenizer asked for text (400).
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildFixture } from "../fixtures.ts";
import { startServer, type TestServer } from "./helpers.ts";

async function post(url: string, body: string, path = "/v1/completions") {
  const r = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
  return {
    status: r.status,
    json: (await r.json()) as {
      error: { message: string; type: string; param: string | null; code: string | null };
    },
  };
}

const completion = (extra: Record<string, unknown>) =>
  JSON.stringify({ model: "tiny", prompt: "Hi", max_tokens: 2, ...extra });
const chat = (extra: Record<string, unknown>) =>
  JSON.stringify({ model: "tiny", messages: [{ role: "user", content: "Hi" }], max_tokens: 2, ...extra });

// [what, body, path, message pattern]
const MALFORMED: [string, string, string, RegExp][] = [
  ["truncated JSON", '{"model": "tiny",', "/v1/completions", /not valid JSON/],
  ["empty body", "", "/v1/completions", /JSON/],
  ["a JSON array", "[1, 2]", "/v1/completions", /must be a JSON object/],
  ["a JSON string", '"hello"', "/v1/completions", /must be a JSON object/],
  ["no model", JSON.stringify({ prompt: "Hi" }), "/v1/completions", /^model: required/],
  ["model not a string", completion({ model: 3 }), "/v1/completions", /^model: model must be a string/],
  ["no prompt", JSON.stringify({ model: "tiny" }), "/v1/completions", /^prompt: required/],
  ["prompt a number", completion({ prompt: 5 }), "/v1/completions", /^prompt: prompt must be a string/],
  ["prompt an empty list", completion({ prompt: [] }), "/v1/completions", /^prompt: /],
  ["negative token id", completion({ prompt: [1, -2] }), "/v1/completions", /^prompt(\.1)?: /],
  [
    "token id past the vocabulary",
    completion({ prompt: [1, 99999] }),
    "/v1/completions",
    /token id 99999 outside the vocabulary \(0\.\.511\)/,
  ],
  ["max_tokens 0", completion({ max_tokens: 0 }), "/v1/completions", /^max_tokens: /],
  ["max_tokens a string", completion({ max_tokens: "ten" }), "/v1/completions", /^max_tokens: .*number/],
  ["temperature -1", completion({ temperature: -1 }), "/v1/completions", /^temperature: /],
  ["top_p 0", completion({ top_p: 0 }), "/v1/completions", /^top_p: /],
  ["n 0", completion({ n: 0 }), "/v1/completions", /^n: n must be an integer from 1 to 128$/],
  ["stop a number", completion({ stop: 5 }), "/v1/completions", /^stop: stop must be a string or a list/],
  [
    "unknown field",
    completion({ frobnicate: true }),
    "/v1/completions",
    /^Unrecognized request argument supplied: frobnicate/,
  ],
  ["stream not a boolean", completion({ stream: "yes" }), "/v1/completions", /^stream: /],
  [
    "presence_penalty set",
    completion({ presence_penalty: 0.5 }),
    "/v1/completions",
    /presence_penalty is not supported \(only 0\)/,
  ],
  ["chat without messages", JSON.stringify({ model: "tiny" }), "/v1/chat/completions", /^messages: required/],
  [
    "chat with no message",
    chat({ messages: [] }),
    "/v1/chat/completions",
    /^messages: give at least one message/,
  ],
  [
    "chat message without role",
    chat({ messages: [{ content: "x" }] }),
    "/v1/chat/completions",
    /^messages\.0\.role: /,
  ],
  [
    "chat content a number",
    chat({ messages: [{ role: "user", content: 7 }] }),
    "/v1/chat/completions",
    /^messages\.0\.content: /,
  ],
];

describe("tsllm-serve refuses bad requests", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startServer(await buildFixture("llama"));
  });
  afterAll(async () => s?.close());

  it(`${MALFORMED.length} malformed bodies each get a 400 with a message, and the server keeps serving`, async () => {
    expect(MALFORMED.length).toBeGreaterThanOrEqual(20);
    for (const [what, body, path, msg] of MALFORMED) {
      const r = await post(s.url, body, path);
      expect(r.status, what).toBe(400);
      expect(r.json.error.type, what).toBe("invalid_request_error");
      expect(r.json.error.message, what).toMatch(msg);
      expect(Object.keys(r.json.error).sort()).toEqual(["code", "message", "param", "type"]);
    }
    const ok = await s.client.completions.create({
      model: "tiny",
      prompt: "Hi",
      max_tokens: 2,
      temperature: 0,
    });
    expect(ok.choices).toHaveLength(1);
    const m = await (await fetch(`${s.url}/metrics`)).text();
    expect(m).toMatch(/tsllm_http_requests_total\{endpoint="\/v1\/completions",status="400"\} \d+/);
  });

  it("unknown model and route: 404; the client raises NotFoundError", async () => {
    await expect(s.client.completions.create({ model: "gpt-4", prompt: "Hi" })).rejects.toBeInstanceOf(
      OpenAI.NotFoundError,
    );
    const r = await post(s.url, completion({ model: "gpt-4" }));
    expect(r.json.error).toMatchObject({ code: "model_not_found", param: "model" });
    expect((await fetch(`${s.url}/v1/nothing`)).status).toBe(404);
  });

  it("models.retrieve: the served model as /v1/models lists it; another name 404 model_not_found", async () => {
    // The route did not exist: the client's models.retrieve("tiny") failed with a bare route 404.
    const listed = (await s.client.models.list()).data[0];
    expect(await s.client.models.retrieve("tiny")).toEqual(listed);
    await expect(s.client.models.retrieve("gpt-4")).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const r = await fetch(`${s.url}/v1/models/gpt-4`);
    expect(r.status).toBe(404);
    expect((await r.json()).error).toEqual({
      message: 'model "gpt-4" does not exist (this server serves "tiny")',
      type: "invalid_request_error",
      param: "model",
      code: "model_not_found",
    });
  });

  it("a prompt too long for the engine: 400 with the numbers", async () => {
    const prompt = Array.from({ length: 250 }, (_, i) => i + 1);
    const r = await post(s.url, completion({ prompt, max_tokens: 10 }));
    expect(r.status).toBe(400);
    expect(r.json.error.message).toBe(
      "prompt of 250 tokens + max_new_tokens 10 = 260 exceeds max_seq_len 256",
    );
    expect(r.json.error.code).toBe("context_length_exceeded");
    const c = await post(
      s.url,
      chat({ messages: [{ role: "user", content: "x".repeat(300) }], max_tokens: undefined }),
      "/v1/chat/completions",
    );
    // Without max_tokens: the messages are named, not a max_tokens the client never sent.
    expect(c.status).toBe(400);
    expect(c.json.error.message).toMatch(
      /^the messages are \d{3} tokens through the chat template, leaving no room for a reply in the context of 256 tokens \(max_model_len\)$/,
    );
    expect([c.json.error.param, c.json.error.code]).toEqual(["messages", "context_length_exceeded"]);
  });
});

describe("tsllm-serve limits and access", () => {
  it("a full queue answers 429 and the rest complete", async () => {
    const s = await startServer(await buildFixture("llama"), { maxQueue: 1, batch: { maxBatchSize: 1 } });
    try {
      const rs = await Promise.allSettled(
        Array.from({ length: 6 }, () =>
          s.client.completions.create({
            model: "tiny",
            prompt: "Hi",
            max_tokens: 30,
            temperature: 0,
            ignore_eos: true,
          } as never),
        ),
      );
      const limited = rs.filter((r) => r.status === "rejected");
      expect(rs.filter((r) => r.status === "fulfilled").length).toBeGreaterThanOrEqual(2);
      expect(limited.length).toBeGreaterThanOrEqual(1);
      for (const r of limited) {
        const e = (r as PromiseRejectedResult).reason;
        expect(e).toBeInstanceOf(OpenAI.RateLimitError);
        expect(e.message).toMatch(/the request queue is full \(\d+ waiting, limit 1\)/);
      }
    } finally {
      await s.close();
    }
  });

  it("--api-key: /v1 needs the bearer key, /health does not", async () => {
    const s = await startServer(await buildFixture("llama"), { apiKey: "sekrit" });
    try {
      const wrong = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "nope", maxRetries: 0 });
      await expect(wrong.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
      expect((await s.client.models.list()).data).toHaveLength(1);
      expect((await fetch(`${s.url}/health`)).status).toBe(200);
    } finally {
      await s.close();
    }
  });

  it("an engine without a tokenizer: ids work, text is a 400 that says why", async () => {
    const s = await startServer(await buildFixture("gptj"));
    try {
      const r = await post(s.url, completion({ prompt: "Hi" }));
      expect(r.status).toBe(400);
      expect(r.json.error.message).toMatch(/^a text prompt needs a tokenizer: engine .* has no tokenizer/);
      const c = await post(s.url, chat({}), "/v1/chat/completions");
      expect(c.json.error.message).toMatch(/^chat needs a tokenizer/);
      const st = await post(s.url, completion({ prompt: [1, 2], stop: "x" }));
      expect(st.status).toBe(400);
      expect(st.json.error).toMatchObject({ param: "stop" });
      expect(st.json.error.message).toMatch(/^stop needs a tokenizer: engine .* has no tokenizer/);
      const ok = await s.client.completions.create({
        model: "tiny",
        prompt: [1, 2, 3],
        max_tokens: 3,
        temperature: 0,
      });
      expect((ok.choices[0] as unknown as { token_ids: number[] }).token_ids).toHaveLength(3);
    } finally {
      await s.close();
    }
  });
});
