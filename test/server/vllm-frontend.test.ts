// What vLLM's OpenAI-compatible server gives a client beside the generation endpoints, as tsllm-serve now gives it
// (each case failed on the code before it): CORS for browser clients (vLLM's --allowed-origins & co., Starlette's
// CORSMiddleware), GET /version and /ping, stop_reason naming generation_config's extra eos ids, and /v1/models'
// root and parent.
import * as fs from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildServer } from "../../src/server/app.ts";
import { buildFixture, REPO } from "../fixtures.ts";
import { startServer, type TestServer } from "./helpers.ts";

const KEY = "k1";
const VERSION = JSON.parse(fs.readFileSync(`${REPO}/package.json`, "utf8")).version;

/** A sampled completion of tiny-llama ending on an end id: seed 16 ends on 508, seed 21 on 511 (the tokenizer's eos). */
const SAMPLED = {
  model: "tiny",
  prompt: [507, 1, 2],
  max_tokens: 30,
  temperature: 1.5,
  return_token_ids: true,
};

describe("tsllm-serve's frontend, as vLLM's", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startServer(await buildFixture("llama"), { apiKey: KEY, modelPath: "/models/tiny-llama" });
  });
  afterAll(async () => {
    await s?.close();
  });

  const post = async (route: string, body: object, headers: Record<string, string> = {}) =>
    fetch(`${s.url}${route}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${KEY}`, ...headers },
      body: JSON.stringify(body),
    });

  it("CORS by vLLM's default (any origin): responses, streamed ones too, say so; a preflight needs no API key", async () => {
    const origin = { origin: "https://ui.example" };
    const models = await fetch(`${s.url}/v1/models`, {
      headers: { ...origin, authorization: `Bearer ${KEY}` },
    });
    expect([models.status, models.headers.get("access-control-allow-origin")]).toEqual([200, "*"]);
    const body = { model: "tiny", prompt: [507, 1], max_tokens: 2, temperature: 0 };
    const plain = await post("/v1/completions", body, origin);
    expect([plain.status, plain.headers.get("access-control-allow-origin")]).toEqual([200, "*"]);
    // A stream writes its own headers (the reply is hijacked): they were missing there.
    const streamed = await post(
      "/v1/chat/completions",
      { ...body, messages: [{ role: "user", content: "Hi" }], prompt: undefined, stream: true },
      origin,
    );
    expect([streamed.status, streamed.headers.get("access-control-allow-origin")]).toEqual([200, "*"]);
    expect(await streamed.text()).toMatch(/data: \[DONE\]\n\n$/);
    // The browser's preflight of a keyed JSON POST: no Authorization header, yet answered (it was a 401 under
    // --api-key, a 404 without), with every method and the headers it asked for, as Starlette answers ["*"].
    const pre = await fetch(`${s.url}/v1/chat/completions`, {
      method: "OPTIONS",
      headers: {
        ...origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
      },
    });
    expect(pre.status).toBe(200);
    expect({
      origin: pre.headers.get("access-control-allow-origin"),
      methods: pre.headers.get("access-control-allow-methods"),
      headers: pre.headers.get("access-control-allow-headers"),
      maxAge: pre.headers.get("access-control-max-age"),
      credentials: pre.headers.get("access-control-allow-credentials"),
    }).toEqual({
      origin: "*",
      methods: "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT",
      headers: "authorization,content-type",
      maxAge: "600",
      credentials: null,
    });
    // The key is still required of the request itself.
    expect((await fetch(`${s.url}/v1/models`, { headers: origin })).status).toBe(401);
  });

  it("--allowed-origins and the others: only the listed origins, the listed methods and headers, credentials", async () => {
    const app = buildServer({
      manager: s.manager,
      tokenizer: null,
      modelName: "tiny",
      cors: {
        allowedOrigins: ["https://a.example"],
        allowedMethods: ["GET", "POST"],
        allowedHeaders: ["Authorization"],
        allowCredentials: true,
      },
    }).app;
    try {
      const listed = await app.inject({ url: "/v1/models", headers: { origin: "https://a.example" } });
      expect(listed.headers).toMatchObject({
        "access-control-allow-origin": "https://a.example",
        "access-control-allow-credentials": "true",
        vary: "Origin",
      });
      const other = await app.inject({ url: "/v1/models", headers: { origin: "https://b.example" } });
      expect([other.statusCode, other.headers["access-control-allow-origin"]]).toEqual([200, undefined]);
      const pre = await app.inject({
        method: "OPTIONS",
        url: "/v1/completions",
        headers: { origin: "https://a.example", "access-control-request-method": "POST" },
      });
      expect(pre.statusCode).toBe(200);
      // Starlette allows its safelisted headers beside the listed ones (Content-Type: application/json needs it).
      expect(pre.headers).toMatchObject({
        "access-control-allow-origin": "https://a.example",
        "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers":
          "Accept, Accept-Language, Authorization, Content-Language, Content-Type",
        "access-control-allow-credentials": "true",
      });
    } finally {
      await app.close();
    }
  });

  /** A browser's preflight of a POST /v1/completions with an Authorization and a custom header, from `origin`. */
  const preflight = (app: ReturnType<typeof buildServer>["app"], origin: string) =>
    app.inject({
      method: "OPTIONS",
      url: "/v1/completions",
      headers: {
        origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,x-trace",
      },
    });

  it("any origin with --allow-credentials: the request's own origin, never '*' (which browsers refuse with credentials)", async () => {
    // A server built here, not in beforeAll, so that what registerCors does is credited to this test.
    const any = { allowedOrigins: ["*"], allowedMethods: ["*"], allowedHeaders: ["*"] };
    const app = buildServer({
      manager: s.manager,
      tokenizer: null,
      modelName: "tiny",
      cors: { ...any, allowCredentials: true },
    }).app;
    try {
      const r = await app.inject({ url: "/v1/models", headers: { origin: "https://ui.example" } });
      expect(r.headers).toMatchObject({
        "access-control-allow-origin": "https://ui.example",
        "access-control-allow-credentials": "true",
        vary: "Origin",
      });
      // ["*"] methods and headers as Starlette answers them: every method, the headers the preflight asks for.
      const pre = await preflight(app, "https://other.example");
      expect(pre.statusCode).toBe(200);
      expect(pre.headers).toMatchObject({
        "access-control-allow-origin": "https://other.example",
        "access-control-allow-methods": "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT",
        "access-control-allow-headers": "authorization,x-trace",
        "access-control-allow-credentials": "true",
        "access-control-max-age": "600",
      });
    } finally {
      await app.close();
    }
    // Without credentials the same lists answer "*" and no credentials header (vLLM's default, built here too).
    const plain = buildServer({ manager: s.manager, tokenizer: null, modelName: "tiny" }).app;
    try {
      const pre = await preflight(plain, "https://ui.example");
      expect(pre.statusCode).toBe(200);
      expect(pre.headers).toMatchObject({
        "access-control-allow-origin": "*",
        "access-control-allow-methods": "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT",
        "access-control-allow-headers": "authorization,x-trace",
      });
      expect(pre.headers["access-control-allow-credentials"]).toBeUndefined();
    } finally {
      await plain.close();
    }
  });

  it("GET /version and GET or POST /ping (SageMaker's health check), without the key; /ping 503 while draining", async () => {
    const v = await fetch(`${s.url}/version`);
    expect([v.status, await v.json()]).toEqual([200, { version: VERSION }]);
    for (const method of ["GET", "POST"]) {
      const p = await fetch(`${s.url}/ping`, { method });
      expect([p.status, await p.json()], method).toEqual([200, { status: "ok" }]);
    }
    const draining = buildServer({ manager: s.manager, tokenizer: null, modelName: "tiny" });
    try {
      draining.stopAccepting();
      for (const method of ["GET", "POST"] as const) {
        const p = await draining.app.inject({ method, url: "/ping" });
        expect([p.statusCode, p.json()], method).toEqual([503, { status: "shutting down" }]);
      }
    } finally {
      await draining.app.close();
    }
  });

  it("stop_reason names generation_config's end ids other than the tokenizer's eos, as vLLM folds them into stop_token_ids", async () => {
    // tiny-llama: generation_config.json's eos_token_id [508, 511], the tokenizer's eos <|eot_id|> 511 (as Llama 3.1's
    // <|eom_id|> 128008 beside <|eot_id|> 128009).
    const extra = await (await post("/v1/completions", { ...SAMPLED, seed: 16 })).json();
    expect(extra.choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: 508 });
    expect(extra.choices[0].token_ids.at(-1)).toBe(508);
    const stream = await (await post("/v1/completions", { ...SAMPLED, seed: 16, stream: true })).text();
    const last = JSON.parse(stream.trim().split("\n\n").at(-2)?.slice("data: ".length) ?? "null");
    expect(last.choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: 508 });
    const chat = await post("/v1/chat/completions", {
      ...SAMPLED,
      prompt: undefined,
      messages: [{ role: "user", content: "Hi" }],
      seed: 1,
    });
    expect((await chat.json()).choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: 508 });
    // The tokenizer's eos ends a choice as itself (check_stop: stop_reason null).
    const eos = await (await post("/v1/completions", { ...SAMPLED, seed: 21 })).json();
    expect(eos.choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: null });
    expect(eos.choices[0].token_ids.at(-1)).toBe(511);
    // Without a tokenizer there is no tokenizer eos (vLLM's skip_tokenizer_init): every end id names itself.
    const bare = buildServer({ manager: s.manager, tokenizer: null, modelName: "tiny" });
    try {
      const r = await bare.app.inject({
        method: "POST",
        url: "/v1/completions",
        payload: { ...SAMPLED, seed: 21 },
      });
      expect(r.json().choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: 511 });
    } finally {
      await bare.app.close();
    }
  });

  it("/v1/models: vLLM's root (the model path the server was started on) and parent (null)", async () => {
    const models = await (
      await fetch(`${s.url}/v1/models`, { headers: { authorization: `Bearer ${KEY}` } })
    ).json();
    expect(models.data[0]).toMatchObject({ id: "tiny", root: "/models/tiny-llama", parent: null });
    // Servers built here (what beforeAll builds runs before a mutant is switched on): the path given, else the name.
    for (const [modelPath, root] of [
      ["/engines/llama-8b", "/engines/llama-8b"],
      [undefined, "served-name"],
    ] as const) {
      const app = buildServer({
        manager: s.manager,
        tokenizer: null,
        modelName: "served-name",
        modelPath,
      }).app;
      try {
        for (const url of ["/v1/models", "/v1/models/served-name"]) {
          const r = await app.inject({ url });
          const card = url === "/v1/models" ? r.json().data[0] : r.json();
          expect(card, url).toMatchObject({ id: "served-name", root, parent: null });
        }
      } finally {
        await app.close();
      }
    }
  });
});
