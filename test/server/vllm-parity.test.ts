// Requests a client written for vLLM's OpenAI-compatible server sends, answered as vLLM answers them (each case failed
// on the code before it): max_tokens null on completions, stream_options.continuous_usage_stats, stop_reason on every
// finished choice, vLLM's sampling extensions at their neutral values, an empty stop string, /tokenize and
// /detokenize, a known path under another method.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildServer } from "../../src/server/app.ts";
import { buildFixture, TINY_LLAMA } from "../fixtures.ts";
import { startServer, type TestServer } from "./helpers.ts";

async function post(url: string, body: unknown, route = "/v1/completions") {
  const r = await fetch(`${url}${route}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, text, json: JSON.parse(text) };
}

/** The JSON of every `data:` event of a stream, [DONE] left out (checked to be last). */
async function events(url: string, body: unknown, route = "/v1/completions") {
  const r = await fetch(`${url}${route}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  expect(r.status).toBe(200);
  const frames = (await r.text()).trim().split("\n\n");
  expect(frames.at(-1)).toBe("data: [DONE]");
  return frames.slice(0, -1).map((f) => JSON.parse(f.slice("data: ".length)));
}

/** transformers' AutoTokenizer on tiny-llama: encode (text → ids, decoded with special tokens) and chat → ids. */
const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));

type Usage = { prompt_tokens: number; completion_tokens: number; total_tokens: number };
type Chunk = {
  choices: { index: number; finish_reason: string | null; token_ids?: number[] }[];
  usage?: Usage;
};

const BASE = { model: "tiny", temperature: 0, ignore_eos: true };
const CHAT = { ...BASE, messages: [{ role: "user", content: "Hi" }] };

