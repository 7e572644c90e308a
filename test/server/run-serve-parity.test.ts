// tsllm-run's text mode and tsllm-serve (the openai client) on the same engine, prompt and parameters give the same
// ids and text: greedy, seeded sampling with top_p, stop strings, stop token ids, chat, max tokens.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildFixture, TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { startServer, type TestServer, tsllmRunJson } from "./helpers.ts";

const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));
const IDS = { return_token_ids: true } as Record<string, unknown>;
type Choice = {
  text: string;
  token_ids: number[];
  prompt_token_ids: number[];
  finish_reason: string;
  stop_reason: string | number | null;
};

describe("tsllm-run text mode and tsllm-serve agree", () => {
  let engine: string;
  let s: TestServer;
  beforeAll(async () => {
    engine = await buildFixture("llama");
    s = await startServer(engine);
  });
  afterAll(async () => s?.close());

  // biome-ignore lint/suspicious/noExplicitAny: tsllm-run's --json object, read field by field below
  const run = (...args: string[]) => tsllmRunJson<any>(engine, args);
  const complete = async (body: Record<string, unknown>) => {
    const r = await s.client.completions.create({ model: "tiny", ...IDS, ...body } as never);
    return (r as unknown as { choices: Choice[] }).choices[0];
  };
  const same = (
    cli: { prompt_ids: number[]; ids: number[]; text: string; finish_reason: string; stop_string?: string },
    c: Choice,
    /** The stop token id that ended it: the server's stop_reason (vLLM's), which tsllm-run does not print. */
    stopId: number | null = null,
  ) => {
    expect({
      prompt: c.prompt_token_ids,
      ids: c.token_ids,
      text: c.text,
      finish: c.finish_reason,
      stop: c.stop_reason,
    }).toEqual({
      prompt: cli.prompt_ids,
      ids: cli.ids,
      text: cli.text,
      finish: cli.finish_reason,
      stop: cli.stop_string ?? stopId,
    });
  };
  const prompt = () => golden.encode[1].text as string;
  const chatFile = () => {
    const file = path.join(tmpDir(), "chat.json");
    fs.writeFileSync(file, JSON.stringify(golden.chat[0].messages));
    return file;
  };

  it("greedy", async () => {
    same(
      await run(prompt(), "--max-new-tokens", "20"),
      await complete({ prompt: prompt(), max_tokens: 20, temperature: 0 }),
    );
    same(
      await run(prompt(), "--max-new-tokens", "20", "--ignore-eos"),
      await complete({ prompt: prompt(), max_tokens: 20, temperature: 0, ignore_eos: true }),
    );
  });

  it("default max tokens (16 both)", async () => {
    const cli = await run(prompt(), "--ignore-eos");
    const c = await complete({ prompt: prompt(), temperature: 0, ignore_eos: true });
    same(cli, c);
    expect(cli.ids.length).toBe(16);
  });

  it("seeded sampling with top_p / top_k", async () => {
    for (const seed of [0, 7, 123456789]) {
      same(
        await run(
          prompt(),
          "--max-new-tokens",
          "24",
          "--temperature",
          "0.8",
          "--top-p",
          "0.9",
          "--seed",
          `${seed}`,
          "--ignore-eos",
        ),
        await complete({
          prompt: prompt(),
          max_tokens: 24,
          temperature: 0.8,
          top_p: 0.9,
          seed,
          ignore_eos: true,
        }),
      );
    }
    same(
      await run(
        prompt(),
        "--max-new-tokens",
        "24",
        "--temperature",
        "1.3",
        "--top-k",
        "5",
        "--seed",
        "3",
        "--ignore-eos",
      ),
      await complete({
        prompt: prompt(),
        max_tokens: 24,
        temperature: 1.3,
        top_k: 5,
        seed: 3,
        ignore_eos: true,
      }),
    );
    // The defaults: tsllm-run samples with seed 0 at --temperature given; the server's seed 0 is the same.
    same(
      await run(prompt(), "--max-new-tokens", "24", "--temperature", "1", "--ignore-eos"),
      await complete({ prompt: prompt(), max_tokens: 24, seed: 0, ignore_eos: true }),
    );
  });

  it("stop strings", async () => {
    const full = await run(prompt(), "--max-new-tokens", "24", "--ignore-eos");
    const at =
      [...full.text.matchAll(/[^\uFFFD]{2}/g)]
        .map((m: RegExpMatchArray) => m.index!)
        .find((i: number) => i >= 3) ?? -1;
    expect(at).toBeGreaterThanOrEqual(3);
    const stop = full.text.slice(at, at + 2);
    same(
      await run(prompt(), "--max-new-tokens", "24", "--ignore-eos", "--stop", stop, "--stop", "zzzz"),
      await complete({
        prompt: prompt(),
        max_tokens: 24,
        temperature: 0,
        ignore_eos: true,
        stop: [stop, "zzzz"],
      }),
    );
  });

  it("stop token ids", async () => {
    const full = await run(prompt(), "--max-new-tokens", "24", "--ignore-eos");
    const stopId = full.ids[5];
    const cli = await run(
      prompt(),
      "--max-new-tokens",
      "24",
      "--ignore-eos",
      "--stop-token-ids",
      `${stopId}`,
    );
    expect(cli.ids).toEqual(full.ids.slice(0, full.ids.indexOf(stopId) + 1));
    // Was refused: 400 "Unrecognized request argument supplied: stop_token_ids".
    same(
      cli,
      await complete({
        prompt: prompt(),
        max_tokens: 24,
        temperature: 0,
        ignore_eos: true,
        stop_token_ids: [stopId],
      }),
      stopId,
    );
    const chat = await run("--chat", chatFile(), "--max-new-tokens", "24", "--ignore-eos");
    const chatStop = chat.ids[3];
    const cut = await run(
      "--chat",
      chatFile(),
      "--max-new-tokens",
      "24",
      "--ignore-eos",
      "--stop-token-ids",
      `${chatStop}`,
    );
    expect(cut.finish_reason).toBe("stop");
    const r = (await s.client.chat.completions.create({
      model: "tiny",
      messages: golden.chat[0].messages,
      max_tokens: 24,
      temperature: 0,
      ignore_eos: true,
      stop_token_ids: [chatStop],
      ...IDS,
    } as never)) as unknown as {
      choices: { message: { content: string }; token_ids: number[]; finish_reason: string }[];
    };
    expect([r.choices[0].token_ids, r.choices[0].message.content, r.choices[0].finish_reason]).toEqual([
      cut.ids,
      cut.text,
      "stop",
    ]);
    // Outside the vocabulary: refused by name, as tsllm-run refuses it.
    const bad = await s.client.completions
      .create({ model: "tiny", prompt: "hi", max_tokens: 2, stop_token_ids: [5, 512] } as never)
      .catch((e) => e);
    expect([bad.status, bad.param, bad.message]).toEqual([
      400,
      "stop_token_ids",
      "400 stop_token_ids: token id 512 is outside the vocabulary (0..511)",
    ]);
    const neg = await s.client.completions
      .create({ model: "tiny", prompt: "hi", max_tokens: 2, stop_token_ids: [-1] } as never)
      .catch((e) => e);
    expect([neg.status, neg.param]).toEqual([400, "stop_token_ids.0"]);
  });

  it("chat: --chat FILE and /v1/chat/completions", async () => {
    const chat = golden.chat[0];
    const file = chatFile();
    for (const extra of [[], ["--ignore-eos"]]) {
      const cli = await run("--chat", file, "--max-new-tokens", "24", ...extra);
      const r = (await s.client.chat.completions.create({
        model: "tiny",
        messages: chat.messages,
        max_tokens: 24,
        temperature: 0,
        ...(extra.length ? { ignore_eos: true } : {}),
        ...IDS,
      } as never)) as unknown as {
        choices: { message: { content: string }; token_ids: number[]; finish_reason: string }[];
        prompt_token_ids: number[];
      };
      expect(r.prompt_token_ids).toEqual(cli.prompt_ids);
      expect(r.choices[0].token_ids).toEqual(cli.ids);
      expect(r.choices[0].message.content).toBe(cli.text);
      expect(r.choices[0].finish_reason).toBe(cli.finish_reason);
    }
    const cli = await run(
      "--chat",
      file,
      "--max-new-tokens",
      "24",
      "--temperature",
      "0.8",
      "--top-p",
      "0.9",
      "--seed",
      "5",
      "--ignore-eos",
    );
    const r = (await s.client.chat.completions.create({
      model: "tiny",
      messages: chat.messages,
      max_tokens: 24,
      temperature: 0.8,
      top_p: 0.9,
      seed: 5,
      ignore_eos: true,
      ...IDS,
    } as never)) as unknown as { choices: { message: { content: string }; token_ids: number[] }[] };
    expect(r.choices[0].token_ids).toEqual(cli.ids);
    expect(r.choices[0].message.content).toBe(cli.text);
  });
});
