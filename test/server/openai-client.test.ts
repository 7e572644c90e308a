// The official openai client against tsllm-serve on tiny-llama: completions and chat completions,
// streamed and not, at temperature 0 give the tokens of an independent generation loop (the executor's
// generate()) on the same prompt ids, and the text those tokens decode to.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { buildFixture, TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { greedyOracle, startServer, type TestServer, tsllmRunJson } from "./helpers.ts";

const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));
const tok = TextTokenizer.load(TINY_LLAMA);
const EOS = [508, 511];
// vLLM's extension, passed through by the client: the response carries token ids.
const IDS = { return_token_ids: true } as Record<string, unknown>;

type Choice = { text?: string; token_ids?: number[]; prompt_token_ids?: number[] };

/** tsllm-run --json on the same engine. */
const tsllmRun = (engine: string, args: string[]) =>
  tsllmRunJson<{ prompt_ids: number[]; ids: number[]; text: string }>(engine, args);

describe("tsllm-serve with the openai client", () => {
  let engine: string;
  let s: TestServer;
  beforeAll(async () => {
    engine = await buildFixture("llama", { maxBatchSize: 64 });
    s = await startServer(engine);
  });
  afterAll(async () => s?.close());

  it("GET /v1/models and /health", async () => {
    const models = await s.client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(["tiny"]);
    const h = await fetch(`${s.url}/health`);
    expect(h.status).toBe(200);
  });

  it("completions, not streamed: the oracle's greedy tokens and their text; usage counts", async () => {
    const prompt = golden.encode[1].text;
    const r = await s.client.completions.create({
      model: "tiny",
      prompt,
      max_tokens: 12,
      temperature: 0,
      ...IDS,
    });
    const c = r.choices[0] as unknown as Choice;
    const want = greedyOracle(engine, golden.encode[1].ids, 12, EOS);
    expect(c.prompt_token_ids).toEqual(golden.encode[1].ids);
    expect(c.token_ids).toEqual(want);
    expect(r.choices[0].text).toBe(tok.decode(want, { skipSpecialTokens: true }));
    expect(r.choices[0].finish_reason).toBe(EOS.includes(want.at(-1)!) ? "stop" : "length");
    expect(r.usage).toEqual({
      prompt_tokens: golden.encode[1].ids.length,
      completion_tokens: want.length,
      total_tokens: golden.encode[1].ids.length + want.length,
    });
  });

  it("completions, streamed: chunks concatenate to the non-streamed text; include_usage ends with usage", async () => {
    const ids = golden.encode[5].ids; // "Grüße aus München": a prompt given as token ids
    const want = greedyOracle(engine, ids, 16, EOS);
    const stream = await s.client.completions.create({
      model: "tiny",
      prompt: ids,
      max_tokens: 16,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      ...IDS,
    });
    let text = "";
    const got: number[] = [];
    let finish: string | null = null;
    let usage: unknown = null;
    for await (const ch of stream) {
      if (ch.usage) usage = ch.usage;
      for (const c of ch.choices) {
        text += c.text;
        got.push(...((c as unknown as Choice).token_ids ?? []));
        finish = c.finish_reason ?? finish;
      }
    }
    expect(got).toEqual(want);
    expect(text).toBe(tok.decode(want, { skipSpecialTokens: true }));
    expect(finish).toBe(EOS.includes(want.at(-1)!) ? "stop" : "length");
    expect(usage).toEqual({
      prompt_tokens: ids.length,
      completion_tokens: want.length,
      total_tokens: ids.length + want.length,
    });
  });

  it("a list of prompts (text and ids) gives one choice per prompt, in order", async () => {
    const r = await s.client.completions.create({
      model: "tiny",
      prompt: [golden.encode[0].text, golden.encode[3].ids] as unknown as string[],
      max_tokens: 6,
      temperature: 0,
      ...IDS,
    });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1]);
    expect((r.choices[0] as unknown as Choice).token_ids).toEqual(
      greedyOracle(engine, golden.encode[0].ids, 6, EOS),
    );
    expect((r.choices[1] as unknown as Choice).token_ids).toEqual(
      greedyOracle(engine, golden.encode[3].ids, 6, EOS),
    );
  });

  it("chat completions through the chat template, streamed and not", async () => {
    const chat = golden.chat[1];
    const want = greedyOracle(engine, chat.ids, 20, EOS);
    const r = await s.client.chat.completions.create({
      model: "tiny",
      messages: chat.messages,
      max_tokens: 20,
      temperature: 0,
      ...IDS,
    });
    const c = r.choices[0] as unknown as { token_ids: number[] };
    expect((r as unknown as { prompt_token_ids: number[] }).prompt_token_ids).toEqual(chat.ids);
    expect(c.token_ids).toEqual(want);
    expect(r.choices[0].message).toMatchObject({
      role: "assistant",
      content: tok.decode(want, { skipSpecialTokens: true }),
    });
    expect(r.usage?.prompt_tokens).toBe(chat.ids.length);

    const stream = await s.client.chat.completions.create({
      model: "tiny",
      messages: chat.messages,
      max_completion_tokens: 20,
      temperature: 0,
      stream: true,
    });
    let content = "";
    const roles: string[] = [];
    let finish: string | null = null;
    for await (const ch of stream) {
      const d = ch.choices[0];
      if (d.delta.role) roles.push(d.delta.role);
      content += d.delta.content ?? "";
      finish = d.finish_reason ?? finish;
    }
    expect(roles).toEqual(["assistant"]);
    expect(content).toBe(r.choices[0].message.content);
    expect(finish).toBe(r.choices[0].finish_reason);
  });

  it("stop strings end generation before the stop, streamed and not", async () => {
    const ids = golden.encode[2].ids;
    const full = tok.decode(greedyOracle(engine, ids, 24, EOS), { skipSpecialTokens: true });
    // A stop string from the middle of what greedy decoding writes (no replacement characters in it).
    const from = [...full.matchAll(/[^\uFFFD]{2}/g)].map((m) => m.index!).find((i) => i >= 3);
    expect(from, `greedy text ${JSON.stringify(full)} has no usable stop string`).toBeDefined();
    const stop = full.slice(from!, from! + 2);
    const expected = full.slice(0, full.indexOf(stop));
    const r = await s.client.completions.create({
      model: "tiny",
      prompt: ids,
      max_tokens: 24,
      temperature: 0,
      stop: [stop, "\u0000never"],
    });
    expect(r.choices[0].text).toBe(expected);
    expect(r.choices[0].finish_reason).toBe("stop");
    const stream = await s.client.completions.create({
      model: "tiny",
      prompt: ids,
      max_tokens: 24,
      temperature: 0,
      stop,
      stream: true,
    });
    let text = "";
    for await (const ch of stream) text += ch.choices[0]?.text ?? "";
    expect(text).toBe(expected);
  });

  it("at temperature 0, completions and chat give tsllm-run's tokens and text for the same prompt", async () => {
    const prompt = golden.encode[7].text;
    const [run, r] = await Promise.all([
      tsllmRun(engine, ["--prompt", prompt, "--max-new-tokens", "16"]),
      s.client.completions.create({ model: "tiny", prompt, max_tokens: 16, temperature: 0, ...IDS }),
    ]);
    expect((r.choices[0] as unknown as Choice).prompt_token_ids).toEqual(run.prompt_ids);
    expect((r.choices[0] as unknown as Choice).token_ids).toEqual(run.ids);
    expect(r.choices[0].text).toBe(run.text);

    const file = path.join(tmpDir(), "chat.json");
    fs.writeFileSync(file, JSON.stringify(golden.chat[0].messages));
    const [runChat, stream] = await Promise.all([
      tsllmRun(engine, ["--chat", file, "--max-new-tokens", "16"]),
      s.client.chat.completions.create({
        model: "tiny",
        messages: golden.chat[0].messages,
        max_tokens: 16,
        temperature: 0,
        stream: true,
        ...IDS,
      }),
    ]);
    let content = "";
    const ids: number[] = [];
    for await (const ch of stream as unknown as AsyncIterable<{
      choices: { delta: { content?: string }; token_ids?: number[] }[];
    }>) {
      content += ch.choices[0]?.delta.content ?? "";
      ids.push(...(ch.choices[0]?.token_ids ?? []));
    }
    expect(runChat.prompt_ids).toEqual(golden.chat[0].ids);
    expect(ids).toEqual(runChat.ids);
    expect(content).toBe(runChat.text);
  });

  it("same seed, same sampled tokens; other seed, other tokens", async () => {
    const ask = (seed: number) =>
      s.client.completions.create({
        model: "tiny",
        prompt: "Hello",
        max_tokens: 16,
        temperature: 1.5,
        top_k: 50,
        top_p: 0.95,
        seed,
        ignore_eos: true,
      } as never) as Promise<{ choices: { text: string }[] }>;
    const [a, b, c] = await Promise.all([ask(7), ask(7), ask(8)]);
    expect(a.choices[0].text).toBe(b.choices[0].text);
    expect(a.choices[0].text).not.toBe(c.choices[0].text);
  });

  // n choices of a prompt: choice j samples with seed + j (as vLLM), so it is the n = 1 request of that seed.
  const SAMPLED = { temperature: 1.5, top_k: 50, top_p: 0.95, ignore_eos: true, ...IDS };

  it("completions with n: n choices per prompt at i·n + j, choice j = the n = 1 request of seed + j", async () => {
    const prompts = [golden.encode[1].ids, golden.encode[5].ids];
    const r = await s.client.completions.create({
      model: "tiny",
      prompt: prompts,
      n: 3,
      seed: 40,
      max_tokens: 10,
      ...SAMPLED,
    } as never);
    const one = (prompt: number[], seed: number) =>
      s.client.completions.create({ model: "tiny", prompt, max_tokens: 10, seed, ...SAMPLED } as never);
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2, 3, 4, 5]);
    const singles = await Promise.all(
      [0, 1, 2, 3, 4, 5].map((i) => one(prompts[Math.floor(i / 3)], 40 + (i % 3))),
    );
    for (const [i, c] of r.choices.entries()) {
      const want = singles[i].choices[0] as unknown as Choice;
      expect((c as unknown as Choice).prompt_token_ids, `choice ${i}`).toEqual(prompts[Math.floor(i / 3)]);
      expect((c as unknown as Choice).token_ids, `choice ${i}`).toEqual(want.token_ids);
      expect(c.text, `choice ${i}`).toBe(want.text);
    }
    // the three choices of a prompt are not one sample thrice
    expect(new Set(r.choices.slice(0, 3).map((c) => c.text)).size).toBeGreaterThan(1);
    const completion = r.choices.reduce((a, c) => a + (c as unknown as Choice).token_ids!.length, 0);
    expect(r.usage).toEqual({
      prompt_tokens: prompts[0].length + prompts[1].length, // once per prompt, not per choice
      completion_tokens: completion,
      total_tokens: prompts[0].length + prompts[1].length + completion,
    });
  });

  it("chat with n, streamed: each index's deltas are that choice of the non-streamed reply; usage once", async () => {
    const messages = [{ role: "user" as const, content: "Tell me a story" }];
    const body = { model: "tiny", messages, n: 2, seed: 3, max_tokens: 12, ...SAMPLED };
    const whole = await s.client.chat.completions.create(body as never);
    expect(whole.choices.map((c) => c.index)).toEqual([0, 1]);
    const stream = await s.client.chat.completions.create({
      ...body,
      stream: true,
      stream_options: { include_usage: true },
    } as never);
    const text = ["", ""];
    const finish: (string | null)[] = [null, null];
    let usage: unknown;
    for await (const chunk of stream as unknown as AsyncIterable<{
      choices: { index: number; delta: { content?: string }; finish_reason: string | null }[];
      usage?: unknown;
    }>) {
      for (const c of chunk.choices) {
        text[c.index] += c.delta.content ?? "";
        if (c.finish_reason) finish[c.index] = c.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toEqual(whole.choices.map((c) => c.message.content));
    expect(finish).toEqual(whole.choices.map((c) => c.finish_reason));
    expect(text[0]).not.toBe(text[1]);
    expect(usage).toEqual(whole.usage);
    const promptIds = (whole as unknown as { prompt_token_ids: number[] }).prompt_token_ids;
    expect(whole.usage?.prompt_tokens).toBe(promptIds.length);
  });
});
