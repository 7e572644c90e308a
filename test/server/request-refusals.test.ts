// Client mistakes the server used to get wrong: a chat the template refuses (raise_exception) or an engine without a
// chat template answered 500 server_error instead of a 400 on messages; stream_options without stream was silently
// ignored instead of refused (OpenAI and vLLM refuse it).
import * as fs from "node:fs";
import * as http from "node:http";
import * as path from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { buildFixture, TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { startServer, type TestServer } from "./helpers.ts";

type ErrorBody = { error: { message: string; type: string; param: string | null; code: string | null } };

async function post(url: string, body: unknown, p = "/v1/chat/completions") {
  const r = await fetch(`${url}${p}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: r.status, json: (await r.json()) as ErrorBody };
}

/** tiny-llama's tokenizer files with `template` as chat_template.jinja (none when null). */
function tokenizerWith(template: string | null): TextTokenizer {
  const dir = tmpDir("tsllm-tok-");
  for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"])
    fs.copyFileSync(path.join(TINY_LLAMA, f), path.join(dir, f));
  if (template !== null) fs.writeFileSync(path.join(dir, "chat_template.jinja"), template);
  return TextTokenizer.load(dir);
}

const CHAT = { model: "tiny", messages: [{ role: "user", content: "Hi" }], max_tokens: 1, temperature: 0 };
const SYSTEM_CHAT = { ...CHAT, messages: [{ role: "system", content: "Be brief" }, ...CHAT.messages] };
const RAISES =
  "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}" +
  "{% endif %}{{ m['content'] }}{% endfor %}";

describe("tsllm-serve: a chat the template cannot render is the client's error", () => {
  let engine: string;
  const servers: TestServer[] = [];
  beforeAll(async () => {
    engine = await buildFixture("llama");
  });
  afterAll(async () => {
    for (const s of servers) await s.close();
  });

  it("raise_exception in the template: 400 on messages with its text, streamed or not; other chats still served", async () => {
    const s = await startServer(engine, { tokenizer: tokenizerWith(RAISES) });
    servers.push(s);
    for (const stream of [false, true]) {
      const r = await post(s.url, { ...SYSTEM_CHAT, stream });
      expect(r.status, `stream ${stream}`).toBe(400);
      expect(r.json.error).toMatchObject({ type: "invalid_request_error", param: "messages" });
      expect(r.json.error.message).toMatch(
        /^chat template \(.*chat_template\.jinja\): System role not supported$/,
      );
    }
    await expect(s.client.chat.completions.create(SYSTEM_CHAT as never)).rejects.toBeInstanceOf(
      OpenAI.BadRequestError,
    );
    const ok = await s.client.chat.completions.create(CHAT as never);
    expect(ok.choices).toHaveLength(1);
  });

  it("a tokenizer without a chat template: 400 on messages that says so; completions still served", async () => {
    const s = await startServer(engine, { tokenizer: tokenizerWith(null) });
    servers.push(s);
    const r = await post(s.url, CHAT);
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ type: "invalid_request_error", param: "messages" });
    expect(r.json.error.message).toMatch(/the tokenizer has no chat template/);
    const ok = await s.client.completions.create({ model: "tiny", prompt: "Hi", max_tokens: 1 });
    expect(ok.choices).toHaveLength(1);
  });
});

describe("tsllm-serve: stream_options without stream", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startServer(await buildFixture("llama"));
  });
  afterAll(async () => s?.close());

  const COMPLETION = { model: "tiny", prompt: [507, 1, 2], max_tokens: 1, temperature: 0 };

  it("is refused with 400 naming stream_options, on both endpoints, stream false or absent", async () => {
    const cases: [string, Record<string, unknown>][] = [
      ["/v1/completions", { ...COMPLETION, stream_options: { include_usage: true } }],
      ["/v1/completions", { ...COMPLETION, stream: false, stream_options: { include_usage: false } }],
      ["/v1/chat/completions", { ...CHAT, stream: null, stream_options: {} }],
    ];
    for (const [p, body] of cases) {
      const r = await post(s.url, body, p);
      expect([r.status, r.json], JSON.stringify(body)).toEqual([
        400,
        {
          error: {
            message: "stream_options: only allowed when stream is true",
            type: "invalid_request_error",
            param: "stream_options",
            code: null,
          },
        },
      ]);
    }
  });

  it("null stream_options without stream, and stream_options with stream, are still accepted", async () => {
    const a = await post(s.url, { ...COMPLETION, stream_options: null }, "/v1/completions");
    expect(a.status).toBe(200);
    const chunks = await s.client.chat.completions.create({
      ...CHAT,
      stream: true,
      stream_options: { include_usage: true },
    } as never);
    let usage = false;
    for await (const c of chunks as unknown as AsyncIterable<{ usage?: unknown }>) if (c.usage) usage = true;
    expect(usage).toBe(true);
  });
});

describe("tsllm-serve --api-key: percent-escaped paths", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startServer(await buildFixture("llama"), { apiKey: "sekrit" });
  });
  afterAll(async () => s?.close());

  /** A raw request: fetch would normalise nothing here, but http.request sends the path exactly as given. */
  function raw(method: string, p: string, body?: string): Promise<{ status: number; json: ErrorBody }> {
    return new Promise((res, rej) => {
      const req = http.request(
        `${s.url}${p}`,
        { method, headers: { "content-type": "application/json" } },
        (r) => {
          let b = "";
          r.on("data", (d) => {
            b += d;
          });
          r.on("end", () => res({ status: r.statusCode ?? 0, json: JSON.parse(b) }));
        },
      );
      req.on("error", rej);
      req.end(body);
    });
  }

  // The router decodes "%76" to "v": these reached the /v1 routes without the key (a completion was generated).
  it("a route reached through escapes in its path still needs the key", async () => {
    const body = JSON.stringify({ model: "tiny", prompt: [1, 2], max_tokens: 1 });
    for (const [method, p] of [
      ["POST", "/%761/completions"],
      ["POST", "/v%31/completions"],
      ["POST", "/%76%31/chat/completions"],
      ["GET", "/%761/models"],
    ]) {
      const r = await raw(method, p, method === "POST" ? body : undefined);
      expect([r.status, r.json.error?.code], `${method} ${p}`).toEqual([401, "invalid_api_key"]);
    }
    const st = s.manager.stats();
    expect([st.tokensGenerated, st.requestsFinished]).toEqual([0, 0]);
  });
});
