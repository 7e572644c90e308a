// tsllm-serve's HTTP contract, byte for byte where OpenAI's API fixes it: every refusal's status and
// exact error body (validation boundaries, unsupported parameters, auth, queue, shutdown, fastify's own
// 4xx), the response and server-sent-event chunk shapes, that sampling parameters and their defaults
// reach the batch manager as asked (the manager run directly is the oracle), usage and metrics counts,
// and cancellation when a client goes away. A scripted BatchManager drives the failure paths (a
// generation that ends in error, a stream that breaks, refusals of every kind) that a real engine on
// the CPU does not produce on demand.
import * as http from "node:http";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildServer, type Server } from "../../src/server/app.ts";
import type {
  BatchManager,
  GenerationRequest,
  RequestHandle,
  RequestResult,
  TokenEvent,
} from "../../src/serving/types.ts";
import { RequestRejectedError } from "../../src/serving/types.ts";
import { buildFixture } from "../fixtures.ts";
import { metric, startServer, type TestServer, waitIdle } from "./helpers.ts";

type ErrorBody = { error: { message: string; type: string; param: string | null; code: string | null } };

async function post(
  url: string,
  body: unknown,
  path = "/v1/completions",
  headers: Record<string, string> = { "content-type": "application/json" },
) {
  const r = await fetch(`${url}${path}`, {
    method: "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, headers: r.headers, text, json: JSON.parse(text) };
}

/** A streamed response: its status, headers and the JSON of every `data:` event, and whether [DONE] ended it. */
async function sse(url: string, body: unknown, path = "/v1/completions") {
  const r = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  expect(text.endsWith("\n\n"), text).toBe(true);
  const frames = text.slice(0, -2).split("\n\n");
  for (const f of frames) expect(f.startsWith("data: "), f).toBe(true);
  const last = frames.at(-1);
  const events = frames.filter((f) => f !== "data: [DONE]").map((f) => JSON.parse(f.slice(6)));
  return {
    status: r.status,
    headers: r.headers,
    events,
    done: last === "data: [DONE]",
    doneCount: frames.filter((f) => f === "data: [DONE]").length,
  };
}

const err = (
  message: string,
  param: string | null = null,
  type = "invalid_request_error",
  code: string | null = null,
): ErrorBody => ({
  error: { message, type, param, code },
});

const BASE = { model: "tiny", prompt: [507, 1, 2], max_tokens: 1, temperature: 0 };
const CHAT = { model: "tiny", messages: [{ role: "user", content: "Hi" }], max_tokens: 1, temperature: 0 };

describe("tsllm-serve's HTTP contract on tiny-llama", () => {
  let s: TestServer;
  let t0: number;
  beforeAll(async () => {
    t0 = Math.floor(Date.now() / 1000);
    s = await startServer(await buildFixture("llama"));
  });
  afterAll(async () => s?.close());

  it("/v1/models, /health and /metrics as served", async () => {
    const models = await (await fetch(`${s.url}/v1/models`)).json();
    const now = Math.floor(Date.now() / 1000);
    expect(models).toEqual({
      object: "list",
      data: [
        {
          id: "tiny",
          object: "model",
          created: models.data[0].created,
          owned_by: "tsllm",
          root: "tiny",
          parent: null,
          max_model_len: 256,
          vocab_size: 512,
        },
      ],
    });
    expect(Number.isInteger(models.data[0].created)).toBe(true);
    expect(models.data[0].created).toBeGreaterThanOrEqual(t0);
    expect(models.data[0].created).toBeLessThanOrEqual(now);
    const h = await fetch(`${s.url}/health`);
    expect([h.status, await h.json()]).toEqual([200, { status: "ok" }]);
    const m = await fetch(`${s.url}/metrics`);
    expect(m.status).toBe(200);
    expect(m.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    expect(await m.text()).toMatch(/^# HELP tsllm_/m);
  });

  it("unknown routes and models: 404 with OpenAI's error body; requests counted by route and status", async () => {
    const r = await fetch(`${s.url}/v1/nothing?x=1`);
    expect([r.status, await r.json()]).toEqual([
      404,
      err("no route GET /v1/nothing?x=1", null, "invalid_request_error", "not_found"),
    ]);
    const m = await post(s.url, { ...BASE, model: "gpt-4" });
    expect([m.status, m.json]).toEqual([
      404,
      err(
        'model "gpt-4" does not exist (this server serves "tiny")',
        "model",
        "invalid_request_error",
        "model_not_found",
      ),
    ]);
    const mc = await post(s.url, { ...CHAT, model: "tiny2" }, "/v1/chat/completions");
    expect([mc.status, mc.json]).toEqual([
      404,
      err(
        'model "tiny2" does not exist (this server serves "tiny")',
        "model",
        "invalid_request_error",
        "model_not_found",
      ),
    ]);

    const before = await (await fetch(`${s.url}/metrics`)).text();
    await fetch(`${s.url}/v1/nothing`);
    expect((await post(s.url, BASE)).status).toBe(200);
    const after = await (await fetch(`${s.url}/metrics`)).text();
    const count = (t: string, k: string) => metric(t, `tsllm_http_requests_total{${k}}`) || 0;
    expect(
      count(after, 'endpoint="unknown",status="404"') - count(before, 'endpoint="unknown",status="404"'),
    ).toBe(1);
    expect(
      count(after, 'endpoint="/v1/completions",status="200"') -
        count(before, 'endpoint="/v1/completions",status="200"'),
    ).toBe(1);
  });

  it("bodies: any content type is read as JSON; not JSON, not an object, too large: 4xx with the reason", async () => {
    // text/plain and no content type at all are read as JSON (curl -d sends form encoding).
    for (const headers of [
      { "content-type": "text/plain" },
      { "content-type": "application/x-www-form-urlencoded" },
      {} as Record<string, string>,
    ]) {
      const r = await post(s.url, BASE, "/v1/completions", headers);
      expect(r.status, JSON.stringify(headers)).toBe(200);
      expect(r.json.choices).toHaveLength(1);
    }
    for (const bad of ['{"model": "tiny",', "{'model': 1}", "nul"]) {
      let why = "";
      try {
        JSON.parse(bad);
      } catch (e) {
        why = (e as Error).message;
      }
      const r = await post(s.url, bad);
      expect([r.status, r.json], bad).toEqual([400, err(`request body is not valid JSON: ${why}`)]);
    }
    for (const bad of ["null", "3", "true", "[]", '"x"']) {
      const r = await post(s.url, bad);
      expect([r.status, r.json], bad).toEqual([400, err("request body must be a JSON object")]);
      const c = await post(s.url, bad, "/v1/chat/completions");
      expect([c.status, c.json], bad).toEqual([400, err("request body must be a JSON object")]);
    }
    // Bodies well over fastify's default limit of 1 MiB are read (long prompts as token ids are large).
    const long = await post(s.url, { ...BASE, user: "u".repeat(3 * 1024 * 1024) });
    expect(long.status).toBe(200);
    // fastify refuses a body over the 64 MiB limit from its content-length: a 4xx keeps its status and code.
    const big = await new Promise<{ status: number; body: string }>((res, rej) => {
      const req = http.request(
        `${s.url}/v1/completions`,
        {
          method: "POST",
          headers: { "content-type": "application/json", "content-length": String(64 * 1024 * 1024 + 1) },
        },
        (resp) => {
          let b = "";
          resp.on("data", (d) => {
            b += d;
          });
          resp.on("end", () => res({ status: resp.statusCode ?? 0, body: b }));
        },
      );
      req.on("error", rej);
      req.write("{}");
    });
    expect([big.status, JSON.parse(big.body)]).toEqual([
      413,
      err("Request body is too large", null, "invalid_request_error", "FST_ERR_CTP_BODY_TOO_LARGE"),
    ]);
  });

  // [what, body, path, exact message, param]: the parameters' limits, one past each on both sides.
  const REFUSED: [string, Record<string, unknown>, string, string, string | null][] = [
    [
      "temperature above 2",
      { ...BASE, temperature: 2.01 },
      "/v1/completions",
      "temperature: Too big: expected number to be <=2",
      "temperature",
    ],
    [
      "temperature below 0",
      { ...BASE, temperature: -0.01 },
      "/v1/completions",
      "temperature: Too small: expected number to be >=0",
      "temperature",
    ],
    [
      "top_p above 1",
      { ...BASE, top_p: 1.01 },
      "/v1/completions",
      "top_p: Too big: expected number to be <=1",
      "top_p",
    ],
    [
      "top_p 0",
      { ...BASE, top_p: 0 },
      "/v1/completions",
      "top_p: Too small: expected number to be >0",
      "top_p",
    ],
    [
      "top_k -2",
      { ...BASE, top_k: -2 },
      "/v1/completions",
      "top_k: Too small: expected number to be >=-1",
      "top_k",
    ],
    [
      "top_k 1.5",
      { ...BASE, top_k: 1.5 },
      "/v1/completions",
      "top_k: Invalid input: expected int, received number",
      "top_k",
    ],
    [
      "seed 1.5",
      { ...BASE, seed: 1.5 },
      "/v1/completions",
      "seed: seed must be an integer from -(2^53 - 1) to 2^53 - 1",
      "seed",
    ],
    [
      "seed a string",
      { ...BASE, seed: "1" },
      "/v1/completions",
      "seed: seed must be an integer from -(2^53 - 1) to 2^53 - 1",
      "seed",
    ],
    [
      "17 stop strings",
      { ...BASE, stop: Array.from({ length: 17 }, (_, i) => `s${i}`) },
      "/v1/completions",
      "stop: stop must be a string or a list of at most 16 strings",
      "stop",
    ],
    ["n 129", { ...BASE, n: 129 }, "/v1/completions", "n: n must be an integer from 1 to 128", "n"],
    ["n 1.5", { ...BASE, n: 1.5 }, "/v1/completions", "n: n must be an integer from 1 to 128", "n"],
    ["n a string", { ...CHAT, n: "2" }, "/v1/chat/completions", "n: n must be an integer from 1 to 128", "n"],
    [
      "max_tokens 0",
      { ...BASE, max_tokens: 0 },
      "/v1/completions",
      "max_tokens: Too small: expected number to be >=1",
      "max_tokens",
    ],
    [
      "max_tokens 1.5",
      { ...BASE, max_tokens: 1.5 },
      "/v1/completions",
      "max_tokens: Invalid input: expected int, received number",
      "max_tokens",
    ],
    [
      "a token id 1.5",
      { ...BASE, prompt: [1, 1.5] },
      "/v1/completions",
      "prompt: prompt must be a string, a list of strings, a list of token ids or a list of such lists",
      "prompt",
    ],
    [
      "an empty prompt list",
      { ...BASE, prompt: [] },
      "/v1/completions",
      "prompt: prompt must be a string, a list of strings, a list of token ids or a list of such lists",
      "prompt",
    ],
    [
      "an empty inner prompt",
      { ...BASE, prompt: [[1], []] },
      "/v1/completions",
      "prompt.1: Too small: expected array to have >=1 items",
      "prompt.1",
    ],
    [
      "ignore_eos a string",
      { ...BASE, ignore_eos: "yes" },
      "/v1/completions",
      "ignore_eos: Invalid input: expected boolean, received string",
      "ignore_eos",
    ],
    [
      "return_token_ids null",
      { ...BASE, return_token_ids: null },
      "/v1/completions",
      "return_token_ids: Invalid input: expected boolean, received null",
      "return_token_ids",
    ],
    [
      "user a number",
      { ...BASE, user: 5 },
      "/v1/completions",
      "user: Invalid input: expected string, received number",
      "user",
    ],
    [
      "an unknown field in stream_options",
      // (continuous_usage_stats, vLLM's, is known: vllm-parity.test.ts.)
      { ...BASE, stream: true, stream_options: { include_usage: true, usage_every: 1 } },
      "/v1/completions",
      "Unrecognized request argument supplied: stream_options.usage_every",
      "stream_options.usage_every",
    ],
    [
      "two unknown fields",
      { ...BASE, foo: 1, bar: 2 },
      "/v1/completions",
      "Unrecognized request argument supplied: foo",
      "foo",
    ],
    [
      "include_usage a string",
      { ...BASE, stream: true, stream_options: { include_usage: "yes" } },
      "/v1/completions",
      "stream_options.include_usage: Invalid input: expected boolean, received string",
      "stream_options.include_usage",
    ],
    [
      "presence_penalty 0.5",
      { ...BASE, presence_penalty: 0.5 },
      "/v1/completions",
      "presence_penalty: presence_penalty is not supported (only 0)",
      "presence_penalty",
    ],
    [
      "frequency_penalty -1",
      { ...BASE, frequency_penalty: -1 },
      "/v1/completions",
      "frequency_penalty: frequency_penalty is not supported (only 0)",
      "frequency_penalty",
    ],
    [
      "logit_bias with a token",
      { ...BASE, logit_bias: { "17": 5 } },
      "/v1/completions",
      "logit_bias: logit_bias is not supported (only null or {})",
      "logit_bias",
    ],
    [
      "echo true",
      { ...BASE, echo: true },
      "/v1/completions",
      "echo: echo is not supported (only false)",
      "echo",
    ],
    [
      "best_of 2",
      { ...BASE, best_of: 2 },
      "/v1/completions",
      "best_of: best_of is not supported (only 1)",
      "best_of",
    ],
    [
      "logprobs 1",
      { ...BASE, logprobs: 1 },
      "/v1/completions",
      "logprobs: logprobs is not supported (only null)",
      "logprobs",
    ],
    [
      "suffix",
      { ...BASE, suffix: "!" },
      "/v1/completions",
      "suffix: suffix is not supported (only null)",
      "suffix",
    ],
    [
      "max_tokens on chat 0",
      { ...CHAT, max_tokens: 0 },
      "/v1/chat/completions",
      "max_tokens: Too small: expected number to be >=1",
      "max_tokens",
    ],
    [
      "max_completion_tokens 0",
      { ...CHAT, max_completion_tokens: 0 },
      "/v1/chat/completions",
      "max_completion_tokens: Too small: expected number to be >=1",
      "max_completion_tokens",
    ],
    [
      "max_completion_tokens 2.5",
      { ...CHAT, max_completion_tokens: 2.5 },
      "/v1/chat/completions",
      "max_completion_tokens: Invalid input: expected int, received number",
      "max_completion_tokens",
    ],
    [
      "chat logprobs true",
      { ...CHAT, logprobs: true },
      "/v1/chat/completions",
      "logprobs: logprobs is not supported (only false)",
      "logprobs",
    ],
    [
      "tools [{…}] without tool_choice",
      { ...CHAT, tools: [{ type: "function", function: { name: "f" } }] },
      "/v1/chat/completions",
      'tools: tools is not supported (only null, [], or any with tool_choice "none")',
      "tools",
    ],
    [
      "a prompt on chat",
      { ...CHAT, prompt: "x" },
      "/v1/chat/completions",
      "Unrecognized request argument supplied: prompt",
      "prompt",
    ],
    [
      "echo on chat",
      { ...CHAT, echo: false },
      "/v1/chat/completions",
      "Unrecognized request argument supplied: echo",
      "echo",
    ],
    [
      "messages on completions",
      { ...BASE, messages: [] },
      "/v1/completions",
      "Unrecognized request argument supplied: messages",
      "messages",
    ],
    ["model null", { ...BASE, model: null }, "/v1/completions", "model: model must be a string", "model"],
    ["no messages", { model: "tiny" }, "/v1/chat/completions", "messages: required", "messages"],
    ["no model", { prompt: [1] }, "/v1/completions", "model: required", "model"],
  ];

  it(`${REFUSED.length} bodies past a parameter's limit: 400, the exact message and param`, async () => {
    for (const [what, body, path, message, param] of REFUSED) {
      const r = await post(s.url, body, path);
      expect([r.status, r.json], what).toEqual([400, err(message, param)]);
    }
  });

  // Each at a limit, or a neutral value of an unsupported parameter: accepted.
  const ACCEPTED: [string, Record<string, unknown>, string][] = [
    ["temperature 2", { ...BASE, temperature: 2, seed: 1 }, "/v1/completions"],
    ["temperature 0", { ...BASE, temperature: 0 }, "/v1/completions"],
    ["top_p 1", { ...BASE, top_p: 1 }, "/v1/completions"],
    ["top_k -1, 0 and null", { ...BASE, top_k: -1 }, "/v1/completions"],
    ["top_k null", { ...BASE, top_k: null }, "/v1/completions"],
    [
      "16 stop strings",
      { ...BASE, stop: Array.from({ length: 16 }, (_, i) => `\u0000s${i}`) },
      "/v1/completions",
    ],
    ["stop null", { ...BASE, stop: null }, "/v1/completions"],
    ["n 1", { ...BASE, n: 1 }, "/v1/completions"],
    ["n null", { ...BASE, n: null }, "/v1/completions"],
    ["token id 0 and max_tokens null", { ...BASE, prompt: [0], max_tokens: null }, "/v1/completions"],
    ["user", { ...BASE, user: "u" }, "/v1/completions"],
    [
      "neutral penalties",
      { ...BASE, presence_penalty: 0, frequency_penalty: null, logit_bias: null },
      "/v1/completions",
    ],
    // {} biases nothing (LangChain's OpenAI LLM sends it by default): refused before.
    ["logit_bias {}", { ...BASE, logit_bias: {} }, "/v1/completions"],
    ["logit_bias {} on chat", { ...CHAT, logit_bias: {} }, "/v1/chat/completions"],
    [
      "neutral completion extras",
      { ...BASE, echo: false, best_of: 1, logprobs: null, suffix: null },
      "/v1/completions",
    ],
    ["stream_options null", { ...BASE, stream: false, stream_options: null }, "/v1/completions"],
    [
      "neutral chat extras",
      { ...CHAT, logprobs: false, tools: null, n: 1, max_completion_tokens: null },
      "/v1/chat/completions",
    ],
    // No tools: tool_choice defaults to "none" in vLLM (its "auto" default needs tools), as OpenAI's does.
    ["tools []", { ...CHAT, tools: [] }, "/v1/chat/completions"],
  ];

  it(`${ACCEPTED.length} bodies at a limit or a neutral value: 200`, async () => {
    for (const [what, body, path] of ACCEPTED) {
      const r = await post(s.url, body, path);
      expect(r.status, `${what}: ${r.text}`).toBe(200);
    }
  });

  it("a token id outside the vocabulary is the manager's refusal: 400 on the prompt", async () => {
    const r = await post(s.url, { ...BASE, prompt: [1, 512] });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ type: "invalid_request_error", param: "prompt", code: null });
    expect(r.json.error.message).toMatch(/token id 512 outside the vocabulary \(0\.\.511\)/);
  });

  it("sampling parameters and their defaults reach the batch manager as asked", async () => {
    const prompt = [507, 17, 3];
    const alone = async (sampling: GenerationRequest["sampling"], maxNewTokens = 12) =>
      (await s.manager.submit({ promptIds: prompt, maxNewTokens, sampling, ignoreEos: true }).done).outputIds;
    const served = async (extra: Record<string, unknown>) => {
      const r = await post(s.url, {
        model: "tiny",
        prompt,
        max_tokens: 12,
        ignore_eos: true,
        return_token_ids: true,
        ...extra,
      });
      expect(r.status, r.text).toBe(200);
      return r.json.choices[0].token_ids as number[];
    };
    // Defaults: temperature 1, top_p 1, top_k all.
    const dflt = await alone({ temperature: 1, topP: 1, topK: 0, seed: 5 });
    expect(await served({ seed: 5 })).toEqual(dflt);
    expect(await served({ seed: 5, temperature: null, top_p: null, top_k: null })).toEqual(dflt);
    expect(await served({ seed: 5, top_k: -1 })).toEqual(dflt);
    expect(await served({ seed: 5, top_k: 0 })).toEqual(dflt);
    // Explicit values.
    const asked = await alone({ temperature: 0.7, topP: 0.9, topK: 5, seed: 11 });
    expect(await served({ seed: 11, temperature: 0.7, top_p: 0.9, top_k: 5 })).toEqual(asked);
    expect(await alone({ temperature: 0.7, topP: 0.9, topK: 0, seed: 11 })).not.toEqual(asked); // top_k matters here
    const topP = await alone({ temperature: 1.5, topP: 0.5, topK: 0, seed: 2 });
    expect(await served({ seed: 2, temperature: 1.5, top_p: 0.5 })).toEqual(topP);
    expect(await alone({ temperature: 1.5, topP: 1, topK: 0, seed: 2 })).not.toEqual(topP);
    expect(await served({ seed: 2, temperature: 0 })).toEqual(
      await alone({ temperature: 0, topP: 1, topK: 0, seed: 0 }),
    );
    // Without a seed each request samples differently.
    const a = await served({});
    const b = await served({});
    expect(a).toHaveLength(12);
    expect(a).not.toEqual(b);
  });

  it("max_tokens and its defaults, max_completion_tokens before max_tokens, ignore_eos", async () => {
    const r = await post(s.url, { model: "tiny", prompt: [507, 1], temperature: 0, ignore_eos: true });
    expect(r.json.usage).toEqual({ prompt_tokens: 2, completion_tokens: 16, total_tokens: 18 });
    expect(r.json.choices[0].finish_reason).toBe("length");
    // A chat reply without a limit may use the rest of the context.
    const c = await post(s.url, { ...CHAT, max_tokens: undefined, ignore_eos: true }, "/v1/chat/completions");
    expect(c.status, c.text).toBe(200);
    expect(c.json.usage.prompt_tokens + c.json.usage.completion_tokens).toBe(256);
    expect(c.json.usage.total_tokens).toBe(256);
    expect(c.json.choices[0].finish_reason).toBe("length");
    const both = await post(
      s.url,
      { ...CHAT, max_tokens: 5, max_completion_tokens: 3, ignore_eos: true },
      "/v1/chat/completions",
    );
    expect(both.json.usage.completion_tokens).toBe(3);
    const only = await post(s.url, { ...CHAT, max_tokens: 4, ignore_eos: true }, "/v1/chat/completions");
    expect(only.json.usage.completion_tokens).toBe(4);
    // Seed 16 at temperature 1.5 samples an end token (508) as its 27th token: ignore_eos runs past it.
    const sampled = {
      model: "tiny",
      prompt: [507, 1, 2],
      max_tokens: 30,
      temperature: 1.5,
      seed: 16,
      return_token_ids: true,
    };
    const want = (
      await s.manager.submit({
        promptIds: [507, 1, 2],
        maxNewTokens: 30,
        sampling: { temperature: 1.5, seed: 16, topK: 0, topP: 1 },
      }).done
    ).outputIds;
    expect(want.length).toBeLessThan(30);
    expect([508, 511]).toContain(want.at(-1));
    const stopped = await post(s.url, sampled);
    expect(stopped.json.choices[0].token_ids).toEqual(want);
    expect(stopped.json.choices[0].finish_reason).toBe("stop");
    for (const ignore of [false]) {
      const r2 = await post(s.url, { ...sampled, ignore_eos: ignore });
      expect(r2.json.choices[0].token_ids).toEqual(want);
    }
    const ignored = await post(s.url, { ...sampled, ignore_eos: true });
    expect(ignored.json.choices[0].token_ids).toHaveLength(30);
    expect(ignored.json.choices[0].token_ids.slice(0, want.length)).toEqual(want);
    expect(ignored.json.choices[0].finish_reason).toBe("length");
  });

  it("non-streamed responses: ids, objects, token ids only when asked; usage and metrics over several prompts", async () => {
    const before = await (await fetch(`${s.url}/metrics`)).text();
    const r = await post(s.url, {
      model: "tiny",
      prompt: [[507, 1, 2, 3], [507, 9], "Hi"],
      max_tokens: 3,
      temperature: 0,
      ignore_eos: true,
    });
    const now = Math.floor(Date.now() / 1000);
    expect(r.status).toBe(200);
    expect(r.json.id).toMatch(/^cmpl-[0-9a-f]{32}$/);
    expect(r.json.object).toBe("text_completion");
    expect(r.json.model).toBe("tiny");
    expect(Number.isInteger(r.json.created)).toBe(true);
    expect(r.json.created).toBeGreaterThanOrEqual(t0);
    expect(r.json.created).toBeLessThanOrEqual(now);
    expect(r.json.choices.map((c: Record<string, unknown>) => Object.keys(c).sort())).toEqual(
      Array(3).fill(["finish_reason", "index", "logprobs", "stop_reason", "text"]),
    );
    expect(r.json.choices.map((c: { index: number }) => c.index)).toEqual([0, 1, 2]);
    const hi = r.json.choices[2];
    expect(hi.logprobs).toBeNull();
    const promptTokens =
      4 +
      2 +
      (await post(s.url, { model: "tiny", prompt: "Hi", max_tokens: 1, return_token_ids: true })).json
        .choices[0].prompt_token_ids.length;
    expect(r.json.usage).toEqual({
      prompt_tokens: promptTokens,
      completion_tokens: 9,
      total_tokens: promptTokens + 9,
    });
    const after = await (await fetch(`${s.url}/metrics`)).text();
    // The "Hi" request for the prompt's length counts too: 1 token more, its prompt once more.
    expect(metric(after, "tsllm_prompt_tokens_total") - metric(before, "tsllm_prompt_tokens_total")).toBe(
      promptTokens + (promptTokens - 6),
    );
    expect(
      metric(after, "tsllm_generation_tokens_total") - metric(before, "tsllm_generation_tokens_total"),
    ).toBe(10);
    const lengthOf = (t: string) => metric(t, 'tsllm_request_success_total{finish_reason="length"}') || 0;
    expect(lengthOf(after) - lengthOf(before)).toBe(4);

    const c = await post(s.url, { ...CHAT, max_tokens: 2, ignore_eos: true }, "/v1/chat/completions");
    expect(c.json.id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
    expect(c.json.object).toBe("chat.completion");
    expect(c.json.model).toBe("tiny");
    expect(c.json.created).toBeGreaterThanOrEqual(t0);
    expect(Number.isInteger(c.json.created)).toBe(true);
    expect(c.json.created).toBeLessThanOrEqual(Math.floor(Date.now() / 1000));
    expect(Object.keys(c.json).sort()).toEqual(["choices", "created", "id", "model", "object", "usage"]);
    expect(Object.keys(c.json.choices[0]).sort()).toEqual([
      "finish_reason",
      "index",
      "logprobs",
      "message",
      "stop_reason",
    ]);
    expect(c.json.choices[0]).toMatchObject({
      index: 0,
      logprobs: null,
      finish_reason: "length",
      message: { role: "assistant" },
    });
    const ci = await post(
      s.url,
      { ...CHAT, max_tokens: 2, ignore_eos: true, return_token_ids: true },
      "/v1/chat/completions",
    );
    expect(ci.json.choices[0].token_ids).toHaveLength(2);
    expect(ci.json.prompt_token_ids).toHaveLength(ci.json.usage.prompt_tokens);
    expect(ci.json.choices[0].prompt_token_ids).toBeUndefined();
    const cf = await post(s.url, { ...CHAT, max_tokens: 2, return_token_ids: false }, "/v1/chat/completions");
    expect(Object.keys(cf.json)).not.toContain("prompt_token_ids");
  });

  it("a stop string: finish_reason stop and stop_reason, streamed and not, completions and chat", async () => {
    // Greedy on this prompt writes text; its characters 1..3 make a stop string.
    const full = (await post(s.url, { ...BASE, max_tokens: 12 })).json.choices[0].text as string;
    const from = [...full.matchAll(/[^\uFFFD]{2}/g)].map((m) => m.index!).find((i) => i >= 1);
    expect(from, JSON.stringify(full)).toBeDefined();
    const stop = full.slice(from!, from! + 2);
    const r = await post(s.url, { ...BASE, max_tokens: 12, stop: ["\u0000never", stop] });
    expect(r.json.choices[0]).toMatchObject({
      text: full.slice(0, full.indexOf(stop)),
      finish_reason: "stop",
      stop_reason: stop,
    });
    const st = await sse(s.url, { ...BASE, max_tokens: 12, stop, stream: true });
    expect(st.events.at(-1).choices[0]).toEqual({
      index: 0,
      text: "",
      logprobs: null,
      finish_reason: "stop",
      stop_reason: stop,
    });
    // Not ended by a stop: stop_reason null, sent as vLLM sends it (it was left out).
    const none = await post(s.url, { ...BASE, max_tokens: 2, stop: "\u0000never" });
    expect(none.json.choices[0]).toMatchObject({ finish_reason: "length", stop_reason: null });

    const chatFull = (await post(s.url, { ...CHAT, max_tokens: 12 }, "/v1/chat/completions")).json.choices[0]
      .message.content as string;
    const cfrom = [...chatFull.matchAll(/[^\uFFFD]{2}/g)].map((m) => m.index!).find((i) => i >= 1);
    expect(cfrom, JSON.stringify(chatFull)).toBeDefined();
    const cstop = chatFull.slice(cfrom!, cfrom! + 2);
    const c = await post(s.url, { ...CHAT, max_tokens: 12, stop: cstop }, "/v1/chat/completions");
    expect(c.json.choices[0]).toMatchObject({
      message: { role: "assistant", content: chatFull.slice(0, chatFull.indexOf(cstop)) },
      finish_reason: "stop",
      stop_reason: cstop,
    });
    const cs = await sse(
      s.url,
      { ...CHAT, max_tokens: 12, stop: cstop, stream: true },
      "/v1/chat/completions",
    );
    expect(cs.events.at(-1).choices[0]).toEqual({
      index: 0,
      delta: {},
      logprobs: null,
      finish_reason: "stop",
      stop_reason: cstop,
    });
    const cn = await post(s.url, { ...CHAT, max_tokens: 2 }, "/v1/chat/completions");
    expect(cn.json.choices[0]).toMatchObject({ finish_reason: "length", stop_reason: null });
  });

  it("server-sent events of completions: headers, chunk shapes, one token per chunk with ids, usage last, [DONE]", async () => {
    const body = {
      model: "tiny",
      prompt: [507, 4, 5],
      max_tokens: 6,
      temperature: 0,
      ignore_eos: true,
      stream: true,
    };
    const want = (await post(s.url, { ...body, stream: false, return_token_ids: true })).json.choices[0];
    const r = await sse(s.url, { ...body, return_token_ids: true, stream_options: { include_usage: true } });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    expect(r.headers.get("cache-control")).toBe("no-cache");
    expect(r.headers.get("connection")).toBe("keep-alive");
    expect([r.done, r.doneCount]).toEqual([true, 1]);
    const id = r.events[0].id;
    expect(id).toMatch(/^cmpl-[0-9a-f]{32}$/);
    for (const e of r.events)
      expect({ id: e.id, object: e.object, model: e.model, created: Number.isInteger(e.created) }).toEqual({
        id,
        object: "text_completion",
        model: "tiny",
        created: true,
      });
    // With ids: one chunk per token, text or not.
    const tokens = r.events.slice(0, 6);
    expect(tokens.map((e) => e.choices)).toEqual(
      want.token_ids.map((t: number, i: number) => [
        { index: 0, text: tokens[i].choices[0].text, logprobs: null, finish_reason: null, token_ids: [t] },
      ]),
    );
    expect(tokens.map((e) => e.choices[0].text).join("")).toBe(want.text);
    expect(r.events[6].choices).toEqual([
      { index: 0, text: "", logprobs: null, finish_reason: "length", stop_reason: null },
    ]);
    expect(r.events[7]).toEqual({
      id,
      object: "text_completion",
      created: r.events[7].created,
      model: "tiny",
      choices: [],
      usage: { prompt_tokens: 3, completion_tokens: 6, total_tokens: 9 },
    });
    expect(r.events).toHaveLength(8);

    // Without ids: only chunks with text, no usage unless asked.
    for (const opts of [
      {},
      { stream_options: { include_usage: false } },
      { stream_options: { include_usage: null } },
      { stream_options: {} },
    ]) {
      const p = await sse(s.url, { ...body, ...opts });
      const last = p.events.at(-1);
      expect(last.choices, JSON.stringify(opts)).toEqual([
        { index: 0, text: "", logprobs: null, finish_reason: "length", stop_reason: null },
      ]);
      const mid = p.events.slice(0, -1);
      for (const e of mid) {
        expect(Object.keys(e.choices[0]).sort()).toEqual(["finish_reason", "index", "logprobs", "text"]);
        expect(e.choices[0].text).not.toBe("");
      }
      expect(mid.map((e) => e.choices[0].text).join("")).toBe(want.text);
      expect(p.events.some((e) => "usage" in e)).toBe(false);
    }
  });

  it("server-sent events of two prompts: each choice by its index, usage summed", async () => {
    const r = await sse(s.url, {
      model: "tiny",
      prompt: [
        [507, 4],
        [507, 5, 6],
      ],
      max_tokens: 2,
      temperature: 0,
      ignore_eos: true,
      stream: true,
      return_token_ids: true,
      stream_options: { include_usage: true },
    });
    const by = (i: number) => r.events.filter((e) => e.choices[0]?.index === i);
    expect(by(0)).toHaveLength(3);
    expect(by(1)).toHaveLength(3);
    expect(by(0).at(-1).choices[0].finish_reason).toBe("length");
    expect(by(1).at(-1).choices[0].finish_reason).toBe("length");
    expect(r.events.at(-1).usage).toEqual({ prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 });
  });

  it("server-sent events of chat: the role first, content deltas, an empty delta with the finish reason", async () => {
    const body = { ...CHAT, max_tokens: 5, ignore_eos: true, stream: true };
    const want = (
      await post(s.url, { ...body, stream: false, return_token_ids: true }, "/v1/chat/completions")
    ).json.choices[0];
    const r = await sse(
      s.url,
      { ...body, return_token_ids: true, stream_options: { include_usage: true } },
      "/v1/chat/completions",
    );
    expect(r.done).toBe(true);
    const id = r.events[0].id;
    expect(id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
    for (const e of r.events)
      expect([e.id, e.object, e.model]).toEqual([id, "chat.completion.chunk", "tiny"]);
    expect(r.events[0].choices).toEqual([
      { index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null },
    ]);
    const tokens = r.events.slice(1, 6);
    expect(tokens.map((e) => e.choices)).toEqual(
      want.token_ids.map((t: number, i: number) => [
        {
          index: 0,
          delta: { content: tokens[i].choices[0].delta.content },
          logprobs: null,
          finish_reason: null,
          token_ids: [t],
        },
      ]),
    );
    expect(tokens.map((e) => e.choices[0].delta.content).join("")).toBe(want.message.content);
    expect(r.events[6].choices).toEqual([
      { index: 0, delta: {}, logprobs: null, finish_reason: "length", stop_reason: null },
    ]);
    expect(r.events[7].choices).toEqual([]);
    expect(r.events[7].usage.completion_tokens).toBe(5);
    expect(r.events).toHaveLength(8);
    const plain = await sse(s.url, body, "/v1/chat/completions");
    expect(plain.events.some((e) => "usage" in e)).toBe(false);
    for (const e of plain.events.slice(1, -1)) {
      expect(Object.keys(e.choices[0]).sort()).toEqual(["delta", "finish_reason", "index", "logprobs"]);
      expect(e.choices[0].delta.content).not.toBe("");
    }
  });

  it("a client that goes away mid-way cancels its non-streamed request", async () => {
    await waitIdle(s);
    const before = s.manager.stats().tokensGenerated;
    const mBefore = await (await fetch(`${s.url}/metrics`)).text();
    const ac = new AbortController();
    const req = fetch(`${s.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "tiny",
        prompt: [507, 1],
        max_tokens: 250,
        temperature: 0,
        ignore_eos: true,
      }),
      signal: ac.signal,
    }).catch((e) => e);
    for (let t = 0; t < 200 && s.manager.stats().tokensGenerated - before < 3; t++)
      await new Promise((r) => setTimeout(r, 5));
    ac.abort();
    expect(await req).toBeInstanceOf(Error);
    await waitIdle(s);
    const generated = s.manager.stats().tokensGenerated - before;
    expect(generated).toBeGreaterThanOrEqual(3);
    expect(generated).toBeLessThan(250);
    let m = "";
    for (let t = 0; t < 100; t++) {
      m = await (await fetch(`${s.url}/metrics`)).text();
      if (
        metric(m, 'tsllm_request_success_total{finish_reason="abort"}') >
        (metric(mBefore, 'tsllm_request_success_total{finish_reason="abort"}') || 0)
      )
        break;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(
      metric(m, 'tsllm_request_success_total{finish_reason="abort"}') -
        (metric(mBefore, 'tsllm_request_success_total{finish_reason="abort"}') || 0),
    ).toBe(1);
    expect(metric(m, "tsllm_kv_cache_blocks_free")).toBe(metric(m, "tsllm_kv_cache_blocks_total"));
  });

  it("several prompts are admitted all or none: a refused one cancels those already queued", async () => {
    await waitIdle(s);
    const before = s.manager.stats().tokensGenerated;
    const long = Array.from({ length: 250 }, (_, i) => i + 1);
    const r = await post(s.url, {
      model: "tiny",
      prompt: [[507, 1], long],
      max_tokens: 100,
      temperature: 0,
      ignore_eos: true,
    });
    expect([r.status, r.json]).toEqual([
      400,
      err(
        "prompt of 250 tokens + max_new_tokens 100 = 350 exceeds max_seq_len 256",
        "max_tokens",
        "invalid_request_error",
        "context_length_exceeded",
      ),
    ]);
    await new Promise((res) => setTimeout(res, 100));
    await waitIdle(s);
    expect(s.manager.stats().tokensGenerated - before).toBeLessThan(100);
  });

  it("after stopAccepting: /health and new requests answer 503, the rest still serves", async () => {
    s.server.stopAccepting();
    const h = await fetch(`${s.url}/health`);
    expect([h.status, await h.json()]).toEqual([503, { status: "shutting down" }]);
    const shut = err("the server is shutting down", null, "service_unavailable", "shutting_down");
    const r = await post(s.url, BASE);
    expect([r.status, r.json]).toEqual([503, shut]);
    const c = await post(s.url, CHAT, "/v1/chat/completions");
    expect([c.status, c.json]).toEqual([503, shut]);
    await expect(s.client.completions.create({ model: "tiny", prompt: "Hi" })).rejects.toBeInstanceOf(
      OpenAI.InternalServerError,
    );
    expect((await fetch(`${s.url}/v1/models`)).status).toBe(200);
  });
});

describe("tsllm-serve's limits", () => {
  it("a request of more choices than the queue ever takes: 400 at once, with the numbers (not a 429 to retry)", async () => {
    const s = await startServer(await buildFixture("llama"), { maxQueue: 2 });
    try {
      const r = await post(s.url, { model: "tiny", prompt: [[1], [2], [3]], max_tokens: 1 });
      expect([r.status, r.json]).toEqual([
        400,
        err(
          "this request has 3 choices (3 prompt(s) × n 1), more than the request queue ever holds (limit 2)",
          "prompt",
        ),
      ]);
      const byN = await post(s.url, { model: "tiny", prompt: "Hi", n: 3, max_tokens: 1 });
      expect([byN.status, byN.json]).toEqual([
        400,
        err(
          "this request has 3 choices (1 prompt(s) × n 3), more than the request queue ever holds (limit 2)",
          "n",
        ),
      ]);
      const ok = await post(s.url, { model: "tiny", prompt: [[1], [2]], max_tokens: 1 });
      expect(ok.status).toBe(200);
      expect(ok.json.choices).toHaveLength(2);
      const none = await s.client.completions
        .create({ model: "tiny", prompt: [[1], [2], [3]], max_tokens: 1 })
        .catch((e) => e);
      expect(none).toBeInstanceOf(OpenAI.BadRequestError);
    } finally {
      await s.close();
    }
  });

  it("--api-key: exact 401 on /v1 without the key or with another; /health and /metrics open", async () => {
    const s = await startServer(await buildFixture("llama"), { apiKey: "sekrit" });
    try {
      const denied = err(
        "invalid or missing API key (Authorization: Bearer …)",
        null,
        "authentication_error",
        "invalid_api_key",
      );
      for (const headers of [
        { "content-type": "application/json" },
        { "content-type": "application/json", authorization: "Bearer sekrit2" },
        { "content-type": "application/json", authorization: "sekrit" },
        { "content-type": "application/json", authorization: "Bearer " },
      ] as Record<string, string>[]) {
        const r = await post(s.url, BASE, "/v1/completions", headers);
        expect([r.status, r.json], JSON.stringify(headers)).toEqual([401, denied]);
      }
      const m = await fetch(`${s.url}/v1/models`);
      expect([m.status, await m.json()]).toEqual([401, denied]);
      const ok = await post(s.url, BASE, "/v1/completions", {
        "content-type": "application/json",
        authorization: "Bearer sekrit",
      });
      expect(ok.status).toBe(200);
      expect((await fetch(`${s.url}/health`)).status).toBe(200);
      expect((await fetch(`${s.url}/metrics`)).status).toBe(200);
      expect((await fetch(`${s.url}/v1`)).status).toBe(404); // not under /v1/
    } finally {
      await s.close();
    }
  });
});

// ---- A scripted batch manager: what the server does with each kind of result, refusal and failure. ----

type Script = { tokens?: number[]; end?: Partial<RequestResult>; throwAfter?: Error };

function scriptedManager(
  next: (req: GenerationRequest) => Script | Error,
): BatchManager & { cancels: number; submitted: GenerationRequest[] } {
  const m = {
    cancels: 0,
    submitted: [] as GenerationRequest[],
    limits: { maxBatchSize: 4, maxNumTokens: 64, maxSeqLen: 64, tokensPerBlock: 16, kvBlocksTotal: 16 },
    policy: "guaranteed_no_evict" as const,
    vocabSize: 512,
    eosTokenIds: [2],
    stats: () => ({
      queued: 0,
      running: 0,
      paused: 0,
      kvBlocksTotal: 16,
      kvBlocksFree: 16,
      kvBlocksPeakUsed: 0,
      tokensGenerated: 0,
      promptTokensComputed: 0,
      requestsFinished: 0,
      requestsRejected: 0,
      preemptions: 0,
      steps: 0,
    }),
    shutdown: async () => {},
    submit(req: GenerationRequest): RequestHandle {
      const sc = next(req);
      if (sc instanceof Error) throw sc;
      m.submitted.push(req);
      const tokens = sc.tokens ?? [];
      const result: RequestResult = {
        outputIds: tokens,
        finishReason: "length",
        timings: {
          queueMs: 0,
          ttftMs: 1,
          tokenTimesMs: tokens.map((_, i) => i + 1),
          e2eMs: tokens.length + 1,
        },
        preemptions: 0,
        ...sc.end,
      };
      return {
        id: m.submitted.length,
        done: Promise.resolve(result),
        cancel: () => {
          m.cancels++;
        },
        async *[Symbol.asyncIterator](): AsyncGenerator<TokenEvent> {
          for (const [index, tokenId] of tokens.entries()) yield { tokenId, index, timeMs: index + 1 };
          if (sc.throwAfter) throw sc.throwAfter;
        },
      };
    },
  };
  return m;
}

describe("tsllm-serve over a scripted batch manager (no tokenizer)", () => {
  let next: (req: GenerationRequest) => Script | Error = () => ({ tokens: [5, 6] });
  const manager = scriptedManager((req) => next(req));
  let server: Server;
  let url: string;
  beforeAll(async () => {
    server = buildServer({ manager, tokenizer: null, modelName: "fake" });
    url = await server.app.listen({ host: "127.0.0.1", port: 0 });
  });
  afterAll(async () => server?.app.close());
  const body = { model: "fake", prompt: [1, 2], max_tokens: 2 };

  it("text needs a tokenizer: 400 naming the parameter; ids are returned unasked", async () => {
    const t = await post(url, { ...body, prompt: "Hi" });
    expect([t.status, t.json]).toEqual([
      400,
      err("a text prompt needs a tokenizer: this engine has none; give the prompt as token ids", "prompt"),
    ]);
    const l = await post(url, { ...body, prompt: [[1], "Hi"] });
    expect([l.status, l.json]).toEqual([
      400,
      err("a text prompt needs a tokenizer: this engine has none; give the prompt as token ids", "prompt"),
    ]);
    const c = await post(
      url,
      { model: "fake", messages: [{ role: "user", content: "Hi" }] },
      "/v1/chat/completions",
    );
    expect([c.status, c.json]).toEqual([
      400,
      err("chat needs a tokenizer: this engine has none", "messages"),
    ]);
    const st = await post(url, { ...body, stop: ["x"] });
    expect([st.status, st.json]).toEqual([400, err("stop needs a tokenizer: this engine has none", "stop")]);
    for (const stop of [null, []]) {
      const r = await post(url, { ...body, stop });
      expect(r.status, JSON.stringify(stop)).toBe(200);
      expect(r.json.choices[0]).toEqual({
        index: 0,
        text: "",
        logprobs: null,
        finish_reason: "length",
        stop_reason: null,
        token_ids: [5, 6],
        prompt_token_ids: [1, 2],
      });
    }
    const ids = await post(url, { ...body, prompt: [[1, 2], [3]], return_token_ids: false });
    expect(ids.json.choices.map((c: { prompt_token_ids: number[] }) => c.prompt_token_ids)).toEqual([
      [1, 2],
      [3],
    ]);
    expect(ids.json.usage).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
  });

  it("what reaches the manager: ids, max tokens, sampling defaults, stop ids, ignore_eos", async () => {
    manager.submitted.length = 0;
    await post(url, {
      model: "fake",
      prompt: [[1, 2], [3]],
      max_tokens: 7,
      temperature: 0.5,
      top_k: -1,
      seed: 9,
      ignore_eos: true,
    });
    expect(manager.submitted.map((r) => ({ ...r }))).toEqual([
      {
        promptIds: [1, 2],
        maxNewTokens: 7,
        sampling: { temperature: 0.5, topP: 1, topK: 0, seed: 9n },
        stop: [],
        ignoreEos: true,
      },
      {
        promptIds: [3],
        maxNewTokens: 7,
        sampling: { temperature: 0.5, topP: 1, topK: 0, seed: 9n },
        stop: [],
        ignoreEos: true,
      },
    ]);
    manager.submitted.length = 0;
    await post(url, { model: "fake", prompt: [4] });
    const [r] = manager.submitted;
    expect(r.maxNewTokens).toBe(16);
    expect(r.ignoreEos).toBe(false);
    expect(r.sampling).toMatchObject({ temperature: 1, topP: 1, topK: 0 });
    expect(Number.isInteger(r.sampling?.seed)).toBe(true);
    expect(r.sampling?.seed).toBeGreaterThanOrEqual(0);
    expect(r.sampling?.seed).toBeLessThan(2 ** 31);
    expect(r.stopTokenIds).toBeUndefined();
    // vLLM's stop_token_ids (tsllm-run's --stop-token-ids) reach the manager as given.
    manager.submitted.length = 0;
    await post(url, { model: "fake", prompt: [4], stop_token_ids: [5, 7], ignore_eos: true });
    expect(manager.submitted.map((r) => [r.stopTokenIds, r.ignoreEos])).toEqual([[[5, 7], true]]);
  });

  it("a generation that ends in error: 500 not streamed; an error event then [DONE] streamed", async () => {
    next = () => ({ tokens: [5], end: { finishReason: "error", error: new Error("the step failed") } });
    const r = await post(url, body);
    expect([r.status, r.json]).toEqual([
      500,
      err("generation failed: the step failed", null, "server_error"),
    ]);
    const st = await sse(url, { ...body, stream: true });
    expect(st.status).toBe(200);
    expect(st.done).toBe(true);
    expect(st.events).toEqual([
      {
        id: st.events[0].id,
        object: "text_completion",
        created: st.events[0].created,
        model: "fake",
        choices: [{ index: 0, text: "", logprobs: null, finish_reason: null, token_ids: [5] }],
      },
      err("generation failed: the step failed", null, "server_error"),
    ]);
    next = () => ({ tokens: [], end: { finishReason: "error" } });
    const u = await post(url, body);
    expect([u.status, u.json]).toEqual([500, err("generation failed: unknown error", null, "server_error")]);
    const us = await sse(url, { ...body, stream: true });
    expect(us.events).toEqual([err("generation failed: unknown error", null, "server_error")]);
    // Cancelled requests finish as OpenAI's "abort".
    next = () => ({ tokens: [7], end: { finishReason: "cancelled" } });
    expect((await post(url, body)).json.choices[0].finish_reason).toBe("abort");
    next = () => ({ tokens: [7], end: { finishReason: "stop" } });
    expect((await post(url, body)).json.choices[0].finish_reason).toBe("stop");
    next = () => ({ tokens: [5, 6] });
  });

  it("stop_reason names a stop id only when the choice stopped: not a length or abort that ends on one", async () => {
    // The CPU engine checks stop ids before the length, so it never ends a choice so; the server's rule (vLLM's
    // check_stop sets stop_reason in its stop branch only) holds for whatever a manager reports.
    const cases = [
      ["length", [5, 7], "length", null],
      ["cancelled", [5, 7], "abort", null],
      ["stop", [5, 7], "stop", 7],
      ["stop", [], "stop", null],
    ] as const;
    for (const [finishReason, tokens, finish_reason, stop_reason] of cases) {
      next = () => ({ tokens: [...tokens], end: { finishReason } });
      const r = await post(url, { ...body, stop_token_ids: [7] });
      expect(r.json.choices[0], finishReason).toMatchObject({ finish_reason, stop_reason });
      const st = await sse(url, { ...body, stop_token_ids: [7], stream: true });
      expect(st.events.at(-1).choices[0], finishReason).toMatchObject({ finish_reason, stop_reason });
    }
    next = () => ({ tokens: [5, 6] });
  });

  it("a stream that breaks after its headers: the error as the last event, the generations cancelled", async () => {
    next = () => ({ tokens: [5, 6], throwAfter: new Error("backend lost\nstack line") });
    const cancels = manager.cancels;
    const st = await sse(url, {
      ...body,
      prompt: [[1], [2]],
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(st.done).toBe(true);
    expect(st.doneCount).toBe(1);
    expect(st.events.at(-1)).toEqual(err("backend lost", null, "server_error"));
    expect(st.events.filter((e) => "usage" in e)).toEqual([]);
    // Both generations are cancelled by the catch (at least once each; the token stream's own cleanup too).
    expect(manager.cancels - cancels).toBeGreaterThanOrEqual(4);
    next = () => ({ tokens: [5, 6] });
  });

  it("a generation whose stream throws counts in tsllm_request_success_total as error, streamed or not", async () => {
    // Recorded only once all of a request's generations had returned, such a request was missing from
    // tsllm_request_success_total (and the token and latency figures) altogether, though its client got the error.
    const scrape = async () => await (await fetch(`${url}/metrics`)).text();
    const finished = (m: string, reason: string) =>
      metric(m, `tsllm_request_success_total{finish_reason="${reason}"}`) || 0;
    const delta = (a: string, b: string) =>
      Object.fromEntries(
        ["stop", "length", "abort", "error"].map((k) => [k, finished(b, k) - finished(a, k)]),
      );
    next = () => ({ tokens: [5, 6], throwAfter: new Error("backend lost") });
    let before = await scrape();
    const st = await sse(url, { ...body, prompt: [[1], [2]], stream: true });
    expect(st.events.at(-1)).toEqual(err("backend lost", null, "server_error"));
    let after = await scrape();
    expect(delta(before, after)).toEqual({ stop: 0, length: 0, abort: 0, error: 2 });
    expect(
      metric(after, "tsllm_generation_tokens_total") - metric(before, "tsllm_generation_tokens_total"),
    ).toBe(4);
    before = after;
    const r = await post(url, body);
    expect([r.status, r.json]).toEqual([500, err("backend lost", null, "server_error")]);
    after = await scrape();
    expect(delta(before, after)).toEqual({ stop: 0, length: 0, abort: 0, error: 1 });
    // One choice of two fails: it counts as error, the other as it ended.
    next = (req) => ({
      tokens: [5, 6],
      ...(req.promptIds[0] === 1 ? { throwAfter: new Error("lost") } : {}),
    });
    before = after;
    const mixed = await sse(url, { ...body, prompt: [[1], [2]], stream: true });
    expect(mixed.events.at(-1)).toEqual(err("lost", null, "server_error"));
    after = await scrape();
    expect(delta(before, after)).toEqual({ stop: 0, length: 1, abort: 0, error: 1 });
    next = () => ({ tokens: [5, 6] });
  });

  it("refusals from the manager, and unexpected failures, as HTTP errors", async () => {
    const cases: [Error | string | object, number, ErrorBody][] = [
      [
        new RequestRejectedError("shutting_down", "closing"),
        503,
        err("closing", null, "service_unavailable", "shutting_down"),
      ],
      [
        new RequestRejectedError("warming_up", "warming"),
        503,
        err("warming", null, "service_unavailable", "warming_up"),
      ],
      [
        new RequestRejectedError("too_long", "too long"),
        400,
        err("too long", "max_tokens", "invalid_request_error", "context_length_exceeded"),
      ],
      [
        new RequestRejectedError("kv_capacity", "no room"),
        400,
        err("no room", "max_tokens", "invalid_request_error", "context_length_exceeded"),
      ],
      [new RequestRejectedError("invalid", "bad ids"), 400, err("bad ids", "prompt")],
      [new Error("first line\nsecond line"), 500, err("first line", null, "server_error")],
      ["a string", 500, err("a string", null, "server_error")],
      [
        Object.assign(new Error("conflict"), { statusCode: 409, code: "E_CONFLICT" }),
        409,
        err("conflict", null, "invalid_request_error", "E_CONFLICT"),
      ],
      [Object.assign(new Error("teapot"), { statusCode: 418 }), 418, err("teapot", null)],
      [
        Object.assign(new Error("upstream"), { statusCode: 502, code: "E_UP" }),
        500,
        err("upstream", null, "server_error"),
      ],
      // The bounds of "a 4xx keeps its status": 400 and 499 do, 399 and 500 are server errors.
      [
        Object.assign(new Error("four hundred"), { statusCode: 400, code: "E_400" }),
        400,
        err("four hundred", null, "invalid_request_error", "E_400"),
      ],
      [Object.assign(new Error("last 4xx"), { statusCode: 499 }), 499, err("last 4xx", null)],
      [
        Object.assign(new Error("not an error status"), { statusCode: 399, code: "E_399" }),
        500,
        err("not an error status", null, "server_error"),
      ],
      [
        Object.assign(new Error("internal"), { statusCode: 500, code: "E_500" }),
        500,
        err("internal", null, "server_error"),
      ],
      [{ statusCode: 404 }, 404, err("bad request", null)],
      // A status that is not a number (fastify's own are numbers) is not taken.
      [
        Object.assign(new Error("odd status"), { statusCode: "404" }),
        500,
        err("odd status", null, "server_error"),
      ],
      [{ message: "no status", code: "E_X" }, 500, err("no status", null, "server_error")],
    ];
    for (const [thrown, status, want] of cases) {
      next = () => {
        throw thrown;
      };
      const r = await post(url, body);
      expect([r.status, r.json], String(thrown)).toEqual([status, want]);
    }
    // The second of two prompts refused: the first, already submitted, is cancelled.
    let n = 0;
    next = () => (n++ === 0 ? { tokens: [5] } : new RequestRejectedError("too_long", "second too long"));
    const cancels = manager.cancels;
    const r = await post(url, { ...body, prompt: [[1], [2]] });
    expect(r.status).toBe(400);
    expect(manager.cancels - cancels).toBe(1);
    next = () => ({ tokens: [5, 6] });
  });
});