describe("tsllm-serve answers vLLM clients as vLLM does", () => {
  let s: TestServer;
  let maxModelLen: number;
  beforeAll(async () => {
    s = await startServer(await buildFixture("llama"));
    maxModelLen = (await (await fetch(`${s.url}/v1/models`)).json()).data[0].max_model_len;
  });
  afterAll(async () => {
    await s?.close();
  });

  it("completions with max_tokens null may use the rest of the context (vLLM's get_max_tokens); absent, 16", async () => {
    const r = await post(s.url, {
      ...BASE,
      prompt: [
        [507, 1],
        [507, 1, 2, 3],
      ],
      max_tokens: null,
    });
    expect(r.status, r.text).toBe(200);
    expect(r.json.choices.map((c: { finish_reason: string }) => c.finish_reason)).toEqual([
      "length",
      "length",
    ]);
    // Each prompt fills the context: (L - 2) + (L - 4) tokens.
    expect(r.json.usage).toEqual({
      prompt_tokens: 6,
      completion_tokens: 2 * maxModelLen - 6,
      total_tokens: 2 * maxModelLen,
    });
    const dflt = await post(s.url, { ...BASE, prompt: [507, 1] });
    expect(dflt.json.usage.completion_tokens).toBe(16);
    // A prompt that leaves no room (the second): the prompt's fault, with the numbers.
    const full = await post(s.url, {
      ...BASE,
      prompt: [[507], Array(maxModelLen).fill(5)],
      max_tokens: null,
    });
    expect([full.status, full.json]).toEqual([
      400,
      {
        error: {
          message: `the prompt is ${maxModelLen} tokens, leaving no room for a completion in the context of ${maxModelLen} tokens (max_model_len)`,
          type: "invalid_request_error",
          param: "prompt",
          code: "context_length_exceeded",
        },
      },
    ]);
  });

  it("chat with max_tokens null is a chat without a limit: messages too long for the context, the same 400", async () => {
    const long = { ...CHAT, messages: [{ role: "user", content: "Hi ".repeat(300) }] };
    const absent = await post(s.url, long, "/v1/chat/completions");
    expect(absent.status).toBe(400);
    expect(absent.json.error).toMatchObject({ param: "messages", code: "context_length_exceeded" });
    for (const nulls of [{ max_tokens: null }, { max_completion_tokens: null, max_tokens: null }]) {
      const r = await post(s.url, { ...long, ...nulls }, "/v1/chat/completions");
      expect([r.status, r.json], JSON.stringify(nulls)).toEqual([400, absent.json]);
    }
  });

  it("stream_options.continuous_usage_stats: each chunk carries its choice's usage so far; the usage chunk the total", async () => {
    const so = { include_usage: true, continuous_usage_stats: true };
    // (With token ids: a chunk per token, even while a character is incomplete.)
    const body = {
      ...BASE,
      prompt: [
        [507, 1],
        [507, 1, 2],
      ],
      n: 2,
      max_tokens: 3,
      stream: true,
      return_token_ids: true,
    };
    const chunks: Chunk[] = await events(s.url, { ...body, stream_options: so });
    const last = chunks.at(-1) as Chunk;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual({ prompt_tokens: 5, completion_tokens: 12, total_tokens: 17 });
    const choices = chunks.slice(0, -1);
    for (let i = 0; i < 4; i++) {
      const mine = choices.filter((c) => c.choices[0].index === i);
      const promptTokens = i < 2 ? 2 : 3;
      // Each chunk counts the tokens of its choice sent so far (its token_ids summed), the finish chunk all 3.
      let sent = 0;
      for (const c of mine) {
        sent += c.choices[0].token_ids?.length ?? 0;
        expect(c.usage, `choice ${i}`).toEqual({
          prompt_tokens: promptTokens,
          completion_tokens: sent,
          total_tokens: promptTokens + sent,
        });
      }
      expect(sent).toBe(3);
      expect(mine.at(-1)?.choices[0].finish_reason).toBe("length");
    }
    // Chat: the role chunk of each choice counts no completion tokens yet.
    const chat: Chunk[] = await events(
      s.url,
      { ...CHAT, n: 2, max_tokens: 2, stream: true, stream_options: so },
      "/v1/chat/completions",
    );
    const promptTokens = chat.at(-1)?.usage?.prompt_tokens as number;
    expect(chat.at(-1)?.usage).toEqual({
      prompt_tokens: promptTokens,
      completion_tokens: 4,
      total_tokens: promptTokens + 4,
    });
    for (const i of [0, 1])
      expect(chat.filter((c) => c.choices[0]?.index === i)[0].usage).toEqual({
        prompt_tokens: promptTokens,
        completion_tokens: 0,
        total_tokens: promptTokens,
      });
    // Without include_usage (vLLM's should_include_usage), or false: no usage anywhere.
    for (const off of [
      { continuous_usage_stats: true },
      { include_usage: false, continuous_usage_stats: true },
    ]) {
      const plain: Chunk[] = await events(s.url, { ...body, stream_options: off });
      expect(plain.filter((c) => "usage" in c)).toEqual([]);
    }
    // include_usage alone: usage on the last chunk only.
    const once: Chunk[] = await events(s.url, {
      ...body,
      stream_options: { include_usage: true, continuous_usage_stats: false },
    });
    expect(once.filter((c) => "usage" in c)).toEqual([once.at(-1)]);
  });

  it("stop_reason is on every finished choice: the stop token id that ended it, else null (vLLM's check_stop)", async () => {
    const ids = { ...BASE, prompt: [507, 4, 5], max_tokens: 8, return_token_ids: true };
    const full = (await post(s.url, ids)).json.choices[0];
    expect(full).toMatchObject({ finish_reason: "length", stop_reason: null });
    const stopId = full.token_ids[3];
    const want = { finish_reason: "stop", stop_reason: stopId };
    const cut = await post(s.url, { ...ids, stop_token_ids: [stopId] });
    expect(cut.json.choices[0]).toMatchObject({ ...want, token_ids: full.token_ids.slice(0, 4) });
    const streamed: Chunk[] = await events(s.url, { ...ids, stop_token_ids: [stopId], stream: true });
    expect(streamed.at(-1)?.choices[0]).toMatchObject(want);
    const chat = { ...CHAT, max_tokens: 8, return_token_ids: true };
    const chatStop = (await post(s.url, chat, "/v1/chat/completions")).json.choices[0].token_ids[2];
    const c = await post(s.url, { ...chat, stop_token_ids: [chatStop] }, "/v1/chat/completions");
    expect(c.json.choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: chatStop });
    const cs: Chunk[] = await events(
      s.url,
      { ...chat, stop_token_ids: [chatStop], stream: true },
      "/v1/chat/completions",
    );
    expect(cs.at(-1)?.choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: chatStop });
    // The tokenizer's eos ends a choice as itself (stop_reason null) even when also a stop token id, unless ignore_eos:
    // seed 21 at temperature 1.5 samples it (511) as its last token. (The other end id, 508, names itself:
    // vllm-frontend.test.ts.)
    const sampled = { model: "tiny", prompt: [507, 1, 2], max_tokens: 30, temperature: 1.5, seed: 21 };
    const ended = (await post(s.url, { ...sampled, return_token_ids: true })).json.choices[0];
    const eos = ended.token_ids.at(-1);
    expect([ended.finish_reason, ended.stop_reason, eos]).toEqual(["stop", null, 511]);
    const both = await post(s.url, { ...sampled, stop_token_ids: [eos] });
    expect(both.json.choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: null });
    const ignored = await post(s.url, { ...sampled, stop_token_ids: [eos], ignore_eos: true });
    expect(ignored.json.choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: eos });
  });

  it("vLLM's min_p and repetition_penalty at their neutral values are accepted; others refused naming the field", async () => {
    for (const [route, body] of [
      ["/v1/completions", { ...BASE, prompt: [507, 1], max_tokens: 1 }],
      ["/v1/chat/completions", { ...CHAT, max_tokens: 1 }],
    ] as const) {
      for (const neutral of [
        { min_p: 0, repetition_penalty: 1 },
        { min_p: null, repetition_penalty: null },
      ]) {
        const r = await post(s.url, { ...body, ...neutral }, route);
        expect(r.status, r.text).toBe(200);
      }
      for (const [field, value, only] of [
        ["min_p", 0.1, 0],
        ["repetition_penalty", 1.1, 1],
      ] as const) {
        const r = await post(s.url, { ...body, [field]: value }, route);
        expect([r.status, r.json.error.message, r.json.error.param]).toEqual([
          400,
          `${field}: ${field} is not supported (only ${only})`,
          field,
        ]);
      }
    }
  });

  it('an empty stop string is refused as vLLM\'s SamplingParams refuses it ("stop cannot contain an empty string")', async () => {
    for (const stop of ["", ["\n", ""]]) {
      const r = await post(s.url, { ...BASE, prompt: [507, 1], max_tokens: 4, stop });
      expect([r.status, r.json.error.message, r.json.error.param]).toEqual([
        400,
        "stop: stop cannot contain an empty string",
        "stop",
      ]);
    }
  });

  it("vLLM's /tokenize and /detokenize: transformers' ids for a prompt and a chat, as generation sees them", async () => {
    const { text, ids, decoded } = golden.encode[0];
    const tokenize = (body: unknown) => post(s.url, body, "/tokenize");
    const want = { count: ids.length, max_model_len: maxModelLen, tokens: ids, token_strs: null };
    for (const model of [{ model: "tiny" }, {}, { model: null }])
      expect(await tokenize({ ...model, prompt: text })).toMatchObject({ status: 200, json: want });
    // The ids /v1/completions generates after.
    const served = await post(s.url, { ...BASE, prompt: text, max_tokens: 1, return_token_ids: true });
    expect(served.json.choices[0].prompt_token_ids).toEqual(ids);
    expect((await tokenize({ prompt: text, add_special_tokens: false })).json.tokens).toEqual(ids.slice(1));
    // Messages: the chat template's ids (special tokens its own: add_special_tokens false by default, as vLLM's).
    const chat = golden.chat[0];
    const c = await tokenize({ model: "tiny", messages: chat.messages });
    expect(c.json).toEqual({
      count: chat.ids.length,
      max_model_len: maxModelLen,
      tokens: chat.ids,
      token_strs: null,
    });
    const cserved = await post(
      s.url,
      { ...CHAT, messages: chat.messages, max_tokens: 1, return_token_ids: true },
      "/v1/chat/completions",
    );
    expect(cserved.json.prompt_token_ids).toEqual(chat.ids);
    const twice = await tokenize({ messages: chat.messages, add_special_tokens: true });
    expect(twice.json.tokens).toEqual([507, ...chat.ids]);
    const open = await tokenize({ messages: chat.messages, add_generation_prompt: false });
    expect(chat.ids.slice(0, open.json.count)).toEqual(open.json.tokens);
    expect(open.json.count).toBeLessThan(chat.ids.length);
    // Detokenize: the text with special tokens, as tokenizer.decode gives it.
    const d = await post(s.url, { model: "tiny", tokens: ids }, "/detokenize");
    expect([d.status, d.json]).toEqual([200, { prompt: decoded }]);
    // Refusals: another model 404, ids outside the vocabulary 400, unknown fields 400.
    const other = await tokenize({ model: "gpt-4", prompt: "x" });
    expect([other.status, other.json.error.code]).toEqual([404, "model_not_found"]);
    const outside = await post(s.url, { tokens: [1, 512] }, "/detokenize");
    expect([outside.status, outside.json.error]).toEqual([
      400,
      {
        message: "tokens: token id 512 is outside the vocabulary (0..511)",
        type: "invalid_request_error",
        param: "tokens",
        code: null,
      },
    ]);
    const strs = await tokenize({ prompt: "x", return_token_strs: true });
    expect([strs.status, strs.json.error.param]).toEqual([400, "return_token_strs"]);
    // An engine without a tokenizer: a 400 that says why, naming the field.
    const bare = buildServer({
      manager: s.manager,
      tokenizer: null,
      noTokenizer: "none here",
      modelName: "tiny",
    });
    for (const [url, body, param, what] of [
      ["/tokenize", { prompt: "x" }, "prompt", "tokenize"],
      ["/tokenize", { messages: chat.messages }, "messages", "tokenize"],
      ["/detokenize", { tokens: [1] }, "tokens", "detokenize"],
    ] as const) {
      const r = await bare.app.inject({ method: "POST", url, payload: body });
      expect([r.statusCode, r.json().error], url).toEqual([
        400,
        { message: `${what} needs a tokenizer: none here`, type: "invalid_request_error", param, code: null },
      ]);
    }
    await bare.app.close();
  });

  it("/tokenize of a body that is not a JSON object: 400 as the generation endpoints answer it, not a TypeError", async () => {
    for (const body of ["null", '"Hi"', "5", "true", "[]"]) {
      const r = await fetch(`${s.url}/tokenize`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      expect([r.status, await r.json()], body).toEqual([
        400,
        {
          error: {
            message: "request body must be a JSON object",
            type: "invalid_request_error",
            param: null,
            code: null,
          },
        },
      ]);
    }
  });

  it("/tokenize and /detokenize refuse a mistyped field with its own message, naming it", async () => {
    const messages = [{ role: "user", content: "Hi" }];
    for (const [route, body, message, param] of [
      ["/tokenize", { model: 3, prompt: "x" }, "model: model must be a string", "model"],
      ["/tokenize", { model: 3, messages }, "model: model must be a string", "model"],
      [
        "/tokenize",
        { prompt: "x", return_token_strs: true },
        "return_token_strs: return_token_strs is not supported (only false)",
        "return_token_strs",
      ],
      ["/detokenize", { model: 3, tokens: [1] }, "model: model must be a string", "model"],
      ["/detokenize", { tokens: "Hi" }, "tokens: tokens must be a list of token ids", "tokens"],
    ] as const) {
      const r = await post(s.url, body, route);
      expect([r.status, r.json], `${route} ${JSON.stringify(body)}`).toEqual([
        400,
        { error: { message, type: "invalid_request_error", param, code: null } },
      ]);
    }
  });

  it("/tokenize of messages with continue_final_message: the ids chat generation continues from", async () => {
    const messages = [
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hel" },
    ];
    const tokenize = (body: object) => post(s.url, { messages, ...body }, "/tokenize");
    const flags = { add_generation_prompt: false, continue_final_message: true };
    const continued = await tokenize(flags);
    expect(continued.status, continued.text).toBe(200);
    const served = await post(
      s.url,
      { ...CHAT, messages, ...flags, max_tokens: 1, return_token_ids: true },
      "/v1/chat/completions",
    );
    expect(served.status, served.text).toBe(200);
    expect(continued.json.tokens).toEqual(served.json.prompt_token_ids);
    // Closed, the assistant's turn ends with <|eot_id|> (511): the continued prompt stops before it, on "Hel".
    const closed = await tokenize({ add_generation_prompt: false });
    expect(closed.json.tokens.at(-1)).toBe(511);
    expect(closed.json.tokens.slice(0, continued.json.count)).toEqual(continued.json.tokens);
    expect(continued.json.count).toBeLessThan(closed.json.count);
    // Both true: refused as /v1/chat/completions refuses it.
    const both = await tokenize({ continue_final_message: true });
    const chatBoth = await post(
      s.url,
      { ...CHAT, messages, continue_final_message: true, max_tokens: 1 },
      "/v1/chat/completions",
    );
    expect(chatBoth.status).toBe(400);
    expect([both.status, both.json]).toEqual([400, chatBoth.json]);
  });

  it("a known path under another method is 405 with Allow (vLLM's router), an unknown path still 404", async () => {
    for (const [method, route, allow] of [
      ["GET", "/v1/completions", "POST"],
      ["GET", "/v1/chat/completions?x=1", "POST"],
      ["POST", "/v1/models", "GET"],
      ["DELETE", "/v1/models/tiny", "GET"],
      ["POST", "/health", "GET"],
      ["GET", "/tokenize", "POST"],
      // A path served under both: Allow lists them as Starlette does, ", " between.
      ["PUT", "/ping", "GET, POST"],
    ]) {
      const r = await fetch(`${s.url}${route}`, { method });
      const url = route.split("?")[0];
      expect([r.status, r.headers.get("allow"), await r.json()], `${method} ${route}`).toEqual([
        405,
        allow,
        {
          error: {
            message: `method ${method} not allowed on ${url} (allowed: ${allow})`,
            type: "invalid_request_error",
            param: null,
            code: "method_not_allowed",
          },
        },
      ]);
    }
    expect((await fetch(`${s.url}/v1/nothing`, { method: "POST" })).status).toBe(404);
  });
});
